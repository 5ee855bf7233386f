"""Counter-based random numbers, bit-for-bit the same as the C++ and CUDA kernels.

Every random number is a pure function of its address (seed, offset, row, candidate):

    counter = (candidate >> 2, row, offset_lo, offset_hi),  key = (seed_lo, seed_hi)
    bits    = Philox4x32-10(counter, key)[candidate & 3]
    u       = (2 * (bits >> 9) + 1) * 2**-24          # exact in fp32, never 0 or 1
    gumbel  = -plog(-plog(u))

`plog` is a logarithm built only from IEEE basic operations (+, -, *, bit casts), so the
fp32 result is identical in PyTorch, C++ and CUDA as long as no step is fused into an FMA.
Everything here mirrors csrc/common/philox.h line by line; change both together.
"""

from __future__ import annotations

import torch

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
_MASK32 = 0xFFFFFFFF

# Range of the Gumbel noise that `gumbel_from_bits` can produce (u in [2^-24, 1 - 2^-24]).
# Kernels use GUMBEL_MAX to skip candidates that cannot win the race (z + GUMBEL_MAX < best).
GUMBEL_MAX = 16.7  # -log(-log(1 - 2^-24)) = 16.64, rounded up for safety


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * m for a in [0, 2^32), using int64 without overflow."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    p_lo = a_lo * m  # < 2^48
    p_hi = a_hi * m  # < 2^48
    mid = p_hi + (p_lo >> 16)  # < 2^49
    hi = mid >> 16
    lo = ((mid & 0xFFFF) << 16) | (p_lo & 0xFFFF)
    return hi & _MASK32, lo & _MASK32


def philox4x32(
    c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor,
    k0: torch.Tensor, k1: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 on int64 tensors holding uint32 values (broadcasting). Returns 4 words."""
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & _MASK32
        k1 = (k1 + PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def random_bits(seed: torch.Tensor, offset: torch.Tensor, row: torch.Tensor, vocab: int) -> torch.Tensor:
    """uint32 random words (as int64) for candidates 0..vocab-1 of each row.

    seed, offset, row: int64 [B, 1]. Returns int64 [B, vocab].
    """
    n_groups = (vocab + 3) // 4
    groups = torch.arange(n_groups, device=seed.device, dtype=torch.int64)[None, :]
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    c2, c3 = offset & _MASK32, (offset >> 32) & _MASK32
    zero = torch.zeros_like(groups)
    words = philox4x32(groups, row + zero, c2 + zero, c3 + zero, k0, k1)
    return torch.stack(words, dim=-1).reshape(seed.shape[0], 4 * n_groups)[:, :vocab]


def uniform_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """Map uint32 words (int64) to float32 uniforms in [2^-24, 1 - 2^-24], exactly."""
    return ((bits >> 9) * 2 + 1).to(torch.float32) * (2.0 ** -24)


# Coefficients of log(1 + f) = f - f^2/2 + f^3 * P(f) on f in [sqrt(1/2) - 1, sqrt(2) - 1]
# (the classic Cephes logf minimax polynomial; |error| about 1 ulp).
_PLOG_COEFFS = (
    7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
    -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
)
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_SQRT_HALF = 0.70710678118654752440
FLT_MIN_NORMAL = 2.0 ** -126


def plog(x: torch.Tensor) -> torch.Tensor:
    """Portable natural log of a float32 tensor (x > 0; values below 2^-126 are clamped).

    Only +, -, * and bit casts, evaluated in a fixed order, so C++/CUDA reproduce it exactly.
    """
    x = torch.clamp(x.to(torch.float32), min=FLT_MIN_NORMAL)
    bits = x.view(torch.int32)
    e = ((bits >> 23) & 0xFF) - 126
    m = ((bits & 0x007FFFFF) | 0x3F000000).view(torch.float32)  # mantissa in [0.5, 1)
    small = m < _SQRT_HALF
    e = torch.where(small, e - 1, e)
    m = torch.where(small, m + m, m)
    f = m - 1.0
    f2 = f * f
    p = torch.full_like(f, _PLOG_COEFFS[0])
    for c in _PLOG_COEFFS[1:]:
        p = p * f + c
    ef = e.to(torch.float32)
    y = f * f2 * p
    y = y + ef * _LN2_LO
    y = y - f2 * 0.5
    return f + y + ef * _LN2_HI


def gumbel_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise -log(-log(u)) (float32) from uint32 words (int64)."""
    return -plog(-plog(uniform_from_bits(bits)))


def gumbel_noise(seed: torch.Tensor, offset: torch.Tensor, row: torch.Tensor, vocab: int) -> torch.Tensor:
    """Gumbel noise float32 [B, vocab] for the rows addressed by seed/offset/row (int64 [B, 1])."""
    return gumbel_from_bits(random_bits(seed, offset, row, vocab))
