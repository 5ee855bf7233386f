// A CPU emulation of the CUDA features the fused kernels use, so that their device code
// (csrc/cuda/*.cuh) runs on a machine without a GPU: one OS thread per CUDA thread of a block,
// blocks one after another; __syncthreads is a block barrier; shuffles are exchanged per warp of
// 32 lanes (masks checked, a divergent shuffle reported, not hung); __syncthreads_count goes
// through a shared counter between barriers; global loads and stores are counted; fp32 arithmetic is IEEE (built with -ffp-contract=off,
// so __fadd_rn & co. are plain operations, as on the device).
//
// It checks the kernels' logic (plan, slices, merges, selections, the race, addressing, strides,
// dtypes) against the reference; it cannot check timing, memory-model or occupancy questions.
// The cuda_runtime.h / cuda_fp16.h / cuda_bf16.h / cuda_runtime_api.h beside this file
// forward here, so the kernel headers compile unchanged (tests/test_cuda_emulated.py builds it).
#pragma once

#include <atomic>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#define __global__ inline  // (block statics of every kernel in COMDAT sections alike: see __shared__)
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Shared memory: every __shared__ variable lives in one section, which the pool fills with a
// different garbage byte before each block (as a block's shared memory holds leftovers on the GPU:
// a kernel that reads it before writing it fails here too).
#define __shared__ __attribute__((section("tita_emu_shared"))) static
extern "C" unsigned char __start_tita_emu_shared[], __stop_tita_emu_shared[];

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct float4 {
  float x, y, z, w;
};
struct uint4 {
  unsigned x, y, z, w;
};
struct int2 {
  int x, y;
};

inline thread_local dim3 threadIdx;
inline dim3 blockIdx, gridDim, blockDim;

using cudaError_t = int;
using cudaStream_t = void*;
constexpr int cudaSuccess = 0;
constexpr int cudaErrorInvalidValue = 1;
constexpr int cudaDevAttrMultiProcessorCount = 16;
namespace emu {
inline int sm_count = 132;
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, int, int) {
  *v = emu::sm_count;
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

namespace emu {
inline void count_load(size_t bytes);
}
template <typename T>
inline T __ldg(const T* p) {
  emu::count_load(sizeof(T));
  return *p;
}
template <typename T>
inline T __ldcg(const T* p) {  // counted by gload_l2
  return *p;
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <typename To, typename From>
inline To emu_bits(From f) {
  To t;
  std::memcpy(&t, &f, sizeof(t));
  return t;
}
inline unsigned __float_as_uint(float f) { return emu_bits<unsigned>(f); }
inline float __uint_as_float(unsigned u) { return emu_bits<float>(u); }
inline float __int_as_float(int i) { return emu_bits<float>(i); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __expf(float x) { return std::exp(x); }

struct __half {
  unsigned short x;
};
struct __nv_bfloat16 {
  unsigned short x;
};
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16{u}; }
inline float __bfloat162float(__nv_bfloat16 h) { return emu_bits<float>(static_cast<uint32_t>(h.x) << 16); }
inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.x & 0x8000u) << 16, e = (h.x >> 10) & 0x1Fu, m = h.x & 0x3FFu;
  if (e == 0) {
    const float v = std::ldexp(static_cast<float>(m), -24);
    return sign ? -v : v;
  }
  if (e == 31) return emu_bits<float>(sign | 0x7F800000u | (m << 13));
  return emu_bits<float>(sign | ((e + 112u) << 23) | (m << 13));
}

namespace emu {

#ifndef TITA_CUDA_EMU_THREADS
#error "build with -DTITA_CUDA_EMU_THREADS=<threads per block>"
#endif
constexpr int kBlock = TITA_CUDA_EMU_THREADS;

inline std::barrier<>& block_barrier() {
  static std::barrier<> b(kBlock);
  return b;
}

struct alignas(16) Slot {
  unsigned char bytes[16];
};

// Warp-level exchange, per warp of 32 lanes: every lane named in the mask must arrive (with the
// same mask, which must include the caller); a lane missing (a divergent shuffle) or a mask that
// disagrees fails with a message, as the GPU's result would be undefined, instead of hanging.
class WarpSync {
 public:
  void arrive(unsigned mask) {
    std::unique_lock<std::mutex> lock(m_);
    const int lane = static_cast<int>(threadIdx.x & 31u);
    if (!(mask & (1u << lane))) fail("a lane shuffles with a mask that excludes it", mask);
    if (count_ == 0) mask_ = mask;
    if (mask != mask_) fail("lanes of one warp shuffle with different masks", mask);
    const unsigned gen = gen_;
    if (++count_ == __builtin_popcount(mask_)) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
      return;
    }
    if (!cv_.wait_for(lock, std::chrono::seconds(timeout_s()), [&] { return gen_ != gen; })) {
      fail("divergent shuffle: not every lane of the mask arrived in time", mask);
    }
  }

 private:
  // TITA_EMU_WARP_TIMEOUT_S (default 120): how long lanes wait for the rest of their warp.
  static int timeout_s() {
    static const int t = [] {
      const char* e = std::getenv("TITA_EMU_WARP_TIMEOUT_S");
      return e != nullptr && std::atoi(e) > 0 ? std::atoi(e) : 120;
    }();
    return t;
  }
  [[noreturn]] void fail(const char* what, unsigned mask) {
    std::fprintf(stderr, "CUDA emulation: %s (thread %u, mask %08x, block %u,%u)\n", what, threadIdx.x, mask,
                 blockIdx.x, blockIdx.y);
    std::abort();
  }
  std::mutex m_;
  std::condition_variable cv_;
  int count_ = 0;
  unsigned mask_ = 0, gen_ = 0;
};

