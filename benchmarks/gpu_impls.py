"""The implementations the GPU op benchmark compares, one function each, one signature:

    impl(base, reward, ref, mode, seed, offset) -> tokens int64 [B]

base, reward, ref: logits [B, V] on the GPU (ref None for two inputs); mode: "greedy",
"sample" or "topk_topp" (impls.MODE_PARAMS); seed, offset: int64 [1] device tensors. Every
sampler also computes the chosen token's guided log-probability and token reward (what tita_ext
reports), so the work compared is the same, except the two FlashInfer lines:
  * `flashinfer_sampler`: FlashInfer's sampler alone, timed on a row combined beforehand (outside
    the timed call; see prepare): what sampling costs once the scores exist;
  * `combine_flashinfer`: the fused alternative a user would build: one elementwise combine of the
    raw logits (b + alpha (r - f), then / T: sampling is invariant to the per-row log-sum-exps)
    and FlashInfer's sampler. It reports neither log-probability nor token reward.

Importing this module needs neither a GPU nor triton nor flashinfer: each is looked up when an
implementation is first called, and a missing one raises (the runner records the error).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch

import tita_ext
from impls import ALPHA, MODE_PARAMS, eager_choice

Impl = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor], str, torch.Tensor, torch.Tensor], torch.Tensor]


def _fused(backend: str) -> Impl:
    def run(base, reward, ref, mode, seed, offset):
        out = tita_ext.guided_sample(base, reward, ref, alpha=ALPHA, seed=seed, offset=offset, backend=backend,
                                     check_status=False, **MODE_PARAMS[mode])
        return out.tokens

    run.__doc__ = f"tita_ext.guided_sample(backend={backend!r}): the fused op, one read of each row, no host sync."
    return run


tita_cuda = _fused("cuda")
triton = _fused("triton")


def _combined(base, reward, ref):
    """(s, log p_reward, log p_ref): the guided scores a user would form from log_softmax."""
    lb = torch.log_softmax(base.float(), dim=-1)
    lr = torch.log_softmax(reward.float(), dim=-1)
    lf = lb if ref is None else torch.log_softmax(ref.float(), dim=-1)
    return lb + ALPHA * (lr - lf), lr, lf


def eager(base, reward, ref, mode, seed, offset):
    """The chain a user would write: log_softmax of each model, combine, then impls.eager_choice
    (warpers, torch.multinomial, the chosen token's log-prob and reward)."""
    s, lr, lf = _combined(base, reward, ref)
    return eager_choice(s, lr, lf, MODE_PARAMS[mode])


def _reference(base, reward, ref, seed, offset, temperature: float, top_k: int, top_p: float):
    out = tita_ext.guided_sample(base, reward, ref, alpha=ALPHA, temperature=temperature, top_k=top_k, top_p=top_p,
                                 seed=seed, offset=offset, backend="reference", check_status=False)
    return out.tokens


@functools.lru_cache(maxsize=1)
def _compiled_reference():
    # dynamic=True: one graph per (mode, inputs, dtype) instead of one per shape (the grid has 144 points)
    return torch.compile(_reference, dynamic=True)


def compiled_reference(base, reward, ref, mode, seed, offset):
    """torch.compile (inductor, dynamic shapes) of the pure-PyTorch reference (same tokens as tita).
    The first call per (mode, inputs, dtype) compiles: warm it up before timing."""
    return _compiled_reference()(base, reward, ref, seed, offset, **MODE_PARAMS[mode])


@functools.lru_cache(maxsize=1)
def flashinfer_sampling():
    """flashinfer.sampling, or ImportError."""
    import flashinfer.sampling  # noqa: F401  (optional; not a dependency)

    return flashinfer.sampling


def _flashinfer_choose(scores: torch.Tensor, mode: str) -> torch.Tensor:
    """FlashInfer's sampler on float32 scores [B, V] (argmax when greedy: it has no greedy sampler)."""
    sampling = flashinfer_sampling()
    p = MODE_PARAMS[mode]
    if p["temperature"] == 0:
        return scores.argmax(dim=-1)
    if p["top_k"] > 0 or p["top_p"] < 1:
        return sampling.top_k_top_p_sampling_from_logits(scores, p["top_k"], p["top_p"]).long()
    if hasattr(sampling, "sampling_from_logits"):
        return sampling.sampling_from_logits(scores).long()
    return sampling.sampling_from_probs(torch.softmax(scores, dim=-1)).long()


def raw_combined(base, reward, ref, mode) -> torch.Tensor:
    """float32 [B, V]: (b + alpha (r - f)) / T from the raw logits (f = b without a reference)."""
    b = base.float()
    f = b if ref is None else ref.float()
    s = b + ALPHA * (reward.float() - f)
    t = MODE_PARAMS[mode]["temperature"]
    return s / t if t > 0 else s


def combine_flashinfer(base, reward, ref, mode, seed, offset):
    """The fused alternative a user would build: one combine of the raw logits, FlashInfer's sampler."""
    return _flashinfer_choose(raw_combined(base, reward, ref, mode), mode)


class FlashInferSampler:
    """FlashInfer's sampler alone: prepare() combines the row once (untimed), the call samples it."""

    def __init__(self):
        self.scores: torch.Tensor | None = None

    def prepare(self, base, reward, ref, mode) -> None:
        self.scores = raw_combined(base, reward, ref, mode)

    def __call__(self, base, reward, ref, mode, seed, offset):
        return _flashinfer_choose(self.scores, mode)


IMPLS: dict[str, Impl] = {"tita_cuda": tita_cuda, "triton": triton, "eager": eager, "compile": compiled_reference,
                          "flashinfer_sampler": FlashInferSampler(), "combine_flashinfer": combine_flashinfer}


def flashinfer_status() -> str:
    """The installed FlashInfer version, or why it is not there."""
    try:
        import flashinfer as fi

        flashinfer_sampling()
        return getattr(fi, "__version__", "installed (version unknown)")
    except Exception as exc:  # ImportError, or a wheel built for another torch/CUDA
        return f"not installed: {type(exc).__name__}: {exc}".splitlines()[0][:300]
