// exp(z - zmax) in fp64 of the fp32 difference: the top-p masses exactly as the reference forms
// them (torch.exp((sorted_z - zmax).double())), so the nucleus cut agrees to fp64 rounding.
#pragma once

#include "simd.h"

namespace tita::cpu {

struct MassSums {
  double total = 0.0;  // every id
  double above = 0.0;  // ids whose bin key (histogram.h) is above key_hi
  double kept = 0.0;   // those of them with z >= min_z
};

// e[i] = exp((double)(z[i] - zmax)) for i < n (n a multiple of kLanes; z finite or -inf, <= zmax);
// 0 for -inf and below exp(-708); returns their sums. Compiled in mass64.cpp with FMA contraction
// (~1 ulp).
MassSums masses64(const float* z, int n, float zmax, int32_t key_hi, float min_z, double* e);

}  // namespace tita::cpu
