// Everything a kernel_<isa>.cpp unit includes from outside the kernel, included before its
// `#pragma GCC target` so that library code (std::, ATen) is compiled for the baseline: an inline
// function compiled for AVX-512 in one unit could otherwise be the copy the linker keeps for all.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "../common/contract.h"
#include "../common/op_checks.h"
#include "../common/philox.h"
#include "kernel_entry.h"
#include "kernel_stats.h"
