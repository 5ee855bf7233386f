// The streaming pass over one row (or a slice of it): the one read of the logits (a row is read
// again only by the rare plausibility rescan, and by guided_logprobs's write of its output).
//
// Per chunk of kChunk ids the three logits rows are loaded as fp32 and cleaned (non-finite ->
// -inf), then: online log-sum-exp of the reward and reference rows (the token reward needs
// them), the guided score z = combine(b, r, f) / T, and one of three routes (Route):
//   dense    (no filter): online log-sum-exp of z and the running winner (argmax, or the Gumbel
//            race z + g with noise drawn only for candidates that could still win); one pass.
//   buffer   (top-k, or a plausibility floor): a candidate buffer of the z values above a
//            threshold that rises as the scan learns the row (k-th largest, max - window, min-p);
//            one pass (plus a rescan when a late plausibility floor needs dropped ids).
//   two-pass (top-p and/or min-p without top-k or floor, whose allowed set can be most of the row):
//            pass 1 keeps the maximum and a mass histogram (histogram.h); pass 2 streams the row
//            again with the cut's bin known: fp64 masses, the race over the surely-kept ids, and
//            a buffer of the cut bin's ids only. Exactly two passes (a third only if the
//            histogram's estimate missed, which its margin rules out; counted in kernel_stats).
// Slices of one row are merged afterwards (RangeState::merge) and finished in candidates.h.
#pragma once

#include <algorithm>
#include <vector>

#include "../common/contract.h"
#include "histogram.h"
#include "lse.h"
#include "mass64.h"
#include "simd.h"

namespace tita::cpu {
namespace TITA_CPU_ISA {

constexpr int kChunk = 1024;
// Candidates more than kWindow below the best z carry under e^-30 of the mass each: the sparse
// buffer may drop them (they can never win the race either: the noise spans < 20).
constexpr float kWindow = 30.0f;

struct Candidate {
  float z;    // guided score
  float b;    // base logit (the plausibility floor is only final after the whole row)
  int32_t id;
  double e;   // exp(z - zmax) in fp64 (mass64.h), filled when finishing
};

// What scanning [v0, v1) of a row leaves behind; slices of a row merge into one.
struct RangeState {
  OnlineLse reward, ref;   // ref is the base row when there are no reference logits
  float base_max = -kInf;  // max of the base row (plausibility floor)
  bool overflow = false;   // a finite-input id got a non-finite score (kStatusOverflow)
  // dense
  OnlineLse guided;
  float best_key = -kInf;
  int64_t best_id = -1;
  float best_z = -kInf;
  // sparse
  std::vector<Candidate> cands;
  float zmax = -kInf;      // max z of the buffered candidates (two-pass route: of the row)
  float theta = -kInf;     // every id not buffered had z < theta (or was surely implausible)
  size_t limit = 0;        // compact when the buffer grows past this (doubles for flat rows)
  // two-pass route: pass 1's histogram; pass 2's fp64 masses (every id; ids above the cut's bins)
  MassHistogram hist;
  double total64 = 0.0, above64 = 0.0, kept64 = 0.0;

