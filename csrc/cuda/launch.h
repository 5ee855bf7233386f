// The boundary between the CUDA host launchers (guided_ops_cuda.cpp, compiled by the host compiler
// with the torch headers) and the kernels (*.cu, compiled by nvcc without them: DESIGN §6).
//
// Only plain structs of raw device pointers, strides, sizes and dtype codes cross it, plus the
// stream to launch on; no torch type appears here. Every launch function is asynchronous on that
// stream, never synchronises with the host, allocates nothing, and returns the launch status
// (cudaSuccess, or the error; cudaErrorInvalidValue for arguments it cannot serve).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "../common/contract.h"

// A kernel launch on a stream; the CPU emulation (tests/cuda_emu/emu.h) runs the grid on its pool.
#ifdef TITA_CUDA_EMU_THREADS
#define TITA_LAUNCH(kernel, grid, block, stream, ...) ::emu::launch(dim3(grid), [&] { kernel(__VA_ARGS__); })
#else
#define TITA_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif

namespace tita::cuda {

// Element type of a logits tensor.
enum class DType : int32_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

// One [batch, width] logits tensor: element (r, c) is at data + r * row_stride + c * col_stride
// (strides in elements). data == nullptr: the tensor is absent (no reference logits).
struct LogitsView {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t row_stride = 0;
  int64_t col_stride = 1;
  int64_t width = 0;  // size(1)
};

// Seeds and offsets: device int64 arrays holding 1 value or one per row.
struct NoiseSource {
  const int64_t* seed = nullptr;
  int64_t seed_numel = 0;
  const int64_t* offset = nullptr;
  int64_t offset_numel = 0;
  // Per-row seeds address their noise with row 0 (op_checks.h per_row_seed, reference._noise_rows).
  bool seed_per_row = false;
};

// What both ops read. params' per-row pointers (ParamSource::rows) are device pointers.
struct GuidedInputs {
  LogitsView base, reward, ref;
  int64_t batch = 0;
  int64_t vocab = 0;  // shared id range (op_checks.h check_inputs), 0 < vocab <= every width
  SamplingParams params;
};

// Device scratch the fused kernels pass each other (slice partials, candidates, row outcomes):
// the caller allocates guided_scratch_bytes(in) bytes on the logits' device (through the caching
// allocator, so the launch stays graph-capturable) and passes them in SampleArgs / LogprobsArgs.
// Uninitialised memory is fine: every kernel writes what the next one reads. The size depends on
// the inputs' shape, the sampling parameters (a plausibility floor adds a pass) and the device.
size_t guided_scratch_bytes(const GuidedInputs& in);

// guided_sample: one token per row. Outputs are contiguous device arrays of length batch.
struct SampleArgs {
  GuidedInputs in;
  NoiseSource noise;
  int64_t* tokens = nullptr;
  float* logprob = nullptr;
  float* token_reward = nullptr;
  int32_t* status = nullptr;
  void* scratch = nullptr;
  size_t scratch_bytes = 0;
};

// guided_logprobs: a contiguous [batch, out_width] float32 device array, out_width = base width;
// ids >= vocab get -inf (NaN on rows whose status is not ok), as on the CPU.
struct LogprobsArgs {
  GuidedInputs in;
  float* out = nullptr;
  int64_t out_width = 0;
  void* scratch = nullptr;
  size_t scratch_bytes = 0;
};

cudaError_t launch_guided_sample(const SampleArgs& args, cudaStream_t stream);
cudaError_t launch_guided_logprobs(const LogprobsArgs& args, cudaStream_t stream);

// decode_advance: one decode step's bookkeeping (see csrc/registration.cpp). Contiguous device
// arrays; batch rows; stop_ids holds num_stops ids. feed is [batch, 1] (contiguous: batch values).
struct AdvanceArgs {
  const int64_t* sampled = nullptr;
  const bool* finished = nullptr;
  const int64_t* stop_ids = nullptr;
  int64_t num_stops = 0;
  int64_t pad_id = 0;
  int64_t batch = 0;
  int64_t* record = nullptr;
  int64_t* feed = nullptr;
  bool* finished_after = nullptr;
  bool* all_finished = nullptr;
};

cudaError_t launch_decode_advance(const AdvanceArgs& args, cudaStream_t stream);

// Infrastructure for the guided_sample kernel and its tests (not registered as an op): writes
// out[r * out_row_stride + c] = tita::gumbel_at(address of row r, c) for r < rows, c < vocab, the
// address built on the device from noise exactly as the CPU kernel builds it.
cudaError_t launch_gumbel_noise(const NoiseSource& noise, int64_t rows, int64_t vocab, float* out,
                                int64_t out_row_stride, cudaStream_t stream);

}  // namespace tita::cuda
