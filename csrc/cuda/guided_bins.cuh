// Top-p rows without top-k or min-p, decided in the scan's one read: per-slice bin tables on an
// absolute grid, merged by the finish.
//
// Bins are kBinsPerNat-th of a nat of z, anchored at 0: bin(z) = floor(z * kBinsPerNat), the same
// grid in every slice, so the slices' tables add up bin by bin. A scan block holds its slice's z in
// registers; once it knows the slice's maximum it fills kSliceBins bins down from the slice's top
// bin (shared memory): count, fp64 mass exp(z - slice max) (the reference's top-p terms up to one
// rounding of the rescale), min and max z, and the race winner (max key, lowest id). It stores
// them as suffix sums from the top (BinEntry, 32 bytes) and hands over its elements of the top
// bins, bin by bin, while they fit kBinSlots, sorted by bin (the finish loads only the cut bin's).
//
// The finish (finish_binned) bisects the row's cumulative mass from the top (one fp64 per slice
// and probe) for the bin c of the top-p cut: cum(c) >= top_p x total > cum(c + 1), the total
// from the slices' fp64 sums over the whole row. Everything above bin c is kept: its mass and its
// winner are the slices' suffix entries at c + 1. Bin c:
//   * one value in every slice (min == max, ties): the reference keeps every tie of the cut
//     value, so the whole bin is kept: tau = that value, decided by the entries alone;
//   * otherwise its elements, handed over by every slice (else the fallback), are gathered
//     (kRowCands at most), sorted, and the cut found in sorted order as the reference does;
//   * more than kRowCands of them (a nucleus of a third of a 256000-id row): the fallback's two
//     kernels resolve the bin from the handed-over elements (kFallbackCutBin, guided_fallback.cuh):
//     a histogram of kBins sub-bins over the bin's values, the sub-bin of the cut, then a gather
//     of that sub-bin (and the race over the elements above it); the row is not re-read.
// A cut bin below a slice's table (more than kSliceBins / kBinsPerNat nats under that slice's top
// while the slice has elements there) or not handed over goes to the bounded fallback.
#pragma once

#include <climits>

#include "guided_finish.cuh"

namespace tita::cuda {

constexpr double kBinsPerNat = 4.0;  // kSliceBins (guided_common.cuh) entries: 16 nats below a slice's top
constexpr double kMaxBinnedZ = 1e15; // |slice max| above this: no table (the bin index would not fit)

// Top-p rows the bin tables decide (top-k and min-p rows keep the candidates' threshold).
__device__ __forceinline__ bool binned_row(const RowConfig& c, const KernelArgs& a) {
  return a.bins != nullptr && c.top_k == 0 && c.top_p < 1.0f && c.log_min_p == TITA_NEG_INF;
}

// Candidates a slice of binned rows may hand over (bins from the top while they fit): half the
// slice (the launch reserves that many slots, guided_plan.cuh), so that a nucleus of a third of
// the row and its cut bin are handed over (8-byte elements for at most half the ids: at most the
// bytes of two bf16 rows stored).
__device__ __forceinline__ int bin_slots(const KernelArgs& a) {
  const int64_t share = a.slice_len / 2;
  return static_cast<int>(share < a.cand_slots ? share : a.cand_slots);
}

__device__ __forceinline__ double abs_bin(float z) { return floor(static_cast<double>(z) * kBinsPerNat); }
__device__ __forceinline__ float bin_floor(double bin) { return static_cast<float>(bin / kBinsPerNat); }

// A race entry as one word: larger = better (higher key, then lower id); 0: none.
__device__ __forceinline__ unsigned long long pack_best(float key, int64_t id) {
  const float k = key == 0.0f ? 0.0f : key;  // -0 and +0 tie (then the lower id wins), as in beats()
  return (static_cast<unsigned long long>(okey(k)) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(id));
}
__device__ __forceinline__ Best unpack_best(unsigned long long w) {
  if (w == 0ull) return best_none();
  const float key = from_okey(static_cast<uint32_t>(w >> 32));
  return Best{key, key, static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(w))};  // z: see winner_z
}

