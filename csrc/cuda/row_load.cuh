// Reading the logits rows and forming the guided score z, bit for bit as the reference does.
//
// A thread reads ids in chunks of 8 consecutive ids: one 16-byte load per input for fp16 / bf16,
// two for fp32, when the row is contiguous and the chunk is 16-byte aligned (else element by
// element, any stride). Non-finite logits become -inf on load (as the CPU kernel does).
//
// z uses only correctly rounded fp32 operations (__fadd_rn / __fmul_rn: never contracted into
// an FMA), in the reference's order, so the scores, and hence the tokens, equal the reference's.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/contract.h"
#include "block_reduce.cuh"
#include "launch.h"

namespace tita::cuda {

constexpr int kVec = 8;  // ids per chunk

__device__ __forceinline__ int elem_size(DType d) { return d == DType::kF32 ? 4 : 2; }

__device__ __forceinline__ float clean(float x) { return is_finite(x) ? x : TITA_NEG_INF; }

__device__ __forceinline__ float half_bits(uint32_t h, DType d) {
  const unsigned short u = static_cast<unsigned short>(h);
  return d == DType::kF16 ? __half2float(__ushort_as_half(u)) : __bfloat162float(__ushort_as_bfloat16(u));
}

// One row of one input: its first element, and the view (dtype, column stride).
struct RowPtr {
  const char* p;  // nullptr: absent input
  DType dtype;
  int64_t col_stride;
};

__device__ __forceinline__ RowPtr row_ptr(const LogitsView& v, int64_t row) {
  if (v.data == nullptr) return RowPtr{nullptr, v.dtype, v.col_stride};
  return RowPtr{static_cast<const char*>(v.data) + row * v.row_stride * elem_size(v.dtype), v.dtype, v.col_stride};
}

// One element (clean fp32).
__device__ __forceinline__ float load_one(const RowPtr& r, int64_t id) {
  const int64_t i = id * r.col_stride;
  float x;
  if (r.dtype == DType::kF32) {
    x = __ldg(reinterpret_cast<const float*>(r.p) + i);
  } else {
    x = half_bits(__ldg(reinterpret_cast<const unsigned short*>(r.p) + i), r.dtype);
  }
  return clean(x);
}

// ids [id0, id0 + 8) as clean fp32; ids >= end give -inf.
__device__ __forceinline__ void load8(const RowPtr& r, int64_t id0, int64_t end, float* out) {
  if (r.col_stride == 1 && id0 + kVec <= end) {
    const char* p = r.p + id0 * elem_size(r.dtype);
    if ((reinterpret_cast<uintptr_t>(p) & 15u) == 0) {
      if (r.dtype == DType::kF32) {
        const float4 a = __ldg(reinterpret_cast<const float4*>(p));
        const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
        out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
        out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
      } else {
        const uint4 w = __ldg(reinterpret_cast<const uint4*>(p));
        const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {  // little-endian: the lower id is the low half
          out[2 * k] = half_bits(words[k] & 0xFFFFu, r.dtype);
          out[2 * k + 1] = half_bits(words[k] >> 16, r.dtype);
        }
      }
#pragma unroll
      for (int j = 0; j < kVec; ++j) out[j] = clean(out[j]);
      return;
    }
  }
#pragma unroll
  for (int j = 0; j < kVec; ++j) out[j] = id0 + j < end ? load_one(r, id0 + j) : TITA_NEG_INF;
}

// The rows a block works on.
struct RowPtrs {
  RowPtr base, reward, ref;  // ref.p == nullptr: no reference logits
};

__device__ __forceinline__ RowPtrs row_ptrs(const GuidedInputs& in, int64_t row) {
  return RowPtrs{row_ptr(in.base, row), row_ptr(in.reward, row), row_ptr(in.ref, row)};
}

// b, r and f (f = b without reference logits) of one chunk.
__device__ __forceinline__ void load_chunk(const RowPtrs& rp, int64_t id0, int64_t end, float* b, float* r,
                                           float* f) {
  load8(rp.base, id0, end, b);
  load8(rp.reward, id0, end, r);
  if (rp.ref.p != nullptr) {
    load8(rp.ref, id0, end, f);
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j) f[j] = b[j];
  }
}

