// Vectorised fp64 exp for the top-p masses (mass64.h). These need fp64 accuracy, not bit-equality
// with any other backend, so this file lets the compiler fuse multiply-adds.
#include "mass64.h"

#include "histogram.h"

#pragma GCC optimize("fp-contract=fast")

namespace tita::cpu {
namespace {

typedef double vd __attribute__((vector_size(128)));  // 16 fp64 lanes
typedef int64_t vl __attribute__((vector_size(128)));

// exp(x) for x <= 0: x = n ln2 + r, |r| <= ln2/2, Taylor series to r^13 (error < 1e-17
// relative), times 2^n from the exponent bits. x < -708 (and -inf) gives 0.
TITA_INLINE vd vexp64(vd x) {
  const vl tiny = x < -708.0;
  x = tiny ? vd{} - 708.0 : x;
  const vd shifter = vd{} + 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  const vd n = (x * 1.4426950408889634 + shifter) - shifter;
  const vd r = (x - n * 0.6931471803691238) - n * 1.9082149292705877e-10;
  vd p = vd{} + 1.0 / 6227020800.0;  // 1/13!
  constexpr double kInvFact[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
                                 1.0 / 40320.0,     1.0 / 5040.0,     1.0 / 720.0,      1.0 / 120.0,
                                 1.0 / 24.0,        1.0 / 6.0,        0.5,              1.0,
                                 1.0};
  for (double c : kInvFact) p = p * r + c;
  const vl bits = (__builtin_convertvector(n, vl) + 1023) << 52;
  vd scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const vd e = p * scale;
  return tiny ? vd{} : e;
}

TITA_INLINE MassSums masses64_body(const float* z, int n, float zmax, int32_t key_hi, float min_z, double* e) {
  const vf m = vsplat(zmax);
  vd total = vd{}, above = vd{}, kept = vd{};
  const vi hi = vi{} + key_hi;
  for (int i = 0; i < n; i += kLanes) {
    const vf zv = vload(z + i);
    const vd x = __builtin_convertvector(zv - m, vd);  // the difference in fp32, as the reference
    const vd v = vexp64(x);
    std::memcpy(e + i, &v, sizeof(v));
    total += v;
    // 0/1 weights from nested selects (not mask arithmetic: see row_scan.h's combine_loop)
    const vi k = bin_keys(zv);
    const vf one = vsplat(1.0f), zero = vsplat(0.0f);
    above += v * __builtin_convertvector(vselect(k > hi, one, zero), vd);
    kept += v * __builtin_convertvector(vselect(k > hi, vselect(zv >= min_z, one, zero), zero), vd);
  }
  MassSums out;
  for (int l = 0; l < kLanes; ++l) {
    out.total += total[l];
    out.above += above[l];
    out.kept += kept[l];
  }
  return out;
}

}  // namespace

TITA_CPU_DISPATCH(, MassSums, masses64,
                  (const float* z, int n, float zmax, int32_t key_hi, float min_z, double* e),
                  (z, n, zmax, key_hi, min_z, e))

}  // namespace tita::cpu
