// Which instruction set the CPU kernels run with (one build of the kernel per set: simd.h).
#pragma once

// GCC on x86-64 builds the kernel for AVX-512, AVX2 + FMA and the baseline; other compilers and
// machines build the baseline only.
#if defined(__x86_64__) && !defined(__clang__)
#define TITA_CPU_MULTI_ISA 1
#else
#define TITA_CPU_MULTI_ISA 0
#endif

namespace tita::cpu {

enum class Capability { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

// The best set this CPU supports (AVX-512: F, BW, DQ, VL; AVX2: AVX2 and FMA), lowered to
// TITA_EXT_CPU_CAPABILITY when that names a lower one ("avx2" or "default"; ATen's spelling).
// Read once, when tita_ext._C registers its kernels (on import).
Capability cpu_capability();

// "avx512", "avx2" or "default".
const char* capability_name(Capability c);

}  // namespace tita::cpu
