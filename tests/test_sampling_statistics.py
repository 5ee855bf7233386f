"""Statistical tests of the sampler: many draws from one row follow the reference distribution.

Test: Pearson chi-square goodness of fit of N = 40,000 draws (one row, offsets 0..N-1) against
the probabilities exp(guided_logprobs) of the reference, over the allowed tokens (expected
counts >= 5; the rest pooled). The null hypothesis is rejected at p < 1e-4, so a correct
sampler fails this test about once in 10,000 runs; the draws are seeded, so the outcome is fixed.
No draw may fall outside the allowed (top-k / top-p) support.
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

import tita_ext
from conftest import STATISTICS_CASES, case_id, llm_logits, needs_compiled

DRAWS = 40_000
P_VALUE_FLOOR = 1e-4


def _draws(base, reward, backend, **kwargs) -> torch.Tensor:
    """DRAWS tokens from one row: the row repeated with per-row offsets 0..N-1 and one seed."""
    rows_b, rows_r = base.expand(DRAWS, -1), reward.expand(DRAWS, -1)
    offsets = torch.arange(DRAWS, dtype=torch.int64)
    seed = torch.full((DRAWS,), 1234, dtype=torch.int64)  # per-row seed: the row address is 0 for all
    return tita_ext.guided_sample(rows_b, rows_r, seed=seed, offset=offsets, backend=backend, **kwargs).tokens


@pytest.mark.parametrize("backend", [pytest.param("compiled", marks=needs_compiled), "reference"])
@pytest.mark.parametrize("kwargs", STATISTICS_CASES, ids=case_id)
def test_draws_follow_the_guided_distribution(backend, kwargs):
    g = torch.Generator().manual_seed(21)  # a smooth row: every filter keeps a real support
    base, reward = torch.randn(1, 300, generator=g) * 1.5, torch.randn(1, 300, generator=g) * 1.5
    probs = tita_ext.guided_logprobs(base, reward, backend="reference", **kwargs)[0].double().exp()
    tokens = _draws(base, reward, backend, **kwargs)
    assert (probs > 0)[tokens].all(), "a draw left the allowed support"
    p_value = chi_square_p(tokens, probs)
    assert p_value > P_VALUE_FLOOR, f"chi-square p = {p_value:.2e}"


def chi_square_p(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of Pearson's chi-square test of `tokens` against `probs` (bins with an expected
    count < 5 pooled into one)."""
    allowed = probs > 0
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    expected = probs * tokens.numel()
    big = expected >= 5
    observed_bins = torch.cat([counts[big], counts[allowed & ~big].sum().reshape(1)])
    expected_bins = torch.cat([expected[big], expected[allowed & ~big].sum().reshape(1)])
    keep = expected_bins > 0
    assert int(keep.sum()) >= 5, "test design: too few bins for a meaningful chi-square test"
    expected_bins = expected_bins * (observed_bins[keep].sum() / expected_bins[keep].sum())  # fp32 sums to ~1
    return float(stats.chisquare(observed_bins[keep].numpy(), expected_bins[keep].numpy())[1])


def test_chi_square_detects_a_wrong_distribution():
    """Negative control: draws at temperature 1.0 are rejected against the distribution at 0.9."""
    g = torch.Generator().manual_seed(21)
    base, reward = torch.randn(1, 300, generator=g) * 1.5, torch.randn(1, 300, generator=g) * 1.5
    tokens = _draws(base, reward, "reference", temperature=1.0)
    wrong = tita_ext.guided_logprobs(base, reward, temperature=0.9, backend="reference")[0].double().exp()
    assert chi_square_p(tokens, wrong) < P_VALUE_FLOOR


@needs_compiled
def test_top_k_top_p_support_is_never_left():
    base = llm_logits(1, 5000, torch.float32, seed=23)
    reward = llm_logits(1, 5000, torch.float32, seed=24)
    kwargs = dict(temperature=1.5, top_k=40, top_p=0.7)
    support = tita_ext.guided_logprobs(base, reward, backend="reference", **kwargs)[0] > float("-inf")
    assert 1 < int(support.sum()) <= 40
    tokens = _draws(base, reward, "compiled", **kwargs)
    assert support[tokens].all()
    assert torch.unique(tokens).numel() == int(support.sum())  # and every allowed token does occur
