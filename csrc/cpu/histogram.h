// The mass histogram of a row's scores for the top-p cut (the two-pass route of guided_ops_cpu.cpp).
//
// Bins lie on a fixed grid of 1/8 nat: key(z) = floor(8 z), a pure function of z, so the first
// pass (which fills the histogram) and the second (which collects the cut's bin) classify every
// id alike. The histogram keeps the 512 keys (64 nats) below the running maximum's key: the top-p
// cut always lies within 40 nats of the maximum (ids further down carry under V e^-40 of the
// mass, less than float32 top_p can tell from 1). Each bin sums exp(z - bin top), in (e^-1/8, 1],
// so a rising maximum only clears the slots that fall out of the window, never rescales.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "simd.h"

namespace tita::cpu {
namespace TITA_CPU_ISA {

constexpr int kHistBins = 512;
constexpr float kBinsPerNat = 8.0f;
constexpr int32_t kKeyClamp = 1 << 30;  // |8 z| beyond 2^30 (z beyond 1.3e8) shares the end keys

// floor(8 z) per lane, clamped to [-2^30, 2^30] (-inf gives -2^30).
TITA_INLINE vi bin_keys(vf z) {
  vf t = z * kBinsPerNat;  // exact: a power of two (inf beyond 4e37, clamped next)
  t = vmax(t, vsplat(-static_cast<float>(kKeyClamp)));
  t = vselect(t > static_cast<float>(kKeyClamp), vsplat(static_cast<float>(kKeyClamp)), t);
  const vi k = __builtin_convertvector(t, vi);  // toward zero
  // minus 1 where truncation rounded up (a select, not mask arithmetic: see combine_loop)
  return k - __builtin_convertvector(vselect(__builtin_convertvector(k, vf) > t, vsplat(1.0f), vsplat(0.0f)), vi);
}

TITA_INLINE int32_t bin_key(float z) { return bin_keys(vsplat(z))[0]; }

struct MassHistogram {
  static constexpr int32_t kEmpty = INT32_MIN;
  int32_t top = kEmpty;       // key of the highest bin (the running maximum's)
  double mass[kHistBins];     // slot key % 512: sum of exp(z - (key + 1) / 8) over the bin's ids

  int32_t bottom() const { return top - (kHistBins - 1); }
  static int slot(int32_t key) { return key & (kHistBins - 1); }

  void raise_top(int32_t key) {
    if (top == kEmpty) {
      std::fill(mass, mass + kHistBins, 0.0);
      top = key;
      return;
    }
    if (key <= top) return;
    const int64_t cleared = std::min<int64_t>(static_cast<int64_t>(key) - top, kHistBins);
    for (int64_t j = 0; j < cleared; ++j) mass[slot(static_cast<int32_t>(bottom() + j))] = 0.0;
    top = key;
  }

  void merge(const MassHistogram& o) {
    if (o.top == kEmpty) return;
    raise_top(o.top);
    for (int64_t key = std::max(bottom(), o.bottom()); key <= o.top; ++key) mass[slot(key)] += o.mass[slot(key)];
  }

  // Fold a chunk of z (n a multiple of kLanes; finite or -inf) in. The caller raised top to the
  // chunk's maximum first.
  TITA_INLINE void add(const float* z, int n) {
    const vi bottom_key = vi{} + bottom();
    for (int i = 0; i < n; i += kLanes) {
      const vf zv = vload(z + i);
      const vi k = bin_keys(zv);
      // in the window (-inf: a key at the clamp, below it, or a negligible ~1e-38 if not)
      const vf in = vselect(k >= bottom_key, vsplat(1.0f), vsplat(0.0f));
      if (!(hmax(in) > 0.0f)) continue;
      const vf e = vexp_floored(zv - __builtin_convertvector(k + 1, vf) * (1.0f / kBinsPerNat));
      for (int l = 0; l < kLanes; ++l) {
        if (in[l] > 0.0f) mass[slot(k[l])] += e[l];
      }
    }
  }
};

// The keys that can hold the top-p cut, from the histogram's estimate (relative error ~1e-6 from
// float32 exps; kMargin covers it): keys above key_hi are surely kept, keys in [key_lo, key_hi]
// hold the cut, keys below are surely dropped. The second pass checks this with fp64 masses.
struct CutKeys {
  int32_t key_lo, key_hi;
};

inline CutKeys locate_top_p(const MassHistogram& h, float zmax, float top_p) {
  constexpr double kMargin = 1e-5;
  double m[kHistBins];
  double total = 0.0;
  for (int j = 0; j < kHistBins; ++j) {
    const int32_t key = h.top - j;
    const double w = h.mass[MassHistogram::slot(key)];
    m[j] = w == 0.0 ? 0.0 : w * std::exp((static_cast<double>(key) + 1.0) / kBinsPerNat - zmax);
    total += m[j];
  }
  const double target = static_cast<double>(top_p) * total;
  // The cut is in the lowest non-empty bin whose mass strictly above it is below the target.
  CutKeys out{h.top, h.top};
  double above = 0.0;
  for (int j = 0; j < kHistBins; ++j) {
    if (m[j] == 0.0) continue;
    const int32_t key = h.top - j;
    if (above < target * (1.0 + kMargin)) out.key_lo = key;
    if (above < target * (1.0 - kMargin)) out.key_hi = key;
    above += m[j];
  }
  return out;
}

}  // namespace TITA_CPU_ISA
}  // namespace tita::cpu
