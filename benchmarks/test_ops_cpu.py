"""pytest-benchmark suite: the fused CPU op vs the eager chain, torch.compile of the reference,
and torch.logsumexp over both inputs, over impl x mode x (B, V). No timing assertions.

    python -m pytest benchmarks/test_ops_cpu.py                          # full grid
    TITA_BENCH_QUICK=1 python -m pytest benchmarks/test_ops_cpu.py -q    # CI smoke run

For one side-by-side table with ratios, run benchmarks/run_ops_cpu.py instead.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `cases`, `impls` beside this file

import cases  # noqa: E402
from impls import IMPLS  # noqa: E402

QUICK = cases.quick_from_env()
ROUNDS = 2 if QUICK else 5

POINTS = [
    pytest.param(impl, mode, batch, vocab, id=f"{impl}-{mode}-B{batch}xV{vocab}")
    for batch, vocab in cases.shapes(QUICK)  # shape-major, so each shape's logits are built once
    for mode in cases.MODES
    for impl in cases.IMPLS
    if cases.wanted(impl, batch, vocab, mode, QUICK)
]


@pytest.mark.parametrize("impl, mode, batch, vocab", POINTS)
def test_op_cpu(benchmark, impl: str, mode: str, batch: int, vocab: int) -> None:
    base, reward = cases.logits(batch, vocab)
    seed = cases.seed_tensor()
    fn = IMPLS[impl]
    try:
        fn(base, reward, mode, seed)  # warm-up (compiles the torch.compile impl)
    except Exception as exc:  # torch.compile may be unusable on a machine: report it, go on
        if impl != "compile":
            raise
        pytest.skip(f"torch.compile of the reference failed: {type(exc).__name__}: {exc}"[:500])
    benchmark.group = f"{mode} B={batch} V={vocab}"
    benchmark.extra_info.update(impl=impl, batch=batch, vocab=vocab, dtype="float32", mode=mode,
                                threads=torch.get_num_threads())
    tokens = benchmark.pedantic(fn, args=(base, reward, mode, seed), setup=lambda: cases.prepare_caches("warm", base, reward), rounds=ROUNDS,
                                iterations=1, warmup_rounds=0 if QUICK else 1)
    if impl != "logsumexp":
        assert tokens.shape == (batch,) and bool(((tokens >= 0) & (tokens < vocab)).all())
