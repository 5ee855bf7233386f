#include "kernel_stats.h"

namespace tita::cpu {

KernelStats& kernel_stats() {
  static KernelStats stats;
  return stats;
}

void reset_kernel_stats() {
  KernelStats& s = kernel_stats();
  for (auto* c : {&s.rows, &s.ids_scanned, &s.two_pass_rows, &s.fallback_rows, &s.rescan_rows, &s.max_candidates}) {
    c->store(0, std::memory_order_relaxed);
  }
}

}  // namespace tita::cpu
