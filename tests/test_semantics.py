"""What the ops mean (DESIGN.md §1-2), checked on every available backend."""

from __future__ import annotations

import pytest
import torch

import tita_ext
from conftest import LOGPROB_ATOL, llm_logits, needs_compiled

BACKENDS = [pytest.param("compiled", marks=needs_compiled), "reference"]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def _pair(batch=4, width=3000, seed=0):
    return llm_logits(batch, width, torch.float32, seed), llm_logits(batch, width, torch.float32, seed + 1)


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(temperature=0.8), dict(temperature=0.8, top_k=30, top_p=0.9)])
def test_alpha_zero_is_the_base_alone(backend, kwargs):
    base, reward = _pair()
    other_reward = llm_logits(4, 3000, torch.float32, 99)
    a = tita_ext.guided_sample(base, reward, alpha=0.0, seed=3, backend=backend, **kwargs)
    b = tita_ext.guided_sample(base, other_reward, alpha=0.0, seed=3, backend=backend, **kwargs)
    assert torch.equal(a.tokens, b.tokens)
    t = kwargs["temperature"] or 1.0
    want = torch.log_softmax(base / t, dim=-1)
    got = tita_ext.guided_logprobs(base, reward, alpha=0.0, temperature=t, backend=backend)
    torch.testing.assert_close(got, want, atol=LOGPROB_ATOL, rtol=1e-5)
    if kwargs["temperature"] == 0:
        assert torch.equal(a.tokens, base.argmax(dim=-1))


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(temperature=0.8), dict(temperature=0.8, min_p=0.1)])
def test_alpha_one_is_the_reward_model_alone(backend, kwargs):
    base, reward = _pair()
    guided = tita_ext.guided_sample(base, reward, alpha=1.0, seed=5, backend=backend, **kwargs)
    alone = tita_ext.guided_sample(reward, base, alpha=0.0, seed=5, backend=backend, **kwargs)
    assert torch.equal(guided.tokens, alone.tokens)
    torch.testing.assert_close(guided.logprob, alone.logprob, atol=LOGPROB_ATOL, rtol=1e-5)


def test_reference_equal_to_reward_gives_the_base(backend):
    base, reward = _pair()
    for alpha in (0.6, 1.5):
        guided = tita_ext.guided_sample(base, reward, reward, alpha=alpha, temperature=0.9, seed=8, backend=backend)
        alone = tita_ext.guided_sample(base, reward, alpha=0.0, temperature=0.9, seed=8, backend=backend)
        assert torch.equal(guided.tokens, alone.tokens)
        assert torch.allclose(guided.token_reward, torch.zeros(4))


def test_formula_and_token_reward(backend):
    """s = log p_b + alpha (log p_r - log p_f); logprob = guided_logprobs[token]; reward = log p_r - log p_f."""
    base, reward = _pair(batch=5)
    ref = llm_logits(5, 3000, torch.float32, 50)
    alpha, t = 0.6, 0.8
    lb, lr, lf = (torch.log_softmax(x, dim=-1) for x in (base, reward, ref))
    want = torch.log_softmax((lb + alpha * (lr - lf)) / t, dim=-1)
    got = tita_ext.guided_logprobs(base, reward, ref, alpha=alpha, temperature=t, backend=backend)
    torch.testing.assert_close(got, want, atol=LOGPROB_ATOL, rtol=1e-5)
    out = tita_ext.guided_sample(base, reward, ref, alpha=alpha, temperature=t, seed=1, backend=backend)
    rows = torch.arange(5)
    torch.testing.assert_close(out.logprob, got[rows, out.tokens], atol=LOGPROB_ATOL, rtol=1e-5)
    torch.testing.assert_close(out.token_reward, (lr - lf)[rows, out.tokens], atol=LOGPROB_ATOL, rtol=1e-5)


