"""The GPU op benchmark's parts that need no GPU: the grid, rows, bandwidth bookkeeping, device
names, the dry run, the baselines' math on CPU tensors, and the plot of a GPU results file."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import gpu_impls  # noqa: E402
import run_ops_gpu  # noqa: E402

import tita_ext  # noqa: E402


def test_grid_covers_the_issue():
    full = run_ops_gpu.grid(quick=False)
    assert len(full) == 4 * 3 * 2 * 3 * 2
    assert {(p["batch"], p["vocab"]) for p in full} == {(b, v) for b in (1, 8, 64, 256) for v in (32064, 128256, 151936)}
    assert {p["dtype"] for p in full} == {"bf16", "fp32"} and {p["inputs"] for p in full} == {2, 3}
    assert {p["mode"] for p in full} == {"greedy", "sample", "topk_topp"}
    quick = run_ops_gpu.grid(quick=True)
    assert dict(batch=64, vocab=151936, dtype="bf16", mode="topk_topp", inputs=2) in quick
    assert dict(batch=1, vocab=32064, dtype="bf16", mode="topk_topp", inputs=2) in quick


def test_filters_and_append():
    assert len(run_ops_gpu.grid(False, {"batch": [1, 8], "dtype": ["bf16"]})) == 2 * 3 * 3 * 2
    old = [run_ops_gpu.make_row("eager", dict(batch=1, vocab=32064, dtype="bf16", mode="greedy", inputs=2), [5.0]),
           run_ops_gpu.make_row("eager", dict(batch=8, vocab=32064, dtype="bf16", mode="greedy", inputs=2), [6.0])]
    new = [run_ops_gpu.make_row("eager", dict(batch=1, vocab=32064, dtype="bf16", mode="greedy", inputs=2), [7.0])]
    merged = run_ops_gpu.merge_rows(old, new)
    assert sorted((r["batch"], r["median_us"]) for r in merged) == [(1, 7.0), (8, 6.0)]
    with pytest.raises(SystemExit):
        run_ops_gpu.main(["--dry-run", "--batches", "3"])


def test_rows_and_bandwidth():
    point = dict(batch=64, vocab=151936, dtype="bf16", mode="topk_topp", inputs=2)
    assert run_ops_gpu.logits_bytes(point) == 64 * 151936 * 2 * 2
    row = run_ops_gpu.make_row("tita_cuda", point, [20.0, 10.0, 30.0], peak=3350.0)
    assert row["median_us"] == 20.0 and row["reps"] == 3
    assert row["gbps"] == pytest.approx(64 * 151936 * 4 / 20e-6 / 1e9, abs=0.1)
    assert row["frac_peak"] == pytest.approx(row["gbps"] / 3350.0, abs=1e-3)
    failed = run_ops_gpu.make_row("flashinfer", point, None, error="ImportError: no flashinfer")
    assert failed["error"].startswith("ImportError") and "median_us" not in failed


def test_device_names():
    assert run_ops_gpu.peak_gbps("NVIDIA H100 80GB HBM3") == 3350.0
    assert run_ops_gpu.peak_gbps("NVIDIA H200") == 4800.0
    assert run_ops_gpu.peak_gbps("NVIDIA H100 PCIe") == 2000.0
    assert run_ops_gpu.peak_gbps("Some Future GPU") is None
    assert run_ops_gpu.gpu_slug("NVIDIA H100 80GB HBM3") == "gpu-nvidia-h100-80gb-hbm3"


def test_dry_run_and_cli(capsys):
    assert run_ops_gpu.main(["--dry-run", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "6 points x 6 implementations" in out and "B=64   V=151936" in out
    with pytest.raises(SystemExit):
        run_ops_gpu.main(["--impls", "tita_cuda,nope", "--dry-run"])
    if not torch.cuda.is_available():
        assert run_ops_gpu.main(["--quick", "--impls", "eager"]) == 2


@pytest.mark.parametrize("inputs", [2, 3])
@pytest.mark.parametrize("mode", ["greedy", "sample", "topk_topp"])
def test_baselines_run_on_cpu_tensors(mode, inputs):
    point = dict(batch=3, vocab=1000, dtype="fp32", mode=mode, inputs=inputs)
    base, reward, ref = run_ops_gpu.make_inputs(point, device="cpu")
    assert (ref is None) == (inputs == 2)
    seed, offset = torch.tensor([1]), torch.tensor([0])
    tokens = gpu_impls.eager(base, reward, ref, mode, seed, offset)
    assert tokens.shape == (3,) and ((tokens >= 0) & (tokens < 1000)).all()
    if mode == "greedy":
        want = tita_ext.guided_sample(base, reward, ref, temperature=0.0, backend="reference").tokens
        assert torch.equal(tokens, want)
        # the FlashInfer lines' combine of the raw logits picks the same greedy tokens
        assert torch.equal(gpu_impls.raw_combined(base, reward, ref, mode).argmax(dim=-1), want)
    sampler = gpu_impls.FlashInferSampler()
    sampler.prepare(base, reward, ref, mode)  # the untimed combine
    assert sampler.scores.shape == (3, 1000) and sampler.scores.dtype == torch.float32


def test_plot_of_gpu_results(tmp_path):
    pytest.importorskip("matplotlib")
    import plot_ops

    rows = []
    for dtype in ("bf16", "fp32"):
        for inputs in (2, 3):
            for mode in ("greedy", "topk_topp"):
                for b, v in ((1, 32064), (64, 151936)):
                    point = dict(batch=b, vocab=v, dtype=dtype, mode=mode, inputs=inputs)
                    for impl, us in (("tita_cuda", 10.0 + b), ("eager", 200.0 + b)):
                        rows.append(run_ops_gpu.make_row(impl, point, [us], peak=3350.0))
                    rows.append(run_ops_gpu.make_row("flashinfer", point, None, error="not installed"))
    path = tmp_path / "ops-gpu-test.json"
    path.write_text(json.dumps(dict(machine="gpu-test", peak_gbps=3350.0, torch="x", rows=rows)))
    assert plot_ops.variants(str(path)) == [("bf16", 2), ("bf16", 3), ("fp32", 2), ("fp32", 3)]
    for dtype, inputs in plot_ops.variants(str(path)):
        out = plot_ops.plot(str(path), None, dtype, inputs)
        assert out.endswith(f"-{dtype}-{inputs}in.png") and os.path.getsize(out) > 0
