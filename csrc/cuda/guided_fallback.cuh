// The bounded fallback: rows the candidates could not decide (a nucleus, min-p window or top-k
// reaching below the largest slice threshold; ties beyond a slice's slots). At most two more
// reads of the row, spread over its slices like the scan:
//   fallback_hist    (kHistSlices slices, row) blocks, histogram rows only: kBins bins linear in z over
//                    [zmin, zmax]: counts, fp64 masses exp(z - zmax) (the reference's top-p terms),
//                    min / max key per bin; shared-memory histograms, then global atomics;
//   select_row       the last histogram block of the row to arrive (atomic ticket): the bin of the
//                    k-th largest and the bin of the top-p cut (a range of bins when top-k leaves
//                    the top-p total uncertain inside its bin);
//   fallback_gather  (slice, row) blocks: elements above the range are allowed (they enter the race
//                    and the normaliser at once); elements inside it are gathered (<= kGather);
//   finish_row       the last gather block of the row to arrive: the exact k-th largest and top-p
//                    cut over the sorted gathered elements, their race, merged with the slices'.
// Two launches, whose blocks of rows the finish decided exit at once.
// Rows whose threshold is known without a histogram (min-p alone; a tied cut bin) skip the first
// pass. A cut range of more than kGather distinct values takes finish_general (RowPath::kGeneral).
// kFallbackCutBin rows (top-p alone, a bin-table cut bin of more than kRowCands elements,
// guided_bins.cuh) take both passes over the cut bin's handed-over elements instead of the row:
// the histogram's bins split the cut bin's value range, the bins above it are the tables' (mass
// and race winner per slice), and the row is read once in all (RowPath::kBinsRefined).
#pragma once

#include <climits>

#include "guided_bins.cuh"

namespace tita::cuda {

__device__ __forceinline__ int bin_of(const FallbackRow& fb, float z) {
  const double x = (static_cast<double>(z) - static_cast<double>(fb.zmin)) * fb.scale;
  if (!(x > 0.0)) return 0;
  return x >= kBins ? kBins - 1 : static_cast<int>(x);
}

// f(z, id) for every finite z of this block's slice of the row (the scan's id layout).
template <int kChunks, class F>
__device__ __forceinline__ void each_slice_z(const KernelArgs& a, int64_t row, int64_t slice, const ZParams& zp, F f) {
  const RowPtrs rp = row_ptrs(a.in, row);
  const bool vec = vector_rows(rp);
  const int64_t v0 = slice * a.slice_len;
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int64_t id0 = v0 + (static_cast<int64_t>(k) * kThreads + threadIdx.x) * kVec;
    float b[kVec], r[kVec], fr[kVec];
    read_chunk(rp, vec, id0, a.in.vocab, b, r, fr);  // every lane (-inf beyond the vocabulary)
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const float z = guided_z(zp, b[j], r[j], fr[j]);
      if (z != TITA_NEG_INF) f(z, id0 + j);
    }
  }
}

// [first, end) of slice s's handed-over elements in the cut bin (the hand-over is sorted by bin;
// finish_binned checked that every slice handed its share over): its table's suffix counts.
__device__ __forceinline__ int2 cut_range(const KernelArgs& a, int64_t row, int64_t s, double cut) {
  const SlicePartial* p = a.partials + row * a.slices + s;
  const float zmax = gload(&p->zmax);
  if (zmax == TITA_NEG_INF || cut > abs_bin(zmax)) return int2{0, 0};
  const double i = abs_bin(zmax) - cut;
  if (!(i < gload(&p->bins))) return int2{0, 0};  // below the slice's table: it has nothing there
  const BinEntry* t = a.bins + (row * a.slices + s) * kSliceBins + static_cast<int>(i);
  return int2{i > 0.0 ? gload(&t[-1].cum_count) : 0, gload(&t->cum_count)};
}

