"""The implementations the CPU op benchmark compares, one function each, one signature:

    impl(base, reward, mode, seed) -> tokens int64 [B]

base, reward: fp32 logits [B, V]; mode: "greedy", "sample", "topp" or "topk_topp"; seed: int64 [1].
Every sampler also yields the chosen token's guided log-probability and token reward (what
tita_ext reports), so the work compared is the same. `logsumexp` is the floor: the one pass
over both inputs that reporting log-probabilities cannot avoid.
"""

from __future__ import annotations

from typing import Callable

import torch

import tita_ext

ALPHA = 0.6
MODE_PARAMS = {
    "greedy": dict(temperature=0.0, top_k=0, top_p=1.0),
    "sample": dict(temperature=0.7, top_k=0, top_p=1.0),
    "topp": dict(temperature=0.7, top_k=0, top_p=0.9),  # top-p alone: the allowed set can be most of the row
    "topk_topp": dict(temperature=0.7, top_k=50, top_p=0.9),
}

Impl = Callable[[torch.Tensor, torch.Tensor, str, torch.Tensor], torch.Tensor]


def tita(base: torch.Tensor, reward: torch.Tensor, mode: str, seed: torch.Tensor) -> torch.Tensor:
    """The fused C++ CPU op: one read of each row, no sort, no host sync."""
    out = tita_ext.guided_sample(base, reward, alpha=ALPHA, seed=seed, backend="compiled",
                                 check_status=False, **MODE_PARAMS[mode])
    return out.tokens


_GENERATOR = torch.Generator()


def eager_choice(s: torch.Tensor, lr: torch.Tensor, lf: torch.Tensor, p: dict,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The user's chain after the combination: temperature, top-k by torch.topk, top-p by sort +
    softmax + cumsum (Hugging Face style), softmax, torch.multinomial (or argmax when greedy),
    then the chosen token's log-prob and reward. s, lr, lf: float32 [B, V] guided scores and the
    reward / reference log-probs. Returns int64 [B] tokens."""
    if p["temperature"] == 0:
        tokens = s.argmax(dim=-1, keepdim=True)
        logprob = torch.log_softmax(s, dim=-1).gather(1, tokens)
    else:
        z = s / p["temperature"]
        if p["top_k"] > 0:
            kth = torch.topk(z, p["top_k"], dim=-1).values[:, -1:]
            z = z.masked_fill(z < kth, float("-inf"))
        if p["top_p"] < 1:
            sorted_z, order = torch.sort(z, dim=-1, descending=False)
            cumulative = sorted_z.softmax(dim=-1).cumsum(dim=-1)
            drop_sorted = cumulative <= 1 - p["top_p"]
            drop_sorted[:, -1:] = False  # always keep the most likely token
            z = z.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
        probs = torch.softmax(z, dim=-1)
        tokens = torch.multinomial(probs, 1, generator=generator)
        logprob = probs.gather(1, tokens).log()
    token_reward = (lr - lf).gather(1, tokens)
    del logprob, token_reward  # computed because a user wanting them would; not returned
    return tokens.squeeze(1)


def eager(base: torch.Tensor, reward: torch.Tensor, mode: str, seed: torch.Tensor) -> torch.Tensor:
    """The chain a user would write: two log_softmax, combine, then `eager_choice` (top-p by a
    sort of the whole row, also after top-k)."""
    lb = torch.log_softmax(base.float(), dim=-1)
    lr = torch.log_softmax(reward.float(), dim=-1)
    s = lb + ALPHA * (lr - lb)
    return eager_choice(s, lr, lb, MODE_PARAMS[mode], _GENERATOR.manual_seed(int(seed)))


def eager_topk(base: torch.Tensor, reward: torch.Tensor, mode: str, seed: torch.Tensor) -> torch.Tensor:
    """The best eager chain for top-k modes: two log_softmax and the combine, then torch.topk
    (sorted) and everything else on the k survivors only: top-p by softmax + cumsum over k values
    (exclusive mass below top_p kept, as the reference), softmax, torch.multinomial over k, the id
    mapped back, and the log-prob and reward gathered at the token. Only for modes with top_k > 0."""
    p = MODE_PARAMS[mode]
    lb = torch.log_softmax(base.float(), dim=-1)
    lr = torch.log_softmax(reward.float(), dim=-1)
    z = (lb + ALPHA * (lr - lb)) / p["temperature"]
    values, ids = torch.topk(z, p["top_k"], dim=-1)
    probs = torch.softmax(values, dim=-1)
    if p["top_p"] < 1:
        exclusive = probs.cumsum(dim=-1) - probs
        probs = torch.softmax(values.masked_fill(exclusive >= p["top_p"], float("-inf")), dim=-1)
    pick = torch.multinomial(probs, 1, generator=_GENERATOR.manual_seed(int(seed)))
    tokens = ids.gather(1, pick)
    logprob = probs.gather(1, pick).log()
    token_reward = lr.gather(1, tokens) - lb.gather(1, tokens)
    del logprob, token_reward  # computed because a user wanting them would; not returned
    return tokens.squeeze(1)


# One compiled function serves every (shape, mode): with dynamic=False each is its own graph,
# so allow more recompilations than the default 8 before dynamo would fall back to eager.
torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)


def _reference(base: torch.Tensor, reward: torch.Tensor, seed: torch.Tensor, temperature: float,
               top_k: int, top_p: float) -> torch.Tensor:
    out = tita_ext.guided_sample(base, reward, alpha=ALPHA, temperature=temperature, top_k=top_k, top_p=top_p,
                                 seed=seed, backend="reference", check_status=False)
    return out.tokens


_compiled_reference = torch.compile(_reference, dynamic=False)


def compiled_reference(base: torch.Tensor, reward: torch.Tensor, mode: str, seed: torch.Tensor) -> torch.Tensor:
    """torch.compile (inductor, dynamic=False) of the pure-PyTorch reference (same tokens as tita).
    The first call per (shape, mode) compiles: warm it up before timing."""
    return _compiled_reference(base, reward, seed, **MODE_PARAMS[mode])


def logsumexp(base: torch.Tensor, reward: torch.Tensor, mode: str, seed: torch.Tensor) -> torch.Tensor:
    """The floor: torch.logsumexp over both inputs (returns the reward's, not tokens)."""
    torch.logsumexp(base, dim=-1)
    return torch.logsumexp(reward, dim=-1)


IMPLS: dict[str, Impl] = {"tita": tita, "eager": eager, "eager_topk": eager_topk, "compile": compiled_reference,
                          "logsumexp": logsumexp}
