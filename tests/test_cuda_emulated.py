"""The CUDA kernels' device code on a CPU emulation of CUDA (tests/cuda_emu) against the reference.

Runs without a GPU: csrc/cuda/guided_sample.cu and its headers are compiled by the host compiler
against emu.h (one OS thread per CUDA thread, 64 per block by default and 256 as on the GPU,
barriers for __syncthreads, shuffles exchanged per warp with their masks checked), and the real
host code runs: launch_guided_sample / launch_guided_logprobs, make_plan, launch_chain. This
checks the kernels' logic (slicing and merging, the race and its noise skipping, candidate
hand-over, the selections, the bounded fallback, strides, dtypes, statuses) and their cost: the
global-memory bytes every call moves and the path every row takes (the benchmark's grid points
and adversarial rows, at the GPU's block size). Timing, occupancy and the memory model need the
GPU (tests/test_cuda_ops.py).
"""

from __future__ import annotations

import ctypes
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


@pytest.mark.parametrize("sm_count", [132, 1])
def test_emulated_top_p_bin_tables(sm_count):
    """Top-p rows without top-k or min-p are decided by the slices' bin tables in the scan's one
    read (guided_bins.cuh): an untied cut bin from its handed-over elements, a tied cut bin (one
    repeated value, all of its ties kept) from the tables alone, greedy and logprobs alike; a cut
    more than the tables' 16 nats below a slice's top takes the bounded fallback; top-p rows beside
    top-k rows in one launch (per-row top_k 0) keep their own paths."""
    batch, width = 3, 6000
    base = llm_logits(batch, width, torch.float32, seed=51)
    reward = llm_logits(batch, width, torch.float32, seed=52)
    for kwargs in (dict(temperature=0.7, top_p=0.5), dict(temperature=0.0, top_p=0.3),
                   dict(temperature=0.8, top_p=0.2, plausibility=1e-4)):
        compare(base, reward, None, kwargs, seed=7, sm_count=sm_count)
        assert emu_ops.last_cost.path_names() == ["bins"] * batch, kwargs
        compare_logprobs(base, reward, None, kwargs, sm_count=sm_count)
        assert emu_ops.last_cost.path_names() == ["bins"] * batch, kwargs
    ties = (base * 2).round() / 2  # ~40 values: the cut bin holds one repeated value
    compare(ties, ties.clone(), None, dict(temperature=1.0, top_p=0.9), seed=7, sm_count=sm_count)
    assert emu_ops.last_cost.path_names() == ["bins"] * batch
    compare_logprobs(ties, ties.clone(), None, dict(temperature=1.0, top_p=0.9), sm_count=sm_count)
    far = torch.randn(batch, width, generator=torch.Generator().manual_seed(5))
    far[:, 11] = 14.0  # 99% of the mass; top-p 1 - 6e-8 cuts the body ~17 nats below it: beyond its table
    compare(far, far.clone(), None, dict(temperature=1.0, top_p=0.99999994), seed=7, sm_count=sm_count)
    assert "bins" not in emu_ops.last_cost.path_names()
    mixed = dict(temperature=0.7, top_k=per_row([0, 40, 0], batch, torch.int64), top_p=0.6)
    compare(base, reward, None, mixed, seed=7, sm_count=sm_count)
    assert emu_ops.last_cost.path_names() == ["bins", "candidates", "bins"]