// f(z, id_of) for the cut bin's handed-over elements of this block's share of the slices
// (kFallbackCutBin rows; block w < fb.workers); id_of() loads the element's id.
template <class F>
__device__ __forceinline__ void each_cut_z(const KernelArgs& a, int64_t row, const FallbackRow& fb, F f) {
  __shared__ int2 range;
  const int64_t per = (a.slices + fb.workers - 1) / fb.workers;
  const int64_t s0 = blockIdx.x * per, s1 = s0 + per < a.slices ? s0 + per : a.slices;
  for (int64_t s = s0; s < s1; ++s) {
    if (threadIdx.x == 0) range = cut_range(a, row, s, fb.cut_bin);
    __syncthreads();
    const int2 r = range;
    __syncthreads();  // range is overwritten for the next slice
    const Handover h = handover(a, row, s);
    for (int i = r.x + static_cast<int>(threadIdx.x); i < r.y; i += kThreads) {
      const int32_t* id = h.id + i;
      f(gload(&h.z[i]), [id] { return static_cast<int64_t>(gload(id)); });
    }
  }
}

// The row's fallback state, loaded once per block (thread 0) and shared; active = kFallbackNone
// when this block has nothing to do for the row (decided rows, cut-bin blocks beyond the workers:
// their state is not loaded past the word that says so).
__device__ __forceinline__ FallbackRow load_fallback(const KernelArgs& a, int64_t row, FallbackRow& shared) {
  if (threadIdx.x == 0) {
    const FallbackRow* g = &a.fallback[row];
    const int32_t active = gload(&g->active);
    const bool idle = active == kFallbackNone || (active == kFallbackCutBin && !(blockIdx.x < gload(&g->workers)));
    if (idle) {
      shared.active = kFallbackNone;
    } else {
      shared = gload(g);
    }
  }
  __syncthreads();
  const FallbackRow fb = shared;
  __syncthreads();  // shared is overwritten by the next row
  return fb;
}

// True in the last of `blocks` blocks to reach this point for the ticket's row: its writes and
// every earlier block's are visible to it (fences on both sides of the ticket).
__device__ __forceinline__ bool last_to_arrive(int32_t* ticket, unsigned blocks) {
  __shared__ int last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = gatomic_add(ticket, 1) == static_cast<int32_t>(blocks) - 1;
  __syncthreads();
  __threadfence();
  return last != 0;
}

// Thread t holds kBinsPer consecutive bins from the top: order index i = t * kBinsPer + q is bin
// kBins - 1 - i. first_reaching: the smallest order index whose inclusive sum reaches `need`.
constexpr int kBinsPer = kBins / kThreads;
static_assert(kBins % kThreads == 0, "bins per thread");

template <typename T>
__device__ __forceinline__ int first_reaching(const T* v, T before, T need, const int* cnt, ReduceSmem& red) {
  int found = INT_MAX;
#pragma unroll
  for (int q = 0; q < kBinsPer; ++q) {
    before += v[q];
    if (cnt[q] > 0 && before >= need && found == INT_MAX) found = threadIdx.x * kBinsPer + q;
  }
  return block_reduce(found, MinIntOp{}, red);
}

