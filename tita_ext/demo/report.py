"""The demo's result over its seeds: the alpha each seed chose on validation scenes, the summary
JSON (benchmarks/results/demo.json) with every seed's value, mean and spread, the paired tests
and the three checks, the printed table and the plot."""

from __future__ import annotations

import json
import os
import pathlib
import platform
from typing import Any, Mapping, Sequence

from ..world import POPE_SPLITS
from .recipe import DemoRecipe, environment
from .stats import describe, paired_t_test, sign_flip_test

SELECTION_SPLIT = "adversarial"
SIGNIFICANCE = 0.05
# The settings scored on the test scenes, in table order.
ROW_NAMES = {"base": "the base alone",
             "reward_before_dpo": "reward model alone, before DPO",
             "reward_after_dpo": "reward model alone, after DPO",
             "guided_before_dpo": "base guided by the reward before DPO",
             "tita": "TITA (reward after DPO)"}
CURVES = ("tita", "guided_before_dpo")  # alpha sweeps kept for the plot


def choose_alpha(validation: Mapping[str, Any], split: str = SELECTION_SPLIT, *, below_one: bool = True) -> float:
    """The swept alpha with the best F1 on the validation scenes' `split` (ties: the smaller
    alpha). below_one: only alphas below 1, where the base is the reference and alpha 1 is the
    reward model alone (reported, never chosen); with the reward model before DPO as the
    reference no alpha is the reward model alone, and any swept alpha may be chosen."""
    scores = {a: m for a, m in validation["splits"][split]["alphas"].items() if a < 1.0 or not below_one}
    if not scores:
        raise ValueError("the alpha sweep needs at least one alpha " + ("below 1 " if below_one else "")
                         + "to choose from")
    return min(scores, key=lambda alpha: (-scores[alpha]["f1"], alpha))


def _rounded(metrics: Mapping[str, float]) -> dict[str, float]:
    """POPE metrics rounded, plus false_yes: the share (%) of absent objects answered "yes" (the
    hallucination rate)."""
    out = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in metrics.items()}
    negatives = metrics["fp"] + metrics["tn"]
    out["false_yes"] = round(100.0 * metrics["fp"] / negatives, 2) if negatives else 0.0
    return out