  void merge(const RangeState& o) {
    reward.merge(o.reward);
    ref.merge(o.ref);
    base_max = std::max(base_max, o.base_max);
    overflow = overflow || o.overflow;
    guided.merge(o.guided);
    if (o.best_key > best_key || (o.best_key == best_key && o.best_id >= 0 && (best_id < 0 || o.best_id < best_id))) {
      best_key = o.best_key;
      best_id = o.best_id;
      best_z = o.best_z;
    }
    cands.insert(cands.end(), o.cands.begin(), o.cands.end());
    zmax = std::max(zmax, o.zmax);
    theta = std::max(theta, o.theta);
    hist.merge(o.hist);
    total64 += o.total64;
    above64 += o.above64;
    kept64 += o.kept64;
  }
};

// z = combine(b, r, f) * inv_t, non-finite -> -inf, ids surely below the plausibility floor -> -inf.
// Same operations in the same order as reference._guided_scores (bitwise-equal z). One loop per
// form, so that each is a straight vector loop (a per-row choice inside it defeats GCC's lowering).
// Returns true when an id with finite inputs (b, r, f are cleaned: finite or -inf) got a
// non-finite score before the floor: the row's status is then kStatusOverflow.
template <typename Combine>
TITA_INLINE bool combine_loop(Combine combine, const RowConfig& c, const float* b, const float* r, const float* f,
                              int n, float floor_now, float* z) {
  const vf inv_t = vsplat(c.inv_t), neg_inf = vsplat(-kInf), zero = vsplat(0.0f), one = vsplat(1.0f);
  // Per lane: (1 where the score is not finite) - (1 where an input is not): an input that is
  // not finite always gives a score of -inf, so a positive sum means an overflow. Selects on
  // compares only (masks combined with & are split into scalar code by GCC's vector lowering).
  vf overflow = zero;
  const auto score = [&](vf bv, vf rv, vf fv) {
    const vf s = finite_or_neg_inf(combine(bv, rv, fv));
    const vf scaled = s * inv_t;
    const vf neg_min = vmax(vmax(zero - bv, zero - rv), zero - fv);  // inf where an input is -inf
    overflow += vselect((scaled - scaled) == 0.0f, zero, one) - vselect(neg_min < kInf, zero, one);
    return s;
  };
  if (floor_now == -kInf) {
    for (int i = 0; i < n; i += kLanes) vstore(z + i, score(vload(b + i), vload(r + i), vload(f + i)) * inv_t);
  } else {
    const vf floor = vsplat(floor_now);
    for (int i = 0; i < n; i += kLanes) {
      const vf bv = vload(b + i);
      const vf s = score(bv, vload(r + i), vload(f + i));
      vstore(z + i, vselect(bv < floor, neg_inf, s) * inv_t);
    }
  }
  return hsum(overflow) > 0.0f;
}

TITA_INLINE bool combine_chunk(const RowConfig& c, const float* b, const float* r, const float* f, int n,
                               float floor_now, float* z) {
  const vf alpha = vsplat(c.alpha), one_minus = vsplat(1.0f - c.alpha);
  if (!c.lerp) {
    return combine_loop([&](vf bv, vf rv, vf fv) { return bv + alpha * (rv - fv); }, c, b, r, f, n, floor_now, z);
  }
  if (c.alpha < 0.5f) {  // torch.lerp's two forms: exact at alpha = 0 and at alpha = 1
    return combine_loop([&](vf bv, vf rv, vf) { return bv + alpha * (rv - bv); }, c, b, r, f, n, floor_now, z);
  }
  return combine_loop([&](vf bv, vf rv, vf) { return rv - (rv - bv) * one_minus; }, c, b, r, f, n, floor_now, z);
}

constexpr int kRaceBlock = 4 * kLanes;  // ids per vectorised Philox call: kLanes counters x 4 words

TITA_INLINE float block_max(const float* z) {
  return hmax(vmax(vmax(vload(z), vload(z + kLanes)), vmax(vload(z + 2 * kLanes), vload(z + 3 * kLanes))));
}

// Smallest m = bits >> 9 whose uniform (2m + 1) 2^-24 gives Gumbel noise that can reach `need`
// (0 when any can). The 0.01 margin dwarfs plog's ~1e-7 relative error, so skipping is exact.
inline uint32_t min_mantissa_to_reach(float need) {
  if (!(need > -1.0f)) return 0;  // also -inf and NaN: no skipping
  const double u = std::exp(-std::exp(-(static_cast<double>(need) - 0.01)));
  const double m = std::ceil((u * 16777216.0 - 1.0) / 2.0);
  return m <= 0.0 ? 0u : (m >= 8388608.0 ? 8388608u : static_cast<uint32_t>(m));
}

// Race the kRaceBlock ids from first_id (first_id % 4 == 0): one kLanes-wide Philox call gives
// word w of counter first_id/4 + l for id first_id + 4l + w. Ties keep the lower id.
TITA_INLINE void race_block(const NoiseAddress& a, const float* z, int64_t first_id, RangeState& st) {
  using L = LaneOps<vf>;
  vu lane;
  for (int l = 0; l < kLanes; ++l) lane[l] = static_cast<uint32_t>(l);
  const Philox4<vu> r = philox4x32<vf>(
      L::splat_u(static_cast<uint32_t>(first_id >> 2)) + lane, L::splat_u(a.row),
      L::splat_u(static_cast<uint32_t>(a.offset)), L::splat_u(static_cast<uint32_t>(a.offset >> 32)),
      L::splat_u(static_cast<uint32_t>(a.seed)), L::splat_u(static_cast<uint32_t>(a.seed >> 32)));
  // A lane can win only if its noise reaches need = best - max(z of the block). The noise is
  // increasing in u, so lanes with u below exp(-exp(-need)) (less a safety margin for plog's
  // rounding) lose whatever their logs say: words where every lane does are not computed.
  const uint32_t min_m = min_mantissa_to_reach(st.best_key - block_max(z));
  alignas(64) float noise[kRaceBlock];
  for (int w = 0; w < 4; ++w) {
    vf g = vsplat(-kInf);
    if (any_lane((r.x[w] >> 9) >= min_m)) g = gumbel_from_bits<vf>(r.x[w]);
    for (int l = 0; l < kLanes; ++l) noise[4 * l + w] = g[l];
  }
  for (int q = 0; q < kRaceBlock; q += kLanes) {
    const vf keys = vload(z + q) + vload(noise + q);
    const float m = hmax(keys);
    if (!(m > st.best_key)) continue;
    for (int l = 0; l < kLanes; ++l) {
      if (keys[l] == m) {
        st.best_key = m;
        st.best_id = first_id + q + l;
        st.best_z = z[q + l];
        break;
      }
    }
  }
}

// The running winner over a chunk of z whose maximum is m: argmax, or the Gumbel race.
TITA_INLINE void race_chunk(const RowConfig& c, const NoiseAddress& noise, const float* z, int n, int64_t id0, float m,
                            RangeState& st) {
  if (c.greedy) {
    if (m > st.best_key) {
      for (int j = 0; j < n; ++j) {
        if (z[j] == m) {
          st.best_key = st.best_z = m;
          st.best_id = id0 + j;
          break;
        }
      }
    }
    return;
  }
  // Gumbel race in blocks of kRaceBlock ids; a block is skipped when none of its candidates can win
  // (z + kGumbelMax < best key so far): exact, since the noise never exceeds kGumbelMax.
  if (m + kGumbelMax < st.best_key) return;
  for (int i = 0; i < n; i += kRaceBlock) {
    vi maybe = vi{};
    for (int q = 0; q < kRaceBlock; q += kLanes) maybe |= vload(z + i + q) + kGumbelMax >= st.best_key;
    if (any_lane(maybe)) race_block(noise, z + i, id0 + i, st);
  }
}

// Dense regime: fold a chunk of z into the online lse and the running winner.
TITA_INLINE void dense_chunk(const RowConfig& c, const NoiseAddress& noise, const float* z, int n, int64_t id0,
                             RangeState& st) {
  const OnlineLse chunk = chunk_lse(z, n);
  st.guided.merge(chunk);
  race_chunk(c, noise, z, n, id0, chunk.max, st);
}

// The threshold the buffer's maximum alone justifies: the window, and the min-p cut when top-p is
// off (top-p's mass counts candidates below the min-p cut, so then they must stay).
TITA_INLINE float window_threshold(const RowConfig& c, float zmax) {
  const bool min_p_cut = c.log_min_p != -kInf && c.top_p >= 1.0f;
  return std::max(zmax - kWindow, min_p_cut ? zmax + c.log_min_p : -kInf);
}

// Sparse regime: raise the threshold from what the buffer knows (window, min-p, k-th largest).
inline void compact(const RowConfig& c, RangeState& st) {
  float theta = window_threshold(c, st.zmax);
  auto& v = st.cands;
  if (c.top_k > 0 && static_cast<int64_t>(v.size()) > c.top_k) {
    std::nth_element(v.begin(), v.begin() + (c.top_k - 1), v.end(),
                     [](const Candidate& a, const Candidate& b) { return a.z > b.z; });
    theta = std::max(theta, v[c.top_k - 1].z);
  }
  if (theta > st.theta) st.theta = theta;
  v.erase(std::remove_if(v.begin(), v.end(), [&](const Candidate& x) { return x.z < st.theta; }), v.end());
}

// Small enough that the threshold rises within the first chunk, large enough that compaction
// (linear in the buffer) stays rare.
inline size_t initial_buffer_limit(const RowConfig& c) {
  return static_cast<size_t>(std::max<int64_t>(4 * c.top_k, 256));
}

TITA_INLINE void sparse_chunk(const RowConfig& c, const float* z, const float* b, int n, int64_t id0, RangeState& st) {
  if (chunk_max(z, n) < st.theta) return;  // the usual case once the threshold has risen
  if (st.limit == 0) {
    st.limit = initial_buffer_limit(c);
    st.cands.reserve(st.limit + kLanes);  // one allocation for the usual row
  }
  // Screen blocks of 4 vectors with one horizontal test, then the vectors of a passing block.
  for (int i0 = 0; i0 < n; i0 += 4 * kLanes) {
    const int i_end = std::min(n, i0 + 4 * kLanes);
    vf block_max = vload(z + i0);
    for (int i = i0 + kLanes; i < i_end; i += kLanes) block_max = vmax(block_max, vload(z + i));
    if (!any_lane(block_max >= st.theta)) continue;
    for (int i = i0; i < i_end; i += kLanes) {
      if (!any_lane(vload(z + i) >= st.theta)) continue;
      for (int j = i; j < i + kLanes; ++j) {
        if (z[j] == -kInf || z[j] < st.theta) continue;
        st.cands.push_back(Candidate{z[j], b[j], static_cast<int32_t>(id0 + j), 0.0});
        st.zmax = std::max(st.zmax, z[j]);
      }
      if (st.cands.size() > st.limit) {
        compact(c, st);
        if (st.cands.size() > st.limit / 2) st.limit *= 2;  // a flat row: keep compaction amortised
      }
    }
  }
  st.theta = std::max(st.theta, window_threshold(c, st.zmax));
}

// Two-pass route, pass 1: the row's maximum and, with top-p, the mass histogram.
TITA_INLINE void histogram_chunk(const RowConfig& c, const float* z, int n, RangeState& st) {
  const float m = chunk_max(z, n);
  if (m == -kInf) return;
  st.zmax = std::max(st.zmax, m);
  if (c.top_p >= 1.0f) return;  // min-p alone: the maximum is all pass 2 needs
  st.hist.raise_top(bin_key(m));
  st.hist.add(z, n);
}

// What pass 2 of the two-pass route knows from pass 1.
struct FinalCut {
  float zmax;          // the row's maximum z
  float min_p_cut;     // zmax + log(min_p), or -inf
  CutKeys keys;        // top-p: ids with keys above keys.key_hi are kept, [key_lo, key_hi] collected
  bool top_p;          // false: min-p alone (no keys)
};

enum class Route : uint8_t { kDense, kBuffer, kTwoPass };

// Two-pass route, pass 2: fp64 masses (top-p), the race and normaliser over the surely-kept ids
// (above the cut's bins and the min-p cut), and the ids of the cut's bins into the buffer (their
// cut is resolved when finishing). z is padded with -inf to n_race.
TITA_INLINE void final_chunk(const RowConfig& c, const NoiseAddress& noise, const FinalCut& f, bool choose,
                             const float* z, int n, int n_race, int64_t id0, RangeState& st) {
  alignas(64) double e[kChunk];
  alignas(64) float kept[kChunk];
  const int32_t key_hi = f.top_p ? f.keys.key_hi : -kKeyClamp - 1;  // min-p alone: every key is above
  const int32_t key_lo = f.top_p ? f.keys.key_lo : key_hi + 1;      // and none is collected
  if (f.top_p) {
    const MassSums sums = masses64(z, n, f.zmax, key_hi, f.min_p_cut, e);
    st.total64 += sums.total;
    st.above64 += sums.above;
    st.kept64 += sums.kept;
  }
  const vf neg_inf = vsplat(-kInf), zero = vsplat(0.0f), one = vsplat(1.0f);
  const vi hi = vi{} + key_hi, lo = vi{} + key_lo;
  for (int i = 0; i < n; i += kLanes) {  // nested selects, not & of masks (see combine_loop)
    const vf zv = vload(z + i);
    const vi k = bin_keys(zv);
    vstore(kept + i, vselect(k > hi, vselect(zv >= f.min_p_cut, zv, neg_inf), neg_inf));
    const vf collect = vselect(zv > neg_inf, vselect(k >= lo, vselect(k <= hi, one, zero), zero), zero);
    if (!(hmax(collect) > 0.0f)) continue;
    for (int l = 0; l < kLanes; ++l) {
      if (collect[l] > 0.0f) {
        st.cands.push_back(Candidate{zv[l], 0.0f, static_cast<int32_t>(id0 + i + l), e[i + l]});
      }
    }
  }
  for (int j = n; j < n_race; ++j) kept[j] = -kInf;
  if (!f.top_p) {  // min-p alone: the normaliser from an fp32 log-sum-exp (top-p: from kept64)
    const OnlineLse chunk = chunk_lse(kept, n);
    st.guided.merge(chunk);
    if (choose) race_chunk(c, noise, kept, n_race, id0, chunk.max, st);
  } else if (choose) {
    race_chunk(c, noise, kept, n_race, id0, chunk_max(kept, n), st);
  }
}

// What a scan should produce.
struct ScanTask {
  RowConfig config;
  NoiseAddress noise;
  Route route;
  bool second_pass;     // two-pass route: pass 2 (cut below)
  bool choose;          // race for a token (guided_sample); else only the normaliser
  FinalCut cut;
  float known_floor;    // plausibility floor known before the scan (-inf: learn it while scanning)
  float* z_out;         // optional: the row's z, written at each id (guided_logprobs)
};

}  // namespace TITA_CPU_ISA
}  // namespace tita::cpu