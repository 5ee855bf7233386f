"""DecodeSettings: the decoding arguments of one `guided_generate` call, with the unset ones
taken from the base model's `generation_config`, as `generate` does."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence, Union

import torch

from . import _validate as check

IdList = Union[int, Sequence[int], None]


@dataclass(frozen=True)
class DecodeSettings:
    """Resolved arguments. Sampling parameters stay as given (number, per-row list or tensor);
    greedy decoding is temperature 0 for every row."""

    alpha: check.Param
    temperature: check.Param
    top_k: check.Param
    top_p: check.Param
    min_p: check.Param
    plausibility: check.Param
    max_new_tokens: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    stop_strings: tuple[str, ...]
    do_sample: bool = False
    repetition_penalty: float = 1.0  # 1.0: off
    min_new_tokens: int = 0  # 0: off

    def sampling_params(self) -> dict[str, check.Param]:
        return {name: getattr(self, name) for name in SAMPLING}

    @property
    def processes_base(self) -> bool:
        """Whether the base logits are changed before the op (repetition penalty, EOS held back)."""
        return self.repetition_penalty != 1.0 or self.min_new_tokens > 0

    def expanded(self, batch: int, copies: int) -> "DecodeSettings":
        """Per-prompt lists/tensors of the sampling parameters repeated per returned sequence."""
        from .expand import expand_rows

        return replace(self, **{name: expand_rows(getattr(self, name), batch, copies) for name in SAMPLING})


SAMPLING = ("alpha", "temperature", "top_k", "top_p", "min_p", "plausibility")


def _pick(given, configured, fallback):
    if given is not None:
        return given
    return configured if configured is not None else fallback


def _id_tuple(name: str, ids: IdList) -> tuple[int, ...]:
    if ids is None:
        return ()
    if isinstance(ids, torch.Tensor):
        ids = ids.flatten().tolist()
    if isinstance(ids, int) and not isinstance(ids, bool):
        ids = [ids]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"{name} must be a token id >= 0 or a list of them, got {ids!r}")
    return tuple(ids)


def resolve_settings(generation_config, prompt_length: int, *, alpha: check.Param, do_sample: bool | None,
                     temperature: check.Param | None, top_k: check.Param | None, top_p: check.Param | None,
                     min_p: check.Param | None, plausibility: check.Param, max_new_tokens: int | None,
                     eos_token_id: IdList, pad_token_id: int | None,
                     stop_strings: str | Sequence[str] | None, repetition_penalty: float | None = None,
                     min_new_tokens: int | None = None) -> DecodeSettings:
    """Fill the unset arguments from `generation_config` (a transformers GenerationConfig)."""
    gen = generation_config
    sample = bool(_pick(do_sample, getattr(gen, "do_sample", None), False))
    temperature = _pick(temperature, getattr(gen, "temperature", None), 1.0) if sample else 0.0
    top_k = _pick(top_k, getattr(gen, "top_k", None), 0) if sample else 0
    top_p = _pick(top_p, getattr(gen, "top_p", None), 1.0) if sample else 1.0
    min_p = _pick(min_p, getattr(gen, "min_p", None), 0.0) if sample else 0.0

    if max_new_tokens is None:
        max_new_tokens = getattr(gen, "max_new_tokens", None)
        if max_new_tokens is None:
            max_length = getattr(gen, "max_length", None) or 20
            max_new_tokens = max_length - prompt_length
    check.int_at_least("max_new_tokens", max_new_tokens, 1, f" (from the generation config's max_length and a prompt of "
                                                      f"{prompt_length} tokens if it was not passed)")

    eos = _id_tuple("eos_token_id", _pick(eos_token_id, getattr(gen, "eos_token_id", None), None))
    pad = _pick(pad_token_id, getattr(gen, "pad_token_id", None), eos[0] if eos else None)
    if pad is None:
        raise ValueError("no pad_token_id: pass pad_token_id= (or eos_token_id=) or set it in the base "
                         "model's generation_config; rows that stop early are filled with it")
    (pad,) = _id_tuple("pad_token_id", pad)

    if isinstance(stop_strings, str):
        stop_strings = (stop_strings,)
    stop_strings = tuple(stop_strings or ())
    if not all(isinstance(s, str) and s for s in stop_strings):
        raise ValueError(f"stop_strings must be non-empty strings, got {stop_strings!r}")
    penalty = _pick(repetition_penalty, getattr(gen, "repetition_penalty", None), 1.0)
    if isinstance(penalty, int) and not isinstance(penalty, bool):
        penalty = float(penalty)
    if not isinstance(penalty, float) or not math.isfinite(penalty) or penalty <= 0:
        raise ValueError(f"repetition_penalty must be a number > 0 (1.0: off; generate's meaning: the logits of "
                         f"tokens already in the sequence are divided by it, or multiplied when negative), got "
                         f"{penalty!r}; it is one value for the batch, as in generate")
    min_new = _pick(min_new_tokens, getattr(gen, "min_new_tokens", None), 0)
    check.int_at_least("min_new_tokens", min_new, 0)
    return DecodeSettings(alpha=alpha, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                          plausibility=plausibility, max_new_tokens=max_new_tokens, eos_token_ids=eos,
                          pad_token_id=pad, stop_strings=stop_strings, do_sample=sample,
                          repetition_penalty=penalty, min_new_tokens=min_new)
