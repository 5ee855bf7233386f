"""The hand-over between the TITA model and its per-request alpha processor, both inside one vLLM
worker process (no vLLM import: plain tensors).

The model's compute_logits returns the TITA score at the export's default alpha a0 and leaves the
guidance term g = log p_reward - log p_ref here; the logits processor then adds (a - a0) * g to
the rows of requests that set their own alpha a. Keyed by the engine's VllmConfig object, which
the model runner hands to both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Guidance:
    """default_alpha: a0. processor_attached: a per-request alpha processor runs in this engine.
    term_wanted: some request in the batch set its own alpha (set by the processor before each
    forward), so compute_logits leaves term: float32 [rows, vocab], g of that call (0 outside the
    shared id range)."""

    default_alpha: float
    processor_attached: bool = False
    term_wanted: bool = False
    term: torch.Tensor | None = None


_BY_ENGINE: dict[int, Guidance] = {}


def guidance_for(vllm_config: object, default_alpha: float | None = None) -> Guidance:
    """The engine's Guidance, created on first use (default_alpha given by the model; a processor
    built before the model creates it with a placeholder the model then sets)."""
    entry = _BY_ENGINE.get(id(vllm_config))
    if entry is None:
        entry = _BY_ENGINE[id(vllm_config)] = Guidance(default_alpha=0.0 if default_alpha is None else default_alpha)
    elif default_alpha is not None:
        entry.default_alpha = default_alpha
    return entry
