"""The CPU op benchmark grid and its inputs, shared by test_ops_cpu.py and run_ops_cpu.py.

Grid: B in {1, 8, 64} x V in {32000, 32064, 151936} (LLaMA/LLaVA and Qwen2 vocabularies),
modes greedy / sample / topp / topk_topp, fp32. Quick mode (the README's main command and the CI
smoke run): the two acceptance points B=8 x V=32000 and B=64 x V=151936, and torch.compile only at
one point (each compilation costs 20-30 s on the 2-core machine). eager_topk (top-k first, the
rest on the k survivors) runs only where top-k is on.
"""

from __future__ import annotations

import functools
import os

import torch

MODES = ("greedy", "sample", "topp", "topk_topp")
IMPLS = ("tita", "eager", "eager_topk", "compile", "logsumexp")
FULL_SHAPES = tuple((b, v) for b in (1, 8, 64) for v in (32000, 32064, 151936))
QUICK_SHAPES = ((8, 32000), (64, 151936))
QUICK_COMPILE_POINT = (8, 32000, "topk_topp")
HEADLINE_SHAPES = ((8, 32000), (64, 151936))  # the acceptance points (topk_topp)


def quick_from_env() -> bool:
    """True when TITA_BENCH_QUICK=1 (the CI smoke run)."""
    return os.environ.get("TITA_BENCH_QUICK", "0") not in ("", "0")


def shapes(quick: bool) -> tuple[tuple[int, int], ...]:
    """(batch, vocab) points of the grid."""
    return QUICK_SHAPES if quick else FULL_SHAPES


def wanted(impl: str, batch: int, vocab: int, mode: str, quick: bool) -> bool:
    """Whether a grid point is measured: everything, except torch.compile off its quick point and
    eager_topk where top-k is off."""
    if impl == "eager_topk" and mode != "topk_topp":
        return False
    return not (quick and impl == "compile" and (batch, vocab, mode) != QUICK_COMPILE_POINT)


@functools.lru_cache(maxsize=2)
def logits(batch: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(base, reward) fp32 [batch, vocab]: a plausible LLM spread, created once per shape.

    randn * 2 plus a handful of strong peaks per row (what a confident model emits); the reward
    model roughly agrees with the base (it is trained to approximate it) and adds its own noise.
    Seeded from the shape, so every run and every implementation sees the same numbers.
    """
    gen = torch.Generator().manual_seed(batch * 1_000_003 + vocab)
    base = torch.randn(batch, vocab, generator=gen) * 2.0
    peaks = torch.randint(0, vocab, (batch, 8), generator=gen)
    base.scatter_add_(1, peaks, 8.0 + 4.0 * torch.rand(batch, 8, generator=gen))
    reward = 0.8 * base + 1.2 * torch.randn(batch, vocab, generator=gen)
    return base.contiguous(), reward.contiguous()


CACHE_STATES = ("warm", "cold")
_FLUSH = torch.empty(0)


def prepare_caches(state: str, *inputs: torch.Tensor) -> None:
    """Put the caches in a known state before a timed call, the same for every implementation.

    Both states first read a buffer larger than the caches (the L3 here is 32 MiB), evicting what
    the previous call left (read, not written, so no write-backs land on the next call).
    "warm": then read the inputs once, as if the model had just written its logits.
    "cold": nothing more; the inputs come from memory.
    """
    global _FLUSH
    if _FLUSH.numel() == 0:
        _FLUSH = torch.ones(64 * 2**18)  # 64 MiB
    _FLUSH.sum()
    if state == "warm":
        for t in inputs:
            t.sum()


def seed_tensor(value: int = 1234) -> torch.Tensor:
    """The int64 [1] seed every implementation is given (a tensor, as a graph-safe caller passes)."""
    return torch.tensor([value], dtype=torch.int64)
