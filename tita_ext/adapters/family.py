"""What kind of Hugging Face model this is, and which inputs its images need."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Family:
    """How a model family takes images.

    name: "llava", "qwen2_vl", "qwen2_5_vl" or "causal_lm".
    image_inputs: the input keys that must accompany image placeholder tokens.
    """

    name: str
    image_inputs: tuple[str, ...] = ()

    @property
    def is_vlm(self) -> bool:
        return bool(self.image_inputs)


_FAMILIES = {
    "llava": Family("llava", ("pixel_values",)),
    "qwen2_vl": Family("qwen2_vl", ("pixel_values", "image_grid_thw")),
    "qwen2_5_vl": Family("qwen2_5_vl", ("pixel_values", "image_grid_thw")),
}


def family_for(model_type: str) -> Family:
    """The family of a config's model_type (anything unknown is driven as a plain causal LM)."""
    return _FAMILIES.get(model_type, Family("causal_lm"))


def model_family(model: torch.nn.Module) -> Family:
    """The family of a transformers model, from its config's model_type."""
    return family_for(getattr(getattr(model, "config", None), "model_type", ""))


def image_token_id(model: torch.nn.Module) -> int | None:
    """The placeholder id the model replaces with image features, or None for text-only models."""
    config = model.config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None