// The scan's vector path, split in two so that a thread can have the next chunk's loads in flight
// while it computes on the current one: issue_chunk starts the 16-byte loads of one chunk of every
// input into registers, decode_chunk turns them into clean fp32 when they are needed. For blocks
// whose rows are all contiguous (vector_rows) and whole chunks.
//
// A row that does not start on a 16-byte boundary (an offset view, an odd width such as 1271 or
// 32001) is read with the same aligned loads: a thread loads the aligned word(s) that start
// mis(input) elements before its chunk, and takes the missing last elements from the next lane's
// first word (a shuffle, realign_chunk); lane 31, and a lane whose neighbour has no whole chunk,
// load that word themselves (the head is peeled off by the shift: +1 word per 32 chunks).
struct RawChunk {
  uint4 w[3][2];  // [input][word]: one 16-byte word per 8 ids of a 16-bit dtype, two of fp32
  uint4 next[3];  // [input]: the aligned word after a misaligned chunk's (lanes that load it)
};

// Elements between the row's first element and the 16-byte boundary below it (0: aligned);
// -1: no vector loads (a column stride, or not element-aligned).
__device__ __forceinline__ int misalignment(const RowPtr& r) {
  if (r.p == nullptr) return 0;
  const uintptr_t at = reinterpret_cast<uintptr_t>(r.p);
  const int es = elem_size(r.dtype);
  if (r.col_stride != 1 || at % es != 0) return -1;
  return static_cast<int>((at & 15u) / es);
}

__device__ __forceinline__ bool vector_rows(const RowPtrs& rp) {
  return misalignment(rp.base) >= 0 && misalignment(rp.reward) >= 0 && misalignment(rp.ref) >= 0;
}

// Whether the thread of chunk id0 loads the word after its own itself (see RawChunk).
__device__ __forceinline__ bool loads_next_word(int64_t id0, int64_t vocab) {
  return (threadIdx.x & 31) == 31 || id0 + 2 * kVec > vocab;
}

__device__ __forceinline__ void issue_one(const RowPtr& r, int64_t id0, bool next, uint4* w, uint4& after) {
  const int mis = misalignment(r);
  const uint4* p = reinterpret_cast<const uint4*>(r.p + (id0 - mis) * elem_size(r.dtype));
  w[0] = __ldg(p);
  if (r.dtype == DType::kF32) w[1] = __ldg(p + 1);
  if (mis > 0 && next) after = __ldg(p + (r.dtype == DType::kF32 ? 2 : 1));
}

__device__ __forceinline__ void issue_chunk(const RowPtrs& rp, int64_t id0, int64_t vocab, RawChunk& raw) {
  const bool next = loads_next_word(id0, vocab);
  issue_one(rp.base, id0, next, raw.w[0], raw.next[0]);
  issue_one(rp.reward, id0, next, raw.w[1], raw.next[1]);
  if (rp.ref.p != nullptr) issue_one(rp.ref, id0, next, raw.w[2], raw.next[2]);
}

// a[i] for a row-uniform i < N, by selects (a dynamic index would put a in local memory).
template <int N>
__device__ __forceinline__ uint32_t pick(const uint32_t* a, int i) {
  uint32_t r = a[0];
#pragma unroll
  for (int j = 1; j < N; ++j) r = i == j ? a[j] : r;
  return r;
}

__device__ __forceinline__ uint32_t shfl_down_1(uint32_t v) { return __shfl_down_sync(0xFFFFFFFFu, v, 1); }

