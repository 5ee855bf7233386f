"""The CUDA kernels' device code on a CPU emulation of CUDA (tests/cuda_emu) against the reference.

Runs without a GPU: csrc/cuda/guided_*.cuh are compiled by the host compiler against emu.h
(one OS thread per CUDA thread, 64 per block, barriers for __syncthreads), with the real launch
plan and scratch layout. This checks the kernels' logic: slicing and merging, the dense race and
its noise skipping, candidate hand-over, the exact selections, the fallback, strides, dtypes,
statuses. Two plans per case: sm_count 132 (small work: 512-id slices with 64 threads) and 1
(large work: 1536-id slices). Timing, occupancy and the memory model need the GPU
(tests/test_cuda_ops.py).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from tita_ext import _validate as check
from tita_ext import ops, reference
from conftest import ALPHAS, DTYPES, LOGPROB_ATOL, MODES, PROB_ATOL, llm_logits, mode_kwargs, per_row

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_emu"))
import emu_ops  # noqa: E402

pytestmark = pytest.mark.skipif(emu_ops.compiler() is None, reason="no C++ compiler for the CUDA emulation")

SHAPES = ((1, 1271, 1271), (3, 1300, 1271), (2, 5000, 5000))


def _args(base, reward, ref, kwargs):
    p = dict(alpha=0.6, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, plausibility=0.0)
    p.update(kwargs)
    return ops._op_args(base, reward, ref, p["alpha"], p["temperature"], p["top_k"], p["top_p"], p["min_p"],
                        p["plausibility"])


def compare(base, reward, ref, kwargs, seed=1, offset=0, vocab_size=None, sm_count=132, threads=emu_ops.THREADS):
    """Emulated kernel vs reference: identical tokens and status, close floats."""
    args = _args(base, reward, ref, kwargs)
    seed_t, offset_t = ops._seed_offset(seed, offset, base)
    vocab = check.vocab_size(vocab_size)
    got = emu_ops.guided_sample(*args, seed_t, offset_t, vocab, sm_count=sm_count, threads=threads)
    want = reference.guided_sample(*args, seed_t, offset_t, vocab)
    assert torch.equal(got[3], want[3]), f"status {got[3].tolist()} vs reference {want[3].tolist()}"
    assert torch.equal(got[0], want[0]), f"tokens {got[0].tolist()} vs reference {want[0].tolist()}"
    torch.testing.assert_close(got[1], want[1], atol=LOGPROB_ATOL, rtol=1e-5, equal_nan=True)
    torch.testing.assert_close(got[2], want[2], atol=LOGPROB_ATOL, rtol=1e-5, equal_nan=True)
    return got


def compare_logprobs(base, reward, ref, kwargs, vocab_size=None, sm_count=132, threads=emu_ops.THREADS):
    args = _args(base, reward, ref, kwargs)
    vocab = check.vocab_size(vocab_size)
    got = emu_ops.guided_logprobs(*args, vocab, sm_count=sm_count, threads=threads)
    want = reference.guided_logprobs(*args, vocab)
    assert got.shape == want.shape
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    torch.testing.assert_close(got.exp(), want.exp(), atol=PROB_ATOL, rtol=1e-4, equal_nan=True)
    visible = want > -20
    torch.testing.assert_close(got[visible], want[visible], atol=LOGPROB_ATOL, rtol=1e-5)
    assert torch.equal(torch.isneginf(got), torch.isneginf(want))


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-V{s[1]}x{s[2]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_emulated_sample_matches_reference(dtype, shape, mode):
    batch, base_width, reward_width = shape
    i = DTYPES.index(dtype) + len(mode) + batch
    base = llm_logits(batch, base_width, dtype, seed=1)
    reward = llm_logits(batch, reward_width, dtype, seed=2)
    ref = llm_logits(batch, reward_width, dtype, seed=3)
    cases = [(ALPHAS[i % len(ALPHAS)], i % 2 == 0), (per_row(ALPHAS, batch), i % 2 == 1)]
    for j, (alpha, with_ref) in enumerate(cases):
        kwargs = dict(mode_kwargs(mode, batch, per_row_params=isinstance(alpha, torch.Tensor)), alpha=alpha)
        compare(base, reward, ref if with_ref else None, kwargs, seed=100 + j, offset=j, sm_count=(132, 1)[(i + j) % 2])


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_emulated_logprobs_matches_reference(dtype, mode):
    base = llm_logits(3, 2100, dtype, seed=4)
    reward = llm_logits(3, 2000, dtype, seed=5)
    ref = llm_logits(3, 2000, dtype, seed=6)
    for k, (alpha, with_ref) in enumerate([(0.6, False), (1.5, True), (per_row(ALPHAS, 3), False)]):
        kwargs = dict(mode_kwargs(mode, 3, isinstance(alpha, torch.Tensor)), alpha=alpha)
        compare_logprobs(base, reward, ref if with_ref else None, kwargs, sm_count=(132, 1)[k % 2])


@pytest.mark.parametrize("sm_count", [132, 1])
def test_emulated_edge_rows(sm_count):
    """NaN rows, bad per-row parameters, per-row seeds, vocab_size below the widths."""
    base = llm_logits(4, 3000, torch.float32, seed=4)
    reward = llm_logits(4, 3000, torch.float32, seed=5)
    base[1] = float("nan")
    reward[2, 5:9] = float("inf")
    kwargs = dict(temperature=torch.tensor([0.7, 0.7, -1.0, 0.0]), top_k=5)
    got = compare(base, reward, None, kwargs, seed=3, sm_count=sm_count)
    assert got[3].tolist() == [0, 1, 2, 0]
    compare(base, reward, None, dict(temperature=torch.tensor([0.7, 0.7, 1.0, 0.0])), seed=torch.arange(4),
            offset=torch.tensor([0, 1, 2, 3]), sm_count=sm_count)
    compare(base, reward, None, dict(temperature=0.9, top_p=0.8), seed=3, vocab_size=2500, sm_count=sm_count)
    compare_logprobs(base, reward, None, dict(temperature=0.9, top_k=7, min_p=0.1), vocab_size=2500,
                     sm_count=sm_count)


@pytest.mark.parametrize("sm_count", [132, 1])
def test_emulated_fallback_and_ties(sm_count):
    """Rows the fast path cannot decide: flat rows (ties overflow the slots, nuclei below T),
    top-k above the cap (256), a floor that prunes most of the row, huge min-p windows."""
    batch, width = 3, 6000
    flat = torch.zeros(batch, width)
    for kwargs in (dict(temperature=1.0, top_k=20), dict(temperature=1.0, top_p=0.5), dict(temperature=0.0, top_p=0.9),
                   dict(temperature=1.0, min_p=0.5), dict(temperature=1.0), dict(temperature=0.0)):
        compare(flat, flat.clone(), None, kwargs, seed=9, offset=3, sm_count=sm_count)
    base = llm_logits(batch, width, torch.float32, seed=12)
    reward = llm_logits(batch, width, torch.float32, seed=13, spread=0.1)
    for kwargs in (dict(temperature=1.0, top_k=300), dict(temperature=0.8, top_k=1000, top_p=0.95),
                   dict(temperature=1.5, top_p=0.999), dict(temperature=3.0, min_p=0.001),
                   dict(temperature=1.0, plausibility=0.3), dict(temperature=0.0, plausibility=0.3, top_k=3),
                   dict(temperature=0.7, top_k=256, top_p=0.9, min_p=0.02, plausibility=0.01)):
        compare(base, reward, None, kwargs, seed=8, sm_count=sm_count)
        compare_logprobs(base, reward, None, kwargs, sm_count=sm_count)
    late = torch.zeros(batch, width)
    late[:, -1] = 5.0  # the base's max arrives last
    late[:, :10] = 4.0
    for kwargs in (dict(temperature=1.0, plausibility=0.3), dict(temperature=0.5, top_p=0.99, min_p=0.5)):
        compare(late, reward, None, kwargs, seed=8, sm_count=sm_count)


@pytest.mark.parametrize("layout", ["row_slice", "column_stride", "transposed", "expanded"])
def test_emulated_strides_and_mixed_dtypes(layout):
    big_b = llm_logits(4, 5000, torch.float32, seed=7)
    big_r = llm_logits(4, 5000, torch.float32, seed=8)
    if layout == "row_slice":  # rows start off 16-byte alignment: element loads
        base, reward = big_b[:, 3:2274], big_r[:, 7:2278]
    elif layout == "column_stride":
        base, reward = big_b[:, ::2], big_r[:, 1::2]
    elif layout == "transposed":
        base, reward = big_b.t().contiguous().t(), big_r.t().contiguous().t()
    else:  # row stride 0: one row repeated
        base, reward = big_b[:1].expand(4, -1), big_r[:1].expand(4, -1)
    for kwargs in (dict(temperature=0.7), dict(temperature=0.7, top_k=50, top_p=0.9)):
        compare(base, reward, None, kwargs, seed=3, offset=1)
    ref = llm_logits(4, 5000, torch.bfloat16, seed=11)
    compare(big_b.half(), big_r.bfloat16(), ref, dict(temperature=0.8, top_k=40), seed=5, offset=2, sm_count=1)


def test_noise_skipping_is_exact():
    """The dense race skips the logs of noise words that cannot lift a score by `need`
    (row_load.cuh reach_limit): never one whose Gumbel noise would reach it, for any need."""
    lib = emu_ops.build()
    for need in (-0.99, -0.5, 0.0, 0.3, 1.0, 2.0, 3.5, 5.0, 8.0, 12.0, 16.0, 16.6, 17.0, 30.0):
        assert lib.emu_reach_violations(need) == 0, f"need {need}"
    assert lib.emu_reach_passing(-2.0) == 2**23  # nothing skipped below need -1
    assert lib.emu_reach_passing(8.0) < 2**23 // 1000  # and most words skipped when a key leads by 8


@pytest.mark.parametrize("sm_count", [132, 1])
def test_emulated_at_the_gpu_block_size(sm_count):
    """The GPU's configuration (256 threads per block: 8 warps, 2048 / 6144-id slices, up to 1024
    sorted candidates, C up to 256 thread maxima) on a few rows of every kind."""
    batch, width = 3, 14000
    base = llm_logits(batch, width, torch.bfloat16, seed=31)
    reward = llm_logits(batch, width, torch.bfloat16, seed=32)
    ref = llm_logits(batch, width, torch.float32, seed=33)
    flat = torch.zeros(batch, width)
    for kwargs in (dict(temperature=0.0), dict(temperature=0.7), dict(temperature=0.7, top_k=50, top_p=0.9),
                   dict(temperature=0.9, top_k=256), dict(temperature=0.8, top_p=0.9), dict(temperature=1.0, min_p=0.05),
                   dict(temperature=0.9, plausibility=0.1, top_k=20), dict(temperature=1.0, top_k=300)):
        compare(base, reward, None, kwargs, seed=4, offset=1, sm_count=sm_count, threads=256)
        compare(base, reward, ref, dict(kwargs, alpha=per_row([0.3, 1.0, 1.5], batch)), seed=5, sm_count=sm_count,
                threads=256)
    compare_logprobs(base, reward, ref, dict(temperature=0.7, top_k=50, top_p=0.9), sm_count=sm_count, threads=256)
    for kwargs in (dict(temperature=1.0, top_p=0.5), dict(temperature=1.0, top_k=20), dict(temperature=1.0)):
        compare(flat, flat.clone(), None, kwargs, seed=6, sm_count=sm_count, threads=256)
