// The scan: one block per (vocabulary slice, row) reads the slice's logits once and leaves a
// SlicePartial (and candidates) for the finish.
//
// Every thread holds kChunks chunks of 8 consecutive ids (chunk k of thread t starts at
// slice start + (k * 256 + t) * 8: coalesced 16-byte loads) and keeps their z in registers; the
// next chunk's loads are in flight while a chunk is computed on (contiguous, aligned rows).
//   * log-sum-exp statistics of the reward and reference rows (token reward) and of z;
//   * dense rows (no filter): the slice's winner. Greedy: argmax z. Sampling: the Gumbel race;
//     the slice's argmax enters first, and then noise is drawn only for 4-id groups that can beat
//     the best key so far (z + 16.7 >= best), and its logs only for words whose uniform is large
//     enough (reach_limit): exact, the skipped noise cannot win;
//   * sparse rows (top-k / top-p / min-p): the candidates, every finite z >= theta, where theta is
//     the C-th largest of the 256 thread maxima (C = slice_cands: top_k up to 256, else a share of
//     kRowCandTarget; rounded down to 16 key bits), so at least C ids of the slice pass (about 2C
//     on average). When more than kSliceSlots pass, theta becomes the slice's exact C-th largest
//     z; if ties still overflow, the row takes the bounded fallback;
//   * every row: min z, the overflow flag (kStatusOverflow), and for top-p rows without top-k the
//     fp64 mass sum of exp(z - slice max), the top-p total's share of the slice.
#pragma once

#include "guided_bins.cuh"

namespace tita::cuda {

// A threshold at or below the C-th largest of one value per thread (C <= kThreads, at least C
// finite): the C-th largest rounded down to the upper 16 bits of its key (16 steps instead of 32;
// at least C values pass it, a few more than exactly C).
__device__ __forceinline__ float kth_of_thread_values(float v, int C) {
  uint32_t key = 0;
  const uint32_t mine = okey(v) >> 16;
  for (int bit = 15; bit >= 0; --bit) {
    const uint32_t cand = key | (1u << bit);
    if (__syncthreads_count(mine >= cand) >= C) key = cand;
  }
  return from_okey(key << 16);
}

// The C-th largest finite value of the block's registers (at least C finite).
template <int N>
__device__ __forceinline__ float kth_of_block_values(const float* z, int C, ReduceSmem& red) {
  uint32_t key = 0;
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t cand = key | (1u << bit);
    int n = 0;
#pragma unroll
    for (int i = 0; i < N; ++i) n += (z[i] != TITA_NEG_INF && okey(z[i]) >= cand) ? 1 : 0;
    if (block_reduce(n, SumIntOp{}, red) >= C) key = cand;
  }
  return from_okey(key);
}

