// Finishing a row from its merged RangeState: the filters, the normaliser and the choice.
//
// Dense rows are already decided by the scan. Buffer rows apply, on the candidate buffer only:
// the final plausibility floor, top-k (nth_element), top-p (a weighted quickselect: expected
// linear time, no full sort) and min-p, then draw from the survivors. Two-pass rows resolve the
// top-p cut among the ids of the cut's bins and merge their race with the streamed one.
// Top-p masses are fp64 exps of the fp32 differences z - zmax, as in the reference.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "row_scan.h"

namespace tita::cpu {
namespace TITA_CPU_ISA {

struct RowOutcome {
  int32_t status = kStatusOk;
  int64_t token = -1;
  float z = -kInf;         // guided score of the token
  float log_norm = -kInf;  // log of the filtered distribution's normaliser (over z)
  float tau = -kInf;       // allowed = plausible and z >= tau
  float floor = -kInf;     // plausible = base logit >= floor
};

// Did the scan keep every candidate the filters can need? (See row_scan.h: ids not buffered
// had z < theta.) Fails only when the plausibility floor rose after candidates were dropped.
inline bool buffer_sufficient(const RowConfig& c, const RangeState& st, float zmax) {
  if (st.theta <= zmax - kWindow) return true;
  if (c.top_k > 0) {
    int64_t above = 0;
    for (const Candidate& x : st.cands) above += x.z >= st.theta;
    if (above >= c.top_k) return true;
  }
  return c.log_min_p != -kInf && c.top_p >= 1.0f && st.theta <= zmax + c.log_min_p;
}

// Smallest kept score of the nucleus: sorted by z descending, the value at the last position
// whose exclusive cumulative mass is below `target` (ties at the cut all kept). Uses .e; `above`
// is the mass of the row's ids ranked before all of v.
inline float nucleus_cut(std::vector<Candidate>& v, double target, double above = 0.0) {
  size_t lo = 0, hi = v.size();
  while (hi - lo > 32) {
    // median of three as pivot, then a three-way partition: [> p][== p][< p]
    const float a = v[lo].z, b = v[(lo + hi) / 2].z, c = v[hi - 1].z;
    const float pivot = std::max(std::min(a, b), std::min(std::max(a, b), c));
    auto gt_end = std::partition(v.begin() + lo, v.begin() + hi, [&](const Candidate& x) { return x.z > pivot; });
    auto eq_end = std::partition(gt_end, v.begin() + hi, [&](const Candidate& x) { return x.z == pivot; });
    double gt_mass = 0.0, eq_mass = 0.0;
    for (auto it = v.begin() + lo; it != gt_end; ++it) gt_mass += it->e;
    for (auto it = gt_end; it != eq_end; ++it) eq_mass += it->e;
    if (above + gt_mass >= target) {
      hi = static_cast<size_t>(gt_end - v.begin());
    } else if (above + gt_mass + eq_mass >= target) {
      return pivot;
    } else {
      above += gt_mass + eq_mass;
      lo = static_cast<size_t>(eq_end - v.begin());
    }
  }
  std::sort(v.begin() + lo, v.begin() + hi, [](const Candidate& x, const Candidate& y) { return x.z > y.z; });
  for (size_t j = lo; j < hi; ++j) {
    above += v[j].e;
    if (above >= target) return v[j].z;
  }
  return hi > lo ? v[hi - 1].z : -kInf;
}

// The Gumbel race over surviving candidates: out.token = argmax(z + g), ties to the lower id.
// kLanes candidates per Philox call (lane l computes counter id_l / 4 and keeps word
// id_l % 4), so the noise is bit-identical to gumbel_at; groups that cannot beat the best key
// are skipped (the noise never exceeds kGumbelMax).
// best_key, out.token and out.z hold the winner so far (e.g. of a streamed race; -inf, -1: none).
TITA_INLINE void race_candidates_body(const NoiseAddress& a, const std::vector<Candidate>& v, RowOutcome& out,
                                      float best_key) {
  using L = LaneOps<vf>;
  const auto consider = [&](float key, const Candidate& x) {
    if (key > best_key || (key == best_key && x.id < out.token)) {
      best_key = key;
      out.token = x.id;
      out.z = x.z;
    }
  };
  const size_t n = v.size();
  size_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    vf z;
    vu counter, word;
    for (int l = 0; l < kLanes; ++l) {
      z[l] = v[j + l].z;
      counter[l] = static_cast<uint32_t>(v[j + l].id >> 2);
      word[l] = static_cast<uint32_t>(v[j + l].id & 3);
    }
    if (!any_lane(z + kGumbelMax >= best_key)) continue;
    const Philox4<vu> r = philox4x32<vf>(
        counter, L::splat_u(a.row), L::splat_u(static_cast<uint32_t>(a.offset)),
        L::splat_u(static_cast<uint32_t>(a.offset >> 32)), L::splat_u(static_cast<uint32_t>(a.seed)),
        L::splat_u(static_cast<uint32_t>(a.seed >> 32)));
    const vu bits = word == 0u ? r.x[0] : (word == 1u ? r.x[1] : (word == 2u ? r.x[2] : r.x[3]));
    const vf keys = z + gumbel_from_bits<vf>(bits);
    if (!(hmax(keys) >= best_key)) continue;
    for (int l = 0; l < kLanes; ++l) consider(keys[l], v[j + l]);
  }
  for (; j < n; ++j) {
    const Candidate& x = v[j];
    if (x.z + kGumbelMax < best_key) continue;
    consider(x.z + gumbel_at(a, x.id), x);
  }
}
TITA_FLATTENED(inline, void, race_candidates,
               (const NoiseAddress& a, const std::vector<Candidate>& v, RowOutcome& out, float best_key),
               (a, v, out, best_key))


// x.e = exp(x.z - zmax) in fp64 for every candidate (mass64.h); returns their sum.
inline double fill_weights(std::vector<Candidate>& v, float zmax) {
  const size_t n = v.size(), padded = (n + kLanes - 1) / kLanes * kLanes;
  std::vector<float> z(padded, -kInf);
  std::vector<double> e(padded);
  for (size_t j = 0; j < n; ++j) z[j] = v[j].z;
  const MassSums sums = masses64(z.data(), static_cast<int>(padded), zmax, kKeyClamp, -kInf, e.data());
  for (size_t j = 0; j < n; ++j) v[j].e = e[j];
  return sums.total;
}

template <typename Pred>
inline void keep_if(std::vector<Candidate>& v, Pred keep) {
  v.erase(std::remove_if(v.begin(), v.end(), [&](const Candidate& x) { return !keep(x); }), v.end());
}

// Apply the filters to a sufficient buffer; returns false when the row must be scanned again
// with its plausibility floor known.
inline bool finish_sparse(const RowConfig& c, const NoiseAddress& noise, RangeState& st, bool choose,
                          RowOutcome& out) {
  auto& v = st.cands;
  if (c.log_floor != -kInf) {
    out.floor = st.base_max + c.log_floor;
    keep_if(v, [&](const Candidate& x) { return x.b >= out.floor; });
  }
  float zmax = -kInf;
  for (const Candidate& x : v) zmax = std::max(zmax, x.z);
  if (!buffer_sufficient(c, st, zmax)) return false;
  if (v.empty()) {
    out.status = kStatusNoFinite;
    return true;
  }
  // With k or more candidates the k-th largest is the cut (also with exactly k: the row's other
  // ids lie below theta, so below it). With fewer, the cut lies below the window: nothing here.
  if (c.top_k > 0 && static_cast<int64_t>(v.size()) >= c.top_k) {
    std::nth_element(v.begin(), v.begin() + (c.top_k - 1), v.end(),
                     [](const Candidate& a, const Candidate& b) { return a.z > b.z; });
    out.tau = v[c.top_k - 1].z;
    keep_if(v, [&](const Candidate& x) { return x.z >= out.tau; });
  }
  const double total = fill_weights(v, zmax);
  if (c.top_p < 1.0f) {
    const float cut = nucleus_cut(v, static_cast<double>(c.top_p) * total);
    out.tau = std::max(out.tau, cut);
  }
  if (c.log_min_p != -kInf) out.tau = std::max(out.tau, zmax + c.log_min_p);
  keep_if(v, [&](const Candidate& x) { return x.z >= out.tau; });
  double norm = 0.0;
  for (const Candidate& x : v) norm += x.e;
  out.log_norm = zmax + static_cast<float>(std::log(norm));
  if (!choose) return true;

  if (c.greedy) {
    float best = -kInf;
    for (const Candidate& x : v) {
      if (x.z > best || (x.z == best && x.id < out.token)) {
        best = x.z;
        out.token = x.id;
        out.z = x.z;
      }
    }
  } else {
    race_candidates(noise, v, out, -kInf);
  }
  return true;
}

// Two-pass rows after pass 2: the top-p cut among the collected ids (fp64 masses; the ids above
// them were kept and raced while streaming), min-p, the normaliser and the race's last part.
// Returns false when the histogram's keys missed the cut (the row must take the buffer route).
inline bool finish_two_pass(const RowConfig& c, const NoiseAddress& noise, const FinalCut& f, RangeState& st,
                            bool choose, RowOutcome& out) {
  auto& v = st.cands;
  out.tau = f.min_p_cut;
  if (f.top_p) {
    const double target = static_cast<double>(c.top_p) * st.total64;
    double collected = 0.0;
    for (const Candidate& x : v) collected += x.e;
    if (!(st.above64 < target && target <= st.above64 + collected)) return false;
    out.tau = std::max(out.tau, nucleus_cut(v, target, st.above64));
    keep_if(v, [&](const Candidate& x) { return x.z >= out.tau; });
  }
  double norm = 0.0;
  for (const Candidate& x : v) norm += x.e;
  const float streamed = st.guided.value();  // min-p alone: an fp32 log-sum-exp of the kept ids
  if (f.top_p) {
    norm += st.kept64;
  } else if (streamed != -kInf) {
    norm += std::exp(static_cast<double>(streamed) - f.zmax);
  }
  out.log_norm = f.zmax + static_cast<float>(std::log(norm));
  if (!choose) return true;
  out.token = st.best_id;
  out.z = st.best_z;
  if (c.greedy) {
    for (const Candidate& x : v) {
      if (x.z > st.best_key || (x.z == st.best_key && x.id < out.token)) {
        st.best_key = x.z;
        out.token = x.id;
        out.z = x.z;
      }
    }
  } else {
    race_candidates(noise, v, out, st.best_key);
  }
  return true;
}

}  // namespace TITA_CPU_ISA
}  // namespace tita::cpu