def wide_cut_bin_row(width: int, seed: int, tied: bool) -> torch.Tensor:
    """z rows (alpha-free: used as base and reward alike) whose top-p 0.8 cut falls in a 1/4-nat bin
    of 6000 of the 40000 ids: 10% in [2, 2.25), 15% in [1, 1.25), the rest in [-5, -3], shuffled.
    tied: the middle band is 5000 ids at 1.1 and 1000 at 1.2, and the cut falls in the ties at 1.1."""
    g = torch.Generator().manual_seed(seed)
    top, mid = width // 10, width * 3 // 20
    z = torch.rand(width, generator=g) * 2 - 5
    z[:top] = 2 + torch.rand(top, generator=g) * 0.25
    if tied:
        z[top:top + mid] = 1.1
        z[top:top + mid // 6] = 1.2
    else:
        z[top:top + mid] = 1 + torch.rand(mid, generator=g) * 0.25
    return z[torch.randperm(width, generator=g)]


@pytest.mark.parametrize("sm_count", [132, 1])
def test_emulated_top_p_cut_bin_split_from_the_hand_over(sm_count):
    """A top-p cut bin of more elements than the finish keeps (kRowCands), every one handed over:
    the fallback's kernels split it from the handed-over elements (kFallbackCutBin: histogram of
    its values, then gather of the sub-bin of the cut), never re-reading the row: exact tokens,
    log-probabilities and normalisers (sampling, greedy, guided_logprobs), a cut among ties of one
    value inside the bin (all of them kept), beside a top-k row and an ordinary binned row."""
    width = 40000
    rows = torch.stack([wide_cut_bin_row(width, 1, tied=False), wide_cut_bin_row(width, 2, tied=True)])
    for kwargs in (dict(temperature=1.0, top_p=0.8), dict(temperature=0.0, top_p=0.8)):
        compare(rows, rows.clone(), None, kwargs, seed=3, sm_count=sm_count)
        assert emu_ops.last_cost.path_names() == ["bins_refined"] * 2, kwargs
        # The rows are read once, by the scan's 16-byte loads (aligned float32 rows): no pass
        # re-reads them; the rest is the cut bins' handed-over elements (15% of the ids) and summaries.
        cost = emu_ops.last_cost
        assert cost.loaded_by_width(16) == 2 * rows.numel() * 4, cost.widths
        assert cost.loaded <= 1.5 * 2 * rows.numel() * 4, cost.loaded
    compare_logprobs(rows, rows.clone(), None, dict(temperature=1.0, top_p=0.8), sm_count=sm_count)
    assert emu_ops.last_cost.path_names() == ["bins_refined"] * 2
    body = llm_logits(1, width, torch.float32, seed=9)
    mixed = torch.cat([rows[:1], body, rows[1:]])
    kwargs = dict(temperature=1.0, top_k=per_row([0, 40, 0], 3, torch.int64), top_p=0.8)
    compare(mixed, mixed.clone(), None, kwargs, seed=4, sm_count=sm_count)
    assert emu_ops.last_cost.path_names() == ["bins_refined", "candidates", "bins_refined"]


def test_emulated_scratch_reserves_half_slice_hand_over_only_for_top_p_only_launches():
    """Slices of top-p-only rows hand over up to half their ids (8 bytes each); only launches that
    may hold such rows (top-p without a scalar top-k or min-p) reserve those slots and the bin
    tables: a top-k + top-p launch's scratch is a top-k launch's."""
    base = llm_logits(2, 9000, torch.float32, seed=5)
    reward = llm_logits(2, 9000, torch.float32, seed=6)
    scratch = {}
    for name, kwargs in (("top_k", dict(top_k=20)), ("top_k_top_p", dict(top_k=20, top_p=0.9)),
                         ("min_p_top_p", dict(min_p=0.1, top_p=0.9)), ("top_p", dict(top_p=0.9)),
                         ("top_k_rows_top_p", dict(top_k=per_row([0, 20], 2, torch.int64), top_p=0.9))):
        compare(base, reward, None, dict(kwargs, temperature=0.8), seed=2, sm_count=1)  # 1536-id slices
        scratch[name] = emu_ops.last_cost.scratch
    assert scratch["top_k_top_p"] == scratch["top_k"] == scratch["min_p_top_p"], scratch
    cells = 2 * -(-9000 // (emu_ops.THREADS * 8 * 3))
    half_slice = emu_ops.THREADS * 8 * 3 // 2  # 768 slots instead of 512, 8 bytes each
    assert scratch["top_p"] - scratch["top_k"] >= cells * (half_slice - 512) * 8, scratch
    assert scratch["top_k_rows_top_p"] == scratch["top_p"], scratch  # per-row top_k may be 0


@pytest.mark.parametrize("layout", ["row_slice", "column_stride", "transposed", "expanded"])
def test_emulated_strides_and_mixed_dtypes(layout):
    big_b = llm_logits(4, 5000, torch.float32, seed=7)
    big_r = llm_logits(4, 5000, torch.float32, seed=8)
    if layout == "row_slice":  # rows start off 16-byte alignment: shifted 16-byte loads + shuffles
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_emulated_misaligned_rows_use_vector_loads(dtype):
    """Rows that do not start on a 16-byte boundary (offset views; widths 1271 and 32001, whose
    rows are misaligned 7 in 8) are read by the scan with aligned 16-byte loads, shifted and
    completed from the next lane: exact tokens, every whole chunk in 16-byte words, element loads
    only for the rows' partial last chunks and the chosen tokens' logits."""
    big_b = llm_logits(3, 32010, dtype, seed=61)
    big_r = llm_logits(3, 32010, dtype, seed=62)
    cases = [(big_b[:, 3:32004], big_r[:, 5:32006]),  # two different misalignments
             (llm_logits(4, 1271, dtype, seed=63), llm_logits(4, 1271, dtype, seed=64)),
             (big_b[:, :32001].contiguous(), big_r[:, :32001].contiguous())]
    for base, reward in cases:
        for kwargs, sm_count in ((dict(temperature=0.7), 132), (dict(temperature=0.7, top_k=50, top_p=0.9), 1)):
            compare(base, reward, None, kwargs, seed=2, sm_count=sm_count)
            cost = emu_ops.last_cost
            input_bytes = 2 * base.shape[0] * base.shape[1] * base.element_size()
            assert cost.loaded_by_width(16) >= 0.97 * input_bytes, (cost.widths, input_bytes)
            if dtype == torch.bfloat16:  # 2-byte loads are logits only: partial chunks and the tokens'
                assert cost.loaded_by_width(2) <= 0.01 * input_bytes, (cost.widths, input_bytes)


def test_emulated_misaligned_re_reads_use_vector_loads():
    """The passes that read a row again (the fallback's histogram and gather, the plausibility
    floor's base pass, guided_logprobs' write) read misaligned rows (offset views, width 1271) with
    the scan's aligned, shifted 16-byte loads too: exact results, and 2-byte element loads (partial
    last chunks, the chosen tokens' logits) carry at most 1.5% of the logits' bytes, on calls whose
    rows are read 1.5 to 3 times (16-byte loads carry at least that many times the inputs' bytes)."""
    big_b = llm_logits(2, 32010, torch.bfloat16, seed=61)
    big_r = llm_logits(2, 32010, torch.bfloat16, seed=62)
    cases = [(big_b[:, 3:32004], big_r[:, 5:32006]),
             (llm_logits(4, 1271, torch.bfloat16, seed=63), llm_logits(4, 1271, torch.bfloat16, seed=64))]
    fallback = dict(temperature=1.0, top_p=0.999)  # the cut below every table: histogram + gather re-reads
    for base, reward in cases:
        input_bytes = 2 * base.shape[0] * base.shape[1] * 2
        for run, reads in ((lambda: compare(base, reward, None, fallback, seed=2), 3),
                           (lambda: compare(base, reward, None, dict(temperature=0.7, plausibility=0.3), seed=2,
                                            sm_count=1), 1.5),
                           (lambda: compare_logprobs(base, reward, None, fallback), 4)):
            run()
            cost = emu_ops.last_cost
            if reads >= 3:
                assert cost.path_names() == ["histogram"] * base.shape[0], cost.path_names()
            assert cost.loaded_by_width(16) >= 0.97 * reads * input_bytes, (cost.widths, input_bytes)
            assert cost.loaded_by_width(2) <= 0.015 * cost.loaded_by_width(16), cost.widths


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


# ---- cost: global-memory bytes and row paths at the GPU's block size (issue 13) ----------------
# The benchmark's grid (benchmarks/run_ops_gpu.py): B in {1, 8, 64, 256} x V in {32064, 128256,
# 151936}, bf16, T 0.7. A row's cost depends only on V and the launch plan (2048-id slices when
# B x ceil(V / 6144) < 2 x 132 multiprocessors, else 6144-id slices), so each point is emulated on
# one row with the plan its full batch gets on an H100 (sm_count forces it).
GPU_SMS = 132
BYTES_BOUND = 1.25  # bytes loaded per call / bytes of the inputs' shared range


def gpu_plan_sm_count(batch: int, vocab: int) -> int:
    """sm_count that gives a one-row emulated launch the plan of `batch` rows on the GPU."""
    big = batch * -(-vocab // 6144) >= 2 * GPU_SMS
    return 1 if big else GPU_SMS


def cost_check(base, reward, ref, kwargs, sm_count, bound=BYTES_BOUND, allowed=("dense", "candidates")):
    """Tokens equal the reference's; bytes loaded <= bound x the inputs'; every row's path allowed
    and re-reading its row at most twice. Returns the emulated Cost."""
    compare(base, reward, ref, kwargs, seed=11, offset=2, sm_count=sm_count, threads=256)
    cost = emu_ops.last_cost
    vocab = min(base.shape[1], reward.shape[1])
    inputs = [t for t in (base, reward, ref) if t is not None]
    input_bytes = sum(t.shape[0] * vocab * t.element_size() for t in inputs)
    names = cost.path_names()
    assert all(n in allowed for n in names), f"paths {names}, allowed {allowed}"
    assert all(emu_ops.READS[n] <= 3 for n in names)  # the row read once, re-read at most twice
    print(f"cost: loaded {cost.loaded / input_bytes:.3f}x stored {cost.stored / input_bytes:.3f}x the inputs; "
          f"paths {names}; chunks {cost.chunks}; {kwargs}")
    assert cost.loaded <= bound * input_bytes, f"loaded {cost.loaded / input_bytes:.3f}x the inputs (bound {bound})"
    return cost


def bench_logits(batch, vocab, inputs=2):
    import cases  # benchmarks/cases.py: the op benchmarks' logits

    b, r = cases.logits(batch, vocab)
    ref = (0.9 * b + 0.3 * r) if inputs == 3 else None
    as_bf16 = lambda t: None if t is None else t.bfloat16()  # noqa: E731
    return as_bf16(b), as_bf16(r), as_bf16(ref)


sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
BENCH_MODES = {"greedy": dict(temperature=0.0), "sample": dict(temperature=0.7),
               "topk_topp": dict(temperature=0.7, top_k=50, top_p=0.9)}
# (batch, vocab, mode, inputs): every vocabulary and both plans for topk_topp, the dense modes at the largest V.
COST_POINTS = [(1, 32064, "topk_topp", 2), (64, 32064, "topk_topp", 3), (8, 128256, "topk_topp", 3),
               (256, 128256, "topk_topp", 2), (1, 151936, "topk_topp", 3), (64, 151936, "topk_topp", 2),
               (1, 151936, "greedy", 2), (256, 151936, "sample", 3)]


@pytest.mark.parametrize("point", COST_POINTS, ids=lambda p: f"B{p[0]}-V{p[1]}-{p[2]}-{p[3]}in")
def test_emulated_cost_at_benchmark_points(point):
    batch, vocab, mode, inputs = point
    base, reward, ref = bench_logits(1, vocab, inputs)
    cost = cost_check(base, reward, ref, BENCH_MODES[mode], gpu_plan_sm_count(batch, vocab))
    assert cost.chunks == (3 if gpu_plan_sm_count(batch, vocab) == 1 else 1)


def test_emulated_cost_adversarial_rows():
    """Top-p alone with a nucleus of thousands of ids (V = 151936), top-k 1000, flat rows, massive
    ties: exact tokens, one read of the row, bytes loaded <= 1.25 x the inputs."""
    base, reward, _ = bench_logits(2, 151936)
    cost_check(base[1:], reward[1:], None, dict(temperature=0.7, top_p=0.9), GPU_SMS,
               allowed=("bins",))  # a nucleus of 6596 ids, far beyond the candidates: the bin tables
    cost_check(base[:1], reward[:1], None, dict(temperature=0.7, top_k=1000), 1)
    flat = torch.zeros(1, 151936, dtype=torch.bfloat16)
    for kwargs in (dict(temperature=1.0, top_p=0.9), dict(temperature=0.8, top_k=1000, top_p=0.5)):
        cost_check(flat, flat.clone(), None, kwargs, GPU_SMS)
    ties = (base[:1].float() * 2).round().div(2).bfloat16()  # ~40 distinct values over 151936 ids
    cost_check(ties, ties.clone(), None, dict(temperature=1.0, top_p=0.9), 1, allowed=("bins",))  # tied cut bin
    cost_check(ties, ties.clone(), None, dict(temperature=0.7, top_k=1000, top_p=0.9), 1)


def test_emulated_cost_top_p_nucleus_of_a_third_of_the_row():
    """Top-p 0.9 alone at V = 256000, T 1 on the tests' LLM-like logits keeps 75352 ids (29% of the
    row); its cut bin (1/4 nat) holds 12693 of them, more than the finish keeps (kRowCands): the
    slices hand over up to half their ids, and the fallback's two kernels split the cut bin from
    those handed-over elements (histogram, then gather of the sub-bin of the cut): exact, one read
    of the row, <= 1.25 x the inputs' bytes (was the 3-read fallback, ~3.4 x)."""
    big_b = llm_logits(1, 256000, torch.bfloat16, seed=41)
    big_r = llm_logits(1, 256000, torch.bfloat16, seed=42)
    cost_check(big_b, big_r, None, dict(temperature=1.0, top_p=0.9), GPU_SMS, allowed=("bins_refined",))


@pytest.mark.parametrize("sm_count", [132, 1])
def test_emulated_overflow_status(sm_count):
    """kStatusOverflow (contract.h): a finite logit whose combined or temperature-scaled score is
    not finite makes the row's status 3 and its token -1, on every path and before any filter;
    non-finite inputs themselves only exclude their ids. Other rows are unaffected."""
    base = llm_logits(5, 3000, torch.float32, seed=21)
    reward = llm_logits(5, 3000, torch.float32, seed=22)
    base[0, 17] = 1e33               # scaled by 1 / 1e-6: overflows at row 0's temperature
    base[1, 2999] = 3e38             # the combination itself overflows (r - b, then b + a (r - b))
    reward[1, 2999] = -3e38
    base[2, 5] = float("inf")        # a non-finite input: the id is excluded, no overflow
    base[3, 9] = 1e34                # overflows, though the plausibility floor / top-k would drop it
    reward[3, 9] = -1e34
    temperature = torch.tensor([1e-6, 1.0, 1e-6, 1e-6, 1e-6])
    for kwargs in (dict(), dict(top_k=5, top_p=0.9), dict(min_p=0.5, plausibility=0.5)):
        args = _args(base, reward, None, dict(kwargs, temperature=temperature))
        seed, offset = ops._seed_offset(1, 0, base)
        got = emu_ops.guided_sample(*args, seed, offset, 0, sm_count=sm_count)
        assert got[3].tolist() == [3, 3, 0, 3, 0], kwargs
        assert got[0][[0, 1, 3]].tolist() == [-1, -1, -1]
        assert torch.isnan(got[1][[0, 1, 3]]).all()
        want = reference.guided_sample(*args, seed, offset, 0)
        assert torch.equal(got[0][[2, 4]], want[0][[2, 4]])  # the other rows: the reference's tokens


def test_emulated_general_path_for_dense_cut_bins():
    """A top-p cut inside a histogram bin of more than kGather distinct values (20000 ids within
    0.01 of each other, one outlier far below widening the bins): the single-block exact search
    decides, exactly, and the emulation records the row as taking it."""
    z = torch.rand(1, 20000, generator=torch.Generator().manual_seed(3)) * 0.01
    z[0, 7] = -100.0
    compare(z, z.clone(), None, dict(temperature=1.0, top_p=0.9), seed=5)
    assert emu_ops.last_cost.path_names() == ["general"]


def test_emulated_shared_memory_starts_as_garbage():
    """Every block finds garbage in shared memory (a different byte per block), as leftovers on the
    GPU: a kernel that reads shared memory before writing it cannot pass by luck of zeroes."""
    out = torch.zeros(3, dtype=torch.int32)
    emu_ops.build().emu_shared_probe(ctypes.c_void_p(out.data_ptr()))
    assert 0 not in out.tolist() and len(set(out.tolist())) == 3, out.tolist()


@pytest.mark.parametrize("kind, message", [(0, "mask that excludes it"), (1, "divergent shuffle"),
                                           (2, "different masks")])
def test_emulated_warp_checks_fail_like_the_gpu(kind, message):
    """A wrong shuffle mask or a divergent shuffle is reported (the process aborts with a message),
    not hung on and not silently exchanged across the whole block."""
    import subprocess

    lib_path = emu_ops.build()._name
    code = f"import ctypes; ctypes.CDLL({lib_path!r}).emu_warp_probe({kind})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, TITA_EMU_WARP_TIMEOUT_S="3"))
    assert done.returncode != 0 and message in done.stderr, done.stderr[-500:]
