// The finish: one block per row merges the row's slice partials and decides the row.
//
// Dense rows are decided by the merge. Sparse rows gather the candidates with z >= T, where T is
// the largest slice theta (every id not handed over has z < T), into shared memory, sort them
// (bitonic, up to kSortMax; bisection over fp32 keys beyond) and apply top-k (exact k-th
// largest), top-p (exact cut, fp64 masses in sorted order; the total of a top-p row without
// top-k from the slices' fp64 sums), min-p there. The result is exact whenever the final
// threshold tau >= T (then every allowed id is a candidate): always for top-k <= kMaxTopK (a
// slice with theta = T handed over >= k ids >= T); for other rows when the cut lies above T.
// Otherwise the row goes to the bounded fallback (guided_fallback.cuh): at most two more reads of
// the row, spread over its slices. finish_general, the single-block exact search over the whole
// row (dozens of passes), remains only for rows outside the fast path (a floor without base_max,
// more than kMaxSlices slices) and cut bins of more than kGather distinct values.
#pragma once

#include <climits>

#include "guided_common.cuh"
#include "select.cuh"

namespace tita::cuda {

// Candidates in shared memory.
struct SmemSource {
  const Cand* c;
  int n;
  template <class F>
  __device__ void each(F f) const {
    for (int i = threadIdx.x; i < n; i += kThreads) f(c[i].z, static_cast<int64_t>(c[i].id));
  }
};

// A whole row, z recomputed from the logits on every pass.
struct RowSource {
  RowPtrs rp;
  ZParams zp;
  int64_t vocab;
  template <class F>
  __device__ void each(F f) const {
    for (int64_t id0 = static_cast<int64_t>(threadIdx.x) * kVec; id0 < vocab; id0 += kThreads * kVec) {
      float b[kVec], r[kVec], fr[kVec];
      load_chunk(rp, id0, vocab, b, r, fr);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        if (id0 + j < vocab) f(guided_z(zp, b[j], r[j], fr[j]), id0 + j);
      }
    }
  }
};

// A binned row whose cut bin holds more elements than the finish keeps (guided_bins.cuh): what
// the fallback's kernels need to resolve it from the handed-over elements (kFallbackCutBin).
struct RefineBin {
  bool on;
  double bin;                   // the cut bin (absolute)
  double mass_above;            // mass of the bins above it, relative to the row's zmax
  double total;                 // the row's top-p total
  unsigned long long win_above; // race winner of the bins above it (pack_best)
  int32_t n_bin;                // its elements
  float lo, hi;                 // its smallest and largest value
};

// What deciding a row produces.
struct RowResult {
  int32_t status = kStatusOk;
  float zmax = TITA_NEG_INF, zmin = INFINITY;
  float tau = TITA_NEG_INF, floor = TITA_NEG_INF, log_norm = TITA_NEG_INF;
  float lse_r = TITA_NEG_INF, lse_f = TITA_NEG_INF;
  Best best = Best{TITA_NEG_INF, TITA_NEG_INF, -1};
  int32_t path = kPathCands;  // the RowPath of a filtered row the finish decides
  RefineBin refine{false, 0.0, 0.0, 0.0, 0ull, 0, 0.0f, 0.0f};
};

// Filters and choice over a source whose finite elements include every allowed id once tau >= T.
// total_hint > 0: the mass of the whole row relative to zmax (top-p without top-k). Returns false
// when tau < T (the candidates cannot decide the row).
template <class Src>
__device__ __forceinline__ bool filter_and_choose(const KernelArgs& a, int64_t row, const RowConfig& c, const Src& src, int n_finite,
                                  float zmax, float T, double total_hint, ReduceSmem& red, RowResult& res) {
  float tau = TITA_NEG_INF;
  if (c.top_k > 0 && n_finite >= c.top_k) tau = kth_largest(src, c.top_k, red);
  // top-p renormalises over the top-k survivors: all of them must be candidates.
  if (c.top_k > 0 && T != TITA_NEG_INF && !(tau >= T)) return false;
  if (c.top_p < 1.0f) {
    const double total = total_hint > 0.0 ? total_hint : mass_above(src, zmax, tau, kNegInfKey, red);
    tau = fmaxf(tau, top_p_cut(src, zmax, tau, static_cast<double>(c.top_p) * total, red));
  }
  if (c.log_min_p != TITA_NEG_INF) tau = fmaxf(tau, __fadd_rn(zmax, c.log_min_p));
  if (T != TITA_NEG_INF && !(tau >= T)) return false;
  res.tau = tau;
  const double norm = mass_above(src, zmax, tau, kNegInfKey, red);
  res.log_norm = zmax + static_cast<float>(log(norm));
  if (a.choose) res.best = choose_among(src, tau, c.greedy, noise_address(a.noise, row), red);
  return true;
}

