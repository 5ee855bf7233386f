"""Argument checks for the public ops: every bad input becomes a ValueError or TypeError that
names the argument, what was given and what is allowed. Only shapes, dtypes, devices and
Python scalars are checked here (no device sync); per-row tensor *values* are checked by the
kernels and reported through the status output."""

from __future__ import annotations

import math
import struct
from typing import Sequence, Union

import torch

from .contract import LOGITS_DTYPES, MIN_TEMPERATURE

Param = Union[float, int, torch.Tensor, Sequence[float]]

_DTYPE_NAMES = ", ".join(str(d).replace("torch.", "") for d in LOGITS_DTYPES)


def check_logits(name: str, t: object, base: torch.Tensor | None = None) -> torch.Tensor:
    """A [batch, vocab] float logits tensor, on the base's device and with its batch size."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [batch, vocab], got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [batch, vocab], got shape {tuple(t.shape)}; "
                         f"for one row use {name}[None, :], for [batch, seq, vocab] take the last position [:, -1, :]")
    if t.dtype not in LOGITS_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; supported logits dtypes are {_DTYPE_NAMES}")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has an empty vocabulary (shape {tuple(t.shape)})")
    if base is not None:
        if t.device != base.device:
            raise ValueError(f"{name} is on {t.device} but base_logits is on {base.device}; move both to one device")
        if t.shape[0] != base.shape[0]:
            raise ValueError(f"{name} has batch size {t.shape[0]} but base_logits has {base.shape[0]}")
    return t


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


INT64_MAX = 2**63 - 1


def as_float32(value: float) -> float:
    """The float32 the kernels see for a Python float (inf where it overflows float32)."""
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


_MIN_TEMPERATURE32 = as_float32(MIN_TEMPERATURE)

# name -> (predicate on the value as the kernels see it, description of the allowed range).
# Floats are tested after rounding to float32 (the ops' parameter type), so 1e39 (inf in float32)
# and top_p=1e-50 (0 in float32) are refused here, not reported later as a per-row status.
_RANGES = {
    "alpha": (lambda v: math.isfinite(v), "a finite float32 number (|alpha| <= 3.4e38)"),
    "temperature": (lambda v: v == 0 or (math.isfinite(v) and v >= _MIN_TEMPERATURE32),
                    f"0 (greedy) or a finite float32 value >= {MIN_TEMPERATURE:g}"),
    "top_k": (lambda v: 0 <= v <= INT64_MAX, "an integer in [0, 2**63 - 1] (0 turns top-k off)"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1] (1 turns top-p off) and above 0 in float32 (>= 1.4e-45)"),
    "min_p": (lambda v: 0 <= v <= 1, "in [0, 1] (0 turns min-p off)"),
    "plausibility": (lambda v: 0 <= v <= 1, "in [0, 1] (0 turns the plausibility floor off)"),
}


def param(name: str, value: Param, base: torch.Tensor) -> tuple[float | int, torch.Tensor | None]:
    """Split a sampling parameter into (scalar, per-row tensor or None) as the ops take it.

    A Python number is range-checked here (floats as the float32 the kernels use; top_k within
    int64), with a ValueError naming the parameter and the value. A tensor (or list) is per-row:
    length batch, on the logits' device; its values are checked by the kernel (status
    STATUS_BAD_PARAM)."""
    integer = name == "top_k"
    kind = type(value)
    if kind is float or kind is int:  # the common case first: one type test, one range test
        if integer and kind is float:
            raise TypeError(f"{name} must be an int, a per-row tensor or a list, got float")
        allowed_pred, allowed = _RANGES[name]
        if not allowed_pred(value if integer else as_float32(value)):
            raise ValueError(f"{name} must be {allowed}, got {value!r}")
        return value, None
    if isinstance(value, (list, tuple)):
        value = torch.tensor(value, dtype=torch.int64 if integer else torch.float32, device=base.device)
    if isinstance(value, torch.Tensor):
        return (0 if integer else 0.0), _per_row(name, value, base, integer)
    if not _is_real(value) or (integer and not isinstance(value, int)):
        expected = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {expected}, a per-row tensor or a list, got {type(value).__name__}")
    return param(name, int(value) if integer else float(value), base)  # numpy / int subclasses


def _per_row(name: str, value: torch.Tensor, base: torch.Tensor, integer: bool) -> torch.Tensor:
    batch = base.shape[0]
    if value.device != base.device:
        raise ValueError(f"{name} is a per-row tensor on {value.device} but the logits are on {base.device}")
    if integer and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise TypeError(f"{name} per-row tensor must have an integer dtype, got {value.dtype}")
    if not integer and not value.is_floating_point():
        raise TypeError(f"{name} per-row tensor must have a floating dtype, got {value.dtype}")
    if value.dim() == 0:
        value = value.reshape(1).expand(batch)
    if value.dim() != 1 or value.shape[0] != batch:
        raise ValueError(f"{name} per-row tensor must have shape [{batch}] (one value per row), "
                         f"got {tuple(value.shape)}")
    return value.to(torch.int64 if integer else torch.float32).contiguous()


def seed_tensor(name: str, t: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """seed / offset: int64, one value or one per row, on the logits' device."""
    if t.dtype != torch.int64:
        raise TypeError(f"{name} must be an int64 tensor, got {t.dtype}")
    batch = base.shape[0]
    if t.numel() != 1 and not (t.dim() == 1 and t.shape[0] == batch):
        raise ValueError(f"{name} must hold one value or one per row ({batch}), got shape {tuple(t.shape)}")
    if t.device != base.device:
        raise ValueError(f"{name} is on {t.device} but the logits are on {base.device}; "
                         "keep seed and offset on the logits' device (graph-safe)")
    return t if t.dim() == 1 else t.reshape(-1)


def vocab_size(value: int | None) -> int:
    if value is None:
        return -1
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"vocab_size must be an int or None, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"vocab_size must be >= 1 (the tokenizer's size), got {value}")
    return value


def advance_args(sampled: torch.Tensor, finished: torch.Tensor, stop_ids: torch.Tensor, pad_id: int) -> None:
    """decode_advance: int64 [B] tokens, bool [B] flags, int64 [S] stop ids, one device, pad >= 0."""
    for name, t, dtype in (("sampled", sampled, torch.int64), ("finished", finished, torch.bool),
                           ("stop_ids", stop_ids, torch.int64)):
        if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.dim() != 1:
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"{name} must be a 1-D {dtype} tensor, got {got}")
        if t.device != sampled.device:
            raise ValueError(f"{name} is on {t.device} but sampled is on {sampled.device}")
    if finished.shape != sampled.shape:
        raise ValueError(f"finished has shape {tuple(finished.shape)} but sampled has {tuple(sampled.shape)}")
    int_at_least("pad_id", pad_id, 0)


def int_at_least(name: str, value: object, low: int, note: str = "") -> int:
    """`value` as a Python int >= low (bools refused), else a ValueError naming it (`note` is
    appended to the message, e.g. where the value came from)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}{note}")
    return value
