// Counters of the CPU kernel's passes over logits rows, for tests that bound them (read through
// tita_ext._C.cpu_kernel_stats()). Relaxed atomics, bumped once per scanned slice or finished row.
#pragma once

#include <atomic>
#include <cstdint>

namespace tita::cpu {

struct KernelStats {
  std::atomic<int64_t> rows{0};          // rows finished by guided_sample / guided_logprobs
  std::atomic<int64_t> ids_scanned{0};   // ids streamed by every pass (a row's first pass adds V)
  std::atomic<int64_t> two_pass_rows{0}; // rows that took the histogram route's second pass
  std::atomic<int64_t> fallback_rows{0}; // rows scanned a third time (an estimate missed; never expected)
  std::atomic<int64_t> rescan_rows{0};   // buffer-route rows rescanned for a late plausibility floor
  std::atomic<int64_t> max_candidates{0};// largest candidate buffer a row held
};

KernelStats& kernel_stats();
void reset_kernel_stats();

}  // namespace tita::cpu