// Up to kSortMax candidates are sorted (bitonic, in shared memory) instead of bisected: the
// k-th largest is then an index, the top-p cut one prefix sum of the masses in sorted order.
constexpr int kSortPer = 4;  // candidates per thread in the prefix sum
constexpr int kSortMax = kSortPer * kThreads;

// x comes before y: higher z, then lower id (the padding, -inf with the largest id, goes last).
__device__ __forceinline__ bool sorts_before(const Cand& x, const Cand& y) {
  return x.z > y.z || (x.z == y.z && x.id < y.id);
}

// Sort cands[0, n) by sorts_before (n <= kSortMax <= kRowCands); pads to a power of two.
__device__ __forceinline__ void bitonic_sort(Cand* cands, int n) {
  int size = 64;
  while (size < n) size <<= 1;
  for (int i = n + threadIdx.x; i < size; i += kThreads) cands[i] = Cand{TITA_NEG_INF, 0x7FFFFFFF};
  __syncthreads();
  for (int k = 2; k <= size; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = threadIdx.x; i < size; i += kThreads) {
        const int partner = i ^ j;
        if (partner <= i) continue;
        const Cand x = cands[i], y = cands[partner];
        const bool swap = (i & k) == 0 ? sorts_before(y, x) : sorts_before(x, y);
        if (swap) {
          cands[i] = y;
          cands[partner] = x;
        }
      }
      __syncthreads();
    }
  }
}

// The top-p cut over sorted candidates: the first position (among z >= tau_k) whose inclusive
// mass, mass_above plus exp(z - zmax) in sorted order (fp64, the reference's cumsum), reaches
// top_p x total, where total is total_hint when > 0, else mass_above plus the positions' masses.
// INT_MAX: no position reaches it, or mass_above alone does (the cut lies outside the candidates).
__device__ __forceinline__ int cut_in_sorted(const Cand* cands, int n, float tau_k, float zmax, double mass_above,
                                             float top_p, double total_hint, double* warp_dbl, ReduceSmem& red) {
  const int per = (n + kThreads - 1) / kThreads;
  const int first = threadIdx.x * per, end = first + per < n ? first + per : n;
  double mine = 0.0;
  for (int i = first; i < end; ++i) {
    if (cands[i].z >= tau_k) mine += exp(static_cast<double>(__fsub_rn(cands[i].z, zmax)));
  }
  double sum = 0.0;
  double before = mass_above + block_exclusive_scan(mine, warp_dbl, sum);
  const double target = static_cast<double>(top_p) * (total_hint > 0.0 ? total_hint : mass_above + sum);
  if (!(mass_above < target)) return INT_MAX;
  int cut_at = INT_MAX;
  for (int i = first; i < end; ++i) {
    if (cands[i].z < tau_k) continue;
    before += exp(static_cast<double>(__fsub_rn(cands[i].z, zmax)));
    if (before >= target && cut_at == INT_MAX) cut_at = i;
  }
  return block_reduce(cut_at, MinIntOp{}, red);
}

