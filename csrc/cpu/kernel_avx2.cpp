// The CPU kernel for AVX2 + FMA machines: 8 fp32 lanes (simd.h).
#include "kernel_prelude.h"

#if TITA_CPU_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#define TITA_CPU_ISA avx2
#define TITA_CPU_LANES 8
#include "guided_ops_kernel.h"
#pragma GCC pop_options
#endif
