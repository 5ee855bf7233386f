"""The Triton twin (tita_ext/triton_ops.py) against the reference, on the foundation grid's axes
at small shapes: under Triton's interpreter on a CPU (TRITON_INTERPRET=1), compiled on a GPU.

Tokens must be identical; logprob / token_reward / guided_logprobs agree to fp32 rounding.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # conftest sets it before anything imports triton; this file alone too
pytest.importorskip("triton")

import tita_ext  # noqa: E402
from conftest import (ALPHAS, DTYPES, LOGPROB_ATOL, MODES, PROB_ATOL, compare_with_reference, llm_logits,  # noqa: E402
                      mode_kwargs, per_row)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter evaluates both sides of tl.where with numpy, including -inf - -inf: not errors.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
SHAPES = ((1, 1271, 1271), (5, 1300, 1271))  # batch 1 and odd; odd vocabularies; mixed widths


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-V{s[1]}x{s[2]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_matches_reference(dtype, shape, mode):
    batch, base_width, reward_width = shape
    i = DTYPES.index(dtype) + len(mode)
    base = llm_logits(batch, base_width, dtype, seed=1).to(DEVICE)
    reward = llm_logits(batch, reward_width, dtype, seed=2).to(DEVICE)
    ref = llm_logits(batch, reward_width, dtype, seed=3).to(DEVICE)
    cases = [(ALPHAS[i % len(ALPHAS)], i % 2 == 0), (per_row(ALPHAS, batch).to(DEVICE), i % 2 == 1)]
    for j, (alpha, with_ref) in enumerate(cases):
        kwargs = mode_kwargs(mode, batch, per_row_params=isinstance(alpha, torch.Tensor))
        kwargs = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        kwargs["alpha"] = alpha
        r = ref if with_ref else None
        compare_with_reference(base, reward, r, kwargs, seed=100 + j, offset=j, backend="triton")
        got = tita_ext.guided_logprobs(base, reward, r, backend="triton", **kwargs)
        want = tita_ext.guided_logprobs(base, reward, r, backend="reference", **kwargs)
        torch.testing.assert_close(got.exp(), want.exp(), atol=PROB_ATOL, rtol=1e-4)
        visible = want > -20
        torch.testing.assert_close(got[visible], want[visible], atol=LOGPROB_ATOL, rtol=1e-5)


def test_triton_edge_rows():
    """NaN rows, bad per-row parameters, per-row seeds, flat rows and ties, strided views."""
    base = llm_logits(4, 1271, torch.float32, seed=4).to(DEVICE)
    reward = llm_logits(4, 1271, torch.float32, seed=5).to(DEVICE)
    base[1] = float("nan")
    kwargs = dict(temperature=torch.tensor([0.7, 0.7, -1.0, 0.0], device=DEVICE), top_k=5)
    got = tita_ext.guided_sample(base, reward, backend="triton", check_status=False, seed=3, **kwargs)
    want = tita_ext.guided_sample(base, reward, backend="reference", check_status=False, seed=3, **kwargs)
    assert got.status.tolist() == [0, 1, 2, 0] and torch.equal(got.tokens, want.tokens)
    seeds = torch.arange(4, device=DEVICE)
    flat = torch.zeros(4, 2000, device=DEVICE)
    for kw in (dict(temperature=1.0, seed=seeds), dict(temperature=0.0), dict(temperature=1.0, top_p=0.5, seed=7)):
        compare_with_reference(flat, flat.clone(), None, kw, seed=kw.pop("seed", 1), offset=2, backend="triton")
    wide = llm_logits(3, 3000, torch.float32, seed=6).to(DEVICE)
    compare_with_reference(wide[:, ::2], wide[:, 1::2], None, dict(temperature=0.8, top_k=30), seed=1, offset=0,
                           backend="triton")
