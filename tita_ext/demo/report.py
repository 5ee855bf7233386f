"""The demo's result: the alpha chosen on validation scenes, the summary JSON (benchmarks/results/
demo.json), the printed table and the plot."""

from __future__ import annotations

import json
import os
import pathlib
import platform
from typing import Any, Mapping

import torch

from ..world import POPE_SPLITS
from .recipe import DemoRecipe

SELECTION_SPLIT = "adversarial"
COMPARISON_NAMES = {"reward_before_dpo": "reward model alone, before DPO",
                    "reward_after_dpo": "reward model alone, after DPO",
                    "base_with_dpo_delta": "base + DPO's change only (alpha 1)"}


def choose_alpha(validation: Mapping[str, Any], split: str = SELECTION_SPLIT) -> float:
    """The swept alpha below 1 with the best F1 on the validation scenes' `split` (ties: the
    smaller alpha). Alpha 1 is the reward model alone, not guidance: it is reported, never chosen."""
    scores = {a: m for a, m in validation["splits"][split]["alphas"].items() if a < 1.0}
    if not scores:
        raise ValueError("the alpha sweep needs at least one alpha below 1 to choose from")
    return min(scores, key=lambda alpha: (-scores[alpha]["f1"], alpha))


def _rounded(metrics: Mapping[str, float]) -> dict[str, float]:
    """POPE metrics rounded, plus false_yes: the share (%) of absent objects answered "yes" (the
    hallucination rate)."""
    out = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in metrics.items()}
    negatives = metrics["fp"] + metrics["tn"]
    out["false_yes"] = round(100.0 * metrics["fp"] / negatives, 2) if negatives else 0.0
    return out


def demo_summary(recipe: DemoRecipe, validation: Mapping[str, Any], test: Mapping[str, Any], alpha: float,
                 comparisons: Mapping[str, Mapping[str, Any]], timings: Mapping[str, float], seconds: float,
                 models: Mapping[str, str], pairs: int) -> dict[str, Any]:
    """The demo's JSON record.

    base / tita: per POPE split of the test scenes, the metrics (accuracy, precision, recall, f1,
    yes_ratio, false_yes on a 0-100 scale; n, tp, fp, tn, fn) of the base alone and of TITA at
    the chosen alpha; tita also holds that alpha. gain: tita minus base F1 per split.
    comparisons: name -> per split metrics of evaluate_pope results at alpha 1, for comparison:
    reward_before_dpo / reward_after_dpo (the reward model decoding alone) and base_with_dpo_delta
    (s = log p_base + log p_reward - log p_reward_before_dpo: only what DPO changed). sweep: test F1 per split at every
    alpha (the plot's lines); validation: the same on the validation scenes (what chose alpha)."""
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
        "comparisons": {name: {s: _rounded(r["splits"][s]["alphas"][1.0]) for s in splits}
                        for name, r in comparisons.items()},
        "seconds": round(seconds, 1),
        "stage_seconds": {k: round(v, 1) for k, v in timings.items()},
        "sweep": sweep(test),
        "validation": sweep(validation),
        "selection": f"the alpha below 1 with the best {SELECTION_SPLIT} F1 on {recipe.val_scenes} validation scenes",
        "pairs": pairs,
        "models": dict(models),
        "recipe": recipe.as_dict(),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "transformers": _version("transformers")},
    }


def _cpu_name() -> str:
    """The processor's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The closing table: per test split, F1 and the share of absent objects answered "yes"."""
    splits = list(summary["base"])
    rows = [("the base alone", summary["base"])]
    rows += [(COMPARISON_NAMES.get(k, k), v) for k, v in summary["comparisons"].items()]
    rows.append((f"TITA, alpha {summary['alpha']:g}", summary["tita"]))
    lines = [f"POPE on {summary['recipe']['test_scenes']} held-out scenes: F1 % (share of absent objects "
             f"answered yes); alpha chosen on validation scenes",
             f"  {'':<36}" + "".join(f"{s:>16}" for s in splits)]
    for name, by_split in rows:
        lines.append(f"  {name:<36}" + "".join(f"{by_split[s]['f1']:>9.1f} ({by_split[s]['false_yes']:>3.0f}%)"
                                              for s in splits))
    lines.append(f"  {'TITA over the base':<36}" + "".join(f"{summary['gain'][s]:>+9.1f}{'':7}" for s in splits))
    lines.append(f"total {summary['seconds']:.0f} s")
    return "\n".join(lines)


def write_summary(summary: Mapping[str, Any], path: pathlib.Path) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def plot_demo(summary: Mapping[str, Any], png_path: pathlib.Path) -> None:
    """Two panels: test F1 per split of the base alone, each reward model alone and TITA (bars),
    and test F1 against alpha (lines; the chosen alpha dashed)."""
    from matplotlib.figure import Figure  # no pyplot: the user's backend is left alone

    splits = list(summary["base"])
    rows = [("base alone", summary["base"])]
    rows += [(COMPARISON_NAMES.get(k, k), v) for k, v in summary["comparisons"].items()]
    rows.append((f"TITA (alpha {summary['alpha']:g})", summary["tita"]))
    fig = Figure(figsize=(10, 4.6), dpi=120)
    bars, lines = fig.subplots(1, 2, width_ratios=(1.3, 1))
    width = 0.8 / len(rows)
    for i, (name, by_split) in enumerate(rows):
        xs = [k + (i - (len(rows) - 1) / 2) * width for k in range(len(splits))]
        values = [by_split[s]["f1"] for s in splits]
        bars.bar(xs, values, width, label=name)
        for x, v in zip(xs, values):
            bars.text(x, v + 0.4, f"{v:.1f}", ha="center", fontsize=6.5)
    bars.set_xticks(range(len(splits)), splits)
    bars.set_ylabel("F1 (%)")
    low = min(by_split[s]["f1"] for _, by_split in rows for s in splits)
    bars.set_ylim(max(0.0, low - 15), 100)
    bars.set_title("POPE on held-out scenes")
    bars.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, fontsize=7, frameon=False)
    for split, points in summary["sweep"].items():
        xs = sorted(points, key=float)
        lines.plot([float(x) for x in xs], [points[x] for x in xs], marker="o", label=split)
    lines.axvline(summary["alpha"], color="grey", lw=0.8, ls="--")
    lines.set_xlabel("alpha (0: the base alone, 1: the reward model alone)")
    lines.set_ylabel("F1 (%)")
    lines.set_title("F1 against the guidance weight")
    lines.grid(alpha=0.3)
    lines.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path)