template <int kChunks>
__global__ void __launch_bounds__(kThreads, 2) guided_scan_kernel(KernelArgs a) {
  constexpr int kPer = kChunks * kVec;
  __shared__ ReduceSmem red;
  __shared__ int slot_count;
  __shared__ BinSmem bin_smem;
  const int64_t s = blockIdx.x;
  const int64_t vocab = a.in.vocab;
  const int64_t v0 = s * a.slice_len;
  for (int64_t row = blockIdx.y; row < a.in.batch; row += gridDim.y) {
    const RowConfig c = row_config(a, row);
    if (!c.valid || !fast_path(c, a)) continue;  // uniform over the block
    const float floor = c.log_floor == TITA_NEG_INF ? TITA_NEG_INF : row_floor(a, row, c.log_floor, red);
    const ZParams zp = z_params(c, floor);
    const bool dense = no_cut(c);
    const bool want_lz = true;  // dense rows, top-p totals, and rows that turn out flat (finish_fast)
    const RowPtrs rp = row_ptrs(a.in, row);

    float z[kPer];
    bool over = false;
    Lse lr = lse_empty(), lf = lse_empty(), lz = lse_empty();
    Best top = best_none();  // argmax z (key z), lowest id first
    // Vector path: the loads of chunk k + 1 are issued before chunk k is computed on.
    const bool vec = vector_rows(rp);
    RawChunk raw[2] = {};
    if (vec && v0 + static_cast<int64_t>(threadIdx.x) * kVec + kVec <= vocab) {
      issue_chunk(rp, v0 + static_cast<int64_t>(threadIdx.x) * kVec, vocab, raw[0]);
    }
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int64_t id0 = v0 + (static_cast<int64_t>(k) * kThreads + threadIdx.x) * kVec;
      if (k + 1 < kChunks && vec && id0 + static_cast<int64_t>(kThreads) * kVec + kVec <= vocab) {
        issue_chunk(rp, id0 + static_cast<int64_t>(kThreads) * kVec, vocab, raw[(k + 1) & 1]);
      }
      if (vec) realign_chunk(rp, id0, vocab, raw[k & 1]);  // misaligned rows; every lane (shuffles)
      float b[kVec], r[kVec], f[kVec];
      if (vec && id0 + kVec <= vocab) {
        decode_chunk(rp, raw[k & 1], b, r, f);
      } else if (id0 < vocab) {
        load_chunk(rp, id0, vocab, b, r, f);
      } else {
#pragma unroll
        for (int j = 0; j < kVec; ++j) b[j] = r[j] = f[j] = TITA_NEG_INF;
      }
      lr = lse_merge(lr, lse_of<kVec>(r));
      lf = lse_merge(lf, lse_of<kVec>(f));
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const float zj = guided_z(zp, b[j], r[j], f[j], over);
        z[k * kVec + j] = zj;
        if (zj > top.key) top = Best{zj, zj, static_cast<int32_t>(id0 + j)};
      }
      if (want_lz) lz = lse_merge(lz, lse_of<kVec>(z + k * kVec));
    }
    lr = block_reduce(lr, LseOp{}, red);
    lf = block_reduce(lf, LseOp{}, red);
    if (want_lz) lz = block_reduce(lz, LseOp{}, red);
    top = block_reduce(top, BestOp{}, red);
    const float zmax = top.key;
    float zmin = INFINITY;
    double zmass = 0.0;
    const bool want_mass = c.top_p < 1.0f && c.top_k == 0;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      if (z[i] == TITA_NEG_INF) continue;
      zmin = fminf(zmin, z[i]);
      if (want_mass) zmass += exp(static_cast<double>(z[i]) - static_cast<double>(zmax));
    }
    zmin = block_reduce(zmin, MinOp{}, red);
    if (want_mass) zmass = block_reduce(zmass, SumDoubleOp{}, red);
    const int32_t overflow = __syncthreads_or(over) ? 1 : 0;

    SlicePartial part{lr, lf, lz, zmass, zmax, zmin, overflow, TITA_NEG_INF, top, 0};
    // The slice's winner over every finite z (a flat row, zmin == zmax, keeps all of them under any filter).
    {
      if (a.choose && !c.greedy && top.id >= 0) {
        const NoiseAddress addr = noise_address(a.noise, row);
        Best mine = top;
        mine.key = __fadd_rn(top.z, gumbel_of(addr, top.id));  // the argmax's key bounds the winner's
        each_group<kChunks>(v0, z, [&](int64_t g0, const float* zs) {
          const float gz = fmaxf(fmaxf(zs[0], zs[1]), fmaxf(zs[2], zs[3]));
          if (gz == TITA_NEG_INF || gz + kGumbelMax < mine.key) return;
          const Philox4<uint32_t> w = philox_group(addr, g0);
          const float limit = reach_limit(mine.key - gz);  // for the group's best z: conservative for all 4
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            if (zs[j] == TITA_NEG_INF || !may_reach(w.x[j], limit)) continue;
            const Best cand{__fadd_rn(zs[j], gumbel_from_bits<float>(w.x[j])), zs[j], static_cast<int32_t>(g0 + j)};
            if (beats(cand, mine)) mine = cand;
          }
        });
        part.best = block_reduce(mine, BestOp{}, red);
      }
    }
    if (dense) {
      if (threadIdx.x == 0) gstore(&a.partials[row * a.slices + s], part);
      continue;
    }

    if (binned_row(c, a)) {  // top-p alone: bin table and bin-sorted candidates (guided_bins.cuh)
      scan_bins<kPer, kChunks>(a, row, s, c, z, zmax, zmin, bin_smem, part);
      if (threadIdx.x == 0) gstore(&a.partials[row * a.slices + s], part);
      continue;
    }
    // Sparse: hand over every finite z >= theta.
    float tmax = TITA_NEG_INF;
