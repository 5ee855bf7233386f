"""Every bad input gets a ValueError or TypeError whose message names the argument and what is allowed."""

from __future__ import annotations

import pytest
import torch

import tita_ext

B, V = 3, 1271


def _logits(batch=B, width=V, dtype=torch.float32):
    return torch.randn(batch, width, dtype=dtype)


def _call(op="sample", base=None, reward=None, ref=None, **kwargs):
    base = _logits() if base is None else base
    reward = _logits() if reward is None else reward
    if op == "sample":
        return tita_ext.guided_sample(base, reward, ref, **kwargs)
    return tita_ext.guided_logprobs(base, reward, ref, **kwargs)


OPS = ["sample", "logprobs"]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("where", ["base", "reward", "ref"])
def test_logits_must_be_2d(op, where):
    with pytest.raises(ValueError, match=rf"{where}_logits must be 2-D \[batch, vocab\], got shape \(3, 1, 1271\)"):
        _call(op, **{where: torch.randn(B, 1, V)})


@pytest.mark.parametrize("op", OPS)
def test_logits_must_be_tensors(op):
    with pytest.raises(TypeError, match=r"reward_logits must be a torch.Tensor .* got list"):
        _call(op, reward=[[0.0] * V] * B)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("where", ["reward", "ref"])
def test_batch_sizes_must_match(op, where):
    with pytest.raises(ValueError, match=rf"{where}_logits has batch size 4 but base_logits has 3"):
        _call(op, **{where: _logits(batch=4)})


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.float64, torch.bool])
def test_unsupported_dtypes(op, dtype):
    with pytest.raises(TypeError, match=r"supported logits dtypes are float32, float16, bfloat16"):
        _call(op, base=_logits().to(dtype))


@pytest.mark.parametrize("op", OPS)
def test_empty_vocabulary(op):
    with pytest.raises(ValueError, match=r"reward_logits has an empty vocabulary"):
        _call(op, reward=torch.randn(B, 0))


@pytest.mark.parametrize("op", OPS)
def test_different_devices(op):
    meta = torch.randn(B, V, device="meta")
    with pytest.raises(ValueError, match=r"reward_logits is on meta but base_logits is on cpu"):
        _call(op, reward=meta)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name,value,message", [
    ("top_k", -1, r"top_k must be an integer in \[0, 2\*\*63 - 1\] \(0 turns top-k off\), got -1"),
    ("top_k", 2**63, r"top_k must be an integer in \[0, 2\*\*63 - 1\].*got 9223372036854775808"),
    ("top_k", 2.5, r"top_k must be an int"),
    ("top_p", 0.0, r"top_p must be in \(0, 1\]"),
    ("top_p", 1.5, r"top_p must be in \(0, 1\]"),
    ("min_p", -0.1, r"min_p must be in \[0, 1\]"),
    ("min_p", 1.1, r"min_p must be in \[0, 1\]"),
    ("temperature", -0.5, r"temperature must be 0 \(greedy\) or a finite float32 value >= 1e-06, got -0.5"),
    ("temperature", 1e-9, r"temperature must be 0 \(greedy\) or a finite float32 value >= 1e-06"),
    ("temperature", 1e39, r"temperature must be 0 \(greedy\) or a finite float32 value >= 1e-06, got 1e\+39"),
    ("temperature", float("inf"), r"temperature must be 0 \(greedy\)"),
    ("alpha", float("nan"), r"alpha must be a finite float32 number \(\|alpha\| <= 3.4e38\), got nan"),
    ("alpha", float("inf"), r"alpha must be a finite float32 number .*, got inf"),
    ("alpha", 1e39, r"alpha must be a finite float32 number \(\|alpha\| <= 3.4e38\), got 1e\+39"),
    ("alpha", -1e39, r"alpha must be a finite float32 number .*, got -1e\+39"),
    ("top_p", 1e-50, r"top_p must be in \(0, 1\] .*above 0 in float32.*got 1e-50"),
    ("alpha", "0.5", r"alpha must be a number"),
    ("plausibility", 1.5, r"plausibility must be in \[0, 1\]"),
])
def test_parameters_out_of_range(op, name, value, message):
    with pytest.raises((ValueError, TypeError), match=message):
        _call(op, **{name: value})