// A binned slice's hand-over in its cand_slots x 8 bytes: the z, then the ids (the passes over
// a large cut bin, guided_fallback.cuh, read the z alone and an id only where they need it).
struct Handover {
  float* z;
  int32_t* id;
};
__device__ __forceinline__ Handover handover(const KernelArgs& a, int64_t row, int64_t s) {
  float* z = reinterpret_cast<float*>(a.cands + (row * a.slices + s) * a.cand_slots);
  return Handover{z, reinterpret_cast<int32_t*>(z + a.cand_slots)};
}

// The slice's shared-memory table while the scan fills it.
struct BinSmem {
  double mass[kSliceBins];
  int count[kSliceBins];
  uint32_t lo[kSliceBins], hi[kSliceBins];
  unsigned long long win[kSliceBins];
  int fill[kSliceBins];  // candidates written per bin
  int start[kSliceBins]; // first candidate slot of the bin
  int handed;            // entries handed over (a prefix from the top)
  int entries;           // entries stored
};

// Scan side, every thread of the block: table and bin-sorted hand-over of one (slice, row).
// z: this thread's kPer scores (the scan's id layout), zmax / zmin: the slice's. Fills part's
// n_cands (handed over), theta (every element not handed over is below it) and bins.
template <int kPer, int kChunks>
__device__ __forceinline__ void scan_bins(const KernelArgs& a, int64_t row, int64_t s, const RowConfig& c,
                                          const float* z, float zmax, float zmin, BinSmem& sm,
                                          SlicePartial& part) {
  const int64_t v0 = s * a.slice_len;
  if (!(fabs(static_cast<double>(zmax)) < kMaxBinnedZ)) {  // no finite z, or too large for the grid
    part.bins = zmax == TITA_NEG_INF ? 0 : -1;
    part.n_cands = 0;
    part.theta = zmax == TITA_NEG_INF ? TITA_NEG_INF : INFINITY;
    return;
  }
  const double top = abs_bin(zmax);
  for (int i = threadIdx.x; i < kSliceBins; i += kThreads) {
    sm.mass[i] = 0.0;
    sm.count[i] = 0;
    sm.lo[i] = 0xFFFFFFFFu;
    sm.hi[i] = 0u;
    sm.win[i] = 0ull;
    sm.fill[i] = 0;
  }
  __syncthreads();
  const bool race = a.choose && !c.greedy;
  const NoiseAddress addr = race ? noise_address(a.noise, row) : NoiseAddress{0, 0, 0};
  auto entry_of = [&](float zi) {  // table entry of a finite z, or -1 below the table
    const double i = top - abs_bin(zi);
    return i < kSliceBins ? static_cast<int>(i) : -1;
  };
  each_group<kChunks>(v0, z, [&](int64_t g0, const float* zs) {
    int e[4];
    bool any = false;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      e[j] = zs[j] == TITA_NEG_INF ? -1 : entry_of(zs[j]);
      any = any || e[j] >= 0;
    }
    if (!any) return;
    Philox4<uint32_t> w{};
    if (race) w = philox_group(addr, g0);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (e[j] < 0) continue;
      const float key = race ? __fadd_rn(zs[j], gumbel_from_bits<float>(w.x[j])) : zs[j];
      atomicAdd(&sm.count[e[j]], 1);
      atomicAdd(&sm.mass[e[j]], exp(static_cast<double>(zs[j]) - static_cast<double>(zmax)));
      atomicMin(&sm.lo[e[j]], okey(zs[j]));
      atomicMax(&sm.hi[e[j]], okey(zs[j]));
      atomicMax(&sm.win[e[j]], pack_best(key, g0 + j));
    }
  });
  __syncthreads();
  // Suffix sums from the top (64 entries: one thread, a few hundred cycles), the entries to
  // store (down to the slice's lowest bin) and the bins handed over.
  if (threadIdx.x == 0) {
    const double lowest = top - abs_bin(zmin);
    sm.entries = lowest < kSliceBins ? static_cast<int>(lowest) + 1 : kSliceBins;
    const int slots = bin_slots(a);
    double m = 0.0;
    int n = 0, handed = 0;
    unsigned long long w = 0ull;
    for (int i = 0; i < sm.entries; ++i) {
      sm.start[i] = n;
      m += sm.mass[i];
      n += sm.count[i];
      w = sm.win[i] > w ? sm.win[i] : w;
      sm.mass[i] = m;
      sm.win[i] = w;
      sm.count[i] = n;
      if (n <= slots && handed == i) handed = i + 1;
    }
    sm.handed = handed;
  }
  __syncthreads();
  const int handed = sm.handed, entries = sm.entries;
  // Hand over the elements of the top `handed` bins, grouped by bin.
  const Handover out = handover(a, row, s);
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    if (z[i] == TITA_NEG_INF) continue;
    const int e = entry_of(z[i]);
    if (e < 0 || e >= handed) continue;
    const int k = i / kVec, j = i % kVec;
    const int64_t id = v0 + (static_cast<int64_t>(k) * kThreads + threadIdx.x) * kVec + j;
    const int at = sm.start[e] + atomicAdd(&sm.fill[e], 1);
    gstore(&out.z[at], z[i]);
    gstore(&out.id[at], static_cast<int32_t>(id));
  }
  BinEntry* table = a.bins + (row * a.slices + s) * kSliceBins;
  for (int i = threadIdx.x; i < entries; i += kThreads) {
    gstore(&table[i], BinEntry{sm.mass[i], sm.count[i], sm.lo[i], sm.hi[i], 0u, sm.win[i]});
  }
  const bool below = top - abs_bin(zmin) >= kSliceBins;  // elements under the table
  part.bins = entries;
  part.n_cands = handed > 0 ? sm.count[handed - 1] : 0;
  // Every element not handed over lies below the lowest handed bin (or below the top bin).
  part.theta = part.n_cands < sm.count[entries - 1] || below ? bin_floor(top - handed + 1) : TITA_NEG_INF;
  __syncthreads();  // sm is refilled by the next row of this block
}

