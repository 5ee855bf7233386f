"""The example programs and the plot script run as a user would run them, and the README's example works."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_guided_sampling_example_runs():
    done = subprocess.run([sys.executable, str(ROOT / "python" / "guided_sampling_example.py"), "--steps", "5"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum(line.startswith("request ") for line in lines) == 3
    for line in lines:
        if line.startswith("request "):
            assert len(re.findall(r"\d+", line.split("tokens")[1])) == 5


def test_readme_example_runs():
    """The ops example (the README's guided_generate example loads hub models: its runnable twin
    is python/guided_generate_example.py, run by tests/test_cli.py)."""
    readme = (ROOT / "README.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "guided_sample(" in block)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (namespace["out"].tokens < 32000).all()
    assert namespace["logprobs"].shape == (4, 32064)


def test_plot_ops_draws_the_results(tmp_path):
    """benchmarks/plot_ops.py turns a results JSON into a PNG beside it."""
    pytest.importorskip("matplotlib")
    results = tmp_path / "ops-test.json"
    results.write_text((ROOT / "benchmarks" / "results" / "ops-cpu-amd-epyc-2c.json").read_text())
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plot_ops.py"), str(results)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    png = tmp_path / "ops-test-warm.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