def _sweep(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """F1 per split at alpha 0 (the base alone) and every swept alpha, keys as "%g" strings."""
    return {s: {"0": round(r["base"]["f1"], 2), **{f"{a:g}": round(m["f1"], 2) for a, m in r["alphas"].items()}}
            for s, r in results["splits"].items()}


def seed_record(recipe: DemoRecipe, validation: Mapping[str, Any], sweeps: Mapping[str, Mapping[str, Any]],
                alone: Mapping[str, Mapping[str, Any]], alpha: float, alpha_before: float, *, pairs: int,
                timings: Mapping[str, float],
                cached: Sequence[str], seconds: float, cpu_seconds: float, models: Mapping[str, str]) -> dict[str, Any]:
    """One seed's JSON record.

    sweeps: "tita" and "guided_before_dpo" -> evaluate_pope results on the test scenes (the base
    guided by the reward model after DPO, and by the reward model before DPO with the base as the
    reference, at every alpha); alone: "reward_before_dpo" / "reward_after_dpo" -> evaluate_pope
    results holding alpha 1 without a reference (the model decoding alone). alpha, alpha_before:
    chosen on validation for TITA and for the guidance before DPO. test: per ROW_NAMES setting and
    split, the POPE metrics (0-100, plus false_yes); the guided rows at their chosen alphas."""
    tita = sweeps["tita"]["splits"]
    before = sweeps["guided_before_dpo"]["splits"]
    test = {"base": {s: _rounded(r["base"]) for s, r in tita.items()},
            **{name: {s: _rounded(r["alphas"][1.0]) for s, r in alone[name]["splits"].items()} for name in alone},
            "guided_before_dpo": {s: _rounded(r["alphas"][alpha_before]) for s, r in before.items()},
            "tita": {s: _rounded(r["alphas"][alpha]) for s, r in tita.items()}}
    return {"seed": recipe.seed, "alpha": alpha, "alpha_before_dpo": alpha_before, "pairs": pairs,
            "test": {k: test[k] for k in ROW_NAMES},
            "sweep": {name: _sweep(sweeps[name]) for name in CURVES}, "validation": _sweep(validation),
            "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
            "stage_seconds": {k: round(v, 1) for k, v in timings.items()}, "from_cache": list(cached),
            "models": dict(models)}


def _tests(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    return {"paired_t": paired_t_test(a, b), "sign_flip": sign_flip_test(a, b)}


def _checks(rows: Mapping[str, Any], tests: Mapping[str, Any], split: str = SELECTION_SPLIT) -> dict[str, Any]:
    """(a) each reward model alone is weaker than the base, (b) TITA beats the base and both reward
    models alone, (c) the gain comes from DPO: TITA beats the same guidance with the reward model
    before DPO, significantly (paired t-test over seeds). All on the seed mean of `split`'s F1."""
    mean = {name: rows[name][split]["f1"]["mean"] for name in rows}
    alone = max(mean["reward_before_dpo"], mean["reward_after_dpo"])
    versus_before = tests[split]["tita_vs_guided_before_dpo"]["paired_t"]
    versus_base = tests[split]["tita_vs_base"]["paired_t"]
    gain, gain_before = mean["tita"] - mean["base"], mean["guided_before_dpo"] - mean["base"]
    return {
        "split": split,
        "a_reward_alone_weaker_than_base": {
            "holds": alone < mean["base"],
            "detail": f"reward alone before DPO {mean['reward_before_dpo']:.1f}, after DPO "
                      f"{mean['reward_after_dpo']:.1f}, base {mean['base']:.1f}"},
        "b_tita_beats_both": {
            "holds": mean["tita"] > mean["base"] and mean["tita"] > alone,
            "detail": f"TITA {mean['tita']:.1f} vs base {mean['base']:.1f} (paired t p={versus_base['p']:.3g}) "
                      f"and best reward alone {alone:.1f}"},
        "c_gain_from_dpo": {
            "holds": versus_before["mean_difference"] > 0 and versus_before["p"] < SIGNIFICANCE,
            "detail": f"gain over the base {gain:+.1f} with the reward after DPO, {gain_before:+.1f} with it before "
                      f"DPO (TITA - before: {versus_before['mean_difference']:+.1f}, "
                      f"paired t p={versus_before['p']:.3g})"},
        "tita_significantly_above_base": versus_base["mean_difference"] > 0 and versus_base["p"] < SIGNIFICANCE,
    }


def demo_summary(recipe: DemoRecipe, records: Sequence[Mapping[str, Any]], *, seconds: float, cpu_seconds: float,
                 jobs: int) -> dict[str, Any]:
    """The demo's JSON record over the seeds (records from `seed_record`, in seed order).

    rows: per ROW_NAMES setting and split, f1 and false_yes as mean / sd / min / max / values
    (one per seed, in `seeds` order). gain: TITA minus the base, per split. tests: per split,
    paired t-test and exact sign-flip test over seeds of TITA vs the base and vs the guidance with
    the reward model before DPO. checks: (a)-(c) (see _checks). curves: per guided setting and
    split, F1 at every alpha over seeds (alpha 0: the base alone, 1: the reward model alone)."""
    splits = [s for s in POPE_SPLITS if s in records[0]["test"]["base"]]

    def values(name: str, split: str, metric: str = "f1") -> list[float]:
        return [r["test"][name][split][metric] for r in records]

    rows = {name: {s: {m: describe(values(name, s, m)) for m in ("f1", "false_yes")} for s in splits}
            for name in ROW_NAMES}
    tests = {s: {"tita_vs_base": _tests(values("tita", s), values("base", s)),
                 "tita_vs_guided_before_dpo": _tests(values("tita", s), values("guided_before_dpo", s))}
             for s in splits} if len(records) > 1 else {}
    # each sweep's own alphas ("0": the base alone): the rival before DPO stops at 1
    curves = {name: {s: {a: describe([r["sweep"][name][s][a] for r in records]) for a in records[0]["sweep"][name][s]}
                     for s in splits} for name in CURVES}
    return {
        "seeds": [r["seed"] for r in records],
        "rows": rows,
        "gain": {s: describe([t - b for t, b in zip(values("tita", s), values("base", s))]) for s in splits},
        "tests": tests,
        "checks": _checks(rows, tests) if tests else {},
        "alphas": [r["alpha"] for r in records],
        "alphas_before_dpo": [r["alpha_before_dpo"] for r in records],
        "curves": curves,
        "selection": f"per seed, the {'swept alpha' if recipe.reference == 'reward-sft' else 'alpha below 1'} with "
                     f"the best {SELECTION_SPLIT} F1 on {recipe.val_scenes} validation scenes",
        "pairs": [r["pairs"] for r in records],
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "per_seed": list(records),
        "recipe": recipe.as_dict(),
        "machine": machine(jobs),
    }


def machine(jobs: int) -> dict[str, Any]:
    """Where the numbers come from: processor, the instruction sets torch's kernels and the fused
    op's ran (and the variables that lowered them), versions, cores and workers."""
    import numpy

    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "jobs": jobs, "threads_per_seed": 1,
            "python": platform.python_version(), "numpy": numpy.__version__, **environment(),
            "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY", ""),
            "op_cpu_capability": _op_capability(),
            "tita_ext_cpu_capability_env": os.environ.get("TITA_EXT_CPU_CAPABILITY", "")}


