// Block-wide building blocks of the fused kernels: online log-sum-exp, the race winner, block
// reductions whose result every thread of the block receives (in the same bits), ordered keys.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "../common/philox.h"

namespace tita::cuda {

// Every fused kernel runs kThreads threads per block. The CPU emulation of the kernels
// (tests/cuda_emu) builds them with fewer threads (cheaper to emulate, more slices per row);
// nothing else may change it.
#ifdef TITA_CUDA_EMU_THREADS
constexpr int kThreads = TITA_CUDA_EMU_THREADS;
#else
constexpr int kThreads = 256;
#endif
constexpr int kWarps = kThreads / 32;
#define TITA_NEG_INF (-INFINITY)

// Global-memory traffic the CPU emulation counts (tests bound the bytes per call): loads of the
// logits and of the scratch go through __ldg / gload, stores through gstore.
#ifdef TITA_CUDA_EMU_THREADS
#define TITA_COUNT_LOAD(bytes) emu::count_load(bytes)
#define TITA_COUNT_STORE(bytes) emu::count_store(bytes)
#define TITA_TRACE_PATH(row, path) emu::trace_path(row, path)
#else
#define TITA_COUNT_LOAD(bytes)
#define TITA_COUNT_STORE(bytes)
#define TITA_TRACE_PATH(row, path)
#endif

template <typename T>
__device__ __forceinline__ void gstore(T* p, const T& v) {
  TITA_COUNT_STORE(sizeof(T));
  *p = v;
}
template <typename T>
__device__ __forceinline__ T gload(const T* p) {
  TITA_COUNT_LOAD(sizeof(T));
  return *p;
}
// A load of what other blocks wrote in this kernel (past L1, which is not coherent across SMs).
template <typename T>
__device__ __forceinline__ T gload_l2(const T* p) {
  static_assert(sizeof(T) % 4 == 0, "loaded as 32-bit words");
  TITA_COUNT_LOAD(sizeof(T));
  T v;
  const unsigned* src = reinterpret_cast<const unsigned*>(p);
  unsigned* dst = reinterpret_cast<unsigned*>(&v);
#pragma unroll
  for (int i = 0; i < static_cast<int>(sizeof(T) / 4); ++i) dst[i] = __ldcg(src + i);
  return v;
}
// Global atomics (a read and a write of the word each).
template <typename T>
__device__ __forceinline__ T gatomic_add(T* p, T v) {
  TITA_COUNT_LOAD(sizeof(T));
  TITA_COUNT_STORE(sizeof(T));
  return atomicAdd(p, v);
}
__device__ __forceinline__ void gatomic_min(uint32_t* p, uint32_t v) {
  TITA_COUNT_LOAD(sizeof(v));
  TITA_COUNT_STORE(sizeof(v));
  atomicMin(p, v);
}
__device__ __forceinline__ void gatomic_max(uint32_t* p, uint32_t v) {
  TITA_COUNT_LOAD(sizeof(v));
  TITA_COUNT_STORE(sizeof(v));
  atomicMax(p, v);
}

__device__ __forceinline__ bool is_finite(float x) { return fabsf(x) <= 3.402823466e38f; }  // false for NaN, +-inf

// Online log-sum-exp: m = max, s = sum of exp(x - m) (m = -inf: empty).
struct Lse {
  float m, s;
};

__device__ __forceinline__ Lse lse_empty() { return Lse{TITA_NEG_INF, 0.0f}; }

__device__ __forceinline__ Lse lse_merge(Lse a, Lse b) {
  if (b.m == TITA_NEG_INF) return a;
  if (a.m == TITA_NEG_INF) return b;
  if (a.m >= b.m) return Lse{a.m, a.s + b.s * __expf(b.m - a.m)};
  return Lse{b.m, b.s + a.s * __expf(a.m - b.m)};
}

__device__ __forceinline__ float lse_value(Lse a) { return a.m == TITA_NEG_INF ? TITA_NEG_INF : a.m + logf(a.s); }

// Log-sum-exp statistics of N clean values (finite or -inf).
template <int N>
__device__ __forceinline__ Lse lse_of(const float* x) {
  float m = x[0];
#pragma unroll
  for (int j = 1; j < N; ++j) m = fmaxf(m, x[j]);
  if (m == TITA_NEG_INF) return lse_empty();
  float s = 0.0f;
#pragma unroll
  for (int j = 0; j < N; ++j) s += __expf(x[j] - m);  // exp(-inf) = 0
  return Lse{m, s};
}

// A race entry: key (z, or z + Gumbel noise), the guided score z and the id (-1: none).
struct Best {
  float key;
  float z;
  int32_t id;
};

__device__ __forceinline__ Best best_none() { return Best{TITA_NEG_INF, TITA_NEG_INF, -1}; }

// a wins over b: a higher key, or the same key and a lower id (ties go to the lowest id).
__device__ __forceinline__ bool beats(const Best& a, const Best& b) {
  if (a.id < 0) return false;
  if (b.id < 0) return true;
  return a.key > b.key || (a.key == b.key && a.id < b.id);
}

// Ordered keys: a < b as floats (finite or +-inf) iff okey(a) < okey(b) as unsigned (-0 < +0).
__device__ __forceinline__ uint32_t okey(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float from_okey(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}
constexpr uint32_t kNegInfKey = 0x007FFFFFu;  // okey(-inf)

// Warp shuffles of the reduced types.
__device__ __forceinline__ float shfl_xor(float v, int o) { return __shfl_xor_sync(0xFFFFFFFFu, v, o); }
__device__ __forceinline__ int shfl_xor(int v, int o) { return __shfl_xor_sync(0xFFFFFFFFu, v, o); }
__device__ __forceinline__ unsigned shfl_xor(unsigned v, int o) { return __shfl_xor_sync(0xFFFFFFFFu, v, o); }
__device__ __forceinline__ unsigned long long shfl_xor(unsigned long long v, int o) {
  return __shfl_xor_sync(0xFFFFFFFFu, v, o);
}
__device__ __forceinline__ double shfl_xor(double v, int o) { return __shfl_xor_sync(0xFFFFFFFFu, v, o); }
__device__ __forceinline__ Lse shfl_xor(Lse v, int o) { return Lse{shfl_xor(v.m, o), shfl_xor(v.s, o)}; }
__device__ __forceinline__ Best shfl_xor(Best v, int o) {
  return Best{shfl_xor(v.key, o), shfl_xor(v.z, o), shfl_xor(static_cast<int>(v.id), o)};
}

// Shared scratch of one block reduction (any reduced type up to 16 bytes).
struct alignas(16) ReduceSlot {
  unsigned char bytes[16];
};
using ReduceSmem = ReduceSlot[kWarps];

// Reduce v over the block with op; every thread gets the same result (lane 0 of each warp
// publishes, then all threads fold the warp values in the same order). Must be reached by every
// thread of the block; back-to-back calls may share smem.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, ReduceSmem& smem) {
  static_assert(sizeof(T) <= sizeof(ReduceSlot), "reduced type too large");
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, shfl_xor(v, o));
  __syncthreads();  // a previous reduction may still be reading the slots
  if ((threadIdx.x & 31) == 0) *reinterpret_cast<T*>(&smem[threadIdx.x >> 5]) = v;
  __syncthreads();
  T r = *reinterpret_cast<T*>(&smem[0]);
#pragma unroll
  for (int w = 1; w < kWarps; ++w) r = op(r, *reinterpret_cast<T*>(&smem[w]));
  return r;
}

