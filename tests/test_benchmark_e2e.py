"""benchmarks/run_e2e.py runs as a user would run it and writes a complete results JSON (no timing asserted)."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_run_e2e_quick_writes_results(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("PIL")
    out = tmp_path / "x.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_e2e.py"), "--quick", "--cases",
                           "tiny-b1-greedy,real-b1-greedy", "--new-tokens", "8", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "tiny-b1-greedy" in done.stdout
    result = json.loads(out.read_text())
    for key in ("device", "device_name", "threads", "torch", "transformers", "tita_ext", "new_tokens", "reps",
                "overhead_definition", "pairs", "cases", "skipped"):
        assert key in result, key
    assert result["threads"] == 1 and result["new_tokens"] == 8 and result["quick"] is True
    assert result["pairs"]["tiny"]["dtype"] == "float32"
    (case,) = [c for c in result["cases"] if c["name"] == "tiny-b1-greedy"]
    assert case["batch"] == 1 and case["mode"] == "greedy" and case["prompt_length"] > 0
    for name in ("guided", "base_only", "generate"):
        variant = case["variants"][name]
        assert variant["median_tokens_per_s"] > 0 and variant["median_call_ms"] > 0
        assert len(variant["call_ms"]) == case["reps"]
    for name in ("guided", "base_only", "forwards"):
        assert case["variants"][name]["median_decode_step_ms"] > 0
    assert all(v > 0 for v in case["ratios"].values())
    overhead = case["overhead"]
    assert overhead["t_step_ms"] > 0 and overhead["t_forwards_ms"] > 0
    assert math.isclose(overhead["share"], 1 - overhead["t_forwards_ms"] / overhead["t_step_ms"], abs_tol=1e-3)
    assert overhead["share"] < 1
    real = [c["name"] for c in result["cases"]] + [s["name"] for s in result["skipped"]]
    assert "real-b1-greedy" in real  # timed on a CUDA machine, recorded as skipped elsewhere
