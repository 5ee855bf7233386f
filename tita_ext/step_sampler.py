"""StepSampler: the fused guided op with its sampling parameters checked once, for decode loops.

`ops.guided_sample` checks every argument on every call; a decode loop calls the op with the
same parameters thousands of times, so this class checks them once and then calls the
registered op directly (the per-step cost is the op itself).
"""

from __future__ import annotations

from typing import Sequence

import torch

from . import _validate as check
from .contract import GuidedSampleOutput
from .ops import Backend, _resolve_backend, logprobs_impl, sample_impl

# Parameter -> the value a caller gets when it does not pass one (alpha: DESIGN's 0.6; the
# others turn their filter off).
DEFAULTS = {"alpha": 0.6, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "plausibility": 0.0}


def _checked_rows(name: str, values: Sequence, probe: torch.Tensor) -> tuple:
    """Range-check each entry of a per-row list here, so a bad row is named before decoding."""
    if len(values) != probe.shape[0]:
        raise ValueError(f"{name} has {len(values)} per-row values but the batch has {probe.shape[0]} rows")
    for row, value in enumerate(values):
        try:
            check.param(name, value, probe)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{name}[{row}]: {err}") from None
    return check.param(name, list(values), probe)


class StepSampler:
    """Guided sampling for a fixed batch: parameters checked once, then one op call per step.

    Args:
        batch: rows per call. device: where the logits are.
        params: alpha, temperature, top_k, top_p, min_p, plausibility; each a Python number,
            a per-row list, or a per-row tensor on `device` (see `tita_ext.guided_sample`).
        vocab_size: the tokenizer's true size, or None.
        backend: None (best available), "compiled", "triton" or "reference".
    """

    def __init__(self, batch: int, device: torch.device, *, vocab_size: int | None = None,
                 backend: Backend = None, **params: check.Param):
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}")
        probe = torch.empty(batch, 1, device=device)
        self.args: list = []
        for name, default in DEFAULTS.items():
            value = params.get(name, default)
            if isinstance(value, (list, tuple)):
                self.args.extend(_checked_rows(name, value, probe))
            else:
                self.args.extend(check.param(name, value, probe))
        self.vocab = check.vocab_size(vocab_size)
        self.backend = _resolve_backend(backend, torch.device(device))
        self._sample = sample_impl(self.backend)
        self._logprobs = logprobs_impl(self.backend)

    def sample(self, base: torch.Tensor, reward: torch.Tensor, ref: torch.Tensor | None,
               seed: torch.Tensor, offset: torch.Tensor) -> GuidedSampleOutput:
        """One token per row. Logits [B, V*] (any float dtype/strides); seed and offset int64 [1]
        or [B] on the logits' device. No status check here: the caller reads `status`."""
        return GuidedSampleOutput(*self._sample(base, reward, ref, *self.args, seed, offset, self.vocab))

    def logprobs(self, base: torch.Tensor, reward: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        """The filtered guided log-distribution, float32 [B, V_base]."""
        return self._logprobs(base, reward, ref, *self.args, self.vocab)

