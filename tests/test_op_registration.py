"""The registered ops: torch.library.opcheck on every sample, and torch.compile(fullgraph=True)."""

from __future__ import annotations

import pytest
import torch

import tita_ext
from conftest import llm_logits, needs_compiled, per_row

pytestmark = needs_compiled


def _samples():
    """(args for torch.ops.tita.guided_sample minus seed/offset/vocab_size) over dtypes, refs, per-row params."""
    out = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for with_ref in (False, True):
            for rows in (False, True):
                b, r = llm_logits(3, 1271, dtype, 1), llm_logits(3, 1200, dtype, 2)
                f = llm_logits(3, 1271, dtype, 3) if with_ref else None
                p = lambda vals, dt=torch.float32: per_row(vals, 3, dt) if rows else None
                out.append([b, r, f, 0.6, p([0.0, 0.6, 1.5]), 0.7, p([0.0, 0.7, 1.2]), 20, p([0, 5, 50], torch.int64),
                            0.9, p([1.0, 0.9, 0.5]), 0.05, p([0.0, 0.1, 0.01]), 0.1 if rows else 0.0,
                            p([0.0, 0.1, 0.2])])
    return out


@pytest.mark.parametrize("index", range(12))
def test_opcheck_guided_sample(index):
    args = _samples()[index]
    seed = torch.tensor([7], dtype=torch.int64) if index % 2 else torch.arange(3, dtype=torch.int64)
    torch.library.opcheck(torch.ops.tita.guided_sample.default, (*args, seed, torch.tensor([2]), -1))


@pytest.mark.parametrize("index", range(12))
def test_opcheck_guided_logprobs(index):
    args = _samples()[index]
    torch.library.opcheck(torch.ops.tita.guided_logprobs.default, (*args, 1000 if index % 3 == 0 else -1))


def test_compile_fullgraph_matches_eager():
    base, reward = llm_logits(5, 4000, torch.float32, 1), llm_logits(5, 4000, torch.float32, 2)
    seed, offset = torch.tensor([3]), torch.tensor([0])

    def step(base, reward, seed, offset):
        out = tita_ext.guided_sample(base, reward, alpha=0.6, temperature=0.7, top_k=50, top_p=0.9,
                                     seed=seed, offset=offset)
        logprobs = tita_ext.guided_logprobs(base, reward, alpha=0.6, temperature=0.7)
        return out.tokens, out.logprob, logprobs

    compiled = torch.compile(step, fullgraph=True)
    for i in range(3):
        offset = torch.tensor([i])
        eager = step(base, reward, seed, offset)
        got = compiled(base, reward, seed, offset)
        assert torch.equal(got[0], eager[0])
        torch.testing.assert_close(got[1], eager[1])
        torch.testing.assert_close(got[2], eager[2])
