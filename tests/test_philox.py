"""The counter-based random numbers: Philox known-answer vectors, the portable log, the noise."""

from __future__ import annotations

import math

import pytest
import torch

from tita_ext import philox


def _t(v: int) -> torch.Tensor:
    return torch.tensor([v], dtype=torch.int64)


@pytest.mark.parametrize("counter,key,expected", [
    # Random123 kat_vectors for philox4x32_10
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(counter, key, expected):
    out = philox.philox4x32(*map(_t, counter), *map(_t, key))
    assert [int(w) for w in out] == list(expected)


def test_plog_is_accurate_and_monotone():
    x = torch.cat([torch.rand(100_000) * 50 + 1e-30, torch.logspace(-37, 38, 1000),
                   torch.tensor([2.0**-24, 1 - 2.0**-24, 1.0, 0.5, 0.70710677, 0.70710683])])
    ours, exact = philox.plog(x).double(), torch.log(x.double())
    assert ((ours - exact).abs() <= 2.5e-7 * exact.abs().clamp(min=1.0)).all()
    s = torch.sort(x).values
    assert (philox.plog(s)[1:] >= philox.plog(s)[:-1]).all()


def test_uniforms_never_hit_zero_or_one():
    bits = torch.tensor([0, 1, 511, 512, 0xFFFFFFFF, 0xFFFFFE00], dtype=torch.int64)
    u = philox.uniform_from_bits(bits)
    assert (u > 0).all() and (u < 1).all()
    assert float(u.min()) == 2.0**-24 and float(u.max()) == 1 - 2.0**-24
    g = philox.gumbel_from_bits(bits)
    assert float(g.max()) <= philox.GUMBEL_MAX


def test_gumbel_noise_distribution():
    """Mean and variance of the noise match the standard Gumbel (0.5772, pi^2/6)."""
    g = philox.gumbel_noise(_t(7).reshape(1, 1), _t(3).reshape(1, 1), _t(0).reshape(1, 1), 400_000).double()
    assert abs(g.mean().item() - 0.5772156649) < 0.01
    assert abs(g.var().item() - math.pi**2 / 6) < 0.02


def test_noise_is_addressed_by_seed_offset_row_and_candidate():
    def noise(seed, offset, row, vocab=64):
        return philox.gumbel_noise(_t(seed).reshape(1, 1), _t(offset).reshape(1, 1), _t(row).reshape(1, 1), vocab)

    base = noise(1, 0, 0)
    assert torch.equal(base, noise(1, 0, 0))
    assert torch.equal(base[:, :10], noise(1, 0, 0, vocab=10))  # a prefix does not depend on the width
    for other in (noise(2, 0, 0), noise(1, 1, 0), noise(1, 0, 1), noise(1, 2**32, 0), noise(2**32 + 1, 0, 0)):
        assert not torch.equal(base, other)
