// What the fused guided_sample / guided_logprobs kernels share: the plan of a launch (vocabulary
// slices), the scratch they pass each other (slice partials, candidates, row outcomes), and the
// per-row decisions every kernel must make alike.
//
// Kernels of one launch, in stream order (guided_sample.cu launch_chain):
//   base_max   only when a plausibility floor may be on: max of each slice of the base row;
//   scan       (slice, row) blocks: the one read of the logits of every row;
//   finish     one block per row: merge the slices, filter, choose from the candidates; a row the
//              candidates cannot decide is handed to the bounded fallback (guided_fallback.cuh);
//   fallback   only when a launch may have filtered rows: histogram (re-read 1), bin select,
//              gather + race (re-read 2), finish of the fallback rows; blocks of other rows exit;
//   write      guided_logprobs only: the [B, width] log-probabilities.
//
// A top-p row whose cut bin (guided_bins.cuh) holds more elements than the finish keeps uses the
// fallback's two kernels too, but over the cut bin's handed-over elements, not the row
// (kFallbackCutBin): its row is read once.
// Every path reads a row at most 3 times (scan + 2 re-reads), spread over the row's slices; the
// one exception, kept for exactness, is a row whose cut bin holds more than kGather distinct
// values (see guided_fallback.cuh): the single-block exact search (finish_general), which the
// CPU emulation counts as RowPath::kGeneral.
#pragma once

#include <cstdint>

#include "block_reduce.cuh"
#include "launch.h"
#include "row_load.cuh"

