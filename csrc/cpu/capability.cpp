// cpu_capability(): the CPU's best instruction set, optionally lowered by TITA_EXT_CPU_CAPABILITY.
#include "capability.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace tita::cpu {
namespace {

Capability hardware_capability() {
#if TITA_CPU_MULTI_ISA
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma")) {
    return Capability::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Capability::kAvx2;
#endif
  return Capability::kDefault;
}

Capability choose() {
  const Capability hw = hardware_capability();
  const char* env = std::getenv("TITA_EXT_CPU_CAPABILITY");
  if (env == nullptr || *env == '\0') return hw;
  const std::string want(env);
  Capability asked;
  if (want == "avx512") {
    asked = Capability::kAvx512;
  } else if (want == "avx2") {
    asked = Capability::kAvx2;
  } else if (want == "default") {
    asked = Capability::kDefault;
  } else {
    TORCH_WARN("TITA_EXT_CPU_CAPABILITY=", want, " is not one of avx512, avx2, default: ignored (using ",
               capability_name(hw), ")");
    return hw;
  }
  if (asked > hw) {
    TORCH_WARN("TITA_EXT_CPU_CAPABILITY=", want, " is not supported by this CPU: using ", capability_name(hw));
    return hw;
  }
  return asked;
}

}  // namespace

Capability cpu_capability() {
  static const Capability chosen = choose();
  return chosen;
}

const char* capability_name(Capability c) {
  switch (c) {
    case Capability::kAvx512: return "avx512";
    case Capability::kAvx2: return "avx2";
    default: return "default";
  }
}

}  // namespace tita::cpu
