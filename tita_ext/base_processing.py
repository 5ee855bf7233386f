"""repetition_penalty and min_new_tokens: generate's logits processors, applied to the base
model's logits before the fused op (which has no input for them), on device tensors only.

Where in the pipeline: on the base logits, in float32 as generate casts them, before
    s = log p_base' + alpha * (log p_reward - log p_ref)
where p_base' is the processed base distribution; p_ref stays the unprocessed base (or the ref
model). So at alpha 0 the tokens are exactly generate's with the same arguments; at any alpha
the penalty lowers a repeated token's base log-prob by the same amount generate would, and the
token reward (log p_reward - log p_ref) is unchanged by it.

- repetition_penalty (generate's RepetitionPenaltyLogitsProcessor): every id present in the row
  so far (the prompt after its left padding, image tokens included, as generate's input_ids
  hold them, and every new token) has its logit x replaced by x / penalty (x > 0) or x * penalty (x < 0).
  A [rows, V] bool `presence` buffer holds the ids seen; each step scatters the fed token into it.
- min_new_tokens (generate's MinNewTokensLengthLogitsProcessor): the EOS ids' logits are -inf
  while fewer than min_new_tokens new tokens exist. The step index is a device tensor, so the
  test needs no host value and the same code runs inside a captured CUDA graph.
"""

from __future__ import annotations

from typing import Sequence

import torch


class BaseProcessing:
    """Buffers for `rows` rows of base logits `width` wide on `device`.

    presence: bool [rows, width + 1] (ids seen; the last column takes ids past the width, which
    are never scored). penalty: float32 0-d. min_new: int64 [1].
    eos: bool [width] (the EOS ids below width).
    """

    def __init__(self, rows: int, width: int, device: torch.device):
        self.rows, self.width, self.device = rows, width, device
        self.presence = torch.zeros(rows, width + 1, dtype=torch.bool, device=device)
        self.penalty = torch.ones((), dtype=torch.float32, device=device)
        self.min_new = torch.zeros(1, dtype=torch.int64, device=device)
        self.eos = torch.zeros(width, dtype=torch.bool, device=device)
        self.use_penalty, self.use_min_new = False, False

    def load(self, prompt_ids: torch.Tensor, mask: torch.Tensor | None, penalty: float, min_new: int,
             eos_ids: Sequence[int]) -> None:
        """Per call, before decoding (host values may be read here): the prompt's ids [B, L]
        (B <= rows) into presence, after each row's left padding (mask [B, L] or None: its first
        non-zero position, as generate's prompt_ignore_length), the penalty, min_new_tokens and the
        EOS ids."""
        self.use_penalty, self.use_min_new = penalty != 1.0, min_new > 0 and bool(eos_ids)
        self.presence.zero_()
        if self.use_penalty:
            ids = prompt_ids.to(device=self.device, dtype=torch.int64).clamp(0, self.width)
            if mask is not None:
                mask = mask.to(self.device)
                padding = (mask != 0).int().argmax(dim=1, keepdim=True)
                positions = torch.arange(ids.shape[1], device=self.device).unsqueeze(0)
                ids = ids.masked_fill(positions < padding, self.width)  # into the unscored column
            self.presence[:ids.shape[0]].scatter_(1, ids, True)
        self.penalty.fill_(penalty)
        self.min_new.fill_(min_new)
        self.eos.zero_()
        inside = [i for i in eos_ids if i < self.width]
        if inside:
            self.eos[torch.tensor(inside, dtype=torch.int64)] = True

    def apply(self, logits: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
        """float32 [r, width]: `logits` [r, >= width] processed; step_index int64 [1]: new tokens so
        far. Device ops only (capture-safe)."""
        rows = logits.shape[0]
        x = logits[:, :self.width].float()
        if self.use_penalty:
            penalised = torch.where(x < 0, x * self.penalty, x / self.penalty)
            x = torch.where(self.presence[:rows, :self.width], penalised, x)
        if self.use_min_new:
            x = x.masked_fill(self.eos & (step_index < self.min_new), float("-inf"))
        return x

    def record(self, tokens: torch.Tensor) -> None:
        """Mark the fed tokens ([r, 1] int64 >= 0) as seen."""
        if self.use_penalty:
            self.presence[:tokens.shape[0]].scatter_(1, tokens.clamp(max=self.width), True)


def guided_logits(logits: Sequence[torch.Tensor], processing: BaseProcessing | None,
                  step_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The op's (base, reward, ref) from the models' logits (base[, reward[, ref]]): the base alone
    fills the reward slot (alpha 0: s = base); with processing, the processed base takes the base
    slot and the unprocessed base stays the reference (see base_processing.py)."""
    base = logits[0] if processing is None else processing.apply(logits[0], step_index)
    if len(logits) == 1:
        return base, base, None
    ref = logits[2] if len(logits) > 2 else (None if processing is None else logits[0])
    return base, logits[1], ref