// Finish side. What one slice's table says about bin b (an absolute bin index).
struct SliceAtBin {
  double above, through;        // mass (relative to the slice max) of bins > b, of bins >= b
  int n_above, n_through;       // counts of the same
  uint32_t lo, hi;              // min / max key of bin b (lo > hi: empty)
  unsigned long long win_above, win_through;
  bool handed;                  // bin b's elements were handed over
};

// The slice's table at bin b (b at or above the row's covered floor, see finish_binned).
__device__ __forceinline__ SliceAtBin slice_at_bin(const KernelArgs& a, int64_t row, int64_t s, const SlicePartial& p,
                                                   double b, bool mass_only) {
  SliceAtBin r{0.0, 0.0, 0, 0, 0xFFFFFFFFu, 0u, 0ull, 0ull, false};
  if (p.zmax == TITA_NEG_INF) return r;
  const double top = abs_bin(p.zmax);
  if (b > top) return r;
  const BinEntry* t = a.bins + (row * a.slices + s) * kSliceBins;
  const double di = top - b;
  const bool inside = di < p.bins;
  const int i = inside ? static_cast<int>(di) : p.bins - 1;  // below the table: the slice has nothing there
  if (mass_only) {
    r.through = gload(&t[i].cum_mass);
    return r;
  }
  const BinEntry e = gload(&t[i]);
  r.through = e.cum_mass;
  r.n_through = e.cum_count;
  r.win_through = e.win;
  if (!inside) {
    r.above = r.through;
    r.n_above = r.n_through;
    r.win_above = r.win_through;
    r.handed = true;
    return r;
  }
  r.lo = e.lo;
  r.hi = e.hi;
  r.handed = e.cum_count <= p.n_cands;
  if (i > 0) {
    const BinEntry u = gload(&t[i - 1]);
    r.above = u.cum_mass;
    r.n_above = u.cum_count;
    r.win_above = u.win;
  }
  return r;
}

// The row's mass (relative to zmax) in bins >= b, summed over the slices in a fixed order.
__device__ __forceinline__ double row_mass_through(const KernelArgs& a, int64_t row, double b, float zmax,
                                                   ReduceSmem& red) {
  double m = 0.0;
  for (int64_t s = threadIdx.x; s < a.slices; s += kThreads) {
    const SlicePartial* p = a.partials + row * a.slices + s;
    SlicePartial q{};
    q.zmax = gload(&p->zmax);
    if (q.zmax == TITA_NEG_INF) continue;
    q.bins = gload(&p->bins);
    m += slice_at_bin(a, row, s, q, b, true).through * exp(static_cast<double>(q.zmax) - static_cast<double>(zmax));
  }
  return block_reduce(m, SumDoubleOp{}, red);
}

struct DMaxOp {
  __device__ double operator()(double x, double y) const { return fmax(x, y); }
};
struct UllMaxOp {
  __device__ unsigned long long operator()(unsigned long long x, unsigned long long y) const { return x > y ? x : y; }
};
struct UMinOp {
  __device__ uint32_t operator()(uint32_t x, uint32_t y) const { return x < y ? x : y; }
};
struct UMaxOp {
  __device__ uint32_t operator()(uint32_t x, uint32_t y) const { return x > y ? x : y; }
};

// z of a winner known by id only (the table's race words): recomputed from the logits.
__device__ __forceinline__ float winner_z(const KernelArgs& a, int64_t row, const RowConfig& c, float floor,
                                          int64_t id) {
  const RowPtrs rp = row_ptrs(a.in, row);
  const float b = load_one(rp.base, id), r = load_one(rp.reward, id);
  const float f = rp.ref.p != nullptr ? load_one(rp.ref, id) : b;
  return guided_z(z_params(c, floor), b, r, f);
}

