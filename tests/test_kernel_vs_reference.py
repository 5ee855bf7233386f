"""The compiled CPU kernel against the pure-PyTorch reference over the whole grid.

dtype x shape (batch 1 / 3 / 64, vocab 1271 / 32000 / 151936, mixed 32064-vs-32000) x mode
(greedy, temperature, top-k, top-p, min-p, plausibility) x alpha {0, 0.6, 1, 1.5} x with and
without reference logits x scalar and per-row parameters.

Tokens must be identical (the noise is a pure function of its address, bit-equal in both).
logprob / token_reward / guided_logprobs agree to fp32 rounding (conftest tolerances).
On the largest shape the alpha axis runs through per-row parameters (every alpha in one call)
and one scalar alpha, to keep the reference's dense noise affordable.
"""

from __future__ import annotations

import pytest
import torch

import tita_ext
from conftest import (ALPHAS, DTYPES, LOGPROB_ATOL, MODES, PROB_ATOL, SHAPES, compare_with_reference, llm_logits,
                      mode_kwargs, needs_compiled, per_row)

pytestmark = needs_compiled


def _cases(batch: int, width: int, dtype_index: int) -> list[tuple[object, bool]]:
    """(alpha argument, with reference) sub-cases for one shape."""
    rows = per_row(ALPHAS, batch)
    if batch * width > 4_000_000:
        return [(ALPHAS[dtype_index % len(ALPHAS)], dtype_index % 2 == 0), (rows, dtype_index % 2 == 1)]
    return [(a, ref) for a in ALPHAS for ref in (False, True)] + [(rows, False), (rows, True)]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-V{s[1]}x{s[2]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_guided_sample_matches_reference(dtype, shape, mode):
    batch, base_width, reward_width = shape
    dtype_index = DTYPES.index(dtype)
    base = llm_logits(batch, base_width, dtype, seed=1)
    reward = llm_logits(batch, reward_width, dtype, seed=2)
    ref = llm_logits(batch, reward_width, dtype, seed=3)
    for i, (alpha, with_ref) in enumerate(_cases(batch, base_width, dtype_index)):
        kwargs = mode_kwargs(mode, batch, per_row_params=isinstance(alpha, torch.Tensor))
        got = compare_with_reference(base, reward, ref if with_ref else None, dict(kwargs, alpha=alpha), seed=1000 + i, offset=i)
        assert (got.tokens < min(base_width, reward_width)).all()


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("shape", [(3, 1271, 1271), (64, 32000, 32000), (3, 32064, 32000)],
                         ids=lambda s: f"B{s[0]}-V{s[1]}x{s[2]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_guided_logprobs_matches_reference(dtype, shape, mode):
    batch, base_width, reward_width = shape
    base = llm_logits(batch, base_width, dtype, seed=4)
    reward = llm_logits(batch, reward_width, dtype, seed=5)
    for alpha, with_ref in [(0.6, False), (1.5, True), (per_row(ALPHAS, batch), False)]:
        ref = llm_logits(batch, reward_width, dtype, seed=6) if with_ref else None
        kwargs = dict(mode_kwargs(mode, batch, isinstance(alpha, torch.Tensor)), alpha=alpha)
        got = tita_ext.guided_logprobs(base, reward, ref, backend="compiled", **kwargs)
        want = tita_ext.guided_logprobs(base, reward, ref, backend="reference", **kwargs)
        assert got.shape == (batch, base_width) and got.dtype == torch.float32
        torch.testing.assert_close(got.exp(), want.exp(), atol=PROB_ATOL, rtol=1e-4)
        visible = want > -20  # where the probability is not negligible, the log values agree too
        torch.testing.assert_close(got[visible], want[visible], atol=LOGPROB_ATOL, rtol=1e-5)
        assert torch.equal(torch.isneginf(got[:, min(base_width, reward_width):]),
                           torch.ones_like(got[:, min(base_width, reward_width):], dtype=torch.bool))


@pytest.mark.parametrize("layout", ["row_slice", "column_stride", "transposed"])
def test_any_strides(layout):
    """Views with a row stride wider than the vocabulary, or a non-unit column stride."""
    big_b = llm_logits(4, 3000, torch.float32, seed=7)
    big_r = llm_logits(4, 3000, torch.float32, seed=8)
    if layout == "row_slice":
        base, reward = big_b[:, 100:1371], big_r[:, 7:1278]
    elif layout == "column_stride":
        base, reward = big_b[:, ::2], big_r[:, 1::2]
    else:
        base, reward = big_b.t().contiguous().t(), big_r.t().contiguous().t()
    for kwargs in (MODES["temperature"], dict(temperature=0.7, top_k=50, top_p=0.9)):
        compare_with_reference(base, reward, None, dict(kwargs), seed=3, offset=1)
        compare_with_reference(base.contiguous(), reward.contiguous(), None, dict(kwargs), seed=3, offset=1)


def test_mixed_input_dtypes():
    """A bf16 base with an fp16 reward model and fp32 reference logits."""
    base = llm_logits(5, 4000, torch.bfloat16, seed=9)
    reward = llm_logits(5, 4000, torch.float16, seed=10)
    ref = llm_logits(5, 4000, torch.float32, seed=11)
    for kwargs in MODES.values():
        compare_with_reference(base, reward, ref, dict(kwargs), seed=5, offset=2)


def test_flat_rows_and_plausibility_rescan():
    """Rows where every token is in play (flat logits), and rows whose plausibility floor rises
    late (the base's maximum sits at the end of the row), which forces the kernel's rescan."""
    batch, width = 6, 20000
    base = torch.zeros(batch, width)
    base[:, -1] = 5.0  # the max arrives last
    base[:, :10] = 4.0  # tokens that stay plausible at floor 0.3 (log 0.3 = -1.2)
    reward = llm_logits(batch, width, torch.float32, seed=12, spread=0.1)
    for kwargs in (dict(temperature=1.0, plausibility=0.3), dict(temperature=0.0, plausibility=0.3, top_k=3),
                   dict(temperature=1.0, top_p=0.5), dict(temperature=1.0, top_k=5000),
                   dict(temperature=1.0, min_p=0.9), dict(temperature=0.5, top_p=0.99, min_p=0.5)):
        compare_with_reference(base, reward, None, kwargs, seed=8, offset=0)
    flat = torch.zeros(batch, width)
    for kwargs in MODES.values():
        compare_with_reference(flat, flat.clone(), None, dict(kwargs), seed=9, offset=3)