def test_seed_and_offset(backend):
    base, reward = _pair(batch=16, width=32000)
    draw = lambda **k: tita_ext.guided_sample(base, reward, temperature=1.0, backend=backend, **k).tokens
    first = draw(seed=11, offset=0)
    assert torch.equal(first, draw(seed=11, offset=0))
    assert torch.equal(first, draw(seed=torch.tensor([11]), offset=torch.tensor([0])))
    assert not torch.equal(first, draw(seed=11, offset=1)), "a new offset must give new draws"
    assert not torch.equal(first, draw(seed=12, offset=0))
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(draw(seed=g1), draw(seed=g2))
    torch.manual_seed(3)
    a = draw()
    torch.manual_seed(3)
    assert torch.equal(a, draw())


def test_per_row_seed_does_not_depend_on_the_batch(backend):
    base, reward = _pair(batch=6, width=32000)
    seeds, offsets = torch.arange(100, 106), torch.arange(6) * 7
    batch = tita_ext.guided_sample(base, reward, temperature=1.0, seed=seeds, offset=offsets, backend=backend)
    for i in range(6):
        alone = tita_ext.guided_sample(base[i:i + 1], reward[i:i + 1], temperature=1.0, seed=seeds[i:i + 1],
                                       offset=offsets[i:i + 1], backend=backend)
        assert batch.tokens[i] == alone.tokens[0]


def test_greedy_ties_go_to_the_lowest_id(backend):
    base = torch.zeros(2, 1271)
    base[:, [700, 300, 900]] = 5.0
    out = tita_ext.guided_sample(base, base.clone(), temperature=0.0, backend=backend)
    assert out.tokens.tolist() == [300, 300]


def test_greedy_logprob_is_at_temperature_one(backend):
    base, reward = _pair()
    out = tita_ext.guided_sample(base, reward, temperature=0.0, top_k=10, backend=backend)
    dist = tita_ext.guided_logprobs(base, reward, temperature=1.0, top_k=10, backend=backend)
    torch.testing.assert_close(out.logprob, dist[torch.arange(4), out.tokens], atol=LOGPROB_ATOL, rtol=1e-5)
    assert torch.equal(out.tokens, dist.argmax(dim=-1))


def test_non_finite_logits_exclude_tokens(backend):
    base, reward = _pair(batch=3, width=1271)
    peak = base.argmax(dim=-1)
    base[torch.arange(3), peak] = float("nan")
    reward[:, 5] = float("-inf")
    reward[:, 6] = float("inf")
    base[1, 7] = float("inf")
    for t in (0.0, 1.0):
        out = tita_ext.guided_sample(base, reward, temperature=t, seed=2, backend=backend)
        assert not (out.tokens == peak).any()
        assert not torch.isin(out.tokens, torch.tensor([5, 6, 7])).any()
        assert torch.isfinite(out.logprob).all() and torch.isfinite(out.token_reward).all()


def test_row_without_finite_scores_is_reported(backend):
    base, reward = _pair(batch=3, width=1271)
    base[1] = float("nan")
    with pytest.raises(ValueError, match=r"row 1: no allowed token has a finite score"):
        tita_ext.guided_sample(base, reward, temperature=0.7, seed=1, backend=backend)
    out = tita_ext.guided_sample(base, reward, temperature=0.7, seed=1, backend=backend, check_status=False)
    assert out.status.tolist() == [tita_ext.STATUS_OK, tita_ext.STATUS_NO_FINITE, tita_ext.STATUS_OK]
    assert out.tokens[1] == -1 and torch.isnan(out.logprob[1]) and torch.isnan(out.token_reward[1])
    dist = tita_ext.guided_logprobs(base, reward, backend=backend)
    assert torch.isnan(dist[1]).all() and not torch.isnan(dist[[0, 2]]).any()


