// Host side of a fused launch: how the rows are cut into vocabulary slices, and the scratch
// layout (guided_scratch_bytes). Host code only; shared with the CPU emulation of the kernels
// (tests/cuda_emu), which runs the same plan.
#pragma once

#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <cstdint>

#include "guided_common.cuh"
#include "launch.h"

namespace tita::cuda {

// Multiprocessors of the current device (cached per device; no stream operation, capture-safe).
inline int sm_count() {
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

inline size_t align_up(size_t x) { return (x + 255) / 256 * 256; }

// How a launch cuts the rows, and where its scratch lives.
struct Plan {
  int chunks = 1;          // 8-id chunks per thread per slice: 1 (small work, more blocks) or kBigChunks
  int64_t slice_len = 0;   // kThreads * kVec * chunks ids
  int64_t slices = 0;      // of the shared range
  bool floor_pass = false; // a plausibility floor may be on: base_max_kernel runs first
  size_t partials = 0, base_max = 0, cands = 0, outcomes = 0, bytes = 0;  // byte offsets, total
};

// Small work (B x slices below two waves of blocks) uses 2048-id slices so that B = 1 still
// spreads over the GPU; large work 6144-id slices (fewer partials and candidates to merge).
inline Plan make_plan(const GuidedInputs& in) {
  Plan p;
  const int64_t big = kThreads * kVec * kBigChunks;
  const int64_t big_slices = (in.vocab + big - 1) / big;
  p.chunks = in.batch * big_slices >= 2 * static_cast<int64_t>(sm_count()) ? kBigChunks : 1;
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

inline bool inputs_ok(const GuidedInputs& in) {
  return in.batch > 0 && in.vocab > 0 && in.vocab <= INT_MAX - kThreads * kVec * kBigChunks && in.base.data != nullptr &&
         in.reward.data != nullptr && in.vocab <= in.base.width && in.vocab <= in.reward.width &&
         (in.ref.data == nullptr || in.vocab <= in.ref.width);
}

// Point the kernels' arguments at their parts of the scratch.
inline void carve(KernelArgs& a, const Plan& p, void* scratch) {
  char* s = static_cast<char*>(scratch);
  a.slice_len = p.slice_len;
  a.slices = p.slices;
  a.partials = reinterpret_cast<SlicePartial*>(s + p.partials);
  a.base_max = p.floor_pass ? reinterpret_cast<float*>(s + p.base_max) : nullptr;
  a.cands = reinterpret_cast<Cand*>(s + p.cands);
  a.outcomes = reinterpret_cast<RowOutcome*>(s + p.outcomes);
}

}  // namespace tita::cuda
