"""The op contract shared by every backend: status codes, parameter ranges, the output type.

Mirrors csrc/common/contract.h.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

STATUS_OK = 0
STATUS_NO_FINITE = 1  # no allowed token has a finite score (all -inf / NaN, or filtered out)
STATUS_BAD_PARAM = 2  # a per-row parameter tensor holds a value outside its range
STATUS_OVERFLOW = 3  # a finite logit gave a non-finite score (combination or 1/temperature overflowed fp32)

STATUS_MEANING = {
    STATUS_OK: "ok",
    STATUS_NO_FINITE: "no allowed token has a finite score (every logit is -inf/NaN or was filtered out)",
    STATUS_BAD_PARAM: "a per-row sampling parameter is outside its allowed range",
    STATUS_OVERFLOW: ("a finite logit gave a non-finite score after the combination and temperature scaling "
                      "(fp32 overflow): lower alpha or raise the temperature"),
}

MIN_TEMPERATURE = 1e-6  # 0 means greedy; positive values below this would overflow fp32 scores

LOGITS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class GuidedSampleOutput(NamedTuple):
    """Result of `guided_sample`, one entry per row.

    tokens: int64 [B] chosen ids (-1 where status != 0).
    logprob: float32 [B] log-probability of the token under the filtered guided distribution.
    token_reward: float32 [B] log p_reward(token) - log p_ref(token), the DPO implicit reward.
    status: int32 [B] STATUS_OK, STATUS_NO_FINITE, STATUS_BAD_PARAM or STATUS_OVERFLOW.
    """

    tokens: torch.Tensor
    logprob: torch.Tensor
    token_reward: torch.Tensor
    status: torch.Tensor
