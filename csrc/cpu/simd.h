// Portable SIMD for the CPU kernels: GCC/Clang vector extensions, 16 fp32 lanes.
//
// The hot entry points are compiled several times with TITA_CPU_CLONES (AVX-512, AVX2, baseline)
// and the loader picks the best for the machine, so no -march flag and no intrinsics are
// needed. Everything here is always_inline so that it lands inside those clones.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__x86_64__) && !defined(__clang__)
#define TITA_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), flatten))
#else
#define TITA_CPU_CLONES __attribute__((flatten))
#endif
#define TITA_INLINE inline __attribute__((always_inline))

namespace tita::cpu {

constexpr int kLanes = 16;
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));

constexpr float kInf = std::numeric_limits<float>::infinity();

TITA_INLINE vf vload(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

TITA_INLINE void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }

TITA_INLINE vf vsplat(float x) { return vf{} + x; }

TITA_INLINE vf vselect(vi mask, vf a, vf b) { return mask ? a : b; }

// NaN and +-inf become -inf: such a token is never chosen and adds nothing to a sum.
TITA_INLINE vf finite_or_neg_inf(vf x) { return vselect((x - x) == 0.0f, x, vsplat(-kInf)); }

TITA_INLINE vf vmax(vf a, vf b) { return a > b ? a : b; }

TITA_INLINE float hmax(vf v) {
  float m = v[0];
  for (int j = 1; j < kLanes; ++j) m = v[j] > m ? v[j] : m;
  return m;
}

TITA_INLINE float hsum(vf v) {
  float s = 0.0f;
  for (int j = 0; j < kLanes; ++j) s += v[j];
  return s;
}

TITA_INLINE bool any_lane(vi mask) {
  vi folded = mask;
  int32_t r = 0;
  for (int j = 0; j < kLanes; ++j) r |= folded[j];
  return r != 0;
}

// exp(x) for x <= ~88, with exp(-inf) = 0 and exp(x < -87.3) = 0: Cody-Waite reduction
// x = n ln2 + r, |r| <= ln2/2, then a degree-6 polynomial for exp(r); about 1-2 ulp.
TITA_INLINE vf vexp(vf x) {
  const vf xc = vmax(x, vsplat(-87.33654f));
  const vf shifter = vsplat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const vf n = (xc * 1.44269504088896341f + shifter) - shifter;
  vf r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = vsplat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = (p * r) * r + r + 1.0f;
  const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return vselect(x < -87.33654f, vsplat(0.0f), p * scale);
}

TITA_INLINE float sexp(float x) { return vexp(vsplat(x))[0]; }

// Online log-sum-exp: the row's maximum and the sum of exp(x - max) seen so far.
struct OnlineLse {
  float max = -kInf;
  float sum = 0.0f;

  TITA_INLINE void merge(float other_max, float other_sum) {
    if (other_max == -kInf) return;
    if (other_max > max) {
      sum = (max == -kInf ? 0.0f : sum * sexp(max - other_max)) + other_sum;
      max = other_max;
    } else {
      sum += other_sum * sexp(other_max - max);
    }
  }
  TITA_INLINE void merge(const OnlineLse& o) { merge(o.max, o.sum); }
  // log(sum exp(x)), -inf for an empty or all -inf row.
  TITA_INLINE float value() const { return max == -kInf ? -kInf : max + std::log(sum); }
};

// Max and sum-exp of n values (n a multiple of kLanes), two passes over data that is in L1.
TITA_INLINE OnlineLse chunk_lse(const float* x, int n) {
  vf m = vsplat(-kInf);
  for (int i = 0; i < n; i += kLanes) m = vmax(m, vload(x + i));
  OnlineLse out;
  out.max = hmax(m);
  if (out.max == -kInf) return out;
  const vf shift = vsplat(out.max);
  vf s = vsplat(0.0f);
  for (int i = 0; i < n; i += kLanes) s += vexp(vload(x + i) - shift);
  out.sum = hsum(s);
  return out;
}

TITA_INLINE float chunk_max(const float* x, int n) {
  vf m = vsplat(-kInf);
  for (int i = 0; i < n; i += kLanes) m = vmax(m, vload(x + i));
  return hmax(m);
}

}  // namespace tita::cpu