def _op_capability() -> str:
    """The instruction set of the compiled fused op's CPU kernels (guided decoding's sampler)."""
    try:
        from .. import _C
    except ImportError:
        return "not built (the pure-PyTorch reference runs)"
    return str(_C.build_info().get("cpu_capability", ""))


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


def _cell(stats: Mapping[str, float]) -> str:
    return f"{stats['mean']:5.1f} ± {stats['sd']:4.1f}"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The closing tables: per setting and test split, F1 mean ± sd over seeds (and the mean share
    of absent objects answered "yes"); every seed's adversarial F1; the tests and the checks."""
    rows, splits, seeds = summary["rows"], list(summary["gain"]), summary["seeds"]
    recipe = summary["recipe"]
    lines = [f"POPE on {recipe['test_scenes']} held-out scenes per seed, {len(seeds)} seeds: F1 % mean ± sd "
             f"(mean share of absent objects answered yes); alpha chosen per seed on validation scenes",
             f"  {'':<38}" + "".join(f"{s:>22}" for s in splits)]
    for name, label in ROW_NAMES.items():
        cells = [f"{_cell(rows[name][s]['f1'])} ({rows[name][s]['false_yes']['mean']:>3.0f}%)" for s in splits]
        lines.append(f"  {label:<38}" + "".join(cells))
    gains = [f"{summary['gain'][s]['mean']:>+8.1f} ± {summary['gain'][s]['sd']:4.1f}{'':7}" for s in splits]
    lines.append(f"  {'TITA over the base':<38}" + "".join(gains))
    lines.append(f"\n{SELECTION_SPLIT} F1 per seed " + "".join(f"{s:>8}" for s in seeds))
    for name, label in ROW_NAMES.items():
        lines.append(f"  {label:<38}" + "".join(f"{v:>8.1f}" for v in rows[name][SELECTION_SPLIT]["f1"]["values"]))
    lines.append(f"  {'alpha chosen, TITA':<38}" + "".join(f"{a:>8g}" for a in summary["alphas"]))
    lines.append(f"  {'alpha chosen, guidance before DPO':<38}" + "".join(f"{a:>8g}" for a in summary["alphas_before_dpo"]))
    if summary["tests"]:
        lines.append("\npaired tests over seeds (two-sided p):")
        for s in splits:
            for key, label in (("tita_vs_base", "TITA vs the base"),
                               ("tita_vs_guided_before_dpo", "TITA vs guidance before DPO")):
                test = summary["tests"][s][key]
                lines.append(f"  {s:<12} {label:<30} {test['paired_t']['mean_difference']:>+6.1f}  "
                             f"t={test['paired_t']['t']:.2f} p={test['paired_t']['p']:.3g}   "
                             f"sign-flip p={test['sign_flip']['p']:.3g}")
        checks = summary["checks"]
        lines.append(f"\nchecks on the seed mean ({checks['split']} F1):")
        for key, label in (("a_reward_alone_weaker_than_base", "(a) the reward model alone is weaker than the base"),
                           ("b_tita_beats_both", "(b) TITA beats the base and the reward model alone"),
                           ("c_gain_from_dpo", "(c) the gain comes from DPO")):
            lines.append(f"  {label}: {'yes' if checks[key]['holds'] else 'NO'} ({checks[key]['detail']})")
    cpu = summary["machine"]
    lines.append(f"\ntotal {summary['seconds']:.0f} s wall, {summary['cpu_seconds']:.0f} s CPU "
                 f"({cpu['jobs']} worker{'s' if cpu['jobs'] > 1 else ''}; {cpu['cpu']}, torch {cpu['cpu_capability']}"
                 + (f", op {cpu['op_cpu_capability']})" if "op_cpu_capability" in cpu else ")"))
    return "\n".join(lines)