#pragma unroll
    for (int i = 0; i < kPer; ++i) tmax = fmaxf(tmax, z[i]);
    const int C = slice_cands(c, a.slices);
    float theta = TITA_NEG_INF;
    if (__syncthreads_count(tmax != TITA_NEG_INF) >= C) theta = kth_of_thread_values(tmax, C);
    int mine = 0;
#pragma unroll
    for (int i = 0; i < kPer; ++i) mine += (z[i] != TITA_NEG_INF && z[i] >= theta) ? 1 : 0;
    int n = block_reduce(mine, SumIntOp{}, red);
    if (n > kSliceSlots) {  // many ids near the top: the exact C-th largest (at least C finite here)
      theta = kth_of_block_values<kPer>(z, C, red);
      mine = 0;
#pragma unroll
      for (int i = 0; i < kPer; ++i) mine += (z[i] != TITA_NEG_INF && z[i] >= theta) ? 1 : 0;
      n = block_reduce(mine, SumIntOp{}, red);
    }
    bool dropped = false;
#pragma unroll
    for (int i = 0; i < kPer; ++i) dropped = dropped || (z[i] != TITA_NEG_INF && z[i] < theta);
    part.theta = __syncthreads_or(dropped) ? theta : TITA_NEG_INF;
    if (n > kSliceSlots) {
      part.n_cands = -1;
    } else {
      part.n_cands = n;
      if (threadIdx.x == 0) slot_count = 0;
      __syncthreads();
      Cand* out = a.cands + (row * a.slices + s) * a.cand_slots;
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        if (z[i] != TITA_NEG_INF && z[i] >= theta) {
          const int k = i / kVec, j = i % kVec;
          const int64_t id = v0 + (static_cast<int64_t>(k) * kThreads + threadIdx.x) * kVec + j;
          gstore(&out[atomicAdd(&slot_count, 1)], Cand{z[i], static_cast<int32_t>(id)});
        }
      }
    }
    if (threadIdx.x == 0) gstore(&a.partials[row * a.slices + s], part);
    __syncthreads();  // slot_count is reset by the next row of this block
  }
}

// Max of the clean base logits of each (slice, row): the plausibility floor's input.
template <int kChunks>
__global__ void __launch_bounds__(kThreads) base_max_kernel(KernelArgs a) {
  __shared__ ReduceSmem red;
  const int64_t v0 = static_cast<int64_t>(blockIdx.x) * a.slice_len;
  for (int64_t row = blockIdx.y; row < a.in.batch; row += gridDim.y) {
    const RowPtr bp = row_ptr(a.in.base, row);
    const bool vec = misalignment(bp) >= 0;
    float m = TITA_NEG_INF;
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int64_t id0 = v0 + (static_cast<int64_t>(k) * kThreads + threadIdx.x) * kVec;
      float b[kVec];
      read8(bp, vec, id0, a.in.vocab, b);  // every lane (-inf beyond the vocabulary)
#pragma unroll
      for (int j = 0; j < kVec; ++j) m = fmaxf(m, b[j]);
    }
    m = block_reduce(m, MaxOp{}, red);
    if (threadIdx.x == 0) gstore(&a.base_max[row * a.slices + blockIdx.x], m);
  }
}

}  // namespace tita::cuda