// The finish of a binned row (zmax finite, not flat). False: the tables cannot decide it (a slice
// without a table, a cut bin below a slice's table, a cut bin not handed over or too large).
__device__ __forceinline__ bool finish_binned(const KernelArgs& a, int64_t row, const RowConfig& c, Cand* cands,
                                              int* n_cands, ReduceSmem& red, RowResult& res) {
  __shared__ double warp_dbl[kWarps];
  res.path = kPathBins;
  const float zmax = res.zmax;
  const SlicePartial* parts = a.partials + row * a.slices;
  // The lowest bin every slice's table covers (a slice with elements below its table bounds it).
  double floor_bin = abs_bin(res.zmin), no_table = 0.0;
  for (int64_t s = threadIdx.x; s < a.slices; s += kThreads) {
    const float m = gload(&parts[s].zmax);
    if (m == TITA_NEG_INF) continue;
    const int bins = gload(&parts[s].bins);
    if (bins <= 0) {
      no_table = 1.0;
      continue;
    }
    const double bottom = abs_bin(m) - (bins - 1);
    if (abs_bin(gload(&parts[s].zmin)) < bottom) floor_bin = fmax(floor_bin, bottom);
  }
  if (block_reduce(no_table, SumDoubleOp{}, red) > 0.0) return false;
  floor_bin = block_reduce(floor_bin, DMaxOp{}, red);
  const double total = top_p_total(parts, a.slices, zmax, red);
  const double target = static_cast<double>(c.top_p) * total;
  // Bisection for the cut bin: cum(lo) >= target > cum(hi).
  double lo = floor_bin, hi = abs_bin(zmax) + 1.0;
  if (!(row_mass_through(a, row, lo, zmax, red) >= target)) return false;  // the cut lies below the tables
  while (hi - lo > 1.0) {
    const double mid = floor((lo + hi) * 0.5);
    if (row_mass_through(a, row, mid, zmax, red) >= target) lo = mid; else hi = mid;
  }
  const double cut = lo;
  // The cut bin in every slice.
  double above = 0.0, through = 0.0;
  int n_bin = 0, not_handed = 0;
  uint32_t klo = 0xFFFFFFFFu, khi = 0u;
  unsigned long long win_above = 0ull, win_through = 0ull;
  for (int64_t s = threadIdx.x; s < a.slices; s += kThreads) {
    const SlicePartial p = gload(&parts[s]);
    const SliceAtBin t = slice_at_bin(a, row, s, p, cut, false);
    const double scale = p.zmax == TITA_NEG_INF ? 0.0 : exp(static_cast<double>(p.zmax) - static_cast<double>(zmax));
    above += t.above * scale;
    through += t.through * scale;
    const int n = t.n_through - t.n_above;
    n_bin += n;
    not_handed += (n > 0 && !t.handed) ? 1 : 0;
    klo = t.lo < klo ? t.lo : klo;
    khi = t.hi > khi ? t.hi : khi;
    win_above = t.win_above > win_above ? t.win_above : win_above;
    win_through = t.win_through > win_through ? t.win_through : win_through;
  }
  above = block_reduce(above, SumDoubleOp{}, red);
  through = block_reduce(through, SumDoubleOp{}, red);
  n_bin = block_reduce(n_bin, SumIntOp{}, red);
  not_handed = block_reduce(not_handed, SumIntOp{}, red);
  klo = block_reduce(klo, UMinOp{}, red);
  khi = block_reduce(khi, UMaxOp{}, red);
  win_above = block_reduce(win_above, UllMaxOp{}, red);
  win_through = block_reduce(win_through, UllMaxOp{}, red);
  if (n_bin <= 0) return false;  // cannot happen (cum(cut) > cum(cut + 1)); kept for safety
  if (klo == khi) {  // one value in the cut bin: all of its ties are kept
    res.tau = from_okey(klo);
    res.log_norm = zmax + static_cast<float>(log(through));
    res.best = unpack_best(win_through);
  } else {
    if (not_handed > 0) return false;
    if (n_bin > kRowCands) {  // the fallback's kernels split the bin (start_fallback: kFallbackCutBin)
      res.refine = RefineBin{true, cut, above, total, win_above, n_bin, from_okey(klo), from_okey(khi)};
      return false;
    }
    // Gather the cut bin's elements (each slice's are contiguous: the hand-over is bin-sorted).
    if (threadIdx.x == 0) *n_cands = 0;
    __syncthreads();
    for (int64_t s = threadIdx.x; s < a.slices; s += kThreads) {
      const SlicePartial p = gload(&parts[s]);
      const SliceAtBin t = slice_at_bin(a, row, s, p, cut, false);
      const int n = t.n_through - t.n_above;
      if (n <= 0) continue;
      const Handover from = handover(a, row, s);
      const int at = atomicAdd(n_cands, n);
      for (int i = 0; i < n; ++i) cands[at + i] = Cand{gload(&from.z[t.n_above + i]), gload(&from.id[t.n_above + i])};
    }
    __syncthreads();
    bitonic_sort(cands, n_bin);
    const int at = cut_in_sorted(cands, n_bin, TITA_NEG_INF, zmax, above, c.top_p, total, warp_dbl, red);
    if (at == INT_MAX) return false;  // rounding put the cut outside the bin: the fallback decides
    const float tau = cands[at].z;
    double kept = 0.0;
    Best best = unpack_best(win_above);
    const NoiseAddress addr = a.choose && !c.greedy ? noise_address(a.noise, row) : NoiseAddress{0, 0, 0};
    for (int i = threadIdx.x; i < n_bin; i += kThreads) {
      if (cands[i].z < tau) continue;
      kept += exp(static_cast<double>(__fsub_rn(cands[i].z, zmax)));
      if (a.choose) race_enter(best, cands[i].z, cands[i].id, c.greedy, addr);
    }
    kept = block_reduce(kept, SumDoubleOp{}, red);
    res.best = block_reduce(best, BestOp{}, red);
    res.tau = tau;
    res.log_norm = zmax + static_cast<float>(log(above + kept));
  }
  if (a.choose && res.best.id >= 0) res.best.z = winner_z(a, row, c, res.floor, res.best.id);
  return true;
}

}  // namespace tita::cuda