// Shift one input's words so that they hold ids [id0, id0 + 8): every lane of the warp must call
// it (shuffles), whether or not its chunk is whole.
__device__ __forceinline__ void realign_one(const RowPtr& r, bool next, uint4* w, const uint4& after) {
  const int mis = misalignment(r);
  if (r.p == nullptr || mis <= 0) return;  // uniform over the block
  const uint4 nb{shfl_down_1(w[0].x), shfl_down_1(w[0].y), shfl_down_1(w[0].z), shfl_down_1(w[0].w)};
  const uint4 n = next ? after : nb;
  if (r.dtype == DType::kF32) {  // 8 own floats and 4 of the next word: take [mis, mis + 8)
    const uint32_t all[12] = {w[0].x, w[0].y, w[0].z, w[0].w, w[1].x, w[1].y, w[1].z, w[1].w, n.x, n.y, n.z, n.w};
    uint32_t o[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) o[j] = pick<12>(all, j + mis);
    w[0] = uint4{o[0], o[1], o[2], o[3]};
    w[1] = uint4{o[4], o[5], o[6], o[7]};
  } else {  // 8 own halves and 8 of the next word: take halves [mis, mis + 8)
    const uint32_t all[8] = {w[0].x, w[0].y, w[0].z, w[0].w, n.x, n.y, n.z, n.w};
    const int q = mis >> 1;
    uint32_t o[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const uint32_t lo = pick<8>(all, k + q), hi = pick<8>(all, k + q + 1);
      o[k] = (mis & 1) ? ((lo >> 16) | (hi << 16)) : lo;
    }
    w[0] = uint4{o[0], o[1], o[2], o[3]};
  }
}

__device__ __forceinline__ void realign_chunk(const RowPtrs& rp, int64_t id0, int64_t vocab, RawChunk& raw) {
  const bool next = loads_next_word(id0, vocab);
  realign_one(rp.base, next, raw.w[0], raw.next[0]);
  realign_one(rp.reward, next, raw.w[1], raw.next[1]);
  realign_one(rp.ref, next, raw.w[2], raw.next[2]);
}

__device__ __forceinline__ void decode_one(DType dtype, const uint4* w, float* out) {
  if (dtype == DType::kF32) {
    const uint32_t words[8] = {w[0].x, w[0].y, w[0].z, w[0].w, w[1].x, w[1].y, w[1].z, w[1].w};
#pragma unroll
    for (int j = 0; j < kVec; ++j) out[j] = clean(__uint_as_float(words[j]));
  } else {
    const uint32_t words[4] = {w[0].x, w[0].y, w[0].z, w[0].w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {  // little-endian: the lower id is the low half
      out[2 * k] = clean(half_bits(words[k] & 0xFFFFu, dtype));
      out[2 * k + 1] = clean(half_bits(words[k] >> 16, dtype));
    }
  }
}

__device__ __forceinline__ void decode_chunk(const RowPtrs& rp, const RawChunk& raw, float* b, float* r, float* f) {
  decode_one(rp.base.dtype, raw.w[0], b);
  decode_one(rp.reward.dtype, raw.w[1], r);
  if (rp.ref.p != nullptr) {
    decode_one(rp.ref.dtype, raw.w[2], f);
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j) f[j] = b[j];
  }
}

// The re-reads (fallback, plausibility floor, guided_logprobs' write) with the scan's loads, without
// its prefetch: one input's ids [id0, id0 + 8) as clean fp32 (-inf beyond vocab) in a pass laid out
// like the scan (lane l + 1 holds chunk id0 + 8); vec: misalignment(r) >= 0 (block-uniform). Aligned
// 16-byte loads, shifted on misaligned rows; element loads for partial chunks and strided rows.
// Every lane of the warp must call it, whatever its id0 (realign_one shuffles).
__device__ __forceinline__ void read8(const RowPtr& r, bool vec, int64_t id0, int64_t vocab, float* out) {
  const bool whole = id0 + kVec <= vocab;
  if (vec) {
    uint4 w[2] = {}, after = {};
    const bool next = loads_next_word(id0, vocab);
    if (whole) issue_one(r, id0, next, w, after);
    realign_one(r, next, w, after);
    if (whole) {
      decode_one(r.dtype, w, out);
      return;
    }
  }
  if (id0 < vocab) {
    load8(r, id0, vocab, out);
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j) out[j] = TITA_NEG_INF;
  }
}

// read8 of every input (f = b without reference logits); vec: vector_rows(rp).
__device__ __forceinline__ void read_chunk(const RowPtrs& rp, bool vec, int64_t id0, int64_t vocab, float* b, float* r,
                                           float* f) {
  read8(rp.base, vec, id0, vocab, b);
  read8(rp.reward, vec, id0, vocab, r);
  if (rp.ref.p != nullptr) {
    read8(rp.ref, vec, id0, vocab, f);
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j) f[j] = b[j];
  }
}

