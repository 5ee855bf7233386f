"""StaticRunner: one Hugging Face model on a preallocated (static) KV cache, for the graphed decode.

Everything a decode step reads or writes lives at a fixed address for the runner's life, so
the step can be captured in a CUDA graph once and replayed for every later token and call:

- the KV cache: a transformers `StaticCache` for `max_batch` rows and `max_length` positions,
  allocated once. A batch of B rows uses rows [0, B): each row count gets its own `StaticCache`
  object whose layers are views of the first rows of the big tensors (same memory, no copy).
  Every view shares the big cache's per-layer write counter (`cumulative_length`, a device
  tensor that the layers advance in place), so one reset before a prompt serves them all.
- the attention mask: [max_batch, max_length], the prompt's padding then ones. A step passes
  the whole row (kv length is max_length for a static cache); positions after the current one
  are hidden by the causal mask.
- the next token's positions: [max_batch, 1] (or [sections, max_batch, 1] for Qwen2-VL's
  multimodal rope), set from the prefill positions (the model's own
  `_prepare_position_ids_for_generation`, so rope_deltas are already inside) and advanced by
  one in place after every step: a device tensor, no host value per step.

Which models qualify: those whose `StaticCache` is made of full-attention layers, or of
sliding-window layers whose window holds the whole cache (LLaVA, Qwen2/2.5/3-VL, InternVL,
Mistral3, Llama, ...; see check_static_cache_support). Others (shorter sliding windows, linear
attention, ...) raise `StaticCacheUnsupported`; callers then decode on dynamic caches.
"""

from __future__ import annotations

from typing import Mapping

import torch

from .runner import _forward_parameters, cache_argument, forward_inputs, model_device


class StaticCacheUnsupported(ValueError):
    """This model cannot run on a plain static KV cache (the caller falls back to dynamic caches)."""


def _text_config(model: torch.nn.Module):
    config = model.config
    try:
        return config.get_text_config(decoder=True)
    except TypeError:  # older signature
        return config.get_text_config()


def static_layer_shape(model: torch.nn.Module) -> tuple[int, int]:
    """(key/value heads, head dim) of the model's attention layers, from its text config."""
    text = _text_config(model)
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return int(heads), int(head_dim)


def _static_layers(model: torch.nn.Module, max_length: int) -> list:
    """The layers transformers' StaticCache makes for this model and max_length positions."""
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=max_length).layers


def check_static_cache_support(model: torch.nn.Module, max_length: int | None = None) -> None:
    """Raise StaticCacheUnsupported (saying why) unless the model can decode on a static cache of
    `max_length` positions (None: the layer kinds only).

    Full-attention layers qualify. So do sliding-window layers whose window holds all max_length
    positions: they never slide, so they attend exactly as full-attention layers, and the runner
    gives them plain StaticLayers (transformers' StaticSlidingWindowLayer tracks its fill in a
    Python int, which a replayed CUDA graph would not advance). Shorter windows, linear attention
    and other layer kinds do not."""
    try:
        from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer
    except ImportError as err:  # pragma: no cover - every supported transformers has them
        raise StaticCacheUnsupported(f"transformers has no static cache layers ({err})") from None
    name = type(model).__name__
    if not getattr(model, "_can_compile_fullgraph", False):
        raise StaticCacheUnsupported(f"{name} does not declare static-cache (compile) support")
    device_map = getattr(model, "hf_device_map", None) or {}
    if len({str(d) for d in device_map.values()}) > 1:
        raise StaticCacheUnsupported(f"{name} is split over several devices (device_map); the static cache lives on one")
    if cache_argument(type(model)) is None:
        raise StaticCacheUnsupported(f"{name}.forward takes no KV cache")
    layers = _static_layers(model, max_length or 1)
    kinds = {type(layer).__name__ for layer in layers if type(layer) not in (StaticLayer, StaticSlidingWindowLayer)}
    if kinds or not layers:
        raise StaticCacheUnsupported(f"{name}'s static cache has {', '.join(sorted(kinds)) or 'no'} layers; only "
                                     "full-attention and sliding-window attention layers can decode on a static cache")
    if max_length is not None:
        windows = [layer.max_cache_len for layer in layers if type(layer) is StaticSlidingWindowLayer]
        if windows and min(windows) < max_length:  # a layer's max_cache_len is min(window, max_length)
            raise StaticCacheUnsupported(
                f"{name} has sliding-window layers (StaticSlidingWindowLayer) of {min(windows)} positions, fewer than "
                f"max_length={max_length}: "
                "a static sliding window that wraps around cannot be replayed from a CUDA graph. Use max_length <= "
                f"{min(windows)} for static caches")


def full_static_cache(model: torch.nn.Module, max_length: int):
    """A StaticCache of max_length positions whose layers are all plain StaticLayers (sliding
    windows that hold max_length positions attend as full attention; see check_static_cache_support)."""
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer

    cache = StaticCache(config=model.config, max_cache_len=max_length)
    cache.layers = [layer if type(layer) is StaticLayer else StaticLayer(max_cache_len=max_length)
                    for layer in cache.layers]
    return cache


