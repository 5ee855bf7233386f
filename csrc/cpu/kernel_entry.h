// The CPU kernel's entry points, one set per instruction set (kernel_<isa>.cpp defines them in
// namespace tita::cpu::<isa>); guided_ops_cpu.cpp registers the set cpu_capability() chooses.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "../common/op_checks.h"
#include "capability.h"

namespace tita::cpu {

// tita::guided_sample's schema (contract.h), CPU tensors.
using GuidedSampleFn = SampleOutputs(
    const at::Tensor& base, const at::Tensor& reward, const c10::optional<at::Tensor>& ref, double alpha,
    const c10::optional<at::Tensor>& alpha_rows, double temperature, const c10::optional<at::Tensor>& temperature_rows,
    int64_t top_k, const c10::optional<at::Tensor>& top_k_rows, double top_p,
    const c10::optional<at::Tensor>& top_p_rows, double min_p, const c10::optional<at::Tensor>& min_p_rows,
    double plausibility, const c10::optional<at::Tensor>& plausibility_rows, const at::Tensor& seed,
    const at::Tensor& offset, int64_t vocab_size);

// tita::guided_logprobs's schema, CPU tensors.
using GuidedLogprobsFn = at::Tensor(
    const at::Tensor& base, const at::Tensor& reward, const c10::optional<at::Tensor>& ref, double alpha,
    const c10::optional<at::Tensor>& alpha_rows, double temperature, const c10::optional<at::Tensor>& temperature_rows,
    int64_t top_k, const c10::optional<at::Tensor>& top_k_rows, double top_p,
    const c10::optional<at::Tensor>& top_p_rows, double min_p, const c10::optional<at::Tensor>& min_p_rows,
    double plausibility, const c10::optional<at::Tensor>& plausibility_rows, int64_t vocab_size);

#if TITA_CPU_MULTI_ISA
namespace avx512 {
GuidedSampleFn guided_sample_cpu;
GuidedLogprobsFn guided_logprobs_cpu;
}  // namespace avx512
namespace avx2 {
GuidedSampleFn guided_sample_cpu;
GuidedLogprobsFn guided_logprobs_cpu;
}  // namespace avx2
#endif
namespace baseline {
GuidedSampleFn guided_sample_cpu;
GuidedLogprobsFn guided_logprobs_cpu;
}  // namespace baseline

}  // namespace tita::cpu
