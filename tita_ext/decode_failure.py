"""A row the fused op could not sample: the error, naming the row, the step and, when one model's
logits were not finite there, that model.

The decode loops read no logits on the host (that would cost a pass and a sync per step), so on
the failure path only each model is run once more, without a cache, on the failed row's prompt
and the tokens it had generated before the failure, and its last logits are checked.
"""

from __future__ import annotations

from typing import Mapping

import torch

from .adapters.runner import forward_inputs
from .contract import STATUS_MEANING


def raise_on_failed_rows(status: torch.Tensor, before: torch.Tensor, new_tokens: torch.Tensor,
                         models: Mapping[str, torch.nn.Module], inputs: Mapping[str, Mapping[str, object]]) -> None:
    """status int32 [B, N], before bool [B, N] (the row had stopped), new_tokens int64 [B, N]:
    a row fails at its first non-zero status while it was still running."""
    failed = (status != 0) & ~before
    if not bool(failed.any()):
        return
    rows, steps = torch.nonzero(failed, as_tuple=True)
    row, step = int(rows[0]), int(steps[0])
    meaning = STATUS_MEANING.get(int(status[row, step]), "unknown status")
    culprit = _nonfinite_model(models, inputs, new_tokens[:, :step], row)
    where = f"guided decoding failed for row {row} at new token {step}: {meaning}."
    if culprit:
        raise ValueError(f"{where} {culprit}'s logits there are NaN or inf: check "
                         f"{culprit} (weights, or float16 overflow: try bfloat16 or float32)")
    raise ValueError(f"{where} Check the models' logits for NaN/inf (e.g. float16 overflow: try bfloat16 or "
                     "float32) and the per-row sampling parameters")


def _nonfinite_model(models: Mapping[str, torch.nn.Module], inputs: Mapping[str, Mapping[str, object]],
                     generated: torch.Tensor, row: int) -> str:
    """'reward_model' (the first role) whose last-position logits for `row` after `generated` have a
    NaN or inf entry, or '' when none has (or the check itself cannot run)."""
    for role, model in models.items():
        try:
            logits = _last_logits(model, inputs[role], generated)
        except Exception:  # the diagnosis must not hide the real error
            return ""
        if not bool(torch.isfinite(logits[row]).all()):
            return f"{role}_model"
    return ""


@torch.inference_mode()
def _last_logits(model: torch.nn.Module, inputs: Mapping[str, object], generated: torch.Tensor) -> torch.Tensor:
    """[B, V] logits after the prompts and the generated tokens (one uncached forward)."""
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    generated = generated.to(device=ids.device, dtype=ids.dtype)
    full = dict(inputs, input_ids=torch.cat([ids, generated], dim=1),
                attention_mask=torch.cat([mask, torch.ones_like(generated, dtype=mask.dtype)], dim=1))
    return model(**forward_inputs(model, full), use_cache=False).logits[:, -1, :]
