"""The CUDA kernels of the fused op on a GPU: the foundation grid against the reference, the
statistical test, opcheck, torch.compile, CUDA-graph capture and replay, the small-batch
(split-vocabulary) and large-batch plans against each other, the exact fallback, bad input.

Skipped without a CUDA device. On a GPU machine tita_ext._C must be built with CUDA
(`pip install --no-build-isolation -e .` with a CUDA torch and nvcc): otherwise the tests fail
with the backend's "not available" error rather than skip.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

import tita_ext
from tita_ext import ops, reference
from conftest import (ALPHAS, DTYPES, LOGPROB_ATOL, MODES, PROB_ATOL, SHAPES, STATISTICS_CASES, case_id,
                      compare_with_reference, llm_logits, mode_kwargs, per_row)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = "cuda"


def _cuda_kwargs(kwargs: dict) -> dict:
    return {k: v.to(CUDA) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def _cases(batch: int, width: int, dtype_index: int) -> list[tuple[object, bool]]:
    """(alpha, with reference logits) sub-cases, as in test_kernel_vs_reference (fewer on the
    largest shapes, where the reference's dense noise dominates the run time)."""
    rows = per_row(ALPHAS, batch)
    if batch * width > 4_000_000:
        return [(ALPHAS[dtype_index % len(ALPHAS)], dtype_index % 2 == 0), (rows, dtype_index % 2 == 1)]
    return [(a, ref) for a in ALPHAS for ref in (False, True)] + [(rows, False), (rows, True)]


def test_cuda_kernels_are_built():
    assert tita_ext.compiled_available(CUDA), (
        "tita_ext._C has no CUDA kernels: rebuild with `pip install --no-build-isolation -e .` "
        "(CUDA torch and nvcc on PATH)")
    assert ops._resolve_backend(None, torch.device(CUDA)) == "compiled"
    assert ops._resolve_backend("cuda", torch.device(CUDA)) == "compiled"


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("shape", SHAPES + ((300, 32000, 32000),), ids=lambda s: f"B{s[0]}-V{s[1]}x{s[2]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_sample_matches_reference(dtype, shape, mode):
    batch, base_width, reward_width = shape
    dtype_index = DTYPES.index(dtype)
    base = llm_logits(batch, base_width, dtype, seed=1).to(CUDA)
    reward = llm_logits(batch, reward_width, dtype, seed=2).to(CUDA)
    ref = llm_logits(batch, reward_width, dtype, seed=3).to(CUDA)
    for i, (alpha, with_ref) in enumerate(_cases(batch, base_width, dtype_index)):
        kwargs = mode_kwargs(mode, batch, per_row_params=isinstance(alpha, torch.Tensor))
        kwargs = _cuda_kwargs(dict(kwargs, alpha=alpha))
        got = compare_with_reference(base, reward, ref if with_ref else None, kwargs, seed=1000 + i, offset=i,
                                     backend="cuda")
        assert got.tokens.device.type == CUDA
        assert (got.tokens < min(base_width, reward_width)).all()


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("shape", [(3, 1271, 1271), (64, 32000, 32000), (3, 32064, 32000), (2, 151936, 151936)],
                         ids=lambda s: f"B{s[0]}-V{s[1]}x{s[2]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_logprobs_matches_reference(dtype, shape, mode):
    batch, base_width, reward_width = shape
    base = llm_logits(batch, base_width, dtype, seed=4).to(CUDA)
    reward = llm_logits(batch, reward_width, dtype, seed=5).to(CUDA)
    for alpha, with_ref in [(0.6, False), (1.5, True), (per_row(ALPHAS, batch), False)]:
        ref = llm_logits(batch, reward_width, dtype, seed=6).to(CUDA) if with_ref else None
        kwargs = _cuda_kwargs(dict(mode_kwargs(mode, batch, isinstance(alpha, torch.Tensor)), alpha=alpha))
        got = tita_ext.guided_logprobs(base, reward, ref, backend="cuda", **kwargs)
        want = tita_ext.guided_logprobs(base, reward, ref, backend="reference", **kwargs)
        assert got.shape == (batch, base_width) and got.dtype == torch.float32 and got.device.type == CUDA
        torch.testing.assert_close(got.exp(), want.exp(), atol=PROB_ATOL, rtol=1e-4)
        visible = want > -20
        torch.testing.assert_close(got[visible], want[visible], atol=LOGPROB_ATOL, rtol=1e-5)
        assert torch.isneginf(got[:, min(base_width, reward_width):]).all()


@pytest.mark.parametrize("layout", ["row_slice", "unaligned", "odd_width", "column_stride", "transposed", "expanded"])
def test_cuda_any_strides(layout):
    big_b = llm_logits(4, 40000, torch.bfloat16, seed=7).to(CUDA)
    big_r = llm_logits(4, 40000, torch.bfloat16, seed=8).to(CUDA)
    if layout == "row_slice":
        base, reward = big_b[:, 8:32008], big_r[:, 16:32016]
    elif layout == "unaligned":  # rows start off 16-byte alignment: shifted 16-byte loads + shuffles
        base, reward = big_b[:, 3:32003], big_r[:, 5:32005]
    elif layout == "odd_width":  # contiguous rows of 32001 ids: 7 rows in 8 misaligned
        base, reward = big_b[:, :32001].contiguous(), big_r[:, :32001].contiguous()
    elif layout == "column_stride":
        base, reward = big_b[:, ::2], big_r[:, 1::2]
    elif layout == "transposed":
        base, reward = big_b.t().contiguous().t(), big_r.t().contiguous().t()
    else:  # row stride 0
        base, reward = big_b[:1].expand(4, -1), big_r[:1].expand(4, -1)
    for kwargs in (MODES["temperature"], dict(temperature=0.7, top_k=50, top_p=0.9), MODES["greedy"]):
        compare_with_reference(base, reward, None, dict(kwargs), seed=3, offset=1, backend="cuda")
        compare_with_reference(base.contiguous(), reward.contiguous(), None, dict(kwargs), seed=3, offset=1,
                               backend="cuda")


def test_cuda_mixed_input_dtypes_and_vocab_size():
    base = llm_logits(5, 40000, torch.bfloat16, seed=9).to(CUDA)
    reward = llm_logits(5, 40000, torch.float16, seed=10).to(CUDA)
    ref = llm_logits(5, 40000, torch.float32, seed=11).to(CUDA)
    for kwargs in MODES.values():
        compare_with_reference(base, reward, ref, dict(kwargs), seed=5, offset=2, backend="cuda")
    got = tita_ext.guided_sample(base, reward, temperature=1.0, top_p=0.9, vocab_size=30000, seed=1, backend="cuda")
    want = tita_ext.guided_sample(base, reward, temperature=1.0, top_p=0.9, vocab_size=30000, seed=1,
                                  backend="reference")
    assert torch.equal(got.tokens, want.tokens) and (got.tokens < 30000).all()


def test_cuda_edge_rows():
    """NaN rows, inf logits, bad per-row parameters (status, token -1, NaN), per-row seeds."""
    base = llm_logits(4, 32000, torch.float32, seed=4).to(CUDA)
    reward = llm_logits(4, 32000, torch.float32, seed=5).to(CUDA)
    base[1] = float("nan")
    reward[2, 5:9] = float("inf")
    kwargs = dict(temperature=torch.tensor([0.7, 0.7, -1.0, 0.0], device=CUDA), top_k=5)
    got = tita_ext.guided_sample(base, reward, check_status=False, seed=3, backend="cuda", **kwargs)
    want = tita_ext.guided_sample(base, reward, check_status=False, seed=3, backend="reference", **kwargs)
    assert got.status.tolist() == [0, 1, 2, 0] and torch.equal(got.tokens, want.tokens)
    assert got.tokens[1:3].tolist() == [-1, -1] and torch.isnan(got.logprob[1:3]).all()
    with pytest.raises(ValueError, match="row 1: no allowed token has a finite score"):
        tita_ext.guided_sample(base, reward, seed=3, backend="cuda", **kwargs)
    logprobs = tita_ext.guided_logprobs(base, reward, backend="cuda", **kwargs)
    assert torch.isnan(logprobs[1:3]).all() and not torch.isnan(logprobs[[0, 3]]).any()
    seeds = torch.arange(4, device=CUDA)
    compare_with_reference(base[[0, 3, 0, 3]], reward[[0, 3, 0, 3]], None, dict(temperature=1.0), seed=seeds,
                           offset=torch.tensor([0, 1, 2, 3], device=CUDA), backend="cuda")


def test_cuda_fallback_and_flat_rows():
    """Rows the candidates cannot decide go to the bounded fallback (histogram, then gather + race,
    over the row's slices): top-k above 256, nuclei of thousands of ids, ties beyond the slots;
    flat rows are decided by the slices' winners; late plausibility floors."""
    batch, width = 3, 40000
    flat = torch.zeros(batch, width, device=CUDA)
    for kwargs in list(MODES.values()) + [dict(temperature=1.0, top_p=0.5), dict(temperature=1.0, top_k=20)]:
        compare_with_reference(flat, flat.clone(), None, dict(kwargs), seed=9, offset=3, backend="cuda")
    base = llm_logits(batch, width, torch.float32, seed=12).to(CUDA)
    reward = llm_logits(batch, width, torch.float32, seed=13, spread=0.1).to(CUDA)
    for kwargs in (dict(temperature=1.0, top_k=300), dict(temperature=0.8, top_k=1000, top_p=0.95),
                   dict(temperature=1.5, top_p=0.999), dict(temperature=3.0, min_p=0.001),
                   dict(temperature=0.7, top_k=256, top_p=0.9, min_p=0.02, plausibility=0.01)):
        compare_with_reference(base, reward, None, kwargs, seed=8, offset=0, backend="cuda")
    late = torch.zeros(batch, width, device=CUDA)
    late[:, -1] = 5.0
    late[:, :10] = 4.0
    for kwargs in (dict(temperature=1.0, plausibility=0.3), dict(temperature=0.0, plausibility=0.3, top_k=3)):
        compare_with_reference(late, reward, None, kwargs, seed=8, offset=0, backend="cuda")


def test_cuda_top_p_bin_tables():
    """Top-p rows without top-k (csrc/cuda/guided_bins.cuh): nuclei of thousands of ids decided by
    the slices' bin tables and the cut bin's candidates, tied cut bins, greedy, logprobs, both plans."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import cases  # benchmarks/cases.py: the op benchmarks' logits

    b, r = cases.logits(64, 151936)
    base, reward = b.bfloat16().to(CUDA), r.bfloat16().to(CUDA)
    ties = (base.float() * 2).round().div(2).bfloat16()
    for kwargs in (dict(temperature=0.7, top_p=0.9), dict(temperature=0.0, top_p=0.9),
                   dict(temperature=1.0, top_p=0.95, plausibility=1e-4)):
        for rows in (slice(0, 2), slice(0, 64)):  # 2048- and 6144-id slices
            compare_with_reference(base[rows], reward[rows], None, dict(kwargs), seed=4, offset=1, backend="cuda")
        compare_with_reference(ties[:4], ties[:4].clone(), None, dict(kwargs), seed=4, offset=1, backend="cuda")
    got = tita_ext.guided_logprobs(base[:4], reward[:4], temperature=0.7, top_p=0.9, backend="cuda")
    want = tita_ext.guided_logprobs(base[:4], reward[:4], temperature=0.7, top_p=0.9, backend="reference")
    assert torch.equal(torch.isneginf(got), torch.isneginf(want))
    torch.testing.assert_close(got.exp(), want.exp(), atol=PROB_ATOL, rtol=1e-4)


def test_cuda_overflow_status():
    """Status 3 (contract.h kStatusOverflow): a finite logit whose scaled score overflows fp32."""
    base = llm_logits(3, 5000, torch.float32, seed=21).to(CUDA)
    reward = llm_logits(3, 5000, torch.float32, seed=22).to(CUDA)
    base[0, 17] = 1e33  # / 1e-6 overflows
    base[1, 3] = float("inf")  # a non-finite input only excludes its id
    temperature = torch.tensor([1e-6, 1e-6, 1.0], device=CUDA)
    for kwargs in (dict(), dict(top_k=5, top_p=0.9)):
        out = tita_ext.guided_sample(base, reward, temperature=temperature, seed=1, backend="cuda",
                                     check_status=False, **kwargs)
        assert out.status.tolist() == [3, 0, 0] and int(out.tokens[0]) == -1


@pytest.mark.parametrize("kwargs", [dict(temperature=0.8), dict(temperature=0.7, top_k=50, top_p=0.9),
                                    dict(temperature=0.0), dict(temperature=1.0, min_p=0.05, plausibility=0.05)],
                         ids=["sample", "topk_topp", "greedy", "min_p_floor"])
def test_split_vocab_and_large_batch_plans_agree(kwargs):
    """A row alone (B=1: 2048-id slices over many blocks) and inside a batch of 512 (6144-id
    slices): per-row seeds address the noise by request, so the tokens must be the same."""
    batch, width = 512, 151936
    base = llm_logits(batch, width, torch.bfloat16, seed=14).to(CUDA)
    reward = llm_logits(batch, width, torch.bfloat16, seed=15).to(CUDA)
    seeds = torch.arange(100, 100 + batch, device=CUDA)
    offsets = torch.full((batch,), 7, device=CUDA)
    whole = tita_ext.guided_sample(base, reward, seed=seeds, offset=offsets, backend="cuda", **kwargs)
    for row in (0, 1, 257, batch - 1):
        alone = tita_ext.guided_sample(base[row:row + 1], reward[row:row + 1], seed=seeds[row:row + 1],
                                       offset=offsets[row:row + 1], backend="cuda", **kwargs)
        assert alone.tokens.item() == whole.tokens[row].item()
        torch.testing.assert_close(alone.logprob[0], whole.logprob[row], atol=LOGPROB_ATOL, rtol=1e-5)
        torch.testing.assert_close(alone.token_reward[0], whole.token_reward[row], atol=LOGPROB_ATOL, rtol=1e-5)
    sub = slice(0, 4)  # the per-row seed makes a request's noise independent of its batch position
    want = tita_ext.guided_sample(base[sub], reward[sub], seed=seeds[sub], offset=offsets[sub], backend="reference",
                                  **kwargs)
    assert torch.equal(want.tokens, whole.tokens[sub])


# The statistical test (test_sampling_statistics.py) on the CUDA kernel.
@pytest.mark.parametrize("kwargs", STATISTICS_CASES, ids=case_id)
def test_cuda_draws_follow_the_guided_distribution(kwargs):
    pytest.importorskip("scipy")
    from test_sampling_statistics import DRAWS, P_VALUE_FLOOR, chi_square_p

    g = torch.Generator().manual_seed(21)
    base, reward = torch.randn(1, 300, generator=g) * 1.5, torch.randn(1, 300, generator=g) * 1.5
    probs = tita_ext.guided_logprobs(base, reward, backend="reference", **kwargs)[0].double().exp()
    rows_b, rows_r = base.to(CUDA).expand(DRAWS, -1), reward.to(CUDA).expand(DRAWS, -1)
    offsets = torch.arange(DRAWS, dtype=torch.int64, device=CUDA)
    seed = torch.full((DRAWS,), 1234, dtype=torch.int64, device=CUDA)
    tokens = tita_ext.guided_sample(rows_b, rows_r, seed=seed, offset=offsets, backend="cuda", **kwargs).tokens.cpu()
    assert (probs > 0)[tokens].all(), "a draw left the allowed support"
    p_value = chi_square_p(tokens, probs)
    assert p_value > P_VALUE_FLOOR, f"chi-square p = {p_value:.2e}"
    cpu = tita_ext.guided_sample(base.expand(DRAWS, -1), reward.expand(DRAWS, -1), seed=seed.cpu(),
                                 offset=offsets.cpu(), backend="reference", **kwargs).tokens
    assert torch.equal(tokens, cpu)  # the same draws as the reference, token for token


@pytest.mark.parametrize("index", range(12))
def test_cuda_opcheck(index):
    from test_op_registration import _samples

    args = [a.to(CUDA) if isinstance(a, torch.Tensor) else a for a in _samples()[index]]
    seed = torch.tensor([7], device=CUDA) if index % 2 else torch.arange(3, device=CUDA)
    torch.library.opcheck(torch.ops.tita.guided_sample.default, (*args, seed, torch.tensor([2], device=CUDA), -1))
    torch.library.opcheck(torch.ops.tita.guided_logprobs.default, (*args, 1000 if index % 3 == 0 else -1))


def test_cuda_compile_fullgraph_matches_eager():
    base = llm_logits(5, 32000, torch.bfloat16, 1).to(CUDA)
    reward = llm_logits(5, 32000, torch.bfloat16, 2).to(CUDA)
    seed = torch.tensor([3], device=CUDA)

    def step(base, reward, seed, offset):
        out = tita_ext.guided_sample(base, reward, alpha=0.6, temperature=0.7, top_k=50, top_p=0.9,
                                     seed=seed, offset=offset)
        return out.tokens, out.logprob, tita_ext.guided_logprobs(base, reward, alpha=0.6, temperature=0.7)

    compiled = torch.compile(step, fullgraph=True)
    for i in range(3):
        offset = torch.tensor([i], device=CUDA)
        eager = step(base, reward, seed, offset)
        got = compiled(base, reward, seed, offset)
        assert torch.equal(got[0], eager[0])
        torch.testing.assert_close(got[1], eager[1])
        torch.testing.assert_close(got[2], eager[2])


@pytest.mark.parametrize("advance_inside", [False, True], ids=["offset-advanced-between", "offset-advanced-in-graph"])
@pytest.mark.parametrize("kwargs", [dict(temperature=0.9), dict(temperature=0.9, top_k=50, top_p=0.9),
                                    dict(temperature=1.0, plausibility=0.01, min_p=0.01)],
                         ids=["sample", "topk_topp", "floor_min_p"])
def test_cuda_graph_replays_draw_fresh_tokens(kwargs, advance_inside):
    """guided_sample captured in a CUDA graph: seed and offset are read on the device, so each
    replay after the offset moved (on the device) draws new tokens, equal to the eager call."""
    g = torch.Generator().manual_seed(5)
    base = (torch.randn(8, 32064, generator=g) * 1.2).to(CUDA, torch.bfloat16)  # smooth: tokens vary
    reward = (torch.randn(8, 32000, generator=g) * 1.2).to(CUDA, torch.bfloat16)
    seed = torch.tensor([2024], device=CUDA)
    offset = torch.tensor([0], device=CUDA)

    def step():
        return tita_ext.guided_sample(base, reward, seed=seed, offset=offset, backend="cuda", **kwargs)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
        if advance_inside:
            offset.add_(1)
    offset.zero_()
    draws = []
    for k in range(6):
        graph.replay()
        if not advance_inside:
            offset.add_(1)  # on the device, between replays
        tokens = out.tokens.clone()
        eager = tita_ext.guided_sample(base, reward, seed=seed, offset=torch.tensor([k], device=CUDA),
                                       backend="cuda", **kwargs)
        assert torch.equal(tokens, eager.tokens), f"replay {k}"
        torch.testing.assert_close(out.logprob, eager.logprob)
        assert (out.status == 0).all()
        draws.append(tuple(tokens.tolist()))
    assert len(set(draws)) == len(draws), "every replay should draw new tokens"
    assert int(offset.item()) == 6


def test_cuda_graph_logprobs():
    base = llm_logits(4, 32000, torch.float16, 1).to(CUDA)
    reward = llm_logits(4, 32000, torch.float16, 2).to(CUDA)
    kwargs = dict(temperature=0.7, top_k=40, min_p=0.02)
    want = tita_ext.guided_logprobs(base, reward, backend="cuda", **kwargs)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = tita_ext.guided_logprobs(base, reward, backend="cuda", **kwargs)
    base.copy_(llm_logits(4, 32000, torch.float16, 3).to(CUDA))
    graph.replay()
    torch.testing.assert_close(got, tita_ext.guided_logprobs(base, reward, backend="reference", **kwargs),
                               atol=LOGPROB_ATOL, rtol=1e-5)
    assert not torch.equal(got, want)


def test_cuda_mixed_devices_are_refused():
    base = llm_logits(2, 1271, torch.float32, 1)
    reward = llm_logits(2, 1271, torch.float32, 2)
    with pytest.raises(ValueError, match=r"reward_logits is on cpu but base_logits is on cuda"):
        tita_ext.guided_sample(base.to(CUDA), reward, seed=1)
    with pytest.raises(ValueError, match=r"ref_logits is on cpu but base_logits is on cuda"):
        tita_ext.guided_logprobs(base.to(CUDA), reward.to(CUDA), reward)
    with pytest.raises(ValueError, match=r"temperature is a per-row tensor on cpu but the logits are on cuda"):
        tita_ext.guided_sample(base.to(CUDA), reward.to(CUDA), temperature=torch.tensor([0.5, 0.7]), seed=1)
    with pytest.raises(ValueError, match=r"seed is on cpu but the logits are on cuda"):
        tita_ext.guided_sample(base.to(CUDA), reward.to(CUDA), seed=torch.tensor([1]))
    with pytest.raises(ValueError, match=r"backend='cuda' needs CUDA tensors, got cpu tensors"):
        tita_ext.guided_sample(base, reward, seed=1, backend="cuda")
    with pytest.raises(RuntimeError, match=r"reward_logits is on cpu but base_logits is on cuda"):
        torch.ops.tita.guided_sample(base.to(CUDA), reward, None, 0.6, None, 1.0, None, 0, None, 1.0, None, 0.0,
                                     None, 0.0, None, torch.tensor([1], device=CUDA),
                                     torch.tensor([0], device=CUDA), -1)


@pytest.mark.parametrize("batch", [1, 3, 300])
def test_cuda_decode_advance_equals_cpu_op(batch):
    from test_decode_advance import case

    for seed in range(3):
        sampled, finished, stop_ids = case(batch, 2, seed)
        want = ops.decode_advance(sampled, finished, stop_ids, 4, backend="compiled")
        got = ops.decode_advance(sampled.to(CUDA), finished.to(CUDA), stop_ids.to(CUDA), 4, backend="cuda")
        for g, w in zip(got, want):
            assert g.device.type == CUDA and torch.equal(g.cpu(), w)


def test_cuda_default_backend_and_reference_agree():
    base = llm_logits(3, 32064, torch.bfloat16, 1).to(CUDA)
    reward = llm_logits(3, 32000, torch.bfloat16, 2).to(CUDA)
    out = tita_ext.guided_sample(base, reward, temperature=0.7, top_k=50, top_p=0.9, seed=4)
    want = reference.guided_sample(*ops._op_args(base, reward, None, 0.6, 0.7, 50, 0.9, 0.0, 0.0),
                                   *ops._seed_offset(4, 0, base), -1)
    assert torch.equal(out.tokens, want[0])
