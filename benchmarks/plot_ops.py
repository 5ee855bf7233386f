"""Draw an op benchmark's results as a PNG next to its JSON.

    python3 benchmarks/plot_ops.py benchmarks/results/ops-<machine>.json [--cache warm]
    python3 benchmarks/plot_ops.py benchmarks/results/ops-<gpu>.json       # GPU: one PNG per dtype x inputs

One panel per mode: median microseconds per call against B x V (log-log), one line per
implementation. When the JSON names the device's peak memory bandwidth (`peak_gbps`, GPU
results), a second row shows each implementation's read bandwidth as a fraction of that peak.
GPU results (rows with `dtype` and `inputs` axes) are drawn one PNG per (dtype, inputs) pair,
named ops-<gpu>-<dtype>-<inputs>in.png.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"tita": ("C0", "o"), "tita_cuda": ("C0", "o"), "triton": ("C4", "D"), "eager": ("C3", "s"), "eager_topk": ("C1", "P"),
         "compile": ("C2", "^"), "flashinfer": ("C5", "v"), "logsumexp": ("0.4", "x")}


def series(rows: list[dict], cache: str | None, dtype: str | None = None,
           inputs: int | None = None) -> dict[str, dict[str, list[tuple[int, float, float | None]]]]:
    """{mode: {impl: [(B*V, median_us, gbps), ...] sorted}} from the JSON rows (only those of
    the given cache state, dtype and number of inputs, where given)."""
    out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if "median_us" not in r or (cache and r.get("cache", cache) != cache):
            continue
        if (dtype and r.get("dtype", dtype) != dtype) or (inputs and r.get("inputs", inputs) != inputs):
            continue
        out[r["mode"]][r["impl"]].append((r["batch"] * r["vocab"], r["median_us"], r.get("gbps")))
    for impls in out.values():
        for points in impls.values():
            points.sort()
    return out


def variants(path: str) -> list[tuple[str | None, int | None]]:
    """The (dtype, inputs) pairs of a GPU results file ([(None, None)] for CPU results)."""
    with open(path) as f:
        rows = json.load(f)["rows"]
    pairs = sorted({(r["dtype"], r["inputs"]) for r in rows if "inputs" in r and "dtype" in r})
    return pairs or [(None, None)]


def plot(path: str, cache: str | None, dtype: str | None = None, inputs: int | None = None) -> str:
    with open(path) as f:
        result = json.load(f)
    data = series(result["rows"], cache, dtype, inputs)
    peak = result.get("peak_gbps")
    modes = sorted(data)
    fig, axes = plt.subplots(2 if peak else 1, len(modes), figsize=(5 * len(modes), 8 if peak else 4.2),
                             squeeze=False)
    for col, mode in enumerate(modes):
        ax = axes[0][col]
        for impl, points in sorted(data[mode].items()):
            color, marker = STYLE.get(impl, (None, "."))
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, color=color, label=impl)
        ax.set(xscale="log", yscale="log", title=mode, xlabel="B x V (logits per input)", ylabel="median us per call")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        if peak:
            ax = axes[1][col]
            for impl, points in sorted(data[mode].items()):
                if all(p[2] is not None for p in points):
                    color, marker = STYLE.get(impl, (None, "."))
                    ax.plot([p[0] for p in points], [p[2] / peak for p in points], marker=marker, color=color,
                            label=impl)
            ax.set(xscale="log", ylim=(0, 1), xlabel="B x V", ylabel=f"fraction of {peak:.0f} GB/s peak")
            ax.grid(True, alpha=0.3)
    machine = result.get("machine_description", result.get("machine", ""))
    fig.suptitle(f"{result.get('machine', '')}: {machine}; torch {result.get('torch', '')}"
                 + (f"; caches {cache}" if cache else "") + (f"; {dtype}" if dtype else "")
                 + (f", {inputs} inputs" if inputs else ""), fontsize=9)
    fig.tight_layout()
    out = (os.path.splitext(path)[0] + (f"-{cache}" if cache else "") + (f"-{dtype}" if dtype else "")
           + (f"-{inputs}in" if inputs else "") + ".png")
    from tita_ext.safe_write import atomic_file  # crash-safe: the old plot stays until the new one is whole
    with atomic_file(out, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="a results file written by run_ops_cpu.py (or the GPU suite)")
    parser.add_argument("--cache", default="warm", help="which cache state to draw when the JSON has several")
    args = parser.parse_args(argv)
    for dtype, inputs in variants(args.json):
        print(f"wrote {plot(args.json, args.cache, dtype, inputs)}")


if __name__ == "__main__":
    main()
