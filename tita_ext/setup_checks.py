"""Checks made once before decoding, each failing with an error that says what to change."""

from __future__ import annotations

from typing import Mapping

import torch

from .adapters import image_token_id, model_family
from .adapters.family import check_guidable, pixel_inputs
from .adapters.runner import model_device
from .contract import LOGITS_DTYPES


def text_tokenizer(tokenizer_or_processor):
    """The tokenizer inside a processor, or the tokenizer itself."""
    return getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)


def check_tokenizers(base_tokenizer, other_tokenizer, other: str = "reward") -> None:
    """Both models must read ids the same way over their shared range: raise naming the first id
    whose token differs, or a special token that differs."""
    a, b = text_tokenizer(base_tokenizer), text_tokenizer(other_tokenizer)
    shared = min(len(a), len(b))
    tokens_a = a.convert_ids_to_tokens(list(range(shared)))
    tokens_b = b.convert_ids_to_tokens(list(range(shared)))
    for token_id, (ta, tb) in enumerate(zip(tokens_a, tokens_b)):
        if ta != tb:
            raise ValueError(f"the base and {other} tokenizers differ at id {token_id}: base has {ta!r}, "
                             f"{other} has {tb!r}. Guidance adds the two models' scores id by id, so the {other} "
                             "model must use the base model's tokenizer (padding to a different width is fine)")
    for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
        ia, ib = getattr(a, name, None), getattr(b, name, None)
        if ia is not None and ib is not None and ia != ib:
            raise ValueError(f"the base and {other} tokenizers have different {name}: {ia} vs {ib}")


def check_model(role: str, model: object) -> None:
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"{role}_model must be a transformers model (an nn.Module with a config), "
                        f"got {type(model).__name__}")
    if model.dtype not in LOGITS_DTYPES:
        raise TypeError(f"{role}_model is in {model.dtype}; guided decoding reads float32, float16 or bfloat16 "
                        f"logits: convert it with {role}_model.to(torch.float32) (or bfloat16/float16)")
    check_guidable(role, model)


def check_same_device(models: Mapping[str, torch.nn.Module]) -> torch.device:
    """All models must produce logits on one device (the fused op reads them together): the first
    role's device, which the others are checked against."""
    devices = {role: model_device(m) for role, m in models.items()}
    anchor_role, anchor = next(iter(devices.items()))
    for role, device in devices.items():
        if device != anchor:
            raise ValueError(f"{role}_model is on {device} but {anchor_role}_model is on {anchor}: the models' "
                             f"logits must meet on one device; move it with {role}_model.to('{anchor}')")
    return anchor


def inputs_for(role: str, model: torch.nn.Module, given: Mapping | None, shared_role: str,
               shared_model: torch.nn.Module, shared_inputs: Mapping) -> Mapping:
    """The inputs of `role`'s model: `given`, or else `shared_role`'s, which only a model of the same
    family (the same processor) can read, or any text-only model (a shared tokenizer's output)."""
    if given is not None:
        return given
    mine, shared = model_family(model), model_family(shared_model)
    if mine.name != shared.name and (mine.is_vlm or shared.is_vlm):
        raise ValueError(f"{role}_model is {type(model).__name__} but {shared_role}_model is "
                         f"{type(shared_model).__name__}: their processors differ, so pass {role}_inputs= "
                         f"(the {role} model's processor output for the same prompts)")
    return shared_inputs


def check_inputs(role: str, model: torch.nn.Module, inputs: object, batch: int | None) -> int:
    """A processor/tokenizer output for this model; returns its batch size."""
    if not isinstance(inputs, Mapping):
        raise TypeError(f"{role}_inputs must be the dict (BatchEncoding/BatchFeature) that the {role} model's "
                        f"processor or tokenizer returns, got {type(inputs).__name__}")
    ids = inputs.get("input_ids")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"{role}_inputs['input_ids'] must be an integer tensor [batch, prompt_length], got {shape}; "
                         "call the tokenizer with return_tensors='pt'")
    if ids.shape[0] == 0:
        raise ValueError(f"{role}_inputs has no rows (a batch of 0 prompts): give at least one prompt")
    if ids.shape[1] == 0:
        raise ValueError(f"{role}_inputs has an empty prompt: give at least one token per row")
    mask = inputs.get("attention_mask")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != ids.shape):
        raise ValueError(f"{role}_inputs['attention_mask'] must have the shape of input_ids {tuple(ids.shape)}")
    if mask is not None and ids.shape[0] > 0 and bool((mask[:, -1] == 0).any()):
        raise ValueError(f"{role}_inputs is right-padded (a row's last attention_mask entry is 0): decoding appends "
                         "after the last position, so pad on the left (tokenizer.padding_side = 'left')")
    if batch is not None and ids.shape[0] != batch:
        raise ValueError(f"{role}_inputs has {ids.shape[0]} rows but base inputs have {batch}: every model "
                         "decodes the same prompts, one row each")
    _check_images(role, model, inputs, ids)
    return ids.shape[0]


def _check_images(role: str, model: torch.nn.Module, inputs: Mapping, ids: torch.Tensor) -> None:
    family = model_family(model)
    placeholder = image_token_id(model)
    pixels = [key for key in inputs if key.startswith("pixel_values") and inputs[key] is not None]
    named = f"{role}_model ({type(model).__name__}, family {family.name!r})"
    if not family.is_vlm:
        if not pixels:
            return
        if pixel_inputs(model):  # it takes pixels but its config names no placeholder token
            raise ValueError(f"{role}_inputs carries {pixels[0]} but {named} names no image placeholder token in its "
                             "config (image_token_id / image_token_index), so the prompt cannot say where the image "
                             "goes: set config.image_token_id to the processor's image token id")
        raise ValueError(f"{role}_inputs carries {pixels[0]} but {named} is a text-only model (its forward takes "
                         "no pixel_values): use a vision-language model or drop the images")
    has_placeholders = bool((ids == placeholder).any())
    missing = [key for key in family.image_inputs if inputs.get(key) is None]
    if has_placeholders and missing:
        raise ValueError(f"{role}_inputs has image placeholder tokens (id {placeholder}) but no "
                         f"{' / '.join(missing)}, which {named} needs with its images: pass the whole output of "
                         f"the {role} model's processor, called with images=")
    if not has_placeholders and pixels:
        raise ValueError(f"{role}_inputs has {pixels[0]} but no image placeholder token (id {placeholder}) in "
                         f"input_ids: build the prompt with the {role} model's processor so the image tokens "
                         "are inserted")
