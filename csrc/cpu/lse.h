// Per-chunk log-sum-exp statistics (max and sum of exp(x - max)) of cleaned fp32 values.
#pragma once

#include "simd.h"

namespace tita::cpu {

// n is a multiple of kLanes; values are finite or -inf. Compiled in lse.cpp with FMA contraction.
OnlineLse chunk_lse(const float* x, int n);

}  // namespace tita::cpu
