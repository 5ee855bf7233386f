// CUDA side of the fused ops: the launchers of guided_sample / guided_logprobs (declared in
// launch.h) and the Gumbel-noise kernel. The device code lives in headers, one job each:
//   block_reduce.cuh   online log-sum-exp, race entries, block reductions, ordered keys
//   row_load.cuh       16-byte loads of the logits rows, the guided score z, the noise address
//   select.cuh         exact k-th largest / top-p cut / masses / the race over a set, by bisection
//   guided_scan.cuh    the one read of the logits: (vocabulary slice, row) blocks
//   guided_finish.cuh  one block per row: merge, filter, choose; the exact fallback; logprobs
//
// No torch or ATen header here (DESIGN section 6); the host launcher guided_ops_cuda.cpp does the
// checks, the device guard, the stream and the allocations (outputs and scratch), and passes
// plain structs. Nothing here allocates or synchronises: the launches are graph-capturable.
#include <cuda_runtime.h>

#include <climits>

#include "../common/contract.h"
#include "guided_finish.cuh"
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
  gumbel_noise_kernel<<<grid, kNoiseThreads, 0, stream>>>(noise, rows, vocab, out, out_row_stride);
  return cudaGetLastError();
}

namespace {

// Multiprocessors of the current device (cached per device; no stream operation, capture-safe).
int sm_count() {
  static int cache[128] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 128) return 108;
  if (cache[device] == 0) {
    int n = 0;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) n = 108;
    cache[device] = n;
  }
  return cache[device];
}

size_t align_up(size_t x) { return (x + 255) / 256 * 256; }

// How a launch cuts the rows, and where its scratch lives.
struct Plan {
  int chunks = 1;          // 8-id chunks per thread per slice: 1 (small work, more blocks) or 4
  int64_t slice_len = 0;   // kThreads * kVec * chunks ids
  int64_t slices = 0;      // of the shared range
  bool floor_pass = false; // a plausibility floor may be on: base_max_kernel runs first
  size_t partials = 0, base_max = 0, cands = 0, outcomes = 0, bytes = 0;  // byte offsets, total
};

// Small work (B x slices below two waves of blocks) uses 2048-id slices so that B = 1 still
// spreads over the GPU; large work 8192-id slices (fewer partials and candidates to merge).
Plan make_plan(const GuidedInputs& in) {
  Plan p;
  const int64_t big = kThreads * kVec * 4;
  const int64_t big_slices = (in.vocab + big - 1) / big;
  p.chunks = in.batch * big_slices >= 2 * static_cast<int64_t>(sm_count()) ? 4 : 1;
  p.slice_len = static_cast<int64_t>(kThreads) * kVec * p.chunks;
  p.slices = (in.vocab + p.slice_len - 1) / p.slice_len;
  p.floor_pass = in.params.plausibility.rows != nullptr || in.params.plausibility.scalar > 0.0f;
  const size_t cells = static_cast<size_t>(in.batch) * static_cast<size_t>(p.slices);
  p.partials = 0;
  p.base_max = align_up(p.partials + cells * sizeof(SlicePartial));
  p.cands = align_up(p.base_max + (p.floor_pass ? cells * sizeof(float) : 0));
  p.outcomes = align_up(p.cands + cells * kSliceSlots * sizeof(Cand));
  p.bytes = align_up(p.outcomes + static_cast<size_t>(in.batch) * sizeof(RowOutcome));
  return p;
}

bool inputs_ok(const GuidedInputs& in) {
  return in.batch > 0 && in.vocab > 0 && in.vocab <= INT_MAX - kThreads * kVec * 4 && in.base.data != nullptr &&
         in.reward.data != nullptr && in.vocab <= in.base.width && in.vocab <= in.reward.width &&
         (in.ref.data == nullptr || in.vocab <= in.ref.width);
}

template <int kChunks>
cudaError_t launch_chain(KernelArgs& a, const Plan& p, cudaStream_t stream) {
  const unsigned rows = static_cast<unsigned>(a.in.batch < 65535 ? a.in.batch : 65535);
  const dim3 grid(static_cast<unsigned>(p.slices), rows);
  if (a.base_max != nullptr) {
    base_max_kernel<kChunks><<<grid, kThreads, 0, stream>>>(a);
    if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  guided_scan_kernel<kChunks><<<grid, kThreads, 0, stream>>>(a);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  const unsigned finish_blocks = static_cast<unsigned>(a.in.batch < (1 << 30) ? a.in.batch : (1 << 30));
  guided_finish_kernel<<<finish_blocks, kThreads, 0, stream>>>(a);
  if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  if (!a.choose) {
    const dim3 write_grid(static_cast<unsigned>((a.out_width + p.slice_len - 1) / p.slice_len), rows);
    write_logprobs_kernel<kChunks><<<write_grid, kThreads, 0, stream>>>(a);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

cudaError_t launch(KernelArgs& a, void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  const Plan p = make_plan(a.in);
  if (scratch == nullptr || scratch_bytes < p.bytes) return cudaErrorInvalidValue;
  char* s = static_cast<char*>(scratch);
  a.slice_len = p.slice_len;
  a.slices = p.slices;
  a.partials = reinterpret_cast<SlicePartial*>(s + p.partials);
  a.base_max = p.floor_pass ? reinterpret_cast<float*>(s + p.base_max) : nullptr;
  a.cands = reinterpret_cast<Cand*>(s + p.cands);
  a.outcomes = reinterpret_cast<RowOutcome*>(s + p.outcomes);
  return p.chunks == 4 ? launch_chain<4>(a, p, stream) : launch_chain<1>(a, p, stream);
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
