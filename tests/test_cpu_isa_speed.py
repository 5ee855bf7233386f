"""The CPU kernel's builds for lower instruction sets stay vectorised (csrc/cpu/simd.h).

GCC lowers compares and selects on vectors wider than the registers element by element; when the
AVX2 build used 16-lane vectors it ran 8-12x slower than the AVX-512 one. Each build now uses its
own width, and AVX2 costs 1.1-1.6x AVX-512 (README, Results). This guards against a return of the
scalar code: each build's CPU time (this thread's, steady on a shared machine) for the same calls,
in a subprocess per build (the build is chosen when tita_ext._C loads), within a bound far above
the width's 2x and far below the scalar code's 8x.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Median thread CPU time of 15 greedy and 15 sampling calls at B=8 x V=32000 (about 0.5 s).
_TIME_CALLS = """
import statistics, time, torch, tita_ext
from tita_ext import _C
torch.set_num_threads(1)
gen = torch.Generator().manual_seed(0)
base, reward = torch.randn(8, 32000, generator=gen) * 2, torch.randn(8, 32000, generator=gen) * 2
seed = torch.tensor([3])
def once(temperature):
    tita_ext.guided_sample(base, reward, alpha=0.6, temperature=temperature, seed=seed, backend="compiled",
                           check_status=False)
for t in (0.0, 0.7):
    once(t)
samples = []
for _ in range(15):
    start = time.thread_time_ns()
    once(0.0)
    once(0.7)
    samples.append(time.thread_time_ns() - start)
print(_C.build_info()["cpu_capability"], statistics.median(samples))
"""


def _cpu_ns(capability: str) -> float:
    env = dict(os.environ, TITA_EXT_CPU_CAPABILITY=capability, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", _TIME_CALLS], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    chosen, ns = out.stdout.split()
    if chosen != capability:
        pytest.skip(f"this CPU does not support {capability} (got {chosen})")
    return float(ns)


def test_avx2_build_is_vectorised_like_the_avx512_one():
    avx512 = _cpu_ns("avx512")
    avx2 = _cpu_ns("avx2")
    assert avx2 < 4.0 * avx512, f"AVX2 build {avx2 / avx512:.1f}x the AVX-512 one (expected ~1.1-1.6x)"
