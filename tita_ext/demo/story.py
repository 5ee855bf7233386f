"""`tita-ext demo`: from a base model to an aligned one, end to end, on the built-in world.

    1. the world      coloured shapes whose companions (cube/ball, cone/ring, star/box) appear
                      together in 90% of the training scenes; held-out scenes break the habit
    2. the base       a tiny LLaVA trained on the training scenes' captions and yes/no questions
    3. reward (SFT)   a smaller tiny LLaVA trained the same way
    4. pairs          the base's own answers: clean image (chosen) vs a noised copy (rejected)
    5. reward (DPO)   DPO of the small model on those pairs
    6. POPE           base alone vs TITA on held-out scenes; alpha chosen on validation scenes

Stages 2-5 are cached (see cache.py): a second run only evaluates.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import torch

from ..eval.run_pope import evaluate_pope
from ..tiny_models import tiny_llava_processor
from ..world import PAIRS
from . import stages
from .cache import cached_folder
from .recipe import BASE_FIELDS, DPO_FIELDS, PAIR_FIELDS, REWARD_SFT_FIELDS, DemoRecipe
from .report import choose_alpha, demo_summary, format_summary, plot_demo, write_summary


def _stage(number: int, title: str) -> float:
    print(f"\n[{number}/6] {title}", flush=True)
    return time.perf_counter()


def _done(started: float, cached: bool, detail: str = "") -> None:
    how = "from the cache" if cached else f"{time.perf_counter() - started:.0f} s"
    print(f"      done ({how}){': ' + detail if detail else ''}", flush=True)


def run_story(recipe: DemoRecipe, out_dir: pathlib.Path, cache: pathlib.Path | None, *,
              progress: bool = True, results_json: pathlib.Path | None = None) -> dict[str, Any]:
    """Run the six stages; write out_dir/{pope/, demo.json, demo.png} (and results_json when given).

    Returns the summary (see report.demo_summary): base and tita metrics per test split, the
    chosen alpha, validation scores, the stage timings and where the models are."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = tiny_llava_processor()
    world = stages.make_world(recipe)
    timings: dict[str, float] = {}

    t = _stage(1, "the world")
    pope = stages.write_pope_sets(world, recipe, out_dir / "pope")
    bias = ", ".join(f"{a}/{b}" for a, b in PAIRS)
    print(f"      companions {bias} together in {recipe.world_bias:.0%} of training scenes, "
          f"{recipe.world_test_bias:.0%} of held-out ones; {recipe.train_scenes} training scenes, "
          f"{recipe.val_scenes} validation and {recipe.test_scenes} test scenes ({out_dir / 'pope'})")
    rows: list[dict] | None = None

    def supervised_rows() -> list[dict]:
        nonlocal rows
        if rows is None:
            rows = stages.sft_rows(world, recipe, processor, progress)
        return rows

    def write_supervised(size):
        def write(folder: pathlib.Path) -> None:
            model, record = stages.train_supervised(size, supervised_rows(), recipe, processor, progress)
            stages.save_model(model, folder)
            print(f"      {record['steps']} steps, final loss {record['losses'][-1]:.3f}")
        return write

    folders: dict[str, pathlib.Path] = {}
    for number, (name, size, fields) in enumerate((("base", recipe.base, BASE_FIELDS),
                                                   ("reward-sft", recipe.reward, REWARD_SFT_FIELDS)), start=2):
        what = "the base model" if name == "base" else "the reward model, supervised (before DPO)"
        t = _stage(number, f"{what}: tiny LLaVA, hidden {size.hidden_size}, {size.layers} text layers, "
                           f"vision {size.vision_hidden_size}x{size.vision_layers}, {recipe.sft_epochs} epochs")
        folders[name], hit = cached_folder(cache, name, recipe.stage_key(*fields), write_supervised(size))
        timings[name] = time.perf_counter() - t
        _done(t, hit, str(folders[name]))
    base = stages.load_model(folders["base"])
    reward_sft = stages.load_model(folders["reward-sft"])

    t = _stage(4, f"preference pairs from the base's own answers (noise step {recipe.noise_step} of 1000)")
    pairs_folder, hit = cached_folder(
        cache, "pairs", recipe.stage_key(*PAIR_FIELDS),
        lambda folder: stages.make_pairs(base, world, recipe, processor, folder, progress))
    pairs = stages.load_pairs(pairs_folder)
    timings["pairs"] = time.perf_counter() - t
    _done(t, hit, f"{len(pairs)} pairs in {pairs_folder / 'pairs.jsonl'}")

    t = _stage(5, f"the reward model: DPO (beta {recipe.dpo_beta:g}, {recipe.dpo_epochs} epoch(s), "
                  f"lr {recipe.dpo_lr:g})")

    def write_reward(folder: pathlib.Path) -> None:
        if not pairs:  # only an undertrained base (a --quick run) answers the same either way
            print("      no pairs (the base answered every question the same with and without noise): "
                  "the reward model stays as supervised")
            stages.save_model(reward_sft, folder)
            return
        model, record = stages.train_reward(reward_sft, pairs, recipe, processor, progress)
        stages.save_model(model, folder)
        tail = record["reward_accuracies"][-10:]
        print(f"      {record['steps']} steps, final loss {record['losses'][-1]:.3f}, "
              f"reward accuracy {sum(tail) / len(tail):.2f} (last 10 steps)")

    reward_folder, hit = cached_folder(cache, "reward", recipe.stage_key(*DPO_FIELDS), write_reward)
    reward = stages.load_model(reward_folder)
    timings["reward"] = time.perf_counter() - t
    _done(t, hit, str(reward_folder))

    ref_model = reward_sft if recipe.reference == "reward-sft" else None
    t = _stage(6, f"POPE: the base alone vs TITA at alpha {', '.join(f'{a:g}' for a in recipe.alphas)}")

    def score(model, scenes: str, alphas, ref=None, bars: bool = False) -> dict[str, Any]:
        """evaluate_pope of the base with `model` guiding it, on the validation or test scenes."""
        return evaluate_pope(base, model, processor, pope[scenes], out_dir / "pope" / scenes, alphas,
                             batch_size=recipe.eval_batch, max_new_tokens=2, template=stages.TEMPLATE,
                             progress=bars, ref_model=ref)

    with torch.inference_mode():
        validation = score(reward, "val", recipe.alphas, ref_model, progress)
        alpha = choose_alpha(validation)
        print(f"      validation scenes: best adversarial F1 at alpha {alpha:g}")
        test = score(reward, "test", recipe.alphas, ref_model, progress)
        # For comparison, all at alpha 1: each reward model decoding alone, before and after DPO, and
        # the base guided by what DPO alone changed (reference = the reward model before DPO). A
        # setting the test sweep already ran (its alpha 1) is taken from it.
        comparisons = {}
        for name, model, ref in (("reward_before_dpo", reward_sft, None), ("reward_after_dpo", reward, None),
                                 ("base_with_dpo_delta", reward, reward_sft)):
            in_sweep = model is reward and ref is ref_model and 1.0 in recipe.alphas
            comparisons[name] = test if in_sweep else score(model, "test", (1.0,), ref)
    timings["pope"] = time.perf_counter() - t
    _done(t, False)

    models = {"base": str(folders["base"]), "reward": str(reward_folder), "reward_sft": str(folders["reward-sft"]),
              "pairs": str(pairs_folder / "pairs.jsonl")}
    summary = demo_summary(recipe, validation, test, alpha, comparisons, timings, time.perf_counter() - started,
                           models, len(pairs))
    print("\n" + format_summary(summary))
    write_summary(summary, out_dir / "demo.json")
    if results_json is not None:
        write_summary(summary, results_json)
    try:
        plot_demo(summary, out_dir / "demo.png")
        print(f"\nplot: {out_dir / 'demo.png'}")
    except ImportError:
        print("\n(no plot: matplotlib is not installed; pip install matplotlib)")
    print(f"results: {out_dir / 'demo.json'}" + (f" and {results_json}" if results_json else ""))
    return summary
