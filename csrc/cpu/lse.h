// The log-sum-exp of each logits chunk (max and sum of exp(x - max) of cleaned fp32 values): the
// costliest loop of the scan (one exp per element and model). Unlike the scores and the noise,
// these sums only need fp32 accuracy, not bit-equality with the reference, so this one function
// is compiled with fused multiply-adds (the rest of the kernel with -ffp-contract=off).
#pragma once

#include "simd.h"

namespace tita::cpu {
namespace TITA_CPU_ISA {

#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")

// n is a multiple of kLanes; values are finite or -inf. vexp_floored: entries of -inf add
// exp(-87.3) ~ 1e-38 each, nothing next to the max's exp(0) = 1.
// Not inlined into the scan: inlined code takes its caller's (non-contracting) options.
__attribute__((noinline)) inline OnlineLse chunk_lse(const float* x, int n) {
  vf m = vsplat(-kInf);
  for (int i = 0; i < n; i += kLanes) m = vmax(m, vload(x + i));
  OnlineLse out;
  out.max = hmax(m);
  if (out.max == -kInf) return out;
  const vf shift = vsplat(out.max);
  vf s0 = vsplat(0.0f), s1 = vsplat(0.0f);  // two accumulators: two exp chains in flight
  int i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    s0 += vexp_floored(vload(x + i) - shift);
    s1 += vexp_floored(vload(x + i + kLanes) - shift);
  }
  if (i < n) s0 += vexp_floored(vload(x + i) - shift);
  out.sum = hsum(s0 + s1);
  return out;
}

#pragma GCC pop_options

}  // namespace TITA_CPU_ISA
}  // namespace tita::cpu
