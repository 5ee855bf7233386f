"""Scores that overflow float32 (status 3) and gradients of guided_logprobs, the same on every backend.

Overflow rule (contract.STATUS_OVERFLOW): an id of the shared range whose inputs are all finite
but whose combined, temperature-scaled score is not finite fails its row: token -1, NaN floats,
status 3, and a NaN row from guided_logprobs, like the other failed rows.
"""

from __future__ import annotations

import pytest
import torch

import tita_ext
from tita_ext.contract import STATUS_BAD_PARAM, STATUS_OVERFLOW
from conftest import llm_logits, needs_compiled

BACKENDS = [pytest.param("compiled", marks=needs_compiled), "reference", "triton"]
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    if request.param == "triton" and not tita_ext.triton_available("cpu"):
        pytest.skip("triton is not installed")
    return request.param


def _both(base, reward, ref=None, backend="reference", **kwargs):
    out = tita_ext.guided_sample(base, reward, ref, seed=3, backend=backend, check_status=False, **kwargs)
    dist = tita_ext.guided_logprobs(base, reward, ref, backend=backend,
                                    **{k: v for k, v in kwargs.items() if k != "seed"})
    return out, dist


@pytest.mark.parametrize("case", ["tiny_temperature", "half_temperature", "combination", "lerp_at_alpha_zero"])
def test_overflowing_score_is_status_3(backend, case):
    base, reward = llm_logits(4, 1271, torch.float32, 1), llm_logits(4, 1271, torch.float32, 2)
    ref, kwargs = None, dict(temperature=1.0)
    if case == "tiny_temperature":  # 1e33 / 1e-6 overflows
        base[1, 700] = reward[1, 700] = 1e33
        kwargs = dict(temperature=1e-6)
    elif case == "half_temperature":  # 3e38 / 0.5 overflows
        base[1, 5] = reward[1, 5] = 3e38
        kwargs = dict(temperature=0.5, top_k=10)
    elif case == "combination":  # b + alpha (r - f): r - f overflows
        ref = llm_logits(4, 1271, torch.float32, 3)
        reward[1, 9], ref[1, 9] = 3e38, -3e38
        kwargs = dict(temperature=0.0, alpha=0.6)
    else:  # 0 * (r - b) with r - b = inf is NaN: a finite-input id without a score
        reward[1, 1000], base[1, 1000] = 3e38, -3e38
        kwargs = dict(temperature=0.7, alpha=0.0, top_p=0.9)
    out, dist = _both(base, reward, ref, backend, **kwargs)
    assert out.status.tolist() == [0, STATUS_OVERFLOW, 0, 0]
    assert out.tokens[1] == -1 and torch.isnan(out.logprob[1]) and torch.isnan(out.token_reward[1])
    assert torch.isnan(dist[1]).all() and not torch.isnan(dist[[0, 2, 3]]).any()
    want = tita_ext.guided_sample(base, reward, ref, seed=3, backend="reference", check_status=False, **kwargs)
    assert torch.equal(out.tokens, want.tokens)
    with pytest.raises(ValueError, match=r"row 1: a finite logit gave a non-finite score .* \(fp32 overflow\)"):
        tita_ext.guided_sample(base, reward, ref, seed=3, backend=backend, **kwargs)


def test_large_but_finite_scores_and_non_finite_inputs_are_not_overflow(backend):
    """1e33 at T=1 stays finite; inf / NaN inputs only exclude their id; a bad parameter wins."""
    base, reward = llm_logits(3, 1271, torch.float32, 4), llm_logits(3, 1271, torch.float32, 5)
    base[0, 3] = reward[0, 3] = 1e33
    base[1, 4], reward[1, 5] = float("inf"), float("nan")
    reward[2, 6] = base[2, 6] = 3e38
    temperature = torch.tensor([1.0, 1e-6, -1.0])  # row 2: a bad parameter, reported as such
    out, dist = _both(base, reward, None, backend, temperature=temperature)
    assert out.status.tolist() == [0, 0, STATUS_BAD_PARAM]
    assert out.tokens[0] == 3


def test_every_backend_reports_the_same_statuses(backend):
    """Random extreme values at random places: statuses and tokens equal the reference's."""
    g = torch.Generator().manual_seed(7)
    base, reward = llm_logits(12, 600, torch.float32, 6), llm_logits(12, 600, torch.float32, 8)
    extremes = torch.tensor([1e30, 3e38, -3e38, 1e20, float("nan"), float("inf"), float("-inf")])
    for t in (base, reward):
        rows = torch.randint(0, 12, (16,), generator=g)
        cols = torch.randint(0, 600, (16,), generator=g)
        t[rows, cols] = extremes[torch.randint(0, len(extremes), (16,), generator=g)]
    temperature = torch.tensor([0.0, 1e-6, 1e-3, 0.5, 1.0, 2.0])[torch.arange(12) % 6]
    for kwargs in (dict(temperature=temperature), dict(temperature=temperature, top_k=5, top_p=0.9)):
        out, dist = _both(base, reward, None, backend, **kwargs)
        want, want_dist = _both(base, reward, None, "reference", **kwargs)
        assert torch.equal(out.status, want.status) and torch.equal(out.tokens, want.tokens)
        assert (out.status == STATUS_OVERFLOW).any() and (out.status == 0).any()
        assert torch.equal(torch.isnan(dist).all(dim=1), want.status != 0)


# ---- gradients -----------------------------------------------------------------------------------


def _grads(backend, dtype, with_ref, kwargs):
    inputs = [llm_logits(3, 1271, dtype, s).requires_grad_() for s in (11, 12, 13)]
    base, reward, ref = inputs
    out = tita_ext.guided_logprobs(base, reward, ref if with_ref else None, backend=backend, **kwargs)
    assert out.requires_grad
    weights = torch.linspace(-1.0, 2.0, out.shape[1])
    (out.masked_fill(~torch.isfinite(out), 0.0) * weights).sum().backward()
    return [t.grad for t in inputs[: 3 if with_ref else 2]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("with_ref", [False, True], ids=["lerp", "ref"])
@pytest.mark.parametrize("kwargs", [dict(alpha=0.6, temperature=0.7),
                                    dict(alpha=torch.tensor([0.0, 0.6, 1.5]), temperature=torch.tensor([0.0, 0.5, 1.2]),
                                         top_k=40, top_p=0.9, min_p=0.01),
                                    dict(alpha=0.3, temperature=1.0, plausibility=0.05, vocab_size=1200)],
                         ids=["plain", "filters", "floor"])
def test_logprobs_gradients_match_the_reference(backend, dtype, with_ref, kwargs):
    got = _grads(backend, dtype, with_ref, kwargs)
    want = _grads("reference", dtype, with_ref, kwargs)
    for g, w in zip(got, want):
        assert g is not None and g.dtype == dtype
        torch.testing.assert_close(g.float(), w.float(), atol=1e-5 if dtype == torch.float32 else 2e-2, rtol=1e-3)
