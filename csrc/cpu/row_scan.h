// The streaming pass over one row (or a slice of it): the only time the logits are read.
//
// Per chunk of kChunk ids the three logits rows are loaded as fp32 and cleaned (non-finite ->
// -inf), then: online log-sum-exp of the reward and reference rows (the token reward needs
// them), the guided score z = combine(b, r, f) / T, and either
//   dense  (no filter): online log-sum-exp of z and the running winner (argmax, or the Gumbel
//          race z + g with noise drawn only for candidates that could still win), or
//   sparse (top-k / top-p / min-p / plausibility): a candidate buffer of the z values above a
//          threshold that rises as the scan learns the row (k-th largest, max - window, min-p).
// Slices of one row are merged afterwards (RangeState::merge) and finished in candidates.h.
#pragma once

#include <algorithm>
#include <vector>

#include "../common/contract.h"
#include "simd.h"

namespace tita::cpu {

constexpr int kChunk = 1024;
// Candidates more than kWindow below the best z carry under e^-30 of the mass each: the sparse
// buffer may drop them (they can never win the race either: the noise spans < 20).
constexpr float kWindow = 30.0f;

struct Candidate {
  float z;    // guided score
  float b;    // base logit (the plausibility floor is only final after the whole row)
  int32_t id;
  float e;    // exp(z - zmax), filled when finishing
};

// What scanning [v0, v1) of a row leaves behind; slices of a row merge into one.
struct RangeState {
  OnlineLse reward, ref;   // ref is the base row when there are no reference logits
  float base_max = -kInf;  // max of the base row (plausibility floor)
  // dense
  OnlineLse guided;
  float best_key = -kInf;
  int64_t best_id = -1;
  float best_z = -kInf;
  // sparse
  std::vector<Candidate> cands;
  float zmax = -kInf;      // max z of the buffered candidates
  float theta = -kInf;     // every id not buffered had z < theta (or was surely implausible)
  size_t limit = 0;        // compact when the buffer grows past this (doubles for flat rows)

  void merge(const RangeState& o) {
    reward.merge(o.reward);
    ref.merge(o.ref);
    base_max = std::max(base_max, o.base_max);
    guided.merge(o.guided);
    if (o.best_key > best_key || (o.best_key == best_key && o.best_id >= 0 && (best_id < 0 || o.best_id < best_id))) {
      best_key = o.best_key;
      best_id = o.best_id;
      best_z = o.best_z;
    }
    cands.insert(cands.end(), o.cands.begin(), o.cands.end());
    zmax = std::max(zmax, o.zmax);
    theta = std::max(theta, o.theta);
  }
};

// z = combine(b, r, f) * inv_t, non-finite -> -inf, ids surely below the plausibility floor -> -inf.
// Same operations in the same order as reference._guided_scores (bitwise-equal z).
TITA_INLINE void combine_chunk(const RowConfig& c, const float* b, const float* r, const float* f, int n,
                               float floor_now, float* z) {
  const vf alpha = vsplat(c.alpha), one_minus = vsplat(1.0f - c.alpha), inv_t = vsplat(c.inv_t);
  const vf floor = vsplat(floor_now);
  for (int i = 0; i < n; i += kLanes) {
    const vf bv = vload(b + i), rv = vload(r + i);
    vf s;
    if (c.lerp) {
      const vf d = rv - bv;
      s = c.alpha < 0.5f ? bv + alpha * d : rv - d * one_minus;
    } else {
      s = bv + alpha * (rv - vload(f + i));
    }
    s = finite_or_neg_inf(s);
    s = vselect(bv < floor, vsplat(-kInf), s);
    vstore(z + i, s * inv_t);
  }
}

// Dense regime: fold a chunk of z into the online lse and the running winner.
TITA_INLINE void dense_chunk(const RowConfig& c, const NoiseAddress& noise, const float* z, int n, int64_t id0,
                             RangeState& st) {
  st.guided.merge(chunk_lse(z, n));
  if (c.greedy) {
    const float m = chunk_max(z, n);
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
  // Gumbel race: a candidate can win only if z + kGumbelMax >= best key so far.
  for (int i = 0; i < n; i += kLanes) {
    if (!any_lane(vload(z + i) + kGumbelMax >= st.best_key)) continue;
    for (int j = i; j < i + kLanes; ++j) {
      if (z[j] == -kInf || z[j] + kGumbelMax < st.best_key) continue;
      const float key = z[j] + gumbel_at(noise, id0 + j);
      if (key > st.best_key) {  // strict: on a tie the lower id (seen first) stays
        st.best_key = key;
        st.best_id = id0 + j;
        st.best_z = z[j];
      }
    }
  }
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

inline size_t initial_buffer_limit(const RowConfig& c) {
  return static_cast<size_t>(std::max<int64_t>(4 * c.top_k, 2 * kChunk));
}

TITA_INLINE void sparse_chunk(const RowConfig& c, const float* z, const float* b, int n, int64_t id0, RangeState& st) {
  for (int i = 0; i < n; i += kLanes) {
    if (!any_lane(vload(z + i) >= st.theta)) continue;
    for (int j = i; j < i + kLanes; ++j) {
      if (z[j] == -kInf || z[j] < st.theta) continue;
      st.cands.push_back(Candidate{z[j], b[j], static_cast<int32_t>(id0 + j), 0.0f});
      st.zmax = std::max(st.zmax, z[j]);
    }
  }
  st.theta = std::max(st.theta, window_threshold(c, st.zmax));
  if (st.limit == 0) st.limit = initial_buffer_limit(c);
  if (st.cands.size() > st.limit) {
    compact(c, st);
    if (st.cands.size() > st.limit / 2) st.limit *= 2;  // a flat row: keep compaction amortised
  }
}

// What a scan should produce.
struct ScanTask {
  RowConfig config;
  NoiseAddress noise;
  bool dense;           // dense regime (config.dense() and not forced sparse)
  float known_floor;    // plausibility floor known before the scan (-inf: learn it while scanning)
  float* z_out;         // optional: the row's z, written at each id (guided_logprobs)
};

}  // namespace tita::cpu