// filter_and_choose on n <= kSortMax candidates, sorted first. Same results (the cut's masses
// are summed in sorted order, as the reference's cumsum, instead of per bisection step).
__device__ __forceinline__ bool finish_sorted(const KernelArgs& a, int64_t row, const RowConfig& c, Cand* cands, int n,
                                              float zmax, float T, double total_hint, ReduceSmem& red,
                                              RowResult& res) {
  __shared__ double warp_totals[kWarps];
  bitonic_sort(cands, n);
  float tau = TITA_NEG_INF;
  if (c.top_k > 0 && n >= c.top_k) tau = cands[c.top_k - 1].z;
  if (c.top_k > 0 && T != TITA_NEG_INF && !(tau >= T)) return false;  // as in filter_and_choose
  // This thread's kSortPer consecutive candidates and their masses exp(z - zmax) (allowed so far).
  const int first = threadIdx.x * kSortPer;
  double w[kSortPer];
  double mine = 0.0;
#pragma unroll
  for (int q = 0; q < kSortPer; ++q) {
    const int i = first + q;
    w[q] = (i < n && cands[i].z >= tau) ? exp(static_cast<double>(__fsub_rn(cands[i].z, zmax))) : 0.0;
    mine += w[q];
  }
  double total = 0.0;
  double before = block_exclusive_scan(mine, warp_totals, total);
  if (c.top_p < 1.0f) {
    const double target = static_cast<double>(c.top_p) * (total_hint > 0.0 ? total_hint : total);
    int cut_at = INT_MAX;  // first sorted position whose inclusive mass reaches the target
#pragma unroll
    for (int q = 0; q < kSortPer; ++q) {
      before += w[q];
      if (w[q] > 0.0 && before >= target && cut_at == INT_MAX) cut_at = first + q;
    }
    cut_at = block_reduce(cut_at, MinIntOp{}, red);
    if (cut_at != INT_MAX) tau = fmaxf(tau, cands[cut_at].z);
  }
  if (c.log_min_p != TITA_NEG_INF) tau = fmaxf(tau, __fadd_rn(zmax, c.log_min_p));
  if (T != TITA_NEG_INF && !(tau >= T)) return false;
  res.tau = tau;
  double kept = 0.0;
#pragma unroll
  for (int q = 0; q < kSortPer; ++q) {
    const int i = first + q;
    if (i < n && cands[i].z >= tau) kept += w[q];
  }
  res.log_norm = zmax + static_cast<float>(log(block_reduce(kept, SumDoubleOp{}, red)));
  if (!a.choose) return true;
  if (c.greedy) {
    res.best = Best{cands[0].z, cands[0].z, cands[0].id};  // the first in order: max z, lowest id
    return true;
  }
  const NoiseAddress addr = noise_address(a.noise, row);
  Best best = best_none();
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const Cand x = cands[i];
    if (x.z < tau) continue;
    const Best e{__fadd_rn(x.z, gumbel_of(addr, x.id)), x.z, x.id};
    if (beats(e, best)) best = e;
  }
  res.best = block_reduce(best, BestOp{}, red);
  return true;
}

// Candidates >= T whose coarse bin is >= min_bin into cands (count in *n_cands, which the caller
// zeroed); counts[coarse bin] when counts != nullptr. Loads batched for memory-level parallelism.
template <class Bin>
__device__ __forceinline__ void gather_candidates(const KernelArgs& a, int64_t row, const int* prefix, int total, float T,
                                                  int min_bin, Bin bin, Cand* cands, int* n_cands, int* counts) {
  int64_t slice = 0;
  constexpr int kBatch = 8;
  for (int base = threadIdx.x; base < total; base += kThreads * kBatch) {
    Cand got[kBatch];
    bool ok[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int p = base + u * kThreads;
      ok[u] = p < total;
      if (!ok[u]) continue;
      while (prefix[slice + 1] <= p) ++slice;
      const int2 raw = __ldg(reinterpret_cast<const int2*>(a.cands + (row * a.slices + slice) * a.cand_slots +
                                                            (p - prefix[slice])));
      got[u] = Cand{__int_as_float(raw.x), raw.y};
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      if (!ok[u] || !(got[u].z >= T) || got[u].z == TITA_NEG_INF) continue;
      const int b = bin(got[u].z);
      if (counts != nullptr) atomicAdd(&counts[b], 1);
      if (b < min_bin) continue;
      const int at = atomicAdd(n_cands, 1);
      if (at < kRowCands) cands[at] = got[u];
    }
  }
  __syncthreads();
}

// The top-p total of a row without top-k: sum of exp(z - zmax) in fp64 over the whole row, from
// the slices' sums relative to their own maxima (the reference sums the same terms in fp64).
__device__ __forceinline__ double top_p_total(const SlicePartial* parts, int64_t slices, float zmax, ReduceSmem& red) {
  double t = 0.0;
  for (int64_t i = threadIdx.x; i < slices; i += kThreads) {
    const double m = gload(&parts[i].zmass);
    if (m > 0.0) t += m * exp(static_cast<double>(gload(&parts[i].zmax)) - static_cast<double>(zmax));
  }
  return block_reduce(t, SumDoubleOp{}, red);
}

// Top-p rows decided by the slices' bin tables (guided_bins.cuh).
__device__ __forceinline__ bool finish_binned(const KernelArgs& a, int64_t row, const RowConfig& c, Cand* cands,
                                              int* n_cands, ReduceSmem& red, RowResult& res);
__device__ __forceinline__ bool binned_row(const RowConfig& c, const KernelArgs& a);

// The fast path's finish; false: the row needs the fallback.
__device__ __forceinline__ bool finish_fast(const KernelArgs& a, int64_t row, const RowConfig& c, Cand* cands, int* prefix,
                            int* n_cands, ReduceSmem& red, RowResult& res) {
  const float floor = c.log_floor == TITA_NEG_INF ? TITA_NEG_INF : row_floor(a, row, c.log_floor, red);
  const SlicePartial* parts = a.partials + row * a.slices;
  Lse lr = lse_empty(), lf = lse_empty(), lz = lse_empty();
  float zmax = TITA_NEG_INF, zmin = INFINITY, T = TITA_NEG_INF;
  Best best = best_none();
  int overflow = 0, score_overflow = 0;
  for (int64_t i = threadIdx.x; i < a.slices; i += kThreads) {
    const SlicePartial p = gload(&parts[i]);
    lr = lse_merge(lr, p.r);
    lf = lse_merge(lf, p.f);
    lz = lse_merge(lz, p.z);
    zmax = fmaxf(zmax, p.zmax);
    zmin = fminf(zmin, p.zmin);
    T = fmaxf(T, p.theta);
    if (beats(p.best, best)) best = p.best;
    overflow |= p.n_cands < 0 ? 1 : 0;
    score_overflow |= p.overflow;
  }
  res.lse_r = lse_value(block_reduce(lr, LseOp{}, red));
  res.lse_f = lse_value(block_reduce(lf, LseOp{}, red));
  lz = block_reduce(lz, LseOp{}, red);
  zmax = block_reduce(zmax, MaxOp{}, red);
  res.zmax = zmax;
  res.zmin = block_reduce(zmin, MinOp{}, red);
  res.floor = floor;
  if (block_reduce(score_overflow, SumIntOp{}, red) > 0) {
    res.status = kStatusOverflow;
    return true;
  }
  if (zmax == TITA_NEG_INF) {
    res.status = kStatusNoFinite;
    return true;
  }
  // No cut, or a flat row (every filter keeps all of its finite ids): the slices' winners decide.
  if (no_cut(c) || res.zmin == zmax) {
    res.best = block_reduce(best, BestOp{}, red);
    res.log_norm = lse_value(lz);
    res.tau = no_cut(c) ? TITA_NEG_INF : zmax;
    return true;
  }
  if (binned_row(c, a)) return finish_binned(a, row, c, cands, n_cands, red, res);
  T = block_reduce(T, MaxOp{}, red);
  if (block_reduce(overflow, SumIntOp{}, red) > 0) return false;

  // Prefix sums of the slices' candidate counts (tiles of kThreads slices).
  __shared__ int warp_totals[kWarps];
  int carry = 0;
  for (int64_t t0 = 0; t0 < a.slices; t0 += kThreads) {
    const int64_t i = t0 + threadIdx.x;
    int tile = 0;
    const int before = block_exclusive_scan(i < a.slices ? gload(&parts[i].n_cands) : 0, warp_totals, tile);
    if (i < a.slices) prefix[i] = carry + before;
    carry += tile;
  }
  if (threadIdx.x == 0) {
    prefix[a.slices] = carry;
    *n_cands = 0;
  }
  __syncthreads();

  // Gather the candidates >= T. When more than kRowCands pass, a coarse histogram of them (taken
  // in the same read) gives a higher cut; a second read of the candidates keeps those above it,
  // and T becomes the lowest kept value (every id not kept is below it).
  __shared__ int coarse[kCoarseBins];
  for (int i = threadIdx.x; i < kCoarseBins; i += kThreads) coarse[i] = 0;
  __syncthreads();
  const int total = carry;
  const double lo = T != TITA_NEG_INF ? static_cast<double>(T) : static_cast<double>(res.zmin);
  const double scale = zmax > lo ? kCoarseBins / (static_cast<double>(zmax) - lo) : 0.0;
  auto coarse_bin = [&](float z) {
    const double x = (static_cast<double>(z) - lo) * scale;
    return !(x > 0.0) ? 0 : (x >= kCoarseBins ? kCoarseBins - 1 : static_cast<int>(x));
  };
  gather_candidates(a, row, prefix, total, T, 0, coarse_bin, cands, n_cands, coarse);
  int n = *n_cands;
  if (n > kRowCands) {
    __shared__ int cut_bin;
    __syncthreads();  // every thread has read *n_cands before it is reset
    if (threadIdx.x == 0) {  // the lowest bin whose suffix still fits
      int b = kCoarseBins, kept = 0;
      while (b > 0 && kept + coarse[b - 1] <= kRowCands) kept += coarse[--b];
      cut_bin = b;
      *n_cands = 0;
    }
    __syncthreads();
    if (cut_bin >= kCoarseBins) return false;  // the top bin alone overflows: the fallback
    gather_candidates(a, row, prefix, total, T, cut_bin, coarse_bin, cands, n_cands, nullptr);
    n = *n_cands;
    float m = INFINITY;
    for (int i = threadIdx.x; i < n; i += kThreads) m = fminf(m, cands[i].z);
    T = block_reduce(m, MinOp{}, red);
  }
  if (n > kRowCands) return false;
  const double total_hint = (c.top_k == 0 && c.top_p < 1.0f) ? top_p_total(parts, a.slices, zmax, red) : 0.0;
  if (n <= kSortMax) return finish_sorted(a, row, c, cands, n, zmax, T, total_hint, red, res);
  return filter_and_choose(a, row, c, SmemSource{cands, n}, n, zmax, T, total_hint, red, res);
}

// The single-block exact search over the whole row (several dozen passes over the logits).
__device__ __forceinline__ void finish_general(const KernelArgs& a, int64_t row, const RowConfig& c, ReduceSmem& red, RowResult& res) {
  const RowPtrs rp = row_ptrs(a.in, row);
  const int64_t vocab = a.in.vocab;
  float floor = TITA_NEG_INF;
  if (c.log_floor != TITA_NEG_INF) {
    float m = TITA_NEG_INF;
    for (int64_t id0 = static_cast<int64_t>(threadIdx.x) * kVec; id0 < vocab; id0 += kThreads * kVec) {
      float b[kVec];
      load8(rp.base, id0, vocab, b);
#pragma unroll
      for (int j = 0; j < kVec; ++j) m = fmaxf(m, b[j]);
    }
    floor = __fadd_rn(block_reduce(m, MaxOp{}, red), c.log_floor);
  }
  const RowSource src{rp, z_params(c, floor), vocab};
  Lse lr = lse_empty(), lf = lse_empty();
  float zmax = TITA_NEG_INF;
  int n_finite = 0;
  bool over = false;
  for (int64_t id0 = static_cast<int64_t>(threadIdx.x) * kVec; id0 < vocab; id0 += kThreads * kVec) {
    float b[kVec], r[kVec], f[kVec];
    load_chunk(rp, id0, vocab, b, r, f);
    lr = lse_merge(lr, lse_of<kVec>(r));
    lf = lse_merge(lf, lse_of<kVec>(f));
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const float z = id0 + j < vocab ? guided_z(src.zp, b[j], r[j], f[j], over) : TITA_NEG_INF;
      zmax = fmaxf(zmax, z);
      n_finite += z != TITA_NEG_INF ? 1 : 0;
    }
  }
  res = RowResult{};
  res.floor = floor;
  res.lse_r = lse_value(block_reduce(lr, LseOp{}, red));
  res.lse_f = lse_value(block_reduce(lf, LseOp{}, red));
  zmax = block_reduce(zmax, MaxOp{}, red);
  n_finite = block_reduce(n_finite, SumIntOp{}, red);
  if (__syncthreads_or(over)) {
    res.status = kStatusOverflow;
    return;
  }
  if (zmax == TITA_NEG_INF) {
    res.status = kStatusNoFinite;
    return;
  }
  filter_and_choose(a, row, c, src, n_finite, zmax, TITA_NEG_INF, 0.0, red, res);
}

