// Portable SIMD for the CPU kernels: GCC/Clang vector extensions of the instruction set's own width.
//
// The whole kernel (this header and the ones that include it) is compiled once per instruction
// set by a unit of its own (kernel_avx512.cpp: 16 fp32 lanes, kernel_avx2.cpp: 8, kernel_baseline.cpp:
// 4), each in its own namespace tita::cpu::TITA_CPU_ISA under `#pragma GCC target`; guided_ops_cpu.cpp
// calls the one cpu_capability() chooses. Each unit uses vectors no wider than its registers: GCC
// lowers a compare or select on a wider vector (16 lanes under AVX2) element by element, through
// memory, which made the AVX2 kernel ~10x slower than the AVX-512 one. Two checks hold every unit
// to that: vf is exactly one register of the unit's instruction set (static_assert below), and
// GCC's -Wvector-operation-performance, which reports each vector operation the target cannot do
// in its own registers ("will be expanded piecewise / in parallel"), is an error from here on.
// tests/test_cpu_vector_width.py checks both, and the instructions of the built module. No -march
// flag and no intrinsics are needed.
#pragma once

#if !defined(TITA_CPU_ISA) || !defined(TITA_CPU_LANES)
#error "simd.h is compiled through a kernel_<isa>.cpp unit, which defines TITA_CPU_ISA and TITA_CPU_LANES"
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string_view>

#include "../common/philox.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic error "-Wvector-operation-performance"
#endif

#define TITA_INLINE inline __attribute__((always_inline))
#define TITA_CPU_STRINGIFY(x) #x
#define TITA_CPU_STRING(x) TITA_CPU_STRINGIFY(x)

// TITA_FLATTENED(spec, ret, name, (params), (args)): `spec ret name(params)`, an entry point of
// the scan calling name##_body(args) with everything it calls inlined (flatten).
#define TITA_FLATTENED(spec, ret, name, params, args) \
  __attribute__((flatten)) spec ret name params { return name##_body args; }

namespace tita::cpu {
namespace TITA_CPU_ISA {

constexpr int kLanes = TITA_CPU_LANES;
static_assert(kLanes == 4 || kLanes == 8 || kLanes == 16, "4, 8 or 16 fp32 lanes");
typedef float vf __attribute__((vector_size(4 * kLanes)));
typedef int32_t vi __attribute__((vector_size(4 * kLanes)));
typedef uint32_t vu __attribute__((vector_size(4 * kLanes)));
typedef uint64_t vu64 __attribute__((vector_size(4 * kLanes)));  // kLanes / 2 lanes: the same register

// One register of the unit's instruction set, by its name (g++ does not define __AVX2__ etc. under
// `#pragma GCC target`; tests/test_cpu_vector_width.py checks that each namespace's code uses
// these registers).
constexpr std::string_view kIsaName = TITA_CPU_STRING(TITA_CPU_ISA);
constexpr int kRegisterBytes = kIsaName == "avx512" ? 64 : kIsaName == "avx2" ? 32 : 16;  // baseline: SSE2, NEON
static_assert(sizeof(vf) == kRegisterBytes,
              "TITA_CPU_LANES must fill exactly one register of the unit's instruction set");

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

// Horizontal reductions in log2(kLanes) shuffle steps (no lane-by-lane extraction): step s
// pairs lane l with lane l ^ s.
template <int Step>
TITA_INLINE vi xor_lanes() {
  vi idx;
  for (int l = 0; l < kLanes; ++l) idx[l] = l ^ Step;
  return idx;
}

template <typename V, typename Op>
TITA_INLINE V fold_lanes(V v, Op op) {
  if constexpr (kLanes >= 16) v = op(v, __builtin_shuffle(v, xor_lanes<8>()));
  if constexpr (kLanes >= 8) v = op(v, __builtin_shuffle(v, xor_lanes<4>()));
  v = op(v, __builtin_shuffle(v, xor_lanes<2>()));
  v = op(v, __builtin_shuffle(v, xor_lanes<1>()));
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

}  // namespace TITA_CPU_ISA
}  // namespace tita::cpu

namespace tita {

// Vector versions of the operations the shared Philox / plog templates need (philox.h). Compiled
// with the command line's options: philox.h's templates are (kernel_prelude.h includes it before
// the unit's target pragma), and an always_inline function for a wider instruction set cannot be
// inlined into them; once inlined into the kernel they take its instruction set.
#pragma GCC push_options
#pragma GCC reset_options
template <>
struct LaneOps<cpu::TITA_CPU_ISA::vf> {
  using F = cpu::TITA_CPU_ISA::vf;
  using U = cpu::TITA_CPU_ISA::vu;
  using I = cpu::TITA_CPU_ISA::vi;
  static TITA_INLINE F splat(float x) { return F{} + x; }
  static TITA_INLINE U splat_u(uint32_t x) { return U{} + x; }
  static TITA_INLINE U bits(F f) { return (U)f; }  // a cast between same-size vectors keeps the bits
  static TITA_INLINE F from_bits(U u) { return (F)u; }
  static TITA_INLINE I to_int(U u) { return (I)u; }
  static TITA_INLINE F to_float(I i) { return __builtin_convertvector(i, F); }
  static TITA_INLINE F u_to_float(U u) { return __builtin_convertvector(u, F); }
  static TITA_INLINE F select(I c, F a, F b) { return c ? a : b; }
  static TITA_INLINE I select(I c, I a, I b) { return c ? a : b; }
  // High halves of the 32x32->64-bit products, in registers of the vector's own width: the even
  // lanes' and the odd lanes' products as kLanes / 2 64-bit lanes each (a wider 64-bit vector
  // would be split into pieces; see the top of this file).
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "mulhi: lane 2j is the low half of 64-bit lane j");
  static TITA_INLINE U mulhi(U a, uint32_t b) {
    using W = cpu::TITA_CPU_ISA::vu64;
    const W w = (W)a;
    const W even = (w & 0xffffffffu) * static_cast<uint64_t>(b);  // lanes 0, 2, ...: product in 64 bits
    const W odd = (w >> 32) * static_cast<uint64_t>(b);           // lanes 1, 3, ...
    const W hi = (even >> 32) | (odd & 0xffffffff00000000u);      // each high half in its own lane
    return (U)hi;
  }
};

#pragma GCC pop_options

}  // namespace tita
