// Schemas of the tita ops (the contract every backend implements) and the Python module's
// build information. Kernels register in csrc/cpu and csrc/cuda; fake kernels in tita_ext/ops.py.
#include <torch/extension.h>
#include <torch/library.h>

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
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "tita_ext compiled ops (registered as torch.ops.tita.*)";
  m.def("build_info", &build_info, "How this module was built: {'cuda': bool, 'torch_version': str}");
}