// Thread 0 writes a decided row: guided_sample's outputs, or guided_logprobs' row outcome.
__device__ __forceinline__ void write_row(const KernelArgs& a, int64_t row, const RowResult& res) {
  if (threadIdx.x != 0) return;
  const bool ok = res.status == kStatusOk && (!a.choose || res.best.id >= 0);
  const int32_t status = ok ? kStatusOk : (res.status == kStatusOk ? kStatusNoFinite : res.status);
  if (!a.choose) {
    gstore(&a.outcomes[row], RowOutcome{res.tau, res.floor, res.log_norm, status});
    return;
  }
  gstore(&a.status[row], status);
  if (ok) {
    const int64_t id = res.best.id;
    const RowPtrs rp = row_ptrs(a.in, row);
    const float r = load_one(rp.reward, id);
    const float f = load_one(rp.ref.p != nullptr ? rp.ref : rp.base, id);
    gstore(&a.tokens[row], id);
    gstore(&a.logprob[row], res.best.z - res.log_norm);
    gstore(&a.token_reward[row], (r - res.lse_r) - (f - res.lse_f));
  } else {
    gstore(&a.tokens[row], int64_t{-1});
    gstore(&a.logprob[row], static_cast<float>(NAN));
    gstore(&a.token_reward[row], static_cast<float>(NAN));
  }
}

// Hands a row the candidates could not decide to the bounded fallback (guided_fallback.cuh):
// min-p alone has a known threshold (one race pass); top-k / top-p need the histogram first; a
// binned row with a large cut bin (res.refine) histograms that bin's handed-over elements.
__device__ __forceinline__ void start_fallback(const KernelArgs& a, int64_t row, const RowConfig& c,
                                               const RowResult& res) {
  FallbackRow fb{};
  fb.zmax = res.zmax;
  fb.zmin = res.zmin;
  fb.tau_min = c.log_min_p == TITA_NEG_INF ? TITA_NEG_INF : __fadd_rn(res.zmax, c.log_min_p);
  fb.b_lo = fb.b_hi = -1;
  fb.lse_r = res.lse_r;
  fb.lse_f = res.lse_f;
  fb.floor = res.floor;
  const double width = static_cast<double>(res.zmax) - static_cast<double>(res.zmin);
  fb.scale = width > 0.0 ? kBins / width : 0.0;
  fb.active = (c.top_k == 0 && c.top_p >= 1.0f) ? kFallbackThreshold : kFallbackHistogram;
  if (res.refine.on) {  // kCutSubBins bins over the cut bin's values, kCutPerWorker elements per block
    fb.active = kFallbackCutBin;
    fb.zmin = res.refine.lo;
    fb.scale = (kCutSubBins - 1) / (static_cast<double>(res.refine.hi) - static_cast<double>(res.refine.lo));
    fb.cut_bin = res.refine.bin;
    fb.mass_base = res.refine.mass_above;
    fb.win_base = res.refine.win_above;
    fb.total = res.refine.total;
    const int64_t want = (res.refine.n_bin + kCutPerWorker - 1) / kCutPerWorker;
    const int64_t most = (a.slices + kHistSlices - 1) / kHistSlices;  // the histogram kernel's blocks per row
    fb.workers = static_cast<int32_t>(want < most ? want : most);
  }
  if (threadIdx.x == 0) {
    gstore(&a.tickets[2 * row], int32_t{0});
    gstore(&a.tickets[2 * row + 1], int32_t{0});
  }
  if (fb.active == kFallbackHistogram || fb.active == kFallbackCutBin) {
    for (int i = threadIdx.x; i < kBins; i += kThreads) {
      gstore(&a.hist_count[row * kBins + i], 0);
      gstore(&a.hist_mass[row * kBins + i], 0.0);
      gstore(&a.hist_lo[row * kBins + i], 0xFFFFFFFFu);
      gstore(&a.hist_hi[row * kBins + i], 0u);
    }
  }
  if (threadIdx.x == 0) gstore(&a.fallback[row], fb);
}