class StaticRunner:
    """One model on a static KV cache of `max_batch` rows x `max_length` positions.

    Args:
        model: a transformers causal LM or VLM (eval mode) that `check_static_cache_support` accepts.
        max_batch: rows of the cache (the largest batch bucket).
        max_length: positions per row: prompt plus new tokens must fit.
    """

    def __init__(self, model: torch.nn.Module, max_batch: int, max_length: int):
        check_static_cache_support(model, max_length)
        self.model = model
        self.max_batch, self.max_length = max_batch, max_length
        self.device = model_device(model)
        self.takes_positions = "position_ids" in _forward_parameters(type(model))
        self.takes_logits_to_keep = "logits_to_keep" in _forward_parameters(type(model))
        self.cache_key = cache_argument(type(model))
        heads, head_dim = static_layer_shape(model)
        self.cache = full_static_cache(model, max_length)
        self.cache.early_initialization(max_batch, heads, head_dim, model.dtype, self.device)
        self._views: dict[int, object] = {max_batch: self.cache}
        self.mask = torch.ones(max_batch, max_length, dtype=torch.long, device=self.device)
        self.positions: torch.Tensor | None = None  # [max_batch, 1] or [S, max_batch, 1], made at the first prefill
        self.prompt_length = 0
        self.batch = 0

    def view(self, rows: int):
        """The StaticCache over rows [0, rows) (made once per row count; same memory)."""
        if rows not in self._views:
            if not 0 < rows <= self.max_batch:
                raise ValueError(f"rows must be in [1, {self.max_batch}], got {rows}")
            view = full_static_cache(self.model, self.max_length)
            for mine, big in zip(view.layers, self.cache.layers):
                mine.__dict__.update(big.__dict__)  # shapes, dtype, device, the shared write counter
                mine.keys, mine.values = big.keys[:rows], big.values[:rows]
                mine.batch_size = rows
            self._views[rows] = view
        return self._views[rows]

    def write_position(self) -> torch.Tensor:
        """The cache's write counter (int64 0-d device tensor): tokens stored per row so far."""
        return self.cache.layers[0].cumulative_length

    def prefill(self, inputs: Mapping[str, object], max_new_tokens: int) -> torch.Tensor:
        """Run the prompts (left padded, with their images) into cache rows [0, B); set the mask
        and the next positions of those rows. Returns last-position logits [B, V]."""
        inputs = forward_inputs(self.model, inputs)
        input_ids = inputs["input_ids"]
        batch, length = input_ids.shape
        if batch > self.max_batch:
            raise ValueError(f"batch of {batch} rows but this generator's static caches hold max_batch_size="
                             f"{self.max_batch}: split the batch or make a GuidedGenerator with a larger "
                             "max_batch_size")
        if length + max_new_tokens > self.max_length:
            raise ValueError(f"prompt of {length} tokens + max_new_tokens={max_new_tokens} = {length + max_new_tokens} "
                             f"positions, but this generator's static caches hold max_length={self.max_length}: "
                             "lower max_new_tokens or make a GuidedGenerator with a larger max_length")
        for layer in self.cache.layers:
            layer.cumulative_length.zero_()
        self.mask.fill_(1)
        prompt_mask = inputs.get("attention_mask")
        if prompt_mask is not None:
            self.mask[:batch, :length] = prompt_mask
        inputs["attention_mask"] = self.mask[:batch, :length]
        if self.takes_positions and "position_ids" not in inputs:
            inputs["position_ids"] = self.model._prepare_position_ids_for_generation(input_ids, dict(inputs))
        if self.takes_logits_to_keep:
            inputs["logits_to_keep"] = 1
        out = self.model(**inputs, **{self.cache_key: self.view(batch)}, use_cache=True)
        if self.takes_positions:
            first = inputs["position_ids"][..., -1:] + 1  # [B, 1] or [S, B, 1]
            if self.positions is None or self.positions.shape[:-2] != first.shape[:-2]:
                self.positions = torch.zeros(*first.shape[:-2], self.max_batch, 1, dtype=torch.int64,
                                             device=self.device)
            self.positions.zero_()
            self.positions[..., :batch, :] = first
        self.prompt_length, self.batch = length, batch
        return out.logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (int64 [R, 1], R >= the prefilled batch: extra rows are padding
        that nobody reads) and advance the positions in place. Returns logits [R, V]. Only device
        work: safe to capture in a CUDA graph."""
        rows = tokens.shape[0]
        kwargs = {"input_ids": tokens, "attention_mask": self.mask[:rows], self.cache_key: self.view(rows),
                  "use_cache": True}
        if self.takes_positions:
            positions = self.positions[..., :rows, :]
            kwargs["position_ids"] = positions
        out = self.model(**kwargs)
        if self.takes_positions:
            positions.add_(1)
        return out.logits[:, -1]
