// What the fused guided_sample / guided_logprobs kernels share: the plan of a launch (vocabulary
// slices), the scratch they pass each other (slice partials, candidates, row outcomes), and the
// per-row decisions every kernel must make alike.
//
// Kernels of one launch, in stream order (guided_sample.cu):
//   base_max   only when a plausibility floor may be on: max of each slice of the base row;
//   scan       (slice, row) blocks: the one read of the logits for every fast-path row;
//   finish     one block per row: merge the slices, filter, choose (or the exact fallback);
//   write      guided_logprobs only: the [B, width] log-probabilities.
#pragma once

#include <cstdint>

#include "block_reduce.cuh"
#include "launch.h"
#include "row_load.cuh"

namespace tita::cuda {

constexpr int kBigChunks = 3;        // 8-id chunks per thread of the large-work plan (small work: 1)
constexpr int kMaxTopK = 256;        // fast path: top-k up to this (one thread maximum per kept rank)
constexpr int kDefaultCands = 128;   // per-slice candidate target of rows without top-k (top-p, min-p)
constexpr int kSliceSlots = 512;     // candidates one slice may hand over (more: refined, else fallback)
constexpr int kRowCands = 4096;      // candidates the finish holds in shared memory (more: fallback)
constexpr int kMaxSlices = 2048;     // slices per row the finish can prefix-sum (more: fallback)

// What the scan of one (slice, row) leaves for the finish.
struct SlicePartial {
  Lse r, f, z;     // log-sum-exp statistics of the reward row, the reference row (base without one), z
  float zmax;      // max z of the slice
  float theta;     // every finite z of the slice that was not handed over is < theta (-inf: none dropped)
  Best best;       // dense rows: the slice's winner (greedy: argmax z; sampling: the Gumbel race)
  int32_t n_cands; // sparse rows: candidates handed over; -1: too many (the row takes the fallback)
};

struct Cand {
  float z;
  int32_t id;
};

// guided_logprobs: what the write kernel needs of each row.
struct RowOutcome {
  float tau;       // allowed: z >= tau (and finite)
  float floor;     // plausibility floor applied to z (-inf: off)
  float log_norm;  // log of the filtered normaliser over z
  int32_t status;
};

struct KernelArgs {
  GuidedInputs in;
  NoiseSource noise;
  bool choose;            // guided_sample (tokens) or guided_logprobs (outcomes)
  int64_t slice_len;      // ids per slice: kThreads * kVec * chunks
  int64_t slices;         // slices of the shared range
  SlicePartial* partials; // [batch, slices]
  float* base_max;        // [batch, slices]; nullptr: no plausibility floor in this launch
  Cand* cands;            // [batch, slices, kSliceSlots]
  RowOutcome* outcomes;   // [batch] (guided_logprobs)
  int64_t* tokens;        // guided_sample outputs [batch]
  float* logprob;
  float* token_reward;
  int32_t* status;
  float* out;             // guided_logprobs output [batch, out_width]
  int64_t out_width;
};

__device__ __forceinline__ RowConfig row_config(const KernelArgs& a, int64_t row) {
  return make_row_config(a.in.params, row, a.in.vocab, a.in.ref.data != nullptr);
}

// Rows the scan serves; the others (top-k above the cap) are done by the finish's exact fallback.
__device__ __forceinline__ bool fast_path(const RowConfig& c, const KernelArgs& a) {
  return c.top_k <= kMaxTopK && (c.log_floor == TITA_NEG_INF || a.base_max != nullptr) && a.slices <= kMaxSlices;
}

// The plausibility floor of a row from the base_max slices: max(b) + log(plausibility).
__device__ __forceinline__ float row_floor(const KernelArgs& a, int64_t row, float log_floor, ReduceSmem& red) {
  float m = TITA_NEG_INF;
  for (int64_t i = threadIdx.x; i < a.slices; i += kThreads) m = fmaxf(m, a.base_max[row * a.slices + i]);
  m = block_reduce(m, MaxOp{}, red);
  return __fadd_rn(m, log_floor);
}

}  // namespace tita::cuda
