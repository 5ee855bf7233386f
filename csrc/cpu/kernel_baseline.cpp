// The CPU kernel for the baseline instruction set (x86-64: SSE2; or the build's own): 4 fp32
// lanes, one 128-bit register (simd.h).
#include "kernel_prelude.h"

#define TITA_CPU_ISA baseline
#define TITA_CPU_LANES 4
#include "guided_ops_kernel.h"