__global__ void __launch_bounds__(kThreads, 1) guided_finish_kernel(KernelArgs a) {
  __shared__ Cand cands[kRowCands];
  __shared__ int prefix[kMaxSlices + 1];
  __shared__ int n_cands;
  __shared__ ReduceSmem red;
  for (int64_t row = blockIdx.x; row < a.in.batch; row += gridDim.x) {
    const RowConfig c = row_config(a, row);
    RowResult res;
    bool deferred = false;
    if (!c.valid) {
      res.status = kStatusBadParam;
      TITA_TRACE_PATH(row, kPathStatus);
    } else if (!fast_path(c, a)) {
      finish_general(a, row, c, red, res);
      TITA_TRACE_PATH(row, kPathGeneral);
    } else if (finish_fast(a, row, c, cands, prefix, &n_cands, red, res)) {
      TITA_TRACE_PATH(row, res.status != kStatusOk ? kPathStatus : (no_cut(c) ? kPathDense : res.path));
    } else if (a.fallback == nullptr) {
      finish_general(a, row, c, red, res);
      TITA_TRACE_PATH(row, kPathGeneral);
    } else {
      start_fallback(a, row, c, res);
      deferred = true;
    }
    if (a.fallback != nullptr && !deferred && threadIdx.x == 0) gstore(&a.fallback[row].active, int32_t{0});
    if (!deferred) write_row(a, row, res);
    __syncthreads();  // shared state is reused by the next row of this block
  }
}

// guided_logprobs: out[row, id] = z - log_norm where allowed, -inf elsewhere and beyond the
// shared range; all NaN for rows whose status is not ok. Blocks cover (width slice, row).
template <int kChunks>
__global__ void __launch_bounds__(kThreads) write_logprobs_kernel(KernelArgs a) {
  const int64_t v0 = static_cast<int64_t>(blockIdx.x) * a.slice_len;
  for (int64_t row = blockIdx.y; row < a.in.batch; row += gridDim.y) {
    const RowOutcome o = gload(&a.outcomes[row]);
    float* out = a.out + row * a.out_width;
    const bool ok = o.status == kStatusOk;
    ZParams zp{};
    RowPtrs rp{};
    if (ok) {
      zp = z_params(row_config(a, row), o.floor);
      rp = row_ptrs(a.in, row);
    }
    const bool vec = ok && vector_rows(rp);
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int64_t id0 = v0 + (static_cast<int64_t>(k) * kThreads + threadIdx.x) * kVec;
      float v[kVec];
      if (!ok) {  // uniform over the block
#pragma unroll
        for (int j = 0; j < kVec; ++j) v[j] = NAN;
      } else {
        float b[kVec], r[kVec], f[kVec];
        read_chunk(rp, vec, id0, a.in.vocab, b, r, f);  // every lane (-inf beyond the vocabulary)
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          const float z = guided_z(zp, b[j], r[j], f[j]);
          v[j] = (id0 + j < a.in.vocab && z != TITA_NEG_INF && z >= o.tau) ? __fsub_rn(z, o.log_norm) : TITA_NEG_INF;
        }
      }
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        if (id0 + j < a.out_width) gstore(&out[id0 + j], v[j]);
      }
    }
  }
}

}  // namespace tita::cuda
