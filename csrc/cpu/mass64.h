// exp(z - zmax) in fp64 of the fp32 difference: the top-p masses exactly as the reference forms
// them (torch.exp((sorted_z - zmax).double())), so the nucleus cut agrees to fp64 rounding.
// These need fp64 accuracy, not bit-equality with any other backend, so masses64 is compiled
// with fused multiply-adds (~1 ulp).
#pragma once

#include "histogram.h"
#include "simd.h"

namespace tita::cpu {
namespace TITA_CPU_ISA {

struct MassSums {
  double total = 0.0;  // every id
  double above = 0.0;  // ids whose bin key (histogram.h) is above key_hi
  double kept = 0.0;   // those of them with z >= min_z
};

#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")

// fp64 vectors of the registers' width: half as many lanes as vf (a wider vector's compares
// would be lowered element by element, see simd.h).
constexpr int kLanes64 = kLanes / 2;
typedef double vd __attribute__((vector_size(8 * kLanes64)));
typedef int64_t vl __attribute__((vector_size(8 * kLanes64)));
// A whole vf in fp64 (two registers), only as the result of one conversion: GCC does that as two
// register-wide conversions, but converts a half-register float vector (2 lanes under SSE2) lane by lane.
typedef double vd2 __attribute__((vector_size(8 * kLanes)));

// exp(x) for x <= 0: x = n ln2 + r, |r| <= ln2/2, Taylor series to r^13 (error < 1e-17
// relative), times 2^n from the exponent bits. x < -708 (and -inf) gives 0.
TITA_INLINE vd vexp64(vd x) {
  const vl tiny = x < -708.0;
  x = tiny ? vd{} - 708.0 : x;
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  const vd t = x * 1.4426950408889634 + shifter;
  const vd n = t - shifter;
  const vd r = (x - n * 0.6931471803691238) - n * 1.9082149292705877e-10;
  vd p = vd{} + 1.0 / 6227020800.0;  // 1/13!
  constexpr double kInvFact[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
                                 1.0 / 40320.0,     1.0 / 5040.0,     1.0 / 720.0,      1.0 / 120.0,
                                 1.0 / 24.0,        1.0 / 6.0,        0.5,              1.0,
                                 1.0};
  for (double c : kInvFact) p = p * r + c;
  // n as an integer from t's low mantissa bits (no fp64 -> int64 conversion before AVX-512)
  vl ni, shifter_bits = vl{};
  std::memcpy(&ni, &t, sizeof(ni));
  int64_t sb;
  std::memcpy(&sb, &shifter, sizeof(sb));
  shifter_bits += sb;
  const vl bits = (ni - shifter_bits + 1023) << 52;
  vd scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const vd e = p * scale;
  return tiny ? vd{} : e;
}

// Lanes h .. h + kLanes64 - 1 of v.
TITA_INLINE vd lanes_from(const vd2& v, int h) {
  vd out;
  std::memcpy(&out, reinterpret_cast<const double*>(&v) + h, sizeof(out));
  return out;
}

// e[i] = exp((double)(z[i] - zmax)) for i < n (n a multiple of kLanes; z finite or -inf, <= zmax);
// 0 for -inf and below exp(-708); returns their sums. Not inlined into the scan: inlined code
// takes its caller's (non-contracting) options.
__attribute__((noinline)) inline MassSums masses64(const float* z, int n, float zmax, int32_t key_hi, float min_z,
                                                   double* e) {
  const vf m = vsplat(zmax), one = vsplat(1.0f), zero = vsplat(0.0f);
  vd total = vd{}, above = vd{}, kept = vd{};
  const vi hi = vi{} + key_hi;
  for (int i = 0; i < n; i += kLanes) {
    const vf zv = vload(z + i);
    const vi k = bin_keys(zv);
    // the difference in fp32, as the reference; 0/1 weights from nested selects (not mask
    // arithmetic: see row_scan.h's combine_loop); each then in fp64, as two registers' halves
    const vd2 x = __builtin_convertvector(zv - m, vd2);
    const vd2 w_above = __builtin_convertvector(vselect(k > hi, one, zero), vd2);
    const vd2 w_kept = __builtin_convertvector(vselect(k > hi, vselect(zv >= min_z, one, zero), zero), vd2);
    for (int h = 0; h < kLanes; h += kLanes64) {
      const vd v = vexp64(lanes_from(x, h));
      std::memcpy(e + i + h, &v, sizeof(v));
      total += v;
      above += v * lanes_from(w_above, h);
      kept += v * lanes_from(w_kept, h);
    }
  }
  MassSums out;
  for (int l = 0; l < kLanes64; ++l) {
    out.total += total[l];
    out.above += above[l];
    out.kept += kept[l];
  }
  return out;
}

#pragma GCC pop_options

}  // namespace TITA_CPU_ISA
}  // namespace tita::cpu