// How one row forms z (reference._guided_scores).
struct ZParams {
  float alpha, one_minus, inv_t;
  float floor;  // plausibility floor on the base logit; -inf: off
  int form;     // 0: b + a (r - b); 1: r - (r - b)(1 - a)  (torch.lerp's two forms); 2: b + a (r - f)
};

__device__ __forceinline__ ZParams z_params(const RowConfig& c, float floor) {
  return ZParams{c.alpha, __fsub_rn(1.0f, c.alpha), c.inv_t, floor, c.lerp ? (c.alpha < 0.5f ? 0 : 1) : 2};
}

__device__ __forceinline__ float guided_z(const ZParams& p, float b, float r, float f, bool& overflow) {
  float s;
  if (p.form == 2) {
    s = __fadd_rn(b, __fmul_rn(p.alpha, __fsub_rn(r, f)));
  } else if (p.form == 0) {
    s = __fadd_rn(b, __fmul_rn(p.alpha, __fsub_rn(r, b)));
  } else {
    s = __fsub_rn(r, __fmul_rn(__fsub_rn(r, b), p.one_minus));
  }
  const float z = __fmul_rn(s, p.inv_t);
  // kStatusOverflow: every input finite (clean() made the others -inf), the score not.
  const bool inputs_finite = b != TITA_NEG_INF && r != TITA_NEG_INF && f != TITA_NEG_INF;
  overflow = overflow || (inputs_finite && !is_finite(z));
  if (!is_finite(s) || b < p.floor) return TITA_NEG_INF;
  return is_finite(z) ? z : TITA_NEG_INF;
}

// guided_z where the overflow flag is not needed (the scan has already reported it).
__device__ __forceinline__ float guided_z(const ZParams& p, float b, float r, float f) {
  bool unused = false;
  return guided_z(p, b, r, f, unused);
}

// The noise address of one row, exactly as the CPU kernel builds it (guided_ops_cpu.cpp make_plan).
__device__ __forceinline__ NoiseAddress noise_address(const NoiseSource& noise, int64_t row) {
  const int64_t seed = noise.seed[noise.seed_numel == 1 ? 0 : row];
  const int64_t offset = noise.offset[noise.offset_numel == 1 ? 0 : row];
  return NoiseAddress{static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                      static_cast<uint32_t>(noise.seed_per_row ? 0 : row)};
}

// Philox words of the 4 ids [g0, g0 + 4) (g0 % 4 == 0): word j is id g0 + j's (gumbel_at's address).
__device__ __forceinline__ Philox4<uint32_t> philox_group(const NoiseAddress& a, int64_t g0) {
  return philox4x32<float>(static_cast<uint32_t>(g0 >> 2), a.row, static_cast<uint32_t>(a.offset),
                           static_cast<uint32_t>(a.offset >> 32), static_cast<uint32_t>(a.seed),
                           static_cast<uint32_t>(a.seed >> 32));
}

// gumbel_at(a, id), with the word chosen by selects instead of a dynamic index (which would put
// the four Philox words in local memory).
__device__ __forceinline__ float gumbel_of(const NoiseAddress& a, int64_t id) {
  const Philox4<uint32_t> w = philox_group(a, id & ~int64_t{3});
  const int j = static_cast<int>(id & 3);
  const uint32_t bits = j == 0 ? w.x[0] : (j == 1 ? w.x[1] : (j == 2 ? w.x[2] : w.x[3]));
  return gumbel_from_bits<float>(bits);
}

// Skipping noise that cannot win: a word whose uniform u gives Gumbel noise below `need` can be
// skipped. g(u) >= need iff 1 - u <= -expm1(-exp(-need)); with u = (2m + 1) 2^-24 (m = bits >> 9),
// (1 - u) 2^24 = 16777215 - 2m exactly. reach_limit is conservative: need less a 0.01 margin
// (far above plog's ~1e-6 error on noise values), and a 0.1% relative margin on top.
__device__ __forceinline__ float reach_limit(float need) {
  if (!(need > -1.0f)) return INFINITY;  // nothing is skipped
  const float e = expf(-(need - 0.01f));
  return -expm1f(-e) * 16777216.0f * 1.001f + 1.0f;
}
__device__ __forceinline__ bool may_reach(uint32_t bits, float limit) {
  return static_cast<float>(16777215u - 2u * (bits >> 9)) <= limit;
}

}  // namespace tita::cuda
