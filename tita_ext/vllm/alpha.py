"""Per-request alpha: SamplingParams.extra_args["tita_alpha"] (`vllm_xargs` over the OpenAI server).

A logits processor of vLLM's V1 model runner (the CPU runner; on GPUs with
VLLM_USE_V2_MODEL_RUNNER=0). Start the engine with it:

    LLM(model=DIR, logits_processors=[TitaAlphaProcessor])      # or the string below
    python -m vllm.entrypoints.openai.api_server --model DIR \
        --logits-processors tita_ext.vllm.alpha:TitaAlphaProcessor

It keeps one alpha per row of the persistent batch and adds (a - a0) * (log p_reward - log p_ref)
to the rows whose request set an alpha a other than the export's a0 (see model.py). Bad values are
refused when the request arrives (HTTP 400 from the server).
"""

from __future__ import annotations

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from .guidance import guidance_for
from .layout import ALPHA_KEY, ARCHITECTURE, check_alpha


def request_alpha(params: SamplingParams) -> float | None:
    """The request's own alpha, or None when it sets none (ValueError when it is not a finite number)."""
    extra = params.extra_args or {}
    return check_alpha(extra[ALPHA_KEY]) if ALPHA_KEY in extra else None


class TitaAlphaProcessor(LogitsProcessor):
    """Per-row alpha for TitaForCausalLM (a no-op with any other model)."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        request_alpha(sampling_params)

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        architectures = vllm_config.model_config.hf_config.architectures or []
        self.active = ARCHITECTURE in architectures
        self.guidance = guidance_for(vllm_config) if self.active else None
        if self.guidance is not None:
            self.guidance.processor_attached = True
        self.device = device
        self.alphas: dict[int, float] = {}  # batch row -> the request's own alpha (rows without one: absent)
        self.delta: torch.Tensor | None = None  # float32 [batch] a - a0, or None when no row sets an alpha

    def is_argmax_invariant(self) -> bool:
        return False  # alpha changes which token is the greedy one

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not self.active or batch_update is None:
            return
        for row in batch_update.removed:
            self.alphas.pop(row, None)
        for row, params, _, _ in batch_update.added:
            alpha = request_alpha(params)
            if alpha is None:
                self.alphas.pop(row, None)
            else:
                self.alphas[row] = alpha
        for a, b, direction in batch_update.moved:
            alpha_a, alpha_b = self.alphas.pop(a, None), self.alphas.pop(b, None)
            if alpha_a is not None:
                self.alphas[b] = alpha_a
            if alpha_b is not None and direction == MoveDirectionality.SWAP:
                self.alphas[a] = alpha_b
        a0 = self.guidance.default_alpha
        deltas = [0.0] * batch_update.batch_size
        for row, alpha in self.alphas.items():
            if row < batch_update.batch_size:
                deltas[row] = alpha - a0
        self.delta = torch.tensor(deltas, dtype=torch.float32).to(self.device) if any(deltas) else None
        self.guidance.term_wanted = self.delta is not None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.delta is None:
            return logits
        term = self.guidance.term
        if term is None or term.shape != logits.shape or self.delta.shape[0] != logits.shape[0]:
            raise RuntimeError(f"TitaAlphaProcessor: logits {tuple(logits.shape)} do not match the model's guidance "
                               f"term {None if term is None else tuple(term.shape)} and {self.delta.shape[0]} rows "
                               "of alphas (speculative decoding is not supported with TITA)")
        return logits.add_(self.delta[:, None] * term)
