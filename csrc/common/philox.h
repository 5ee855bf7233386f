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

// Per-lane-type operations. Specialised for float here and for SIMD vectors in csrc/cpu/simd.h,
// so that one definition of Philox and of plog serves scalar (CPU, CUDA) and vector code alike.
template <typename F>
struct LaneOps;

template <>
struct LaneOps<float> {
  using U = uint32_t;
  using I = int32_t;
  static TITA_HD float splat(float x) { return x; }
  static TITA_HD U splat_u(uint32_t x) { return x; }
  static TITA_HD U bits(float f) {
    U u;
    memcpy(&u, &f, sizeof(u));
    return u;
  }
  static TITA_HD float from_bits(U u) {
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
  }
  static TITA_HD I to_int(U u) { return static_cast<I>(u); }
  static TITA_HD float to_float(I i) { return static_cast<float>(i); }
  static TITA_HD float u_to_float(U u) { return static_cast<float>(u); }
  static TITA_HD float select(bool c, float a, float b) { return c ? a : b; }
  static TITA_HD I select(bool c, I a, I b) { return c ? a : b; }
  static TITA_HD U mulhi(U a, uint32_t b) { return static_cast<U>((static_cast<uint64_t>(a) * b) >> 32); }
};

template <typename U>
struct Philox4 {
  U x[4];
};

// Philox4x32-10 (Salmon et al., SC'11). Counter (c0..c3), key (k0, k1); U is uint32_t or a vector.
template <typename F, typename U = typename LaneOps<F>::U>
TITA_HD Philox4<U> philox4x32(U c0, U c1, U c2, U c3, U k0, U k1) {
  using L = LaneOps<F>;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const U hi0 = L::mulhi(c0, kPhiloxM0), lo0 = c0 * kPhiloxM0;
    const U hi1 = L::mulhi(c2, kPhiloxM1), lo1 = c2 * kPhiloxM1;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox4<U>{{c0, c1, c2, c3}};
}

// Uniform in [2^-24, 1 - 2^-24], exact in fp32.
template <typename F, typename U = typename LaneOps<F>::U>
TITA_HD F uniform_from_bits(U bits) {
  return LaneOps<F>::u_to_float((bits >> 9) * 2u + 1u) * 5.9604644775390625e-08f;  // 2^-24
}

// Portable natural log for x > 0 (clamped to the smallest normal): frexp by bit casts and a
// minimax polynomial for log(1 + f); ~1 ulp. Same steps, same order as philox.plog.
template <typename F>
TITA_HD F plog(F x) {
  using L = LaneOps<F>;
  const F tiny = L::splat(1.17549435e-38f);
  x = L::select(x < tiny, tiny, x);
  const auto bits = L::bits(x);
  auto e = L::to_int((bits >> 23) & 0xFFu) - 126;
  F m = L::from_bits((bits & 0x007FFFFFu) | 0x3F000000u);
  const auto small = m < L::splat(0.70710678118654752440f);
  e = L::select(small, e - 1, e);
  m = L::select(small, TITA_ADD(m, m), m);
  const F f = m - 1.0f;
  const F f2 = TITA_MUL(f, f);
  F p = L::splat(7.0376836292e-2f);
  p = TITA_ADD(TITA_MUL(p, f), -1.1514610310e-1f);
  p = TITA_ADD(TITA_MUL(p, f), 1.1676998740e-1f);
  p = TITA_ADD(TITA_MUL(p, f), -1.2420140846e-1f);
  p = TITA_ADD(TITA_MUL(p, f), 1.4249322787e-1f);
  p = TITA_ADD(TITA_MUL(p, f), -1.6668057665e-1f);
  p = TITA_ADD(TITA_MUL(p, f), 2.0000714765e-1f);
  p = TITA_ADD(TITA_MUL(p, f), -2.4999993993e-1f);
  p = TITA_ADD(TITA_MUL(p, f), 3.3333331174e-1f);
  const F ef = L::to_float(e);
  F y = TITA_MUL(TITA_MUL(f, f2), p);
  y = TITA_ADD(y, TITA_MUL(ef, -2.12194440e-4f));
  y = y - TITA_MUL(f2, 0.5f);
  return TITA_ADD(TITA_ADD(f, y), TITA_MUL(ef, 0.693359375f));
}

template <typename F, typename U = typename LaneOps<F>::U>
TITA_HD F gumbel_from_bits(U bits) {
  return -plog<F>(-plog<F>(uniform_from_bits<F>(bits)));
}

// Where one row's noise lives: key = seed, counter = (candidate / 4, row, offset).
struct NoiseAddress {
  uint64_t seed;
  uint64_t offset;
  uint32_t row;
};

// Gumbel noise of one candidate (ids 4g..4g+3 share one Philox call; see gumbel4 for batches).
TITA_HD float gumbel_at(const NoiseAddress& a, int64_t candidate) {
  const Philox4<uint32_t> r = philox4x32<float>(
      static_cast<uint32_t>(candidate >> 2), a.row, static_cast<uint32_t>(a.offset),
      static_cast<uint32_t>(a.offset >> 32), static_cast<uint32_t>(a.seed), static_cast<uint32_t>(a.seed >> 32));
  return gumbel_from_bits<float>(r.x[candidate & 3]);
}

}  // namespace tita
