"""What kind of Hugging Face model this is: whether it can be guided, whether it takes images, and
which inputs must come with its image placeholder tokens.

Decided from the model itself, so a family works the day transformers ships it: a model takes
images when its forward takes pixels (`pixel_values`, `pixel_values_images`, ...) and its config
names the placeholder token the pixels replace (`image_token_id` / `image_token_index`). The only
per-family knowledge is `_COMPANIONS`: the inputs besides the pixels a family's prefill cannot do
without (where the processor puts the image's shape or the image/text layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .runner import _forward_parameters, cache_argument

# Inputs that must accompany the pixels, per config model_type: what the processor returns and
# the forward needs to place the image features (every other image family needs the pixels only).
_COMPANIONS: dict[str, tuple[str, ...]] = {
    "qwen2_vl": ("image_grid_thw",), "qwen2_5_vl": ("image_grid_thw",), "qwen3_vl": ("image_grid_thw",),
    "qwen3_vl_moe": ("image_grid_thw",), "qwen3_5": ("image_grid_thw",), "qwen3_5_moe": ("image_grid_thw",),
    "glm4v": ("image_grid_thw",),
    "llava_next": ("image_sizes",), "llava_onevision": ("image_sizes",), "mistral3": ("image_sizes",),
    "gemma3": ("token_type_ids",), "paligemma": ("token_type_ids",),  # bidirectional attention over the image
}


@dataclass(frozen=True)
class Family:
    """How a model family takes images.

    name: the config's model_type ("llava", "qwen3_vl", "llama", ...; "causal_lm" when unknown).
    image_inputs: the input keys that must accompany image placeholder tokens (() for text-only
        models): the forward's pixel inputs, then the family's companions (image_grid_thw, ...).
    """

    name: str
    image_inputs: tuple[str, ...] = ()

    @property
    def is_vlm(self) -> bool:
        return bool(self.image_inputs)


def pixel_inputs(model: torch.nn.Module) -> tuple[str, ...]:
    """The forward's image-pixel parameters (pixel_values, pixel_values_images, ...; videos excluded)."""
    return tuple(sorted(name for name in _forward_parameters(type(model))
                        if name.startswith("pixel_values") and "video" not in name))


def image_token_id(model: torch.nn.Module) -> int | None:
    """The placeholder id the model replaces with image features, or None for text-only models."""
    config = model.config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def model_family(model: torch.nn.Module) -> Family:
    """The family of a transformers model: its config's model_type, and the inputs its images need
    (none when it takes no images: no pixel input in its forward or no image token in its config)."""
    name = getattr(getattr(model, "config", None), "model_type", "") or "causal_lm"
    pixels = pixel_inputs(model)
    if not pixels or image_token_id(model) is None:
        return Family(name)
    return Family(name, pixels + _COMPANIONS.get(name, ()))


def family_for(model_type: str) -> Family:
    """The family of a config's model_type, without a model: a VLM (image inputs: pixel_values and
    its companions) when transformers maps the model_type to an image-text-to-text model."""
    return Family(model_type or "causal_lm", ("pixel_values",) + _COMPANIONS.get(model_type, ())
                  if takes_images(model_type) else ())


def takes_images(model_type: str) -> bool:
    """Whether transformers has an image-text-to-text model (AutoModelForImageTextToText) for model_type."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def check_guidable(role: str, model: torch.nn.Module) -> None:
    """Raise ValueError naming the model and why, for a model guided decoding cannot drive: an
    encoder-decoder, a model without a language-model head, a tokenizer-free model (no
    input_ids), a model whose forward takes no KV cache."""
    name = f"{role}_model ({type(model).__name__}, model_type {getattr(model.config, 'model_type', '?')!r})"
    params = _forward_parameters(type(model))
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"{name} is an encoder-decoder model: guided decoding drives decoder-only models, whose "
                         "prompt and answer share one token stream and one KV cache. Use a decoder-only "
                         "(causal LM or image-text-to-text) model")
    if "input_ids" not in params:
        raise ValueError(f"{name} takes no input_ids (a tokenizer-free model): guidance adds two models' scores "
                         "id by id, so both must read the same token ids")
    if model.get_output_embeddings() is None:
        raise ValueError(f"{name} has no language-model head (get_output_embeddings() is None): load it with "
                         "AutoModelForCausalLM or AutoModelForImageTextToText")
    if cache_argument(type(model)) is None:
        raise ValueError(f"{name}.forward takes no KV cache: decoding one token per step needs one")
