"""Shared parameter tuples, input factories and helpers for the op tests (Liger-Kernel style)."""

from __future__ import annotations

import os

import pytest
import torch

# Triton reads TRITON_INTERPRET once, when it is first imported (torch.compile imports it too, so
# any test module may be first): without a GPU, its kernels can only run under the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import tita_ext  # noqa: E402

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ALPHAS = (0.0, 0.6, 1.0, 1.5)
# (batch, base width, reward width): odd, Llama, Qwen sizes and LLaVA's padded 32064 vs 32000.
SHAPES = (
    (1, 1271, 1271), (3, 1271, 1271), (64, 1271, 1271),
    (1, 32000, 32000), (3, 32000, 32000), (64, 32000, 32000),
    (1, 151936, 151936), (3, 151936, 151936), (64, 151936, 151936),
    (3, 32064, 32000),
)
# Sampling modes of the grid: keyword arguments of guided_sample.
MODES = {
    "greedy": dict(temperature=0.0),
    "temperature": dict(temperature=0.7),
    "top_k": dict(temperature=0.9, top_k=20),
    "top_p": dict(temperature=0.8, top_p=0.9),
    "min_p": dict(temperature=1.0, min_p=0.05),
    "plausibility": dict(temperature=0.9, plausibility=0.1),
}

# The statistical tests' sampling settings (every filter, alpha above 1), for each backend.
STATISTICS_CASES = (
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=12),
    dict(temperature=1.3, top_p=0.8),
    dict(temperature=1.0, min_p=0.05, alpha=1.5),
    dict(temperature=0.8, plausibility=0.05, alpha=1.0),
)


def case_id(kwargs: dict) -> str:
    """A parametrize id from keyword arguments: "temperature=0.7,top_k=12"."""
    return ",".join(f"{a}={b}" for a, b in kwargs.items())


# The kernels compute in fp32 from exactly converted inputs, like the reference, so the only
# differences are fp32 rounding (their own exp/log and summation order): a fixed fp32 bound.
LOGPROB_ATOL = 2e-4
PROB_ATOL = 2e-6

needs_compiled = pytest.mark.skipif(not tita_ext.compiled_available("cpu"), reason="tita_ext._C is not built")


def llm_logits(batch: int, width: int, dtype: torch.dtype, seed: int, spread: float = 2.5) -> torch.Tensor:
    """Logits shaped like a language model's: a broad normal body plus a few strong peaks per row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, width, generator=g) * spread
    peaks = torch.randint(0, width, (batch, 4), generator=g)
    x.scatter_add_(1, peaks, torch.rand(batch, 4, generator=g) * 12 + 4)
    return x.to(dtype)


def per_row(values, batch: int, dtype=torch.float32) -> torch.Tensor:
    """A per-row parameter tensor cycling through `values`."""
    return torch.tensor([values[i % len(values)] for i in range(batch)], dtype=dtype)


def mode_kwargs(mode: str, batch: int, per_row_params: bool) -> dict:
    """MODES[mode] as guided_sample keywords; with per_row_params, every parameter per row."""
    kwargs = dict(MODES[mode])
    if per_row_params:  # every parameter as a per-row tensor, with a spread of values
        t = kwargs["temperature"]
        kwargs["temperature"] = per_row([t, t * 0.5 + 0.5, 0.0] if t else [0.0], batch)
        for name, scale in (("top_k", (1, 3, 0)), ("top_p", (1.0, 0.6, 0.95)), ("min_p", (1.0, 0.2, 0.0)),
                            ("plausibility", (1.0, 0.5, 0.0))):
            if name in kwargs:
                dtype = torch.int64 if name == "top_k" else torch.float32
                kwargs[name] = per_row([kwargs[name] * s if name != "top_p" else s for s in scale], batch, dtype)
    return kwargs


def compare_with_reference(base, reward, ref, kwargs, seed, offset, backend="compiled"):
    """guided_sample on `backend` vs the reference: identical tokens and status, close floats."""
    got = tita_ext.guided_sample(base, reward, ref, seed=seed, offset=offset, backend=backend, **kwargs)
    want = tita_ext.guided_sample(base, reward, ref, seed=seed, offset=offset, backend="reference", **kwargs)
    assert torch.equal(got.status, want.status)
    mismatched = (got.tokens != want.tokens).nonzero().flatten().tolist()
    assert not mismatched, f"tokens differ in rows {mismatched[:10]}: {got.tokens[mismatched[:10]].tolist()} " \
                           f"vs reference {want.tokens[mismatched[:10]].tolist()}"
    torch.testing.assert_close(got.logprob, want.logprob, atol=LOGPROB_ATOL, rtol=1e-5)
    torch.testing.assert_close(got.token_reward, want.token_reward, atol=LOGPROB_ATOL, rtol=1e-5)
    return got
