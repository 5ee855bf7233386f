// Schemas of the tita ops (the contract every backend implements) and the Python module's
// build information. Kernels register in csrc/cpu and csrc/cuda; fake kernels in tita_ext/ops.py.
#include <torch/extension.h>
#include <torch/library.h>

#include "cpu/capability.h"
#include "cpu/kernel_stats.h"

TORCH_LIBRARY(tita, m) {
  m.def(
      "guided_sample(Tensor base_logits, Tensor reward_logits, Tensor? ref_logits, "
      "float alpha, Tensor? alpha_rows, float temperature, Tensor? temperature_rows, "
      "int top_k, Tensor? top_k_rows, float top_p, Tensor? top_p_rows, float min_p, Tensor? min_p_rows, "
      "float plausibility, Tensor? plausibility_rows, Tensor seed, Tensor offset, int vocab_size) "
      "-> (Tensor tokens, Tensor logprob, Tensor token_reward, Tensor status)");
  m.def(
      "guided_logprobs(Tensor base_logits, Tensor reward_logits, Tensor? ref_logits, "
      "float alpha, Tensor? alpha_rows, float temperature, Tensor? temperature_rows, "
      "int top_k, Tensor? top_k_rows, float top_p, Tensor? top_p_rows, float min_p, Tensor? min_p_rows, "
      "float plausibility, Tensor? plausibility_rows, int vocab_size) -> Tensor");
  // One decode step's bookkeeping after guided_sample, in one call: pad the rows that had
  // stopped, stop rows at a stop id (or at -1, a row the op could not sample), and the tokens to
  // feed the models next ([B, 1], never negative).
  m.def(
      "decode_advance(Tensor sampled, Tensor finished, Tensor stop_ids, int pad_id) "
      "-> (Tensor record, Tensor feed, Tensor finished_after, Tensor all_finished)");
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
#ifdef TITA_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["torch_version"] = TITA_TORCH_VERSION;
  info["cpu_capability"] = tita::cpu::capability_name(tita::cpu::cpu_capability());
  return info;
}

pybind11::dict cpu_kernel_stats(bool reset) {
  auto& s = tita::cpu::kernel_stats();
  pybind11::dict out;
  out["rows"] = s.rows.load();
  out["ids_scanned"] = s.ids_scanned.load();
  out["two_pass_rows"] = s.two_pass_rows.load();
  out["fallback_rows"] = s.fallback_rows.load();
  out["rescan_rows"] = s.rescan_rows.load();
  out["max_candidates"] = s.max_candidates.load();
  if (reset) tita::cpu::reset_kernel_stats();
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "tita_ext compiled ops (registered as torch.ops.tita.*)";
  m.def("build_info", &build_info,
        "How this module was built and runs: {'cuda': bool, 'torch_version': str, 'cpu_capability': "
        "'avx512' | 'avx2' | 'default' (the CPU kernels' instruction set; TITA_EXT_CPU_CAPABILITY lowers it)}");
  m.def("cpu_kernel_stats", &cpu_kernel_stats, pybind11::arg("reset") = false,
        "Counters of the CPU kernel's passes since the last reset: rows, ids_scanned (a row's first pass "
        "adds its vocabulary), two_pass_rows, fallback_rows, rescan_rows, max_candidates");
}
