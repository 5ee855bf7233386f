// Which instruction set the CPU kernels run with (simd.h's TITA_CPU_DISPATCH).
#pragma once

namespace tita::cpu {

enum class Capability { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

// The best set this CPU supports (AVX-512: F, BW, DQ, VL; AVX2: AVX2 and FMA), lowered to
// TITA_EXT_CPU_CAPABILITY when that names a lower one ("avx2" or "default"; ATen's spelling).
// Read once, at the first call.
Capability cpu_capability();

// "avx512", "avx2" or "default".
const char* capability_name(Capability c);

}  // namespace tita::cpu
