// The op contract shared by every backend: status codes and the per-row sampling parameters.
// Mirrors tita_ext/contract.py.
#pragma once

#include <cmath>
#include <cstdint>

#include "philox.h"

namespace tita {

// Per-row status written by guided_sample (and NaN rows of guided_logprobs).
enum Status : int32_t {
  kStatusOk = 0,
  kStatusNoFinite = 1,  // no allowed token has a finite score (all -inf / NaN, or filtered out)
  kStatusBadParam = 2,  // a per-row parameter is outside its range
  // A finite logit gave a non-finite score: the combination or the 1/temperature scaling overflowed
  // fp32 (e.g. logit 1e33 at temperature 1e-6). Checked over every id of the shared range whose
  // inputs are all finite, before any filter; the row yields no token.
  kStatusOverflow = 3,
};

constexpr float kMinTemperature = 1e-6f;  // 0 means greedy; (0, 1e-6) would overflow fp32 scores

// One parameter: a scalar, or a per-row tensor that overrides it (contiguous, length B).
template <typename T>
struct ParamSource {
  T scalar;
  const T* rows;  // nullptr: use scalar
  TITA_HD T at(int64_t row) const { return rows ? rows[row] : scalar; }
};

struct SamplingParams {
  ParamSource<float> alpha, temperature, top_p, min_p, plausibility;
  ParamSource<int64_t> top_k;
};

// One row's parameters, checked and turned into what the kernels use.
struct RowConfig {
  float alpha;
  bool lerp;         // no reference logits: s = lerp(b, r, alpha)
  bool greedy;       // temperature == 0
  float inv_t;       // 1 / temperature (1 when greedy)
  int64_t top_k;     // 0: off (also when >= vocab)
  float top_p;       // 1: off
  float log_min_p;   // -inf: off
  float log_floor;   // log(plausibility); -inf: off
  bool valid;

  // No filter at all: the whole shared range is allowed and one online pass does everything.
  TITA_HD bool dense() const { return top_k == 0 && top_p >= 1.0f && log_min_p == -INFINITY && log_floor == -INFINITY; }
};

TITA_HD RowConfig make_row_config(const SamplingParams& p, int64_t row, int64_t vocab, bool has_ref) {
  RowConfig c;
  const float alpha = p.alpha.at(row), t = p.temperature.at(row), top_p = p.top_p.at(row);
  const float min_p = p.min_p.at(row), floor = p.plausibility.at(row);
  const int64_t k = p.top_k.at(row);
  c.valid = std::isfinite(alpha) && std::isfinite(t) && (t == 0.0f || t >= kMinTemperature) && k >= 0 &&
            top_p > 0.0f && top_p <= 1.0f && min_p >= 0.0f && min_p <= 1.0f && floor >= 0.0f && floor <= 1.0f;
  c.alpha = alpha;
  c.lerp = !has_ref;
  c.greedy = t == 0.0f;
  c.inv_t = c.greedy ? 1.0f : 1.0f / t;
  c.top_k = (k > 0 && k < vocab) ? k : 0;
  c.top_p = top_p;
  c.log_min_p = min_p > 0.0f ? plog(min_p) : -INFINITY;
  c.log_floor = floor > 0.0f ? plog(floor) : -INFINITY;
  return c;
}

}  // namespace tita