// Run by the last histogram block of a row to arrive: the bins of the cut, from the whole row's
// histogram (read past L1: other blocks wrote it).
__device__ __forceinline__ void select_row(const KernelArgs& a, int64_t row, FallbackRow fb) {
  __shared__ ReduceSmem red;
  __shared__ int warp_int[kWarps];
  __shared__ double warp_dbl[kWarps];
  {
    const RowConfig c = row_config(a, row);
    int cnt[kBinsPer];
    double ms[kBinsPer];
    int my_n = 0, last = -1;
    double my_m = 0.0;
#pragma unroll
    for (int q = 0; q < kBinsPer; ++q) {
      const int64_t bin = row * kBins + (kBins - 1 - (threadIdx.x * kBinsPer + q));
      cnt[q] = gload_l2(&a.hist_count[bin]);
      ms[q] = cnt[q] > 0 ? gload_l2(&a.hist_mass[bin]) : 0.0;
      my_n += cnt[q];
      my_m += ms[q];
      if (cnt[q] > 0) last = threadIdx.x * kBinsPer + q;
    }
    int n_all = 0;
    double m_all = 0.0;
    const int n_before = block_exclusive_scan(my_n, warp_int, n_all);
    const double m_before = block_exclusive_scan(my_m, warp_dbl, m_all);
    const int i_last = -block_reduce(-last, MinIntOp{}, red);  // the lowest non-empty bin
    // top-k: the bin of the k-th largest (k < finite count; otherwise top-k keeps everything).
    int ik = i_last;
    fb.k_active = c.top_k > 0 && c.top_k <= n_all ? 1 : 0;
    if (fb.k_active) ik = first_reaching<int>(cnt, n_before, static_cast<int>(c.top_k), cnt, red);
    // Mass and count above order index i, and mass of the bin i (from its owner).
    auto above = [&](int i, double& m, int& n, double& own) {
      double mm = 0.0, oo = 0.0;
      int nn = 0;
      if (static_cast<int>(threadIdx.x) == i / kBinsPer) {
        mm = m_before;
        nn = n_before;
        for (int q = 0; q < i % kBinsPer; ++q) mm += ms[q], nn += cnt[q];
        oo = ms[i % kBinsPer];
      }
      m = block_reduce(mm, SumDoubleOp{}, red);
      n = block_reduce(nn, SumIntOp{}, red);
      own = block_reduce(oo, SumDoubleOp{}, red);
    };
    int i_top = ik, i_bot = ik;
    if (c.top_p < 1.0f) {
      double m_k = 0.0, own_k = 0.0;
      int n_k = 0;
      above(ik, m_k, n_k, own_k);
      // The top-p total: the whole row, or (top-k) the mass >= the k-th largest, known up to its
      // bin; a cut-bin row's from the finish (its histogram holds the cut bin only, the bins above
      // it add mass_base).
      const bool use_k = fb.k_active != 0;
      const double row_total = fb.active == kFallbackCutBin ? fb.total : m_all;
      const double lo_t = static_cast<double>(c.top_p) * (use_k ? m_k : row_total);
      const double hi_t = static_cast<double>(c.top_p) * (use_k ? m_k + own_k : row_total);
      const int i_hi = first_reaching<double>(ms, fb.mass_base + m_before, lo_t, cnt, red);
      const int i_lo = first_reaching<double>(ms, fb.mass_base + m_before, hi_t, cnt, red);
      i_top = i_hi < ik ? i_hi : ik;
      i_bot = use_k ? ik : (i_lo < ik ? i_lo : ik);
      fb.total = row_total;
    }
    double m_above = 0.0, own = 0.0;
    int n_above = 0;
    above(i_top, m_above, n_above, own);
    double m_end = 0.0;
    int n_end = 0;
    above(i_bot, m_end, n_end, own);
    const int n_range = n_end + gload_l2(&a.hist_count[row * kBins + kBins - 1 - i_bot]) - n_above;
    fb.b_hi = kBins - 1 - i_top;
    fb.b_lo = kBins - 1 - i_bot;
    fb.count_above = n_above;
    fb.mass_above = fb.mass_base + m_above;
    fb.n_gathered = 0;
    if (n_range > kGather) {
      const uint32_t klo = gload_l2(&a.hist_lo[row * kBins + fb.b_lo]), khi = gload_l2(&a.hist_hi[row * kBins + fb.b_lo]);
      if (fb.b_lo == fb.b_hi && klo == khi) {  // one value: the cut is that value, ties all kept
        fb.tau_min = fmaxf(fb.tau_min, from_okey(klo));
        fb.b_lo = fb.b_hi = -1;
        if (fb.active != kFallbackCutBin) fb.active = kFallbackThreshold;  // (cut-bin rows: z >= tau_min of the bin)
        fb.histogram = 1;
      } else {
        fb.active = kFallbackGeneral;
      }
    }
    if (threadIdx.x == 0) gstore(&a.fallback[row], fb);
    __syncthreads();
  }
}

// The exact cut over the gathered elements (sorted): tau, or false when the histogram's bins and
// the gathered values disagree (then the row takes finish_general).
__device__ __forceinline__ bool gathered_cut(const RowConfig& c, const FallbackRow& fb, const Cand* cands, int n,
                                             double* warp_dbl, ReduceSmem& red, float& tau) {
  float tau_k = TITA_NEG_INF;
  if (fb.k_active) {
    const int64_t pos = c.top_k - fb.count_above - 1;
    if (pos < 0 || pos >= n) return false;  // the k-th largest outside the gathered bins: inconsistent
    tau_k = cands[pos].z;
  }
  float tau_p = TITA_NEG_INF;
  if (c.top_p < 1.0f) {
    const int cut_at = cut_in_sorted(cands, n, tau_k, fb.zmax, fb.mass_above, c.top_p, fb.k_active ? 0.0 : fb.total,
                                     warp_dbl, red);
    if (cut_at == INT_MAX) return false;  // the cut lies above or below the gathered bins
    tau_p = cands[cut_at].z;
  }
  tau = fmaxf(fb.tau_min, fmaxf(tau_k, tau_p));
  return true;
}

