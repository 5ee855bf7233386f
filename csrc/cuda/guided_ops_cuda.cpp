// CUDA host launchers of tita::guided_sample, tita::guided_logprobs and tita::decode_advance: the same checks as the
// CPU kernels (op_checks.h), CUDA tensors only, a device guard, outputs allocated through the
// caching allocator on the logits' device (outputs and the kernels' scratch), and an asynchronous
// launch on the current stream (launch.h; the kernels live in the .cu files). Nothing here
// synchronises with the host.
//
// c10/cuda headers only (not ATen/cuda/CUDAContext.h, which wants the cuBLAS/cuSPARSE/cuSOLVER
// headers): the file then also compiles against the CPU build of torch (DESIGN §6).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../common/op_checks.h"
#include "launch.h"

namespace tita::cuda {
namespace {

DType dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::kF16;
    case at::kBFloat16: return DType::kBF16;
    default: return DType::kF32;  // check_logits admits float32, float16 and bfloat16 only
  }
}

LogitsView logits_view(const at::Tensor& t) {
  return LogitsView{t.const_data_ptr(), dtype_code(t), t.stride(0), t.stride(1), t.size(1)};
}

void check_cuda(const at::Tensor& base, const char* op) {
  TORCH_CHECK(base.is_cuda(), "tita::", op, " (CUDA kernel): base_logits must be a CUDA tensor, got ",
              base.device());
}

// A kernel's launch status. The launchers refuse (cudaErrorInvalidValue) only what the checks
// above cannot: a shared vocabulary beyond int32 ids.
void check_launch(cudaError_t status, const char* op) {
  TORCH_CHECK(status != cudaErrorInvalidValue, "tita::", op, " (CUDA kernel): the launch was refused (",
              cudaGetErrorString(status), "); vocabularies above 2^31 - 8192 ids are not supported on CUDA");
  C10_CUDA_CHECK(status);
}

GuidedInputs guided_inputs(const at::Tensor& base, const at::Tensor& reward, const c10::optional<at::Tensor>& ref,
                           int64_t vocab, const SamplingParams& params) {
  GuidedInputs in;
  in.base = logits_view(base);
  in.reward = logits_view(reward);
  if (ref.has_value()) in.ref = logits_view(*ref);
  in.batch = base.size(0);
  in.vocab = vocab;
  in.params = params;
  return in;
}

// The kernels' scratch (launch.h guided_scratch_bytes), from the caching allocator on the logits'
// device: capture-safe, and freed in stream order after the launch.
at::Tensor scratch_for(const GuidedInputs& in, const at::Tensor& base) {
  const auto bytes = static_cast<int64_t>(guided_scratch_bytes(in));
  return at::empty({bytes > 0 ? bytes : 1}, base.options().dtype(at::kByte));
}

SampleOutputs guided_sample_cuda(
    const at::Tensor& base, const at::Tensor& reward, const c10::optional<at::Tensor>& ref, double alpha,
    const c10::optional<at::Tensor>& alpha_rows, double temperature, const c10::optional<at::Tensor>& temperature_rows,
    int64_t top_k, const c10::optional<at::Tensor>& top_k_rows, double top_p,
    const c10::optional<at::Tensor>& top_p_rows, double min_p, const c10::optional<at::Tensor>& min_p_rows,
    double plausibility, const c10::optional<at::Tensor>& plausibility_rows, const at::Tensor& seed,
    const at::Tensor& offset, int64_t vocab_size) {
  check_cuda(base, "guided_sample");
  const int64_t vocab = check_inputs(base, reward, ref, vocab_size);
  check_seed(seed, "seed", base);
  check_seed(offset, "offset", base);
  const SamplingParams params = sampling_params(base, alpha, alpha_rows, temperature, temperature_rows, top_k,
                                                top_k_rows, top_p, top_p_rows, min_p, min_p_rows, plausibility,
                                                plausibility_rows);
  const c10::cuda::CUDAGuard guard(base.device());
  const int64_t batch = base.size(0);
  SampleOutputs outputs = empty_sample_outputs(base);
  if (batch == 0) return outputs;
  auto& [tokens, logprob, token_reward, status] = outputs;

  SampleArgs args;
  args.in = guided_inputs(base, reward, ref, vocab, params);
  args.noise = NoiseSource{seed.const_data_ptr<int64_t>(), seed.numel(), offset.const_data_ptr<int64_t>(),
                           offset.numel(), per_row_seed(seed, batch)};
  args.tokens = tokens.data_ptr<int64_t>();
  args.logprob = logprob.data_ptr<float>();
  args.token_reward = token_reward.data_ptr<float>();
  args.status = status.data_ptr<int32_t>();
  const at::Tensor scratch = scratch_for(args.in, base);
  args.scratch = scratch.data_ptr();
  args.scratch_bytes = static_cast<size_t>(scratch.numel());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(base.device().index()).stream();
  check_launch(launch_guided_sample(args, stream), "guided_sample");
  return outputs;
}