namespace tita::cuda {

constexpr int kBigChunks = 3;        // 8-id chunks per thread of the large-work plan (small work: 1)
constexpr int kMaxTopK = 256;        // fast path: top-k up to this (one thread maximum per kept rank)
constexpr int kRowCandTarget = 2048; // candidates a row's slices aim to hand over in all (top-p, min-p, big k)
constexpr int kMinSliceCands = 16;   // ... but at least this many per slice
constexpr int kSliceSlots = 512;     // candidates one slice may hand over (more: refined, else fallback);
                                     // launches with top-p-only rows: slice_len / 2 (guided_plan.cuh)
constexpr int kRowCands = 4096;      // candidates the finish holds in shared memory (more: fallback)
constexpr int kMaxSlices = 2048;     // slices per row the finish can prefix-sum (more: fallback)
constexpr int kBins = 2048;          // fallback histogram bins per row (linear in z over [zmin, zmax])
constexpr int kGather = kRowCands;   // fallback: elements of the cut bins gathered per row
constexpr int kCoarseBins = 256;     // finish: histogram of the candidates when more than kRowCands pass T
constexpr int kHistSlices = 8;       // fallback histogram: slices per block (fewer global flushes)
constexpr int kSliceBins = 64;       // binned rows: bin-table entries per slice (guided_bins.cuh)
constexpr int kCutSubBins = 256;     // kFallbackCutBin rows: histogram bins over the cut bin's values
constexpr int kCutPerWorker = 4096;  // ... and its elements per block of the two passes

// Which path decided a row (the CPU emulation records it; tests bound the re-reads per path).
enum RowPath : int32_t {
  kPathDense = 1,      // no filter: the scan's winners (1 read)
  kPathCands = 2,      // the candidates decided it (1 read)
  kPathThreshold = 3,  // fallback with a known threshold (min-p / ties): race pass (2 reads)
  kPathHistogram = 4,  // fallback: histogram + gather/race passes (3 reads)
  kPathGeneral = 5,    // the single-block exact search (unbounded re-reads)
  kPathStatus = 6,     // bad parameter / no finite / overflow decided by the scan (1 read)
  kPathBins = 7,       // top-p alone: the slices' bin tables (+ the cut bin's candidates) decided it (1 read)
  kPathBinsRefined = 8,// top-p alone, a cut bin of > kRowCands elements: histogram + gather of its
                       // handed-over elements (kFallbackCutBin; 1 read of the row)
};

// What the scan of one (slice, row) leaves for the finish.
struct SlicePartial {
  Lse r, f, z;     // log-sum-exp statistics of the reward row, the reference row (base without one), z
  double zmass;    // top-p rows: sum of exp(z - zmax) in fp64 (z - zmax exact in fp64)
  float zmax;      // max z of the slice
  float zmin;      // min finite z of the slice (+inf: none)
  int32_t overflow;// a finite logit gave a non-finite score (kStatusOverflow)
  float theta;     // every finite z of the slice that was not handed over is < theta (-inf: none dropped)
  Best best;       // dense rows: the slice's winner (greedy: argmax z; sampling: the Gumbel race)
  int32_t n_cands; // sparse rows: candidates handed over; -1: too many (the row takes the fallback)
  int32_t bins;    // binned rows (guided_bins.cuh): table entries stored; -1: none (|zmax| too large)
};

// One entry of a slice's bin table (guided_bins.cuh): entry i is the absolute bin (slice's top
// bin - i); sums are over the slice's elements in bins >= that one (suffix from the top).
struct BinEntry {
  double cum_mass;          // sum of exp(z - slice zmax), fp64
  int32_t cum_count;
  uint32_t lo, hi;          // min / max okey(z) of this bin alone (lo > hi: empty)
  uint32_t pad;
  unsigned long long win;   // race winner of bins >= this one (pack_best: key, then lowest id)
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

// A row the candidates could not decide, between the fallback's kernels (guided_fallback.cuh).
enum FallbackKind : int32_t {
  kFallbackNone = 0,       // decided by the finish
  kFallbackThreshold = 1,  // the threshold is known (tau_min): one race pass
  kFallbackHistogram = 2,  // histogram pass, then gather + race
  kFallbackGeneral = 3,    // the cut bins hold more than kGather distinct values: finish_general
  kFallbackCutBin = 4,     // top-p alone: histogram, then gather + race, over the elements of the bin
                           // table's cut bin that the slices handed over (the row is not re-read)
};

struct FallbackRow {
  int32_t active;        // FallbackKind
  float zmax, zmin;
  float tau_min;         // threshold known before the passes (min-p, or a tied cut bin); -inf: none
  double scale;          // bins per unit of z: bin(z) = min(kBins - 1, (z - zmin) * scale)
  int32_t b_lo, b_hi;    // gathered bins [b_lo, b_hi]; elements above b_hi are allowed (b_hi = -1: none gathered)
  int32_t count_above;   // elements in bins above b_hi (kFallbackCutBin: in the cut bin; no top-k there)
  double mass_above;     // their mass (fp64 exp(z - zmax)); kFallbackCutBin: plus mass_base
  double total;          // top-p total over the whole row (histogram path without top-k; set by the
                         // finish for kFallbackCutBin)
  double cut_bin;        // kFallbackCutBin: the table's cut bin (absolute, guided_bins.cuh); the histogram
                         // spans [zmin, zmin + kBins / scale] = its values
  double mass_base;      // kFallbackCutBin: mass of the bins above the cut bin (allowed); 0 otherwise
  unsigned long long win_base;  // kFallbackCutBin: their race winner (pack_best, guided_bins.cuh)
  int32_t workers;       // kFallbackCutBin: blocks of each pass that work (slices split among them)
  int32_t k_active;      // top-k applies (k <= the finite ids)
  int32_t histogram;     // the histogram pass ran (a tied cut bin turns the row into kFallbackThreshold)
  int32_t n_gathered;
  float lse_r, lse_f, floor;
};

// The fallback's per-(slice, row) race result for the elements above the gathered bins.
struct RacePartial {
  Best best;
  double norm;  // mass of the allowed elements of the slice above the gathered bins
};

struct KernelArgs {
  GuidedInputs in;
  NoiseSource noise;
  bool choose;            // guided_sample (tokens) or guided_logprobs (outcomes)
  int64_t slice_len;      // ids per slice: kThreads * kVec * chunks
  int64_t slices;         // slices of the shared range
  SlicePartial* partials; // [batch, slices]
  float* base_max;        // [batch, slices]; nullptr: no plausibility floor in this launch
  Cand* cands;            // [batch, slices, cand_slots]; nullptr: no filtered rows in this launch
  int64_t cand_slots;     // candidate slots per (row, slice): kSliceSlots, more with top-p-only rows
  BinEntry* bins;         // [batch, slices, kSliceBins]; nullptr: no top-p rows in this launch
  RowOutcome* outcomes;   // [batch] (guided_logprobs)
  FallbackRow* fallback;  // [batch]; nullptr with cands
  int32_t* hist_count;    // [batch, kBins]
  double* hist_mass;      // [batch, kBins]
  uint32_t* hist_lo;      // [batch, kBins]: min okey of the bin
  uint32_t* hist_hi;      // [batch, kBins]: max okey of the bin
  RacePartial* race;      // [batch, slices]
  Cand* gathered;         // [batch, kGather]
  int32_t* tickets;       // [batch, 2]: fallback blocks of the row done (histogram, gather)
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

// No threshold to find (no top-k, top-p or min-p; a plausibility floor is applied in z): the
// scan's online statistics and winners decide the row.
__device__ __forceinline__ bool no_cut(const RowConfig& c) {
  return c.top_k == 0 && c.top_p >= 1.0f && c.log_min_p == TITA_NEG_INF;
}

// Rows the scan serves (every row of a launch that can hold it: a floor needs base_max, and the
// finish prefix-sums at most kMaxSlices slices); the others take the single-block exact search.
__device__ __forceinline__ bool fast_path(const RowConfig& c, const KernelArgs& a) {
  return (c.log_floor == TITA_NEG_INF || a.base_max != nullptr) && a.slices <= kMaxSlices &&
         (no_cut(c) || a.cands != nullptr);
}

// Candidates a slice hands over: top-k <= kMaxTopK: k (then the largest slice threshold is at or
// below the k-th largest of the row: always exact); otherwise enough that the row's slices hand
// over about kRowCandTarget (exact when the cut lies above the largest slice threshold, else the
// bounded fallback decides).
__device__ __forceinline__ int slice_cands(const RowConfig& c, int64_t slices) {
  if (c.top_k > 0 && c.top_k <= kMaxTopK) return static_cast<int>(c.top_k);
  int64_t want = kRowCandTarget / slices;
  if (c.top_k > 0) want = (2 * c.top_k + slices - 1) / slices + kMinSliceCands;
  want = want < kMinSliceCands ? kMinSliceCands : want;
  return static_cast<int>(want < kMaxTopK ? want : kMaxTopK);
}

// f(g0, zs) for every 4-id group of a scan thread's registers z (the scan's id layout: chunk k of
// thread t holds ids v0 + (k * kThreads + t) * kVec + [0, 8)); zs points at the group's 4 scores.
template <int kChunks, class F>
__device__ __forceinline__ void each_group(int64_t v0, const float* z, F f) {
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      f(v0 + (static_cast<int64_t>(k) * kThreads + threadIdx.x) * kVec + 4 * q, z + k * kVec + 4 * q);
    }
  }
}

// The plausibility floor of a row from the base_max slices: max(b) + log(plausibility).
__device__ __forceinline__ float row_floor(const KernelArgs& a, int64_t row, float log_floor, ReduceSmem& red) {
  float m = TITA_NEG_INF;
  for (int64_t i = threadIdx.x; i < a.slices; i += kThreads) m = fmaxf(m, gload(&a.base_max[row * a.slices + i]));
  m = block_reduce(m, MaxOp{}, red);
  return __fadd_rn(m, log_floor);
}

}  // namespace tita::cuda