// Run by the last gather block of a row to arrive: the exact cut over the gathered ids, the race
// merged with the slices' winners, and the row's outputs.
__device__ __forceinline__ void finish_row(const KernelArgs& a, int64_t row, const FallbackRow& fb) {
  __shared__ Cand cands[kGather];
  __shared__ double warp_dbl[kWarps];
  __shared__ ReduceSmem red;
  {
    const RowConfig c = row_config(a, row);
    RowResult res;
    bool general = fb.active == kFallbackGeneral;
    if (!general) {
      const bool cut_bin = fb.active == kFallbackCutBin;
      Best best = best_none();
      double norm = 0.0;
      const int64_t parts = cut_bin ? fb.workers : a.slices;
      for (int64_t i = threadIdx.x; i < parts; i += kThreads) {
        const RacePartial p = gload_l2(&a.race[row * a.slices + i]);
        if (beats(p.best, best)) best = p.best;
        norm += p.norm;
      }
      float tau = fb.tau_min;
      if (fb.active == kFallbackHistogram || (fb.active == kFallbackCutBin && fb.b_hi >= 0)) {
        const int gathered = gload_l2(&a.fallback[row].n_gathered);
        const int n = gathered < kGather ? gathered : kGather;
        for (int i = threadIdx.x; i < n; i += kThreads) cands[i] = gload_l2(&a.gathered[row * kGather + i]);
        __syncthreads();
        bitonic_sort(cands, n);
        general = gathered > kGather || !gathered_cut(c, fb, cands, n, warp_dbl, red, tau);
        if (!general) {
          const NoiseAddress addr = a.choose && !c.greedy ? noise_address(a.noise, row) : NoiseAddress{0, 0, 0};
          for (int i = threadIdx.x; i < n; i += kThreads) {
            const Cand x = cands[i];
            if (x.z < tau) continue;
            norm += exp(static_cast<double>(__fsub_rn(x.z, fb.zmax)));
            if (a.choose) race_enter(best, x.z, x.id, c.greedy, addr);
          }
        }
      }
      if (!general) {
        res.best = block_reduce(best, BestOp{}, red);
        norm = block_reduce(norm, SumDoubleOp{}, red);
        if (cut_bin) {  // the bins above the cut bin: allowed, their mass and winner from the tables
          const Best w = unpack_best(fb.win_base);
          if (beats(w, res.best)) res.best = w;
          norm += fb.mass_base;
        }
        res.tau = tau;
        res.log_norm = fb.zmax + static_cast<float>(log(norm));
        res.floor = fb.floor;
        res.lse_r = fb.lse_r;
        res.lse_f = fb.lse_f;
        // A winner from a bin table is known by its race key and id: its z from the logits.
        if (cut_bin && a.choose && res.best.id >= 0 && threadIdx.x == 0) {
          res.best.z = winner_z(a, row, c, fb.floor, res.best.id);
        }
        TITA_TRACE_PATH(row, cut_bin ? kPathBinsRefined
                                     : (fb.active == kFallbackHistogram || fb.histogram ? kPathHistogram : kPathThreshold));
      }
    }
    if (general) {
      finish_general(a, row, c, red, res);
      TITA_TRACE_PATH(row, kPathGeneral);
    }
    write_row(a, row, res);
    __syncthreads();
  }
}