at::Tensor guided_logprobs_cuda(const at::Tensor& base, const at::Tensor& reward, const c10::optional<at::Tensor>& ref,
                                double alpha, const c10::optional<at::Tensor>& alpha_rows, double temperature,
                                const c10::optional<at::Tensor>& temperature_rows, int64_t top_k,
                                const c10::optional<at::Tensor>& top_k_rows, double top_p,
                                const c10::optional<at::Tensor>& top_p_rows, double min_p,
                                const c10::optional<at::Tensor>& min_p_rows, double plausibility,
                                const c10::optional<at::Tensor>& plausibility_rows, int64_t vocab_size) {
  check_cuda(base, "guided_logprobs");
  const int64_t vocab = check_inputs(base, reward, ref, vocab_size);
  const SamplingParams params = sampling_params(base, alpha, alpha_rows, temperature, temperature_rows, top_k,
                                                top_k_rows, top_p, top_p_rows, min_p, min_p_rows, plausibility,
                                                plausibility_rows);
  const c10::cuda::CUDAGuard guard(base.device());
  const int64_t batch = base.size(0), width = base.size(1);
  at::Tensor out = at::empty({batch, width}, base.options().dtype(at::kFloat));
  if (batch == 0) return out;

  LogprobsArgs args;
  args.in = guided_inputs(base, reward, ref, vocab, params);
  args.out = out.data_ptr<float>();
  args.out_width = width;
  const at::Tensor scratch = scratch_for(args.in, base);
  args.scratch = scratch.data_ptr();
  args.scratch_bytes = static_cast<size_t>(scratch.numel());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(base.device().index()).stream();
  check_launch(launch_guided_logprobs(args, stream), "guided_logprobs");
  return out;
}

AdvanceOutputs decode_advance_cuda(const at::Tensor& sampled, const at::Tensor& finished, const at::Tensor& stop_ids,
                                   int64_t pad_id) {
  check_advance(sampled, finished, stop_ids, pad_id);
  TORCH_CHECK(sampled.is_cuda(), "tita::decode_advance (CUDA kernel): sampled must be a CUDA tensor, got ",
              sampled.device());
  const c10::cuda::CUDAGuard guard(sampled.device());
  AdvanceOutputs outputs = empty_advance_outputs(sampled, finished);
  auto& [record, feed, after, all] = outputs;
  const at::Tensor s = sampled.contiguous(), f = finished.contiguous(), stops = stop_ids.contiguous();
  AdvanceArgs args;
  args.sampled = s.const_data_ptr<int64_t>();
  args.finished = f.const_data_ptr<bool>();
  args.stop_ids = stops.const_data_ptr<int64_t>();
  args.num_stops = stops.numel();
  args.pad_id = pad_id;
  args.batch = s.numel();
  args.record = record.data_ptr<int64_t>();
  args.feed = feed.data_ptr<int64_t>();
  args.finished_after = after.data_ptr<bool>();
  args.all_finished = all.data_ptr<bool>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(sampled.device().index()).stream();
  check_launch(launch_decode_advance(args, stream), "decode_advance");
  return outputs;
}

}  // namespace

TORCH_LIBRARY_IMPL(tita, CUDA, m) {
  m.impl("guided_sample", &guided_sample_cuda);
  m.impl("guided_logprobs", &guided_logprobs_cuda);
  m.impl("decode_advance", &decode_advance_cuda);
}

}  // namespace tita::cuda
