// Registers the CPU kernels of tita::guided_sample and tita::guided_logprobs: the build of the
// kernel (kernel_<isa>.cpp) for the instruction set cpu_capability() chooses when tita_ext._C loads.
#include <torch/library.h>

#include "capability.h"
#include "kernel_entry.h"

namespace tita::cpu {
namespace {

struct Kernels {
  GuidedSampleFn* sample;
  GuidedLogprobsFn* logprobs;
};

Kernels chosen_kernels() {
  switch (cpu_capability()) {
#if TITA_CPU_MULTI_ISA
    case Capability::kAvx512: return {&avx512::guided_sample_cpu, &avx512::guided_logprobs_cpu};
    case Capability::kAvx2: return {&avx2::guided_sample_cpu, &avx2::guided_logprobs_cpu};
#endif
    default: return {&baseline::guided_sample_cpu, &baseline::guided_logprobs_cpu};
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(tita, CPU, m) {
  const Kernels k = chosen_kernels();
  m.impl("guided_sample", k.sample);
  m.impl("guided_logprobs", k.logprobs);
}

}  // namespace tita::cpu
