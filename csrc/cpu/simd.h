// Portable SIMD for the CPU kernels: GCC/Clang vector extensions, 16 fp32 lanes.
//
// The hot entry points are written once as always_inline bodies and stamped out by
// TITA_CPU_DISPATCH for three instruction sets (AVX-512, AVX2 + FMA, baseline x86-64), each
// flattened so that everything it calls is compiled for that set; a plain function of the entry's
// name calls the one chosen by cpu_capability() (capability.h): the best the CPU supports, or a
// lower one named by TITA_EXT_CPU_CAPABILITY=avx2|default (to measure an AVX2-only machine on an
// AVX-512 one, like ATen's ATEN_CPU_CAPABILITY). No -march flag and no intrinsics are needed.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "../common/philox.h"
#include "capability.h"

#define TITA_INLINE inline __attribute__((always_inline))

// TITA_CPU_DISPATCH(spec, ret, name, (params), (args)): `spec ret name(params)` (spec: inline in a
// header, empty for a function declared elsewhere) dispatching to name##_body(args) compiled for
// AVX-512, AVX2 + FMA or the baseline.
#if defined(__x86_64__) && !defined(__clang__)
#define TITA_CPU_DISPATCH(spec, ret, name, params, args)                                            \
  __attribute__((target("arch=x86-64-v4"), flatten)) static ret name##_avx512 params {             \
    return name##_body args;                                                                       \
  }                                                                                                \
  __attribute__((target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt"), flatten)) static ret name##_avx2 params { \
    return name##_body args;                                                                       \
  }                                                                                                \
  __attribute__((flatten)) static ret name##_default params { return name##_body args; }           \
  spec ret name params {                                                                           \
    switch (::tita::cpu::cpu_capability()) {                                                       \
      case ::tita::cpu::Capability::kAvx512: return name##_avx512 args;                           \
      case ::tita::cpu::Capability::kAvx2: return name##_avx2 args;                               \
      default: return name##_default args;                                                         \
    }                                                                                              \
  }
#else
#define TITA_CPU_DISPATCH(spec, ret, name, params, args) \
  __attribute__((flatten)) spec ret name params { return name##_body args; }
#endif

namespace tita::cpu {

constexpr int kLanes = 16;
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));

typedef uint64_t vu64 __attribute__((vector_size(128)));

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

// Horizontal reductions in log2(16) = 4 shuffle steps (no lane-by-lane extraction).
template <typename V, typename Op>
TITA_INLINE V fold_lanes(V v, Op op) {
  v = op(v, __builtin_shuffle(v, vi{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7}));
  v = op(v, __builtin_shuffle(v, vi{4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11}));
  v = op(v, __builtin_shuffle(v, vi{2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13}));
  v = op(v, __builtin_shuffle(v, vi{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14}));
  return v;
}

TITA_INLINE float hmax(vf v) { return fold_lanes(v, [](vf a, vf b) { return vmax(a, b); })[0]; }

TITA_INLINE float hsum(vf v) { return fold_lanes(v, [](vf a, vf b) { return a + b; })[0]; }

TITA_INLINE bool any_lane(vi mask) { return fold_lanes(mask, [](vi a, vi b) { return a | b; })[0] != 0; }

// exp(x) for -87.3 <= x <= ~88 (below that it returns exp(-87.3) ~ 1e-38, also for -inf):
// Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then a degree-6 polynomial for exp(r);
// about 1-2 ulp.
TITA_INLINE vf vexp_floored(vf x) {
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
  return p * scale;
}

// exp(x) for x <= ~88, with exp(x < -87.3) = 0 and exp(-inf) = 0.
TITA_INLINE vf vexp(vf x) { return vselect(x < -87.33654f, vsplat(0.0f), vexp_floored(x)); }

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

TITA_INLINE float chunk_max(const float* x, int n) {
  vf m = vsplat(-kInf);
  for (int i = 0; i < n; i += kLanes) m = vmax(m, vload(x + i));
  return hmax(m);
}

}  // namespace tita::cpu

namespace tita {

// 16-lane versions of the operations the shared Philox / plog templates need (philox.h).
template <>
struct LaneOps<cpu::vf> {
  using F = cpu::vf;
  using U = cpu::vu;
  using I = cpu::vi;
  static TITA_INLINE F splat(float x) { return F{} + x; }
  static TITA_INLINE U splat_u(uint32_t x) { return U{} + x; }
  static TITA_INLINE U bits(F f) { return reinterpret_cast<U&>(f); }
  static TITA_INLINE F from_bits(U u) { return reinterpret_cast<F&>(u); }
  static TITA_INLINE I to_int(U u) { return reinterpret_cast<I&>(u); }
  static TITA_INLINE F to_float(I i) { return __builtin_convertvector(i, F); }
  static TITA_INLINE F u_to_float(U u) { return __builtin_convertvector(u, F); }
  static TITA_INLINE F select(I c, F a, F b) { return c ? a : b; }
  static TITA_INLINE I select(I c, I a, I b) { return c ? a : b; }
  static TITA_INLINE U mulhi(U a, uint32_t b) {
    const cpu::vu64 wide = __builtin_convertvector(a, cpu::vu64) * static_cast<uint64_t>(b);
    return __builtin_convertvector(wide >> 32, U);
  }
};

}  // namespace tita