@pytest.mark.parametrize("backend", ["reference", "compiled"])
def test_scalars_at_the_float32_limits_are_accepted(backend):
    """The largest float32 alpha, the smallest positive float32 top_p and the largest int64 top_k
    pass the checks and run on every backend alike."""
    if backend == "compiled" and not tita_ext.compiled_available():
        pytest.skip("tita_ext._C is not built")
    base, reward = _logits(), _logits()
    for kwargs in (dict(alpha=3.4e38, temperature=1.0), dict(top_p=1.5e-45), dict(top_k=2**63 - 1),
                   dict(temperature=1e-6)):
        out = tita_ext.guided_sample(base, reward, seed=1, backend=backend, check_status=False, **kwargs)
        want = tita_ext.guided_sample(base, reward, seed=1, backend="reference", check_status=False, **kwargs)
        assert torch.equal(out.tokens, want.tokens) and torch.equal(out.status, want.status), kwargs


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", ["alpha", "temperature", "top_p", "min_p", "plausibility", "top_k"])
def test_per_row_parameters_of_wrong_length_or_device(op, name):
    dtype = torch.int64 if name == "top_k" else torch.float32
    with pytest.raises(ValueError, match=rf"{name} per-row tensor must have shape \[3\] \(one value per row\), got \(4,\)"):
        _call(op, **{name: torch.ones(4, dtype=dtype)})
    with pytest.raises(ValueError, match=rf"{name} is a per-row tensor on meta but the logits are on cpu"):
        _call(op, **{name: torch.ones(B, dtype=dtype, device="meta")})


@pytest.mark.parametrize("op", OPS)
def test_per_row_parameter_dtypes(op):
    with pytest.raises(TypeError, match=r"top_k per-row tensor must have an integer dtype, got torch.float32"):
        _call(op, top_k=torch.ones(B))
    with pytest.raises(TypeError, match=r"top_p per-row tensor must have a floating dtype, got torch.int64"):
        _call(op, top_p=torch.ones(B, dtype=torch.int64))


@pytest.mark.parametrize("name", ["seed", "offset"])
def test_seed_and_offset_tensors(name):
    with pytest.raises(TypeError, match=rf"{name} must be an int64 tensor, got torch.int32"):
        _call(**{name: torch.tensor([1], dtype=torch.int32)})
    with pytest.raises(ValueError, match=rf"{name} must hold one value or one per row \(3\), got shape \(2,\)"):
        _call(**{name: torch.tensor([1, 2])})
    with pytest.raises(ValueError, match=rf"{name} is on meta but the logits are on cpu"):
        _call(**{name: torch.tensor([1], device="meta")})


def test_seed_and_offset_python_values():
    with pytest.raises(TypeError, match=r"seed must be an int, an int64 tensor, a torch.Generator or None, got str"):
        _call(seed="42")
    with pytest.raises(ValueError, match=r"offset must be >= 0, got -1"):
        _call(offset=-1)


@pytest.mark.parametrize("op", OPS)
def test_vocab_size_and_backend(op):
    with pytest.raises(ValueError, match=r"vocab_size must be >= 1"):
        _call(op, vocab_size=0)
    with pytest.raises(ValueError, match=r"backend must be None, 'compiled', 'cuda', 'triton' or 'reference', "
                                         r"got 'gpu'"):
        _call(op, backend="gpu")
    with pytest.raises(ValueError, match=r"backend='cuda' needs CUDA tensors, got cpu tensors"):
        _call(op, backend="cuda")


def test_direct_op_calls_are_checked_in_cpp():
    """torch.ops.tita.* called without the wrapper still refuses bad shapes with a clear message."""
    if not tita_ext.compiled_available():
        pytest.skip("tita_ext._C is not built")
    with pytest.raises(RuntimeError, match=r"base_logits must be 2-D"):
        torch.ops.tita.guided_logprobs(torch.randn(V), torch.randn(B, V), None, 0.6, None, 1.0, None, 0, None,
                                       1.0, None, 0.0, None, 0.0, None, -1)
    with pytest.raises(RuntimeError, match=r"alpha_rows must have shape \[3\]"):
        torch.ops.tita.guided_logprobs(torch.randn(B, V), torch.randn(B, V), None, 0.6, torch.ones(2), 1.0, None,
                                       0, None, 1.0, None, 0.0, None, 0.0, None, -1)


def test_triton_backend_needs_a_gpu_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"backend='triton' is not available for cpu tensors: it needs the triton "
                                         r"package \(pip install triton\) and CUDA tensors, or TRITON_INTERPRET=1"):
        _call(backend="triton")