def test_bad_per_row_parameter_is_reported(backend):
    base, reward = _pair(batch=3, width=1271)
    top_p = torch.tensor([0.9, 1.5, 0.5])
    with pytest.raises(ValueError, match=r"row 1: a per-row sampling parameter is outside its allowed range"):
        tita_ext.guided_sample(base, reward, top_p=top_p, seed=1, backend=backend)
    out = tita_ext.guided_sample(base, reward, top_p=top_p, seed=1, backend=backend, check_status=False)
    assert out.status.tolist() == [0, tita_ext.STATUS_BAD_PARAM, 0]
    for name, value in (("alpha", float("nan")), ("temperature", -1.0), ("min_p", 2.0), ("plausibility", -0.5)):
        rows = torch.tensor([0.5, value, 0.5])
        out = tita_ext.guided_sample(base, reward, seed=1, backend=backend, check_status=False, **{name: rows})
        assert out.status.tolist() == [0, tita_ext.STATUS_BAD_PARAM, 0], name
    out = tita_ext.guided_sample(base, reward, top_k=torch.tensor([5, -1, 0]), seed=1, backend=backend,
                                 check_status=False)
    assert out.status.tolist() == [0, tita_ext.STATUS_BAD_PARAM, 0]


def test_mixed_widths_and_vocab_size(backend):
    base = llm_logits(4, 32064, torch.float32, 1)
    reward = llm_logits(4, 32000, torch.float32, 2)
    base[:, 32000:] += 100.0  # the padded ids would win if they were allowed
    out = tita_ext.guided_sample(base, reward, temperature=1.0, seed=1, backend=backend)
    assert (out.tokens < 32000).all()
    dist = tita_ext.guided_logprobs(base, reward, backend=backend)
    assert dist.shape == (4, 32064) and torch.isneginf(dist[:, 32000:]).all()
    capped = tita_ext.guided_sample(base, reward, temperature=1.0, seed=1, vocab_size=1000, backend=backend)
    assert (capped.tokens < 1000).all()
    assert torch.isneginf(tita_ext.guided_logprobs(base, reward, vocab_size=1000, backend=backend)[:, 1000:]).all()


def test_filters_shrink_the_support(backend):
    base, reward = _pair(batch=2, width=5000)
    support = lambda **k: (tita_ext.guided_logprobs(base, reward, backend=backend, **k) > float("-inf")).sum(-1)
    assert (support(top_k=7) == 7).all()
    assert (support(top_p=0.5) < support()).all()
    assert (support(min_p=0.2) < support()).all()
    floored = support(plausibility=0.5)
    assert (floored >= 1).all() and (floored < support()).all()
    base_lp = torch.log_softmax(base, -1)
    allowed = tita_ext.guided_logprobs(base, reward, plausibility=0.5, backend=backend) > float("-inf")
    assert (base_lp[allowed] >= base_lp.amax(-1, keepdim=True).expand_as(base_lp)[allowed] + torch.log(torch.tensor(0.5)) - 1e-5).all()


def test_empty_batch(backend):
    base = torch.zeros(0, 1271)
    out = tita_ext.guided_sample(base, base.clone(), seed=1, backend=backend)
    assert [t.shape for t in out] == [(0,)] * 4
    assert [t.dtype for t in out] == [torch.int64, torch.float32, torch.float32, torch.int32]
    assert tita_ext.guided_logprobs(base, base.clone(), backend=backend).shape == (0, 1271)


@pytest.mark.parametrize("top_k", [1, 20, 50, 255, 256, 1000])
def test_top_k_keeps_exactly_k_tokens_in_every_row(backend, top_k):
    """Whatever the candidate buffer went through (compactions can leave exactly k), the
    distribution keeps k tokens (logits without ties)."""
    base, reward = _pair(batch=64, width=32000, seed=4)
    for temperature in (0.9, 0.0):
        dist = tita_ext.guided_logprobs(base, reward, top_k=top_k, temperature=temperature, backend=backend)
        assert (torch.isfinite(dist).sum(dim=-1) == top_k).all()
