"""Gradients of guided_logprobs for the compiled and Triton ops (the reference gets them from autograd).

The output is out = z - log sum_{allowed} exp(z) over the allowed set (-inf elsewhere, NaN rows on
failure), with z = s / T and s = b + alpha (r - b) (no reference logits) or b + alpha (r - f).
The filters (top-k, top-p, min-p, the plausibility floor) and the non-finite exclusions are
piecewise constant, so they only select the allowed set: with p = exp(out) and g the incoming
gradient on the allowed entries,

    dL/dz = g - p * sum(g),    dL/ds = dL/dz / T,
    dL/db = (1 - alpha) dL/ds, dL/dr = alpha dL/ds           (no reference logits)
    dL/db = dL/ds, dL/dr = alpha dL/ds, dL/df = -alpha dL/ds  (reference logits)

Entries outside the allowed set (-inf) and failed rows (NaN) get no gradient; nor do the sampling
parameters (they choose the set, or are not differentiable inputs of the op).
"""

from __future__ import annotations

import torch

from . import reference

# Positions of the op's inputs (schema order) that the backward needs.
_BASE, _REWARD, _REF, _ALPHA, _ALPHA_ROWS, _TEMPERATURE, _TEMPERATURE_ROWS = range(7)
_NUM_INPUTS = 16


def _setup_context(ctx, inputs, output) -> None:
    base, reward, ref = inputs[_BASE], inputs[_REWARD], inputs[_REF]
    ctx.vocab = reference.shared_vocab(base, reward, ref, inputs[-1])
    ctx.shapes = [(t.shape, t.dtype) if t is not None else None for t in (base, reward, ref)]
    ctx.scalars = (inputs[_ALPHA], inputs[_TEMPERATURE])
    ctx.save_for_backward(output, inputs[_ALPHA_ROWS], inputs[_TEMPERATURE_ROWS])


def _backward(ctx, grad: torch.Tensor):
    out, alpha_rows, temperature_rows = ctx.saved_tensors
    alpha, temperature = ctx.scalars
    batch, vocab = out.shape[0], ctx.vocab
    out = out[:, :vocab]
    allowed = torch.isfinite(out)
    g = torch.where(allowed, grad[:, :vocab].float(), 0.0)
    p = torch.where(allowed, out.exp(), 0.0)
    grad_z = g - p * g.sum(dim=1, keepdim=True)
    a = reference._rows(alpha, alpha_rows, batch, out.device, torch.float32)
    t = reference._rows(temperature, temperature_rows, batch, out.device, torch.float32)
    grad_s = grad_z / torch.where(t == 0, torch.ones_like(t), t)  # greedy rows: the distribution at T = 1
    has_ref = ctx.shapes[_REF] is not None
    partials = (1.0 if has_ref else 1.0 - a, a, -a)
    grads = [None] * _NUM_INPUTS
    for i, (spec, d) in enumerate(zip(ctx.shapes, partials)):
        if spec is None:
            continue
        shape, dtype = spec
        full = torch.zeros(shape, dtype=torch.float32, device=out.device)
        full[:, :vocab] = grad_s * d
        grads[i] = full.to(dtype)
    return tuple(grads)


def register(op_name: str) -> None:
    """Give the guided_logprobs-shaped op `op_name` (e.g. "tita::guided_logprobs") its backward."""
    torch.library.register_autograd(op_name, _backward, setup_context=_setup_context)
