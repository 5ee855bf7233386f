"""Supervised fine-tuning on (image, prompt, answer) examples: how the demo world's tiny base and
reward models learn to see before DPO.

Rows are encoded once with `encode_row` (the prompt and image positions masked), then trained on
in shuffled right-padded batches with the model's own cross-entropy over the answer tokens.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch

from .dpo import _to_device, _tokenizer, collate_rows, encode_row
from .loop import index_batches, optimizer_step, total_steps


def encode_examples(processor, examples: Sequence[tuple], *, separator: str = " ", progress: bool = True) -> list[dict]:
    """Encode (image, prompt, answer) examples once: a list of single rows (see `encode_row`)."""
    from tqdm.auto import tqdm

    return [encode_row(processor, prompt, answer, image, separator=separator)
            for image, prompt, answer in tqdm(examples, desc="encode", unit="row", disable=not progress)]


def train_sft(model, processor, rows: Sequence[dict], *, lr: float = 3e-3, epochs: int = 1, batch_size: int = 32,
              max_steps: int | None = None, seed: int = 0, weight_decay: float = 0.0,
              max_grad_norm: float | None = 1.0, progress: bool = True) -> dict:
    """Train `model` in place on encoded rows (from `encode_examples`): AdamW, cross-entropy on the
    answer tokens, rows shuffled each epoch with `seed`; `max_steps` overrides `epochs`.

    Returns a dict: model (in eval mode), losses (per step), steps, seconds."""
    from tqdm.auto import tqdm

    if not rows:
        raise ValueError("no training rows")
    total = total_steps(len(rows), batch_size, epochs, max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    device, dtype = params[0].device, next(p.dtype for p in model.parameters() if p.is_floating_point())
    tokenizer = _tokenizer(processor)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    losses: list[float] = []
    model.train()
    bar = tqdm(total=total, desc="sft", unit="step", disable=not progress)
    started, step = time.perf_counter(), 0
    for indices in index_batches(len(rows), batch_size, total, seed):
        batch = _to_device(collate_rows([rows[i] for i in indices], pad), device, dtype)
        loss = model(**batch).loss
        optimizer_step(optimizer, params, loss, max_grad_norm)
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    optimizer.zero_grad(set_to_none=True)
    return dict(model=model.eval(), losses=losses, steps=step, seconds=time.perf_counter() - started)
