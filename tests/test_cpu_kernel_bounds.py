"""The CPU kernel's cost is bounded on adversarial rows, its tokens stay the reference's, and its
instruction set can be lowered (TITA_EXT_CPU_CAPABILITY).

Counters (tita_ext._C.cpu_kernel_stats) say how many ids every pass streamed: at most two passes
per row (top-p alone and low min-p cuts take exactly two; everything else one), no fallback pass,
and candidate buffers far below the vocabulary where the allowed set is small.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import tita_ext
from conftest import llm_logits, needs_compiled

pytestmark = needs_compiled


def _stats(reset: bool = False) -> dict:
    from tita_ext import _C

    return _C.cpu_kernel_stats(reset=reset)


def _rows(kind: str, batch: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "llm":
        return llm_logits(batch, width, torch.float32, 1), llm_logits(batch, width, torch.float32, 2)
    if kind == "flat":
        return torch.zeros(batch, width), torch.zeros(batch, width)
    if kind == "ties":  # a few distinct values, each shared by thousands of ids (in bf16)
        g = torch.Generator().manual_seed(3)
        levels = torch.tensor([0.0, -0.5, -1.0, -3.0])
        base = levels[torch.randint(0, 4, (batch, width), generator=g)].to(torch.bfloat16)
        return base, base.clone()
    if kind == "narrow":  # distinct values packed into one histogram bin (1/8 nat)
        base = torch.linspace(0.0, 0.1, width).repeat(batch, 1)
        return base, base.flip(1).clone()
    raise ValueError(kind)


CASES = [
    ("llm", 2, 151936, dict(temperature=0.7, top_p=0.9), 2),
    ("llm", 1, 256000, dict(temperature=1.0, top_p=0.95), 2),
    ("llm", 2, 151936, dict(temperature=0.0, top_p=0.5), 2),
    ("llm", 2, 151936, dict(temperature=0.8, top_p=0.9, min_p=1e-3), 2),
    ("llm", 2, 151936, dict(temperature=1.0, min_p=1e-9), 2),
    ("llm", 2, 151936, dict(temperature=0.9, top_k=1000), 1),
    ("llm", 2, 151936, dict(temperature=0.9, top_k=1000, top_p=0.95), 1),
    ("flat", 2, 151936, dict(temperature=1.0, top_p=0.9), 2),
    ("flat", 2, 32000, dict(temperature=1.0, top_k=1000), 1),
    ("ties", 2, 151936, dict(temperature=1.0, top_p=0.6), 2),
    ("ties", 2, 151936, dict(temperature=0.0, top_p=0.99), 2),
    ("narrow", 2, 65536, dict(temperature=1.0, top_p=0.5), 2),
]


@pytest.mark.parametrize("kind, batch, width, kwargs, passes", CASES,
                         ids=[f"{c[0]}-B{c[1]}xV{c[2]}-" + ",".join(f"{k}={v}" for k, v in c[3].items()) for c in CASES])
def test_adversarial_rows_are_exact_and_take_at_most_two_passes(kind, batch, width, kwargs, passes):
    base, reward = _rows(kind, batch, width)
    _stats(reset=True)
    got = tita_ext.guided_sample(base, reward, seed=11, offset=3, backend="compiled", **kwargs)
    stats = _stats(reset=True)
    want = tita_ext.guided_sample(base, reward, seed=11, offset=3, backend="reference", **kwargs)
    assert torch.equal(got.tokens, want.tokens)
    torch.testing.assert_close(got.logprob, want.logprob, atol=2e-4, rtol=1e-5)
    assert stats["rows"] == batch and stats["fallback_rows"] == 0 and stats["rescan_rows"] == 0
    assert stats["ids_scanned"] == passes * batch * width, stats
    assert stats["two_pass_rows"] == (batch if passes == 2 else 0)
    if kind == "llm" and "top_p" in kwargs:  # only the ids of the cut's bins are buffered
        assert stats["max_candidates"] < width // 20, stats
    dist = tita_ext.guided_logprobs(base, reward, backend="compiled", **kwargs)
    ref = tita_ext.guided_logprobs(base, reward, backend="reference", **kwargs)
    assert torch.equal(torch.isfinite(dist), torch.isfinite(ref))
    torch.testing.assert_close(dist.exp(), ref.exp(), atol=2e-6, rtol=1e-4)


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_lowered_instruction_set_gives_the_same_tokens(capability):
    """TITA_EXT_CPU_CAPABILITY lowers the kernels' instruction set (build_info says which) with
    the same tokens and statuses as the reference."""
    code = (
        "import torch, tita_ext, sys; from tita_ext import _C; sys.path.insert(0, 'tests');"
        "from conftest import llm_logits;"
        "print(_C.build_info()['cpu_capability']);"
        "b, r = llm_logits(3, 40000, torch.float32, 1), llm_logits(3, 40000, torch.bfloat16, 2);"
        "ok = True\n"
        "for kw in (dict(temperature=0.0), dict(temperature=0.7), dict(temperature=0.7, top_k=50, top_p=0.9),"
        " dict(temperature=0.9, top_p=0.9), dict(temperature=1.0, min_p=1e-6)):\n"
        "    g = tita_ext.guided_sample(b, r, seed=5, backend='compiled', **kw)\n"
        "    w = tita_ext.guided_sample(b, r, seed=5, backend='reference', **kw)\n"
        "    ok = ok and torch.equal(g.tokens, w.tokens)\n"
        "print(ok)"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TITA_EXT_CPU_CAPABILITY=capability, PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [capability, "True"], out.stdout + out.stderr[-2000:]


def test_unknown_capability_warns_and_keeps_the_best():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TITA_EXT_CPU_CAPABILITY="sse9", PYTHONPATH=root)
    code = "import torch; from tita_ext import _C; print(_C.build_info()['cpu_capability'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() in ("avx512", "avx2", "default")
    assert "TITA_EXT_CPU_CAPABILITY=sse9 is not one of avx512, avx2, default" in out.stderr