// Exclusive prefix sum over the block in thread order; `total` gets the block's sum. Every thread
// must call it. warp_totals: kWarps entries of shared memory.
template <typename T>
__device__ __forceinline__ T block_exclusive_scan(T v, T* warp_totals, T& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  T incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const T up = __shfl_up_sync(0xFFFFFFFFu, incl, o);
    if (lane >= o) incl += up;
  }
  T excl = __shfl_up_sync(0xFFFFFFFFu, incl, 1);
  if (lane == 0) excl = T(0);
  __syncthreads();  // a previous scan may still be reading warp_totals
  if (lane == 31) warp_totals[warp] = incl;
  __syncthreads();
  T before = T(0);
  total = T(0);
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) before += warp_totals[w];
    total += warp_totals[w];
  }
  return before + excl;
}

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct MinOp {
  __device__ float operator()(float a, float b) const { return fminf(a, b); }
};
struct MinIntOp {
  __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};
struct SumIntOp {
  __device__ int operator()(int a, int b) const { return a + b; }
};
struct SumDoubleOp {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct LseOp {
  __device__ Lse operator()(Lse a, Lse b) const { return lse_merge(a, b); }
};
struct BestOp {
  __device__ Best operator()(Best a, Best b) const { return beats(b, a) ? b : a; }
};

}  // namespace tita::cuda