template <int kChunks>
__global__ void __launch_bounds__(kThreads) fallback_gather_kernel(KernelArgs a) {
  __shared__ ReduceSmem red;
  __shared__ FallbackRow shared;
  for (int64_t row = blockIdx.y; row < a.in.batch; row += gridDim.y) {
    const FallbackRow fb = load_fallback(a, row, shared);
    if (fb.active == kFallbackNone) continue;
    if (fb.active == kFallbackGeneral) {  // too many distinct values in the cut bins: one block decides
      if (blockIdx.x == 0) finish_row(a, row, fb);
      continue;
    }
    const RowConfig c = row_config(a, row);
    const ZParams zp = z_params(c, fb.floor);
    const NoiseAddress addr = a.choose && !c.greedy ? noise_address(a.noise, row) : NoiseAddress{0, 0, 0};
    Best mine = best_none();
    double norm = 0.0;
    auto visit = [&](float z, auto id_of) {  // id_of(): the element's id (a load for cut-bin rows)
      if (fb.b_hi >= 0) {
        const int b = bin_of(fb, z);
        if (b < fb.b_lo) return;
        if (b <= fb.b_hi) {
          const int at = gatomic_add(&a.fallback[row].n_gathered, 1);
          if (at < kGather) gstore(&a.gathered[row * kGather + at], Cand{z, static_cast<int32_t>(id_of())});
          return;
        }
      }
      if (z < fb.tau_min) return;
      norm += exp(static_cast<double>(__fsub_rn(z, fb.zmax)));
      if (a.choose) race_enter(mine, z, id_of(), c.greedy, addr);
    };
    const bool cut_bin = fb.active == kFallbackCutBin;  // uniform over the block
    if (cut_bin) {
      each_cut_z(a, row, fb, visit);
    } else {
      each_slice_z<kChunks>(a, row, blockIdx.x, zp, [&](float z, int64_t id) { visit(z, [id] { return id; }); });
    }
    mine = block_reduce(mine, BestOp{}, red);
    norm = block_reduce(norm, SumDoubleOp{}, red);
    if (threadIdx.x == 0) gstore(&a.race[row * a.slices + blockIdx.x], RacePartial{mine, norm});
    if (last_to_arrive(&a.tickets[2 * row + 1], cut_bin ? fb.workers : gridDim.x)) finish_row(a, row, fb);
    __syncthreads();
  }
}

template <int kChunks>
__global__ void __launch_bounds__(kThreads) fallback_hist_kernel(KernelArgs a) {
  __shared__ int count[kBins];
  __shared__ double mass[kBins];
  __shared__ uint32_t lo[kBins], hi[kBins];
  __shared__ FallbackRow shared;
  for (int64_t row = blockIdx.y; row < a.in.batch; row += gridDim.y) {
    const FallbackRow fb = load_fallback(a, row, shared);
    if (fb.active != kFallbackHistogram && fb.active != kFallbackCutBin) continue;
    for (int i = threadIdx.x; i < kBins; i += kThreads) {
      count[i] = 0;
      mass[i] = 0.0;
      lo[i] = 0xFFFFFFFFu;
      hi[i] = 0u;
    }
    __syncthreads();
    const ZParams zp = z_params(row_config(a, row), fb.floor);
    const int64_t s_end = (blockIdx.x + 1) * int64_t{kHistSlices};
    auto add = [&](float z, auto) {
      const int b = bin_of(fb, z);
      atomicAdd(&count[b], 1);
      atomicAdd(&mass[b], exp(static_cast<double>(__fsub_rn(z, fb.zmax))));
      atomicMin(&lo[b], okey(z));
      atomicMax(&hi[b], okey(z));
    };
    const bool cut_bin = fb.active == kFallbackCutBin;  // uniform over the block
    if (cut_bin) {  // the cut bin's handed-over elements (this block's share), not the row
      each_cut_z(a, row, fb, add);
    } else {
      for (int64_t s = blockIdx.x * int64_t{kHistSlices}; s < s_end && s < a.slices; ++s) each_slice_z<kChunks>(a, row, s, zp, add);
    }
    __syncthreads();
    const int64_t at = row * kBins;
    for (int i = threadIdx.x; i < kBins; i += kThreads) {
      if (count[i] == 0) continue;
      gatomic_add(&a.hist_count[at + i], count[i]);
      gatomic_add(&a.hist_mass[at + i], mass[i]);
      gatomic_min(&a.hist_lo[at + i], lo[i]);
      gatomic_max(&a.hist_hi[at + i], hi[i]);
    }
    if (last_to_arrive(&a.tickets[2 * row], cut_bin ? fb.workers : gridDim.x)) select_row(a, row, fb);
    __syncthreads();
  }
}

}  // namespace tita::cuda
