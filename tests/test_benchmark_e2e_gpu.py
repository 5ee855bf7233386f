"""benchmarks/run_e2e_gpu.py runs on the CPU (tiny pair, graphed paths eager) and writes its JSON and
plot, with the rows and summary the GPU run fills (no timing asserted)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_run_e2e_gpu_quick_on_cpu_writes_results(tmp_path):
    pytest.importorskip("PIL")
    out = tmp_path / "e2e.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_e2e_gpu.py"), "--quick", "--pairs", "tiny",
                           "--batches", "1,2", "--new-tokens", "4", "--reps", "1", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    for key in ("device", "device_name", "torch", "transformers", "tita_ext", "new_tokens", "reps", "pairs", "rows",
                "summary", "mode", "sync_every"):
        assert key in result, key
    assert result["new_tokens"] == 4 and result["quick"] is True and result["pairs"]["tiny"]["device"] == "cpu"
    rows = {(r["batch"], r["path"]): r for r in result["rows"]}
    cpu_paths = ("hf_generate_base", "base_graphed", "reward_graphed", "guided_eager", "guided_graphed")
    assert set(rows) == {(b, p) for b in (1, 2) for p in cpu_paths}
    for row in rows.values():
        assert row["pair"] == "tiny" and row["tokens_per_s"] > 0 and row["s_per_query"] > 0
        assert row["graphed"] is False  # no CUDA here: the graphed paths ran eagerly
    (summary,) = [s for s in result["summary"] if s["batch"] == 1]
    for key in ("guided_graphed_over_hf_generate_tokens_per_s", "guided_step_over_base_plus_reward_steps",
                "graphed_speedup_guided_step", "guidance_s_per_query_vs_hf_generate"):
        assert key in summary, key
    if result.get("plot"):
        assert (tmp_path / result["plot"]).stat().st_size > 0
    table = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_e2e_gpu.py"), "--table", str(out)],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert lines[0].startswith("| pair | B |") and len(lines) == 2 + 2  # header, rule, B=1, B=2
    assert lines[2].startswith("| tiny | 1 |")


def test_run_e2e_gpu_budget_and_bad_arguments(tmp_path):
    out = tmp_path / "e2e.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_e2e_gpu.py"), "--pairs", "tiny", "--batches",
                           "1", "--new-tokens", "4", "--reps", "1", "--budget-s", "0", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["rows"] == [] and len(result["skipped"]) == 5
    assert all(s["reason"] == "time budget spent" for s in result["skipped"])
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_e2e_gpu.py"), "--paths", "nope"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode != 0 and "unknown path" in bad.stderr
