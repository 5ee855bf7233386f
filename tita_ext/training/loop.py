"""What the training loops share: shuffled index batches and one clipped optimizer step."""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch


def total_steps(count: int, batch_size: int, epochs: int, max_steps: int | None) -> int:
    """`epochs` passes over `count` items in batches, or exactly `max_steps` (as in transformers'
    Trainer, max_steps overrides epochs)."""
    if batch_size < 1 or epochs < 1 or (max_steps is not None and max_steps < 1):
        raise ValueError(f"batch_size, epochs and max_steps must be >= 1, got {batch_size}, {epochs}, {max_steps}")
    return epochs * math.ceil(count / batch_size) if max_steps is None else max_steps


def index_batches(count: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """`steps` batches of item indices, reshuffled (with `seed`) at every pass over the items."""
    generator = torch.Generator().manual_seed(seed)
    done = 0
    while done < steps:
        order = torch.randperm(count, generator=generator).tolist()
        for start in range(0, count, batch_size):
            if done == steps:
                return
            yield order[start:start + batch_size]
            done += 1


def optimizer_step(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], loss: torch.Tensor,
                   max_grad_norm: float | None) -> None:
    """Backward, clip the gradient norm (None: no clipping), step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
