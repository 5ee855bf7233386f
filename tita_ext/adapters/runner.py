"""ModelRunner: one Hugging Face model, its own KV cache, prefill once, then one token per step.

Positions follow the model's own `generate`: the prefill positions come from the model's
`_prepare_position_ids_for_generation` (cumulative attention mask for left-padded batches; the
multimodal rope positions for Qwen2-VL / Qwen2.5-VL), and each step adds one to the last
position of every row (all rope sections alike). The attention mask lives in one preallocated
buffer; a step passes a view of it, so decoding allocates nothing of its own.
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Mapping

import torch



# Inputs a processor may return that generation never passes to a forward (generate drops them too).
LOSS_ONLY_INPUTS = frozenset({"labels", "return_loss"})


@functools.lru_cache(maxsize=None)
def _forward_parameters(model_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(model_class.forward).parameters)


def _is_cache_annotation(annotation: object) -> bool:
    """Whether a parameter annotation is (or is a union holding) a transformers Cache."""
    from transformers.cache_utils import Cache

    if isinstance(annotation, str):  # postponed annotations
        return "Cache" in annotation
    if isinstance(annotation, type):
        return issubclass(annotation, Cache)
    return any(_is_cache_annotation(arg) for arg in typing.get_args(annotation))


@functools.lru_cache(maxsize=None)
def cache_argument(model_class: type) -> str | None:
    """The forward's KV-cache keyword, or None when it takes no cache.

    Found by what the parameter holds (its annotation is a transformers Cache), not by its name:
    transformers renamed it (`past_key_values` up to 5.23, `cache` from 5.24). Without such an
    annotation, the first of transformers' own generation cache names (then the two it has used)
    that the forward takes."""
    parameters = inspect.signature(model_class.forward).parameters
    for name, parameter in parameters.items():
        if parameter.annotation is not inspect.Parameter.empty and _is_cache_annotation(parameter.annotation):
            return name
    from transformers.generation import utils as generation

    names = (*getattr(generation, "ALL_CACHE_NAMES", ()), "cache", "past_key_values")
    return next((name for name in names if name in parameters), None)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's inputs go (the device of its input embeddings)."""
    return model.get_input_embeddings().weight.device


def forward_inputs(model: torch.nn.Module, inputs: Mapping[str, object]) -> dict[str, object]:
    """The prompt inputs this model's forward takes, on its device; floating tensors (pixels)
    in its dtype. Keys the forward does not name are dropped (e.g. a tokenizer's token_type_ids),
    and so are loss-only keys (a PaliGemma processor's labels), as generate drops them."""
    accepted = _forward_parameters(type(model)) - LOSS_ONLY_INPUTS
    device, dtype = model_device(model), model.dtype
    kept = {}
    for key, value in inputs.items():
        if key not in accepted or value is None:
            continue
        if isinstance(value, torch.Tensor):
            value = value.to(device=device, dtype=dtype if value.is_floating_point() else None)
        kept[key] = value
    return kept


class ModelRunner:
    """Drives one model through a prompt and then one token per step, keeping its KV cache.

    Args:
        model: a transformers model with a language-model head (causal LM or VLM), in eval mode.
        inputs: its processor's or tokenizer's output for the prompts: input_ids [B, L] (left
            padded), attention_mask [B, L], and image inputs (pixel_values, image_grid_thw, ...).
        max_new_tokens: steps to reserve in the attention-mask buffer.
    """

    def __init__(self, model: torch.nn.Module, inputs: Mapping[str, object], max_new_tokens: int):
        from transformers import DynamicCache

        self.model = model
        self.inputs = forward_inputs(model, inputs)
        input_ids = self.inputs["input_ids"]
        batch, length = input_ids.shape
        prompt_mask = self.inputs.get("attention_mask")
        self.mask = torch.ones(batch, length + max_new_tokens, dtype=torch.long, device=input_ids.device)
        if prompt_mask is not None:
            self.mask[:, :length] = prompt_mask
        self.inputs["attention_mask"] = self.mask[:, :length]
        self.length = length
        self.cache = DynamicCache(config=model.config)
        self.cache_key = cache_argument(type(model))
        self.takes_positions = "position_ids" in _forward_parameters(type(model))
        self._positions: tuple[torch.Tensor, ...] = ()  # per coming step: [..., B, 1] views of one tensor
        self._step = 0

    @property
    def next_positions(self) -> torch.Tensor | None:
        """Position ids of the next step's token, [B, 1] (or [sections, B, 1] for multimodal rope)."""
        return self._positions[self._step] if self._step < len(self._positions) else None

    def _plan_positions(self, first: torch.Tensor) -> None:
        """Positions of every reserved step from `first` on, made in one go: a step then only
        indexes a tuple (each step adds one to the last position of every row, as generate does)."""
        steps = torch.arange(self.mask.shape[1] - self.length, device=first.device)
        self._positions = (first + steps).unsqueeze(-1).unbind(-2)
        self._step = 0

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    def prefill(self) -> torch.Tensor:
        """Run the whole prompt (with its images) once. Returns last-position logits [B, V]."""
        model, inputs = self.model, dict(self.inputs)
        if self.takes_positions and "position_ids" not in inputs:
            input_ids = inputs["input_ids"]
            inputs["position_ids"] = model._prepare_position_ids_for_generation(input_ids, dict(inputs))
        if "logits_to_keep" in _forward_parameters(type(model)):
            inputs["logits_to_keep"] = 1
        out = model(**inputs, **{self.cache_key: self.cache}, use_cache=True)
        if self.takes_positions:
            self._plan_positions(inputs["position_ids"][..., -1:] + 1)
        return out.logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (int64 [B, 1]). Returns the next logits [B, V]."""
        if self.length == self.mask.shape[1]:  # past the reserved steps: double the buffer (rare)
            self.mask = torch.cat([self.mask, torch.ones_like(self.mask)], dim=1)
            if self._positions:  # every planned position is used: plan on from the last one
                self._plan_positions(self._positions[-1] + 1)
        self.length += 1
        kwargs = {"input_ids": tokens, "attention_mask": self.mask[:, :self.length], self.cache_key: self.cache}
        if self.takes_positions:
            kwargs["position_ids"] = self._positions[self._step]
            self._step += 1
        return self.model(**kwargs, use_cache=True).logits[:, -1]

    def repeat_rows(self, repeats: int) -> None:
        """Give each row `repeats` consecutive copies (generate's expansion of a batch for beams
        and num_return_sequences: row b becomes rows b*repeats ... b*repeats+repeats-1).

        Done as a beam-search reorder that picks every row `repeats` times: every cache layer
        type implements reorder_cache (generate's beam search needs it), while only some
        implement batch_repeat_interleave (linear-attention layers do not)."""
        self.reorder(torch.arange(self.batch_size, device=self.mask.device).repeat_interleave(repeats))

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` (int64 [B']) of the cache, mask and positions, in that order (beam search)."""
        self.cache.reorder_cache(rows)
        self.mask = self.mask.index_select(0, rows)
        if self.next_positions is not None:
            self._plan_positions(self.next_positions.index_select(-2, rows))
