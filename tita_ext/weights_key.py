"""Which storage a model's weights live in: the key that captured graphs and cached generators
are valid for.

A captured CUDA graph (and a static KV cache sized for a dtype and device) holds the addresses of
the tensors it was made with. `model.to(...)` (another dtype or device) and
`model.load_state_dict(..., assign=True)` replace a model's parameters with new tensors at new
addresses, so a replay after them would read the old, freed weights. In-place updates
(`load_state_dict` without assign, an optimiser step) keep the addresses and need nothing: a
replay reads the current values.

`weights_key` walks the models' parameters and buffers and reads their addresses: about 3 us per
tensor measured on a busy 2-core CPU (3 ms for 900 tensors, a LLaVA-7B-sized pair), small beside
a call's prefill.
"""

from __future__ import annotations

from typing import Mapping

import torch

WeightsKey = tuple


def weights_key(models: Mapping[str, torch.nn.Module]) -> WeightsKey:
    """A hashable key per role: every parameter's and buffer's address, and the model's device and
    dtype. Equal keys mean a captured graph and the static caches still address the models'
    weights. (`.to(dtype or device)` and `assign=True` allocate the new tensors while the old ones
    still exist, so a moved tensor cannot come back at its old address within one move.)"""
    return tuple((role, str(getattr(model, "device", "")), getattr(model, "dtype", None),
                  tuple(p.data_ptr() for p in model.parameters()), tuple(b.data_ptr() for b in model.buffers()))
                 for role, model in models.items())
