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
#ifdef TITA_CUDA_EMU_THREADS
  cache[device] = 0;  // the CPU emulation sets another multiprocessor count per call
#endif
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
  bool cut = false;        // a row may have top-k, top-p or min-p: candidates and the fallback
  bool binned = false;     // a row may have top-p without top-k and min-p: bin tables (guided_bins.cuh)
  int64_t cand_slots = 0;  // candidate slots per (row, slice)
  size_t partials = 0, base_max = 0, cands = 0, bins = 0, outcomes = 0, fallback = 0, hist_count = 0, hist_mass = 0,
         hist_lo = 0, hist_hi = 0, race = 0, gathered = 0, tickets = 0, bytes = 0;  // byte offsets, total
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
  const SamplingParams& sp = in.params;
  p.floor_pass = sp.plausibility.rows != nullptr || sp.plausibility.scalar > 0.0f;
  p.cut = sp.top_k.rows != nullptr || sp.top_k.scalar > 0 || sp.top_p.rows != nullptr || sp.top_p.scalar < 1.0f ||
          sp.min_p.rows != nullptr || sp.min_p.scalar > 0.0f;
  const bool top_p = sp.top_p.rows != nullptr || sp.top_p.scalar < 1.0f;
  const bool no_top_k = sp.top_k.rows != nullptr || sp.top_k.scalar <= 0 || sp.top_k.scalar >= in.vocab;
  const bool no_min_p = sp.min_p.rows != nullptr || sp.min_p.scalar <= 0.0f;
  p.binned = top_p && no_top_k && no_min_p;
  // Binned rows hand over their top bins up to half a slice (a nucleus of a third of the row and
  // its cut bin fit, guided_bins.cuh bin_slots): 8-byte slots for 2-4 input bytes per id, so only
  // launches that may hold such rows reserve them.
  p.cand_slots = p.binned && p.slice_len / 2 > kSliceSlots ? p.slice_len / 2 : kSliceSlots;
  const size_t cells = static_cast<size_t>(in.batch) * static_cast<size_t>(p.slices);
  const size_t rows = static_cast<size_t>(in.batch), bins = rows * kBins;
  const size_t cut = p.cut ? 1 : 0;  // greedy / plain sampling launches reserve no candidate space
  p.partials = 0;
  p.base_max = align_up(p.partials + cells * sizeof(SlicePartial));
  p.cands = align_up(p.base_max + (p.floor_pass ? cells * sizeof(float) : 0));
  p.bins = align_up(p.cands + cut * cells * static_cast<size_t>(p.cand_slots) * sizeof(Cand));
  p.outcomes = align_up(p.bins + (p.binned ? cells * kSliceBins * sizeof(BinEntry) : 0));
  p.fallback = align_up(p.outcomes + rows * sizeof(RowOutcome));
  p.hist_count = align_up(p.fallback + cut * rows * sizeof(FallbackRow));
  p.hist_mass = align_up(p.hist_count + cut * bins * sizeof(int32_t));
  p.hist_lo = align_up(p.hist_mass + cut * bins * sizeof(double));
  p.hist_hi = align_up(p.hist_lo + cut * bins * sizeof(uint32_t));
  p.race = align_up(p.hist_hi + cut * bins * sizeof(uint32_t));
  p.gathered = align_up(p.race + cut * cells * sizeof(RacePartial));
  p.tickets = align_up(p.gathered + cut * rows * kGather * sizeof(Cand));
  p.bytes = align_up(p.tickets + cut * rows * 2 * sizeof(int32_t));
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
  a.cand_slots = p.cand_slots;
  a.partials = reinterpret_cast<SlicePartial*>(s + p.partials);
  a.base_max = p.floor_pass ? reinterpret_cast<float*>(s + p.base_max) : nullptr;
  a.outcomes = reinterpret_cast<RowOutcome*>(s + p.outcomes);
  if (!p.cut) return;
  a.cands = reinterpret_cast<Cand*>(s + p.cands);
  a.bins = p.binned ? reinterpret_cast<BinEntry*>(s + p.bins) : nullptr;
  a.fallback = reinterpret_cast<FallbackRow*>(s + p.fallback);
  a.hist_count = reinterpret_cast<int32_t*>(s + p.hist_count);
  a.hist_mass = reinterpret_cast<double*>(s + p.hist_mass);
  a.hist_lo = reinterpret_cast<uint32_t*>(s + p.hist_lo);
  a.hist_hi = reinterpret_cast<uint32_t*>(s + p.hist_hi);
  a.race = reinterpret_cast<RacePartial*>(s + p.race);
  a.gathered = reinterpret_cast<Cand*>(s + p.gathered);
  a.tickets = reinterpret_cast<int32_t*>(s + p.tickets);
}

}  // namespace tita::cuda
