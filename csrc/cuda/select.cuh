// Exact block-wide selections over a set of guided scores (a "source": the candidates in shared
// memory, or a whole logits row re-read from memory): counts, masses, the k-th largest score and
// the top-p cut, found by bisection over the ordered 32-bit keys of fp32 (no sort; each predicate
// is monotone over a discrete domain, so the answers are exact values of the set).
//
// A source has `template <class F> void each(F f) const`, calling f(z, id) for this thread's
// share of the elements (z may be -inf: such elements never count).
#pragma once

#include <cstdint>

#include "block_reduce.cuh"

namespace tita::cuda {

// Number of finite elements with okey(z) >= key.
template <class Src>
__device__ int count_key_ge(const Src& src, uint32_t key, ReduceSmem& red) {
  int n = 0;
  src.each([&](float z, int64_t) { n += (z != TITA_NEG_INF && okey(z) >= key) ? 1 : 0; });
  return block_reduce(n, SumIntOp{}, red);
}

// Sum of exp(z - zmax) (fp32 difference, fp64 exp and sum, as the reference's top-p masses) over
// finite elements with z >= tau and okey(z) > above.
template <class Src>
__device__ double mass_above(const Src& src, float zmax, float tau, uint32_t above, ReduceSmem& red) {
  double m = 0.0;
  src.each([&](float z, int64_t) {
    if (z != TITA_NEG_INF && z >= tau && okey(z) > above) m += exp(static_cast<double>(__fsub_rn(z, zmax)));
  });
  return block_reduce(m, SumDoubleOp{}, red);
}

// The k-th largest finite z (duplicates counted), given at least k finite elements: the largest
// key x with count(okey(z) >= x) >= k, built bit by bit from the top.
template <class Src>
__device__ float kth_largest(const Src& src, int64_t k, ReduceSmem& red) {
  uint32_t key = 0;
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t cand = key | (1u << bit);
    if (count_key_ge(src, cand, red) >= k) key = cand;
  }
  return from_okey(key);
}

// The top-p cut: the smallest present value v with mass(z > v) < target, among z >= tau (the
// value at the first sorted position whose inclusive mass reaches target; ties at the cut are all
// kept). -inf when even the whole set's mass is below target.
template <class Src>
__device__ float top_p_cut(const Src& src, float zmax, float tau, double target, ReduceSmem& red) {
  uint32_t lo = kNegInfKey, hi = okey(zmax);  // mass(z > zmax) = 0 < target: hi qualifies
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if (mass_above(src, zmax, tau, mid, red) < target) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return from_okey(lo);
}

// The winner over the allowed set (finite z >= tau): greedy (key z) or the Gumbel race (key
// z + gumbel_at(address, id)); ties to the lowest id. Noise is drawn only where it can still win.
// One entry of the race: greedy (key z) or the Gumbel race (key z + gumbel_at(address, id)), ties
// to the lowest id; noise is drawn only where it can still beat mine.
__device__ __forceinline__ void race_enter(Best& mine, float z, int64_t id, bool greedy, const NoiseAddress& addr) {
  if (greedy) {
    const Best c{z, z, static_cast<int32_t>(id)};
    if (beats(c, mine)) mine = c;
    return;
  }
  if (mine.id >= 0 && z + kGumbelMax < mine.key) return;
  const Best c{__fadd_rn(z, gumbel_of(addr, id)), z, static_cast<int32_t>(id)};
  if (beats(c, mine)) mine = c;
}

// The winner over the allowed set (finite z >= tau).
template <class Src>
__device__ Best choose_among(const Src& src, float tau, bool greedy, const NoiseAddress& addr, ReduceSmem& red) {
  Best mine = best_none();
  src.each([&](float z, int64_t id) {
    if (z != TITA_NEG_INF && z >= tau) race_enter(mine, z, id, greedy, addr);
  });
  return block_reduce(mine, BestOp{}, red);
}

}  // namespace tita::cuda
