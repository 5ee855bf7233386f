"""Which storage a model's weights live in: the key that captured graphs and cached generators
are valid for.

A captured CUDA graph (and a static KV cache sized for a dtype and device) holds the addresses of
the tensors it was made with. `model.to(...)` (another dtype or device) and
`model.load_state_dict(..., assign=True)` replace a model's parameters with new tensors at new
addresses, so a replay after them would read the old, freed weights. In-place updates
(`load_state_dict` without assign, an optimiser step) keep the addresses and need nothing: a
replay reads the current values.

`weights_key` walks the models' parameters and buffers (pointer, dtype, device, shape): a few
microseconds per hundred tensors, cheap enough to compare on every call.
"""

from __future__ import annotations

from typing import Mapping

import torch

WeightsKey = tuple


def _tensor_key(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), t.dtype, t.device, tuple(t.shape))


def weights_key(models: Mapping[str, torch.nn.Module]) -> WeightsKey:
    """A hashable key per role: every parameter's and buffer's (address, dtype, device, shape).
    Equal keys mean a captured graph and the static caches still address the models' weights."""
    return tuple((role, tuple(_tensor_key(p) for p in model.parameters()),
                  tuple(_tensor_key(b) for b in model.buffers())) for role, model in models.items())