template <typename T>
inline T exchange(T v, int partner, unsigned mask) {
  static_assert(sizeof(T) <= sizeof(Slot), "shuffled type too large");
  static Slot buf[kBlock];
  static WarpSync warps[(kBlock + 31) / 32];
  WarpSync& w = warps[threadIdx.x / 32];
  std::memcpy(&buf[threadIdx.x], &v, sizeof(T));
  w.arrive(mask);  // every lane has written
  T r;
  std::memcpy(&r, &buf[(threadIdx.x & ~31u) + (partner & 31)], sizeof(T));
  w.arrive(mask);  // every lane has read before the buffer is reused
  return r;
}

inline int count_barrier(int pred) {
  static std::atomic<int> counts[2];
  static thread_local int phase = 0;
  const int ph = phase;
  phase ^= 1;
  if (pred) counts[ph].fetch_add(1);
  block_barrier().arrive_and_wait();
  const int r = counts[ph].load();
  block_barrier().arrive_and_wait();
  if (threadIdx.x == 0) counts[ph].store(0);
  return r;
}

// Runs a kernel body over a grid: a pool of kBlock threads executes each block in turn.
class Pool {
 public:
  Pool() {
    for (int t = 0; t < kBlock; ++t) {
      workers_.emplace_back([this, t] {
        threadIdx = dim3(static_cast<unsigned>(t));
        for (;;) {
          start_.arrive_and_wait();
          if (stop_) return;
          job_();
          done_.arrive_and_wait();
        }
      });
    }
  }
  ~Pool() {
    stop_ = true;
    start_.arrive_and_wait();
    for (auto& w : workers_) w.join();
  }
  void run(dim3 grid, const std::function<void()>& body) {
    gridDim = grid;
    blockDim = dim3(kBlock);
    job_ = body;
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = dim3(x, y);
        garbage_ = static_cast<unsigned char>(garbage_ * 5u + 0x3Bu);  // never 0 twice in a row
        std::memset(__start_tita_emu_shared, garbage_, static_cast<size_t>(__stop_tita_emu_shared - __start_tita_emu_shared));
        start_.arrive_and_wait();
        done_.arrive_and_wait();
      }
    }
  }

 private:
  std::vector<std::thread> workers_;
  std::barrier<> start_{kBlock + 1}, done_{kBlock + 1};
  std::function<void()> job_;
  std::atomic<bool> stop_{false};
  unsigned char garbage_ = 0xA5;
};

// The pool every emulated launch runs on (TITA_LAUNCH in csrc/cuda/launch.h).
inline void launch(dim3 grid, const std::function<void()>& body) {
  static Pool pool;
  pool.run(grid, body);
}

// Global-memory traffic and row paths of the calls since reset_counters (csrc/cuda/block_reduce.cuh
// gload / gstore / __ldg, TITA_TRACE_PATH).
inline std::atomic<int64_t> loaded{0}, stored{0};
inline std::vector<int32_t> paths;  // per row: the last RowPath recorded (0: none)
inline std::atomic<int32_t> path_writes{0};
// Bytes loaded by the width of the load: [0] 2-byte, [1] 4-byte, [2] 8-byte, [3] 16-byte, [4] other.
inline std::atomic<int64_t> loaded_by_width[5];
inline void count_load(size_t bytes) {
  loaded.fetch_add(static_cast<int64_t>(bytes), std::memory_order_relaxed);
  const int w = bytes == 2 ? 0 : bytes == 4 ? 1 : bytes == 8 ? 2 : bytes == 16 ? 3 : 4;
  loaded_by_width[w].fetch_add(static_cast<int64_t>(bytes), std::memory_order_relaxed);
}
inline void count_store(size_t bytes) { stored.fetch_add(static_cast<int64_t>(bytes), std::memory_order_relaxed); }
inline void trace_path(int64_t row, int32_t path) {
  if (threadIdx.x != 0) return;
  if (row >= 0 && static_cast<size_t>(row) < paths.size()) paths[row] = path;
  path_writes.fetch_add(1);
}
inline void reset_counters(int64_t rows) {
  loaded = 0;
  stored = 0;
  for (auto& w : loaded_by_width) w = 0;
  path_writes = 0;
  paths.assign(static_cast<size_t>(rows), 0);
}

}  // namespace emu

inline void __syncthreads() { emu::block_barrier().arrive_and_wait(); }
inline int __syncthreads_count(int pred) { return emu::count_barrier(pred); }
inline int __syncthreads_or(int pred) { return emu::count_barrier(pred) > 0; }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int o) {
  return emu::exchange(v, static_cast<int>(threadIdx.x & 31u) ^ o, mask);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned d) {
  const int lane = static_cast<int>(threadIdx.x & 31u);
  return emu::exchange(v, lane + static_cast<int>(d) < 32 ? lane + static_cast<int>(d) : lane, mask);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned d) {
  const int lane = static_cast<int>(threadIdx.x & 31u);
  return emu::exchange(v, lane >= static_cast<int>(d) ? lane - static_cast<int>(d) : lane, mask);
}
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline double atomicAdd(double* p, double v) { return std::atomic_ref<double>(*p).fetch_add(v); }
inline unsigned atomicMin(unsigned* p, unsigned v) {
  std::atomic_ref<unsigned> a(*p);
  unsigned old = a.load();
  while (v < old && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
  std::atomic_ref<unsigned long long> a(*p);
  unsigned long long old = a.load();
  while (v > old && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
inline unsigned atomicMax(unsigned* p, unsigned v) {
  std::atomic_ref<unsigned> a(*p);
  unsigned old = a.load();
  while (v > old && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
