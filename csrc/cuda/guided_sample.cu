// CUDA side of the fused ops: the launchers of guided_sample / guided_logprobs (declared in
// launch.h) and the Gumbel-noise kernel. The device code lives in headers, one job each:
//   block_reduce.cuh   online log-sum-exp, race entries, block reductions, ordered keys
//   row_load.cuh       16-byte loads of the logits rows, the guided score z, the noise address
//   select.cuh         exact k-th largest / top-p cut / masses / the race over a set, by bisection
//   guided_scan.cuh    the one read of the logits: (vocabulary slice, row) blocks
//   guided_finish.cuh  one block per row: merge, filter, choose; logprobs
//   guided_bins.cuh    top-p rows: the slices' bin tables (scan) and their merge (finish)
//   guided_fallback.cuh the bounded fallback: histogram, bin select, gather + race, finish
//
// No torch or ATen header here (DESIGN section 6); the host launcher guided_ops_cuda.cpp does the
// checks, the device guard, the stream and the allocations (outputs and scratch), and passes
// plain structs. Nothing here allocates or synchronises: the launches are graph-capturable.
#include <cuda_runtime.h>

#include <climits>

#include "../common/contract.h"
#include "guided_bins.cuh"
#include "guided_fallback.cuh"
#include "guided_finish.cuh"
#include "guided_plan.cuh"
#include "guided_scan.cuh"
#include "launch.h"

namespace tita::cuda {
namespace {

constexpr int kNoiseThreads = 256;
constexpr int64_t kMaxGridX = 1024;   // column blocks per row; more columns loop
constexpr int64_t kMaxGridY = 65535;  // the hardware limit of gridDim.y; more rows loop

// out[r, c] = gumbel_at(row r's address, c): rows over grid y, columns over grid x.
__global__ void __launch_bounds__(kNoiseThreads)
    gumbel_noise_kernel(NoiseSource noise, int64_t rows, int64_t vocab, float* __restrict__ out,
                        int64_t out_row_stride) {
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const NoiseAddress address = noise_address(noise, row);
    float* row_out = out + row * out_row_stride;
    for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < vocab;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      row_out[c] = gumbel_at(address, c);
    }
  }
}

}  // namespace

cudaError_t launch_gumbel_noise(const NoiseSource& noise, int64_t rows, int64_t vocab, float* out,
                                int64_t out_row_stride, cudaStream_t stream) {
  if (rows < 0 || vocab < 0 || out_row_stride < vocab) return cudaErrorInvalidValue;
  if (rows == 0 || vocab == 0) return cudaSuccess;
  if (out == nullptr || noise.seed == nullptr || noise.offset == nullptr) return cudaErrorInvalidValue;
  if ((noise.seed_numel != 1 && noise.seed_numel != rows) || (noise.offset_numel != 1 && noise.offset_numel != rows))
    return cudaErrorInvalidValue;
  const int64_t col_blocks = (vocab + kNoiseThreads - 1) / kNoiseThreads;
  const dim3 grid(static_cast<unsigned>(col_blocks < kMaxGridX ? col_blocks : kMaxGridX),
                  static_cast<unsigned>(rows < kMaxGridY ? rows : kMaxGridY));
  TITA_LAUNCH(gumbel_noise_kernel, grid, kNoiseThreads, stream, noise, rows, vocab, out, out_row_stride);
  return cudaGetLastError();
}

namespace {

template <int kChunks>
cudaError_t launch_chain(KernelArgs& a, const Plan& p, cudaStream_t stream) {
  const unsigned rows = static_cast<unsigned>(a.in.batch < 65535 ? a.in.batch : 65535);
  const dim3 grid(static_cast<unsigned>(p.slices), rows);
  const unsigned row_blocks = static_cast<unsigned>(a.in.batch < (1 << 30) ? a.in.batch : (1 << 30));
  if (a.base_max != nullptr) {
    TITA_LAUNCH(base_max_kernel<kChunks>, grid, kThreads, stream, a);
    if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  TITA_LAUNCH(guided_scan_kernel<kChunks>, grid, kThreads, stream, a);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  TITA_LAUNCH(guided_finish_kernel, row_blocks, kThreads, stream, a);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  if (a.fallback != nullptr) {  // blocks of rows the finish decided exit at once
    const dim3 hist_grid(static_cast<unsigned>((p.slices + kHistSlices - 1) / kHistSlices), rows);
    TITA_LAUNCH(fallback_hist_kernel<kChunks>, hist_grid, kThreads, stream, a);  // + select_row
    TITA_LAUNCH(fallback_gather_kernel<kChunks>, grid, kThreads, stream, a);     // + finish_row
    if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  if (!a.choose) {
    const dim3 write_grid(static_cast<unsigned>((a.out_width + p.slice_len - 1) / p.slice_len), rows);
    TITA_LAUNCH(write_logprobs_kernel<kChunks>, write_grid, kThreads, stream, a);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

cudaError_t launch(KernelArgs& a, void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  const Plan p = make_plan(a.in);
  if (scratch == nullptr || scratch_bytes < p.bytes) return cudaErrorInvalidValue;
  carve(a, p, scratch);
  return p.chunks == kBigChunks ? launch_chain<kBigChunks>(a, p, stream) : launch_chain<1>(a, p, stream);
}

}  // namespace

size_t guided_scratch_bytes(const GuidedInputs& in) {
  if (in.batch <= 0 || in.vocab <= 0) return 0;
  return make_plan(in).bytes;
}

cudaError_t launch_guided_sample(const SampleArgs& args, cudaStream_t stream) {
  if (args.in.batch == 0) return cudaSuccess;
  if (!inputs_ok(args.in) || args.tokens == nullptr || args.logprob == nullptr || args.token_reward == nullptr ||
      args.status == nullptr || args.noise.seed == nullptr || args.noise.offset == nullptr ||
      (args.noise.seed_numel != 1 && args.noise.seed_numel != args.in.batch) ||
      (args.noise.offset_numel != 1 && args.noise.offset_numel != args.in.batch))
    return cudaErrorInvalidValue;
  KernelArgs a{};
  a.in = args.in;
  a.noise = args.noise;
  a.choose = true;
  a.tokens = args.tokens;
  a.logprob = args.logprob;
  a.token_reward = args.token_reward;
  a.status = args.status;
  return launch(a, args.scratch, args.scratch_bytes, stream);
}

cudaError_t launch_guided_logprobs(const LogprobsArgs& args, cudaStream_t stream) {
  if (args.in.batch == 0) return cudaSuccess;
  if (!inputs_ok(args.in) || args.out == nullptr || args.out_width < args.in.vocab) return cudaErrorInvalidValue;
  KernelArgs a{};
  a.in = args.in;
  a.choose = false;
  a.out = args.out;
  a.out_width = args.out_width;
  return launch(a, args.scratch, args.scratch_bytes, stream);
}

}  // namespace tita::cuda
