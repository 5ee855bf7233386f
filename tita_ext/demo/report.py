"""The demo's result: the alpha chosen on validation scenes, the summary JSON (benchmarks/results/
demo.json), the printed table and the plot."""

from __future__ import annotations

import json
import pathlib
import platform
from typing import Any, Mapping

import torch

from ..world import POPE_SPLITS
from .recipe import DemoRecipe

SELECTION_SPLIT = "adversarial"


def choose_alpha(validation: Mapping[str, Any], split: str = SELECTION_SPLIT) -> float:
    """The swept alpha with the best F1 on the validation scenes' `split` (ties: the smaller alpha)."""
    scores = validation["splits"][split]["alphas"]
    return min(scores, key=lambda alpha: (-scores[alpha]["f1"], alpha))


def _rounded(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in metrics.items()}


def demo_summary(recipe: DemoRecipe, validation: Mapping[str, Any], test: Mapping[str, Any], alpha: float,
                 timings: Mapping[str, float], seconds: float, models: Mapping[str, str], pairs: int) -> dict[str, Any]:
    """The demo's JSON record.

    base / tita: per POPE split of the test scenes, the metrics (accuracy, precision, recall, f1,
    yes_ratio on a 0-100 scale, n) of the base alone and of TITA at the chosen alpha; tita also
    holds that alpha. gain: tita minus base F1 per split. sweep: test F1 per split at every alpha
    (the plot's lines), validation: the same on the validation scenes (what chose alpha)."""
    splits = [s for s in POPE_SPLITS if s in test["splits"]]
    base = {s: _rounded(test["splits"][s]["base"]) for s in splits}
    tita = {s: _rounded(test["splits"][s]["alphas"][alpha]) for s in splits}

    def sweep(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        return {s: {"0": round(results["splits"][s]["base"]["f1"], 2),
                    **{f"{a:g}": round(m["f1"], 2) for a, m in results["splits"][s]["alphas"].items()}}
                for s in splits}

    return {
        "base": base,
        "tita": {"alpha": alpha, "reference": recipe.reference, **tita},
        "alpha": alpha,
        "gain": {s: round(tita[s]["f1"] - base[s]["f1"], 2) for s in splits},
        "seconds": round(seconds, 1),
        "stage_seconds": {k: round(v, 1) for k, v in timings.items()},
        "sweep": sweep(test),
        "validation": sweep(validation),
        "selection": f"alpha with the best {SELECTION_SPLIT} F1 on {recipe.val_scenes} validation scenes",
        "pairs": pairs,
        "models": dict(models),
        "recipe": recipe.as_dict(),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "transformers": _version("transformers")},
    }


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The closing table: per test split, base vs TITA (accuracy, F1, yes ratio) and the F1 gain."""
    alpha = summary["alpha"]
    lines = [f"POPE on {summary['recipe']['test_scenes']} held-out scenes: the base alone vs TITA "
             f"(alpha {alpha:g}, chosen on validation scenes)",
             f"  {'split':<12} {'base acc':>8} {'base F1':>8} {'yes%':>5}   {'TITA acc':>8} {'TITA F1':>8} "
             f"{'yes%':>5}   {'F1 gain':>7}"]
    for split, base in summary["base"].items():
        tita = summary["tita"][split]
        lines.append(f"  {split:<12} {base['accuracy']:>8.1f} {base['f1']:>8.1f} {base['yes_ratio']:>5.0f}   "
                     f"{tita['accuracy']:>8.1f} {tita['f1']:>8.1f} {tita['yes_ratio']:>5.0f}   "
                     f"{summary['gain'][split]:>+7.1f}")
    lines.append(f"total {summary['seconds']:.0f} s")
    return "\n".join(lines)


def write_summary(summary: Mapping[str, Any], path: pathlib.Path) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def plot_demo(summary: Mapping[str, Any], test: Mapping[str, Any], png_path: pathlib.Path) -> None:
    """Two panels: F1 per split for the base and TITA (bars), and test F1 against alpha (lines)."""
    from matplotlib.figure import Figure  # no pyplot: the user's backend is left alone

    splits = list(summary["base"])
    fig = Figure(figsize=(9.5, 3.8), dpi=120)
    bars, lines = fig.subplots(1, 2)
    width = 0.38
    for i, (name, key) in enumerate((("base alone", "base"), (f"TITA (alpha {summary['alpha']:g})", "tita"))):
        xs = [k + (i - 0.5) * width for k in range(len(splits))]
        values = [summary[key][s]["f1"] for s in splits]
        bars.bar(xs, values, width, label=name)
        for x, v in zip(xs, values):
            bars.text(x, v + 0.5, f"{v:.1f}", ha="center", fontsize=8)
    bars.set_xticks(range(len(splits)), splits)
    bars.set_ylabel("F1 (%)")
    low = min(min(summary[k][s]["f1"] for s in splits) for k in ("base", "tita"))
    bars.set_ylim(max(0.0, low - 15), 100)
    bars.set_title("POPE on held-out scenes")
    bars.legend(loc="lower right", fontsize=8)
    for split, points in summary["sweep"].items():
        xs = sorted(points, key=float)
        lines.plot([float(x) for x in xs], [points[x] for x in xs], marker="o", label=split)
    lines.axvline(summary["alpha"], color="grey", lw=0.8, ls="--")
    lines.set_xlabel("alpha (0: the base alone)")
    lines.set_ylabel("F1 (%)")
    lines.set_title("F1 against the guidance weight")
    lines.grid(alpha=0.3)
    lines.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path)
