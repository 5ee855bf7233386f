// The CPU kernel for AVX-512 machines (F, BW, DQ, VL): 16 fp32 lanes (simd.h).
#include "kernel_prelude.h"

#if TITA_CPU_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
#define TITA_CPU_ISA avx512
#define TITA_CPU_LANES 16
#include "guided_ops_kernel.h"
#pragma GCC pop_options
#endif
