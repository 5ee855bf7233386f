// Counter-based random numbers and the portable log: the C++/CUDA mirror of tita_ext/philox.py.
//
// Every value here must be bit-identical to the Python reference, so: fp32 basic operations
// only, in the same order, and no FMA contraction (the build passes -ffp-contract=off; CUDA
// code uses the _rn intrinsics through TITA_MUL / TITA_ADD). Change both files together.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define TITA_HD __host__ __device__ __forceinline__
#else
#define TITA_HD inline __attribute__((always_inline))
#endif

#if defined(__CUDA_ARCH__)
#define TITA_MUL(a, b) __fmul_rn((a), (b))
#define TITA_ADD(a, b) __fadd_rn((a), (b))
#else
#define TITA_MUL(a, b) ((a) * (b))
#define TITA_ADD(a, b) ((a) + (b))
#endif

namespace tita {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

// Largest Gumbel value gumbel_from_bits can return (16.64), rounded up: a candidate with
// z + kGumbelMax below the best key so far can never win the race, so its noise is skipped.
constexpr float kGumbelMax = 16.7f;

struct Philox4 {
  uint32_t x[4];
};

TITA_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

// Philox4x32-10 (Salmon et al., SC'11). Counter (c0..c3), key (k0, k1).
TITA_HD Philox4 philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mulhi32(kPhiloxM0, c0), lo0 = kPhiloxM0 * c0;
    const uint32_t hi1 = mulhi32(kPhiloxM1, c2), lo1 = kPhiloxM1 * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

TITA_HD float bits_as_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

TITA_HD uint32_t float_as_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}

// Uniform in [2^-24, 1 - 2^-24], exact in fp32.
TITA_HD float uniform_from_bits(uint32_t bits) {
  return static_cast<float>((bits >> 9) * 2u + 1u) * 5.9604644775390625e-08f;  // 2^-24
}

// Portable natural log for x > 0 (clamped to the smallest normal): frexp by bit casts and a
// minimax polynomial for log(1 + f); ~1 ulp. Same steps, same order as philox.plog.
TITA_HD float plog(float x) {
  x = x < 1.17549435e-38f ? 1.17549435e-38f : x;
  const uint32_t bits = float_as_bits(x);
  int e = static_cast<int>((bits >> 23) & 0xFFu) - 126;
  float m = bits_as_float((bits & 0x007FFFFFu) | 0x3F000000u);
  if (m < 0.70710678118654752440f) {
    e -= 1;
    m = TITA_ADD(m, m);
  }
  const float f = m - 1.0f;
  const float f2 = TITA_MUL(f, f);
  float p = 7.0376836292e-2f;
  p = TITA_ADD(TITA_MUL(p, f), -1.1514610310e-1f);
  p = TITA_ADD(TITA_MUL(p, f), 1.1676998740e-1f);
  p = TITA_ADD(TITA_MUL(p, f), -1.2420140846e-1f);
  p = TITA_ADD(TITA_MUL(p, f), 1.4249322787e-1f);
  p = TITA_ADD(TITA_MUL(p, f), -1.6668057665e-1f);
  p = TITA_ADD(TITA_MUL(p, f), 2.0000714765e-1f);
  p = TITA_ADD(TITA_MUL(p, f), -2.4999993993e-1f);
  p = TITA_ADD(TITA_MUL(p, f), 3.3333331174e-1f);
  const float ef = static_cast<float>(e);
  float y = TITA_MUL(TITA_MUL(f, f2), p);
  y = TITA_ADD(y, TITA_MUL(ef, -2.12194440e-4f));
  y = y - TITA_MUL(f2, 0.5f);
  return TITA_ADD(TITA_ADD(f, y), TITA_MUL(ef, 0.693359375f));
}

TITA_HD float gumbel_from_bits(uint32_t bits) {
  return -plog(-plog(uniform_from_bits(bits)));
}

// Where one row's noise lives: key = seed, counter = (candidate / 4, row, offset).
struct NoiseAddress {
  uint64_t seed;
  uint64_t offset;
  uint32_t row;
};

// Gumbel noise of one candidate (ids 4g..4g+3 share one Philox call; see gumbel4 for batches).
TITA_HD float gumbel_at(const NoiseAddress& a, int64_t candidate) {
  const Philox4 r = philox4x32(static_cast<uint32_t>(candidate >> 2), a.row, static_cast<uint32_t>(a.offset),
                               static_cast<uint32_t>(a.offset >> 32), static_cast<uint32_t>(a.seed),
                               static_cast<uint32_t>(a.seed >> 32));
  return gumbel_from_bits(r.x[candidate & 3]);
}

}  // namespace tita