def write_summary(summary: Mapping[str, Any], path: pathlib.Path) -> None:
    """The summary as indented JSON, written crash-safe (safe_write: temp sibling, fsync, rename)."""
    from ..safe_write import write_text

    write_text(path, json.dumps(summary, indent=2) + "\n")


def plot_demo(summary: Mapping[str, Any], png_path: pathlib.Path) -> None:
    """Two panels: test F1 per split and setting, the seed mean (bar), its sd (error bar) and every
    seed (dots); and adversarial F1 against alpha, mean ± sd band, for TITA and for the same
    guidance with the reward model before DPO."""
    from matplotlib.figure import Figure  # no pyplot: the user's backend is left alone

    rows, splits = summary["rows"], list(summary["gain"])
    fig = Figure(figsize=(11, 4.8), dpi=120)
    bars, lines = fig.subplots(1, 2, width_ratios=(1.4, 1))
    width = 0.8 / len(ROW_NAMES)
    for i, (name, label) in enumerate(ROW_NAMES.items()):
        xs = [k + (i - (len(ROW_NAMES) - 1) / 2) * width for k in range(len(splits))]
        stats = [rows[name][s]["f1"] for s in splits]
        bars.bar(xs, [st["mean"] for st in stats], width, yerr=[st["sd"] for st in stats], capsize=2, label=label)
        for x, st in zip(xs, stats):
            bars.scatter([x] * len(st["values"]), st["values"], s=5, color="black", zorder=3)
    bars.set_xticks(range(len(splits)), splits)
    bars.set_ylabel("F1 (%)")
    low = min(v for name in ROW_NAMES for s in splits for v in rows[name][s]["f1"]["values"])
    bars.set_ylim(max(0.0, low - 10), 100)
    bars.set_title(f"POPE on held-out scenes: mean ± sd over {len(summary['seeds'])} seeds (dots: each seed)")
    bars.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=3, fontsize=7, frameon=False)
    for name in CURVES:
        points = summary["curves"][name][SELECTION_SPLIT]
        xs = sorted(points, key=float)
        mean = [points[x]["mean"] for x in xs]
        sd = [points[x]["sd"] for x in xs]
        line = lines.plot([float(x) for x in xs], mean, marker="o", label=ROW_NAMES[name])[0]
        lines.fill_between([float(x) for x in xs], [m - d for m, d in zip(mean, sd)],
                           [m + d for m, d in zip(mean, sd)], color=line.get_color(), alpha=0.2)
    explicit = summary["recipe"].get("reference") == "reward-sft"  # then TITA's alpha 1 is not the model alone
    lines.set_xlabel("alpha (0: the base alone; 1 on the orange curve: the reward model before DPO alone)" if explicit
                     else "alpha (0: the base alone, 1: the reward model alone)")
    lines.set_ylabel(f"{SELECTION_SPLIT} F1 (%)")
    lines.set_title("F1 against the guidance weight (mean ± sd)")
    lines.grid(alpha=0.3)
    lines.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path)
