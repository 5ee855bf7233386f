// CUDA side of the tita ops: kernels and their launchers (declared in launch.h).
//
// No torch or ATen header here (DESIGN §6: they cost a minute of host compile per .cu file and
// need the CUDA build of torch); the host launcher guided_ops_cuda.cpp does the checks, the
// device guard, the stream and the allocations, and passes plain structs.
//
// The fused guided_sample / guided_logprobs kernels land with the CUDA kernel issue: until then
// their launchers return cudaErrorNotSupported and the op says so. What is here already is the
// shared device code (contract.h, philox.h) compiled by nvcc, and the Gumbel-noise kernel the
// fused kernel and its tests build on.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "../common/contract.h"
#include "launch.h"

namespace tita::cuda {
namespace {

constexpr int kNoiseThreads = 256;
constexpr int64_t kMaxGridX = 1024;   // column blocks per row; more columns loop
constexpr int64_t kMaxGridY = 65535;  // the hardware limit of gridDim.y; more rows loop

// The noise address of one row, exactly as the CPU kernel builds it (guided_ops_cpu.cpp make_plan).
__device__ __forceinline__ NoiseAddress noise_address(const NoiseSource& noise, int64_t row) {
  const int64_t seed = noise.seed[noise.seed_numel == 1 ? 0 : row];
  const int64_t offset = noise.offset[noise.offset_numel == 1 ? 0 : row];
  return NoiseAddress{static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                      static_cast<uint32_t>(noise.seed_per_row ? 0 : row)};
}

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
  gumbel_noise_kernel<<<grid, kNoiseThreads, 0, stream>>>(noise, rows, vocab, out, out_row_stride);
  return cudaGetLastError();
}

// The fused kernels are not built yet (CUDA kernel issue); the host launcher turns this status
// into an error that points at backend='reference' or CPU tensors. Nothing is launched.
cudaError_t launch_guided_sample(const SampleArgs& /*args*/, cudaStream_t /*stream*/) {
  return cudaErrorNotSupported;
}

cudaError_t launch_guided_logprobs(const LogprobsArgs& /*args*/, cudaStream_t /*stream*/) {
  return cudaErrorNotSupported;
}

}  // namespace tita::cuda
