"""`tita-ext demo`: from a base model to an aligned one, end to end, on the built-in world, once
per seed (each seed draws its own world sample, models, pairs and DPO order).

    1. the world      coloured shapes whose companions (cube/ball, cone/ring, star/box) appear
                      together in most training scenes, and whose training answers often say
                      "yes" to an absent companion; held-out scenes break the habit
    2. the base       a tiny LLaVA trained on the training scenes' captions and yes/no questions
    3. reward (SFT)   a much smaller tiny LLaVA trained the same way on fewer scenes
    4. pairs          labelled: the true answer (chosen) vs the other (rejected) on fresh scenes;
                      or unlabelled: the base's clean-image answer vs its noised-image answer
    5. reward (DPO)   DPO of the small model on those pairs
    6. POPE           on held-out scenes: the base alone, each reward model alone, the base guided
                      by the reward model before DPO, and TITA; alpha chosen on validation scenes

Stages 2-5 are cached (see cache.py): a second run only evaluates. Every seed runs on one torch
thread, so its numbers do not depend on the machine's core count; `jobs` seeds run at once in
worker processes.
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any, Callable

import torch

from ..eval.run_pope import evaluate_pope
from ..tiny_models import tiny_llava_processor
from ..world import PAIRS
from . import stages
from .cache import cached_folder
from .recipe import (BASE_FIELDS, DPO_CODE, DPO_FIELDS, PAIR_CODE, PAIR_FIELDS, REWARD_SFT_FIELDS, SFT_CODE,
                     DemoRecipe)
from .report import (SELECTION_SPLIT, choose_alpha, demo_summary, format_summary, plot_demo, seed_record,
                     write_summary)

Log = Callable[[str], None]


def run_seed(recipe: DemoRecipe, out_dir: pathlib.Path, cache: pathlib.Path | None, *, progress: bool = False,
             log: Log = print) -> dict[str, Any]:
    """The six stages for one seed (`recipe.seed`); POPE folders under out_dir/seed-N/pope.
    Returns its record (see report.seed_record)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    folder = out_dir / f"seed-{recipe.seed}" / "pope"
    processor = tiny_llava_processor()
    world = stages.make_world(recipe)
    timings: dict[str, float] = {}
    cached: list[str] = []

    def stage(number: int, title: str) -> float:
        log(f"[{number}/6] {title}")
        return time.perf_counter()

    def done(name: str, t: float, hit: bool, detail: str = "") -> None:
        timings[name] = time.perf_counter() - t
        if hit:
            cached.append(name)
        how = "from the cache" if hit else f"{timings[name]:.0f} s"
        log(f"      done ({how}){': ' + detail if detail else ''}")

    t = stage(1, "the world")
    pope = stages.write_pope_sets(world, recipe, folder)
    log(f"      {recipe.train_scenes} training scenes, {recipe.val_scenes} validation and {recipe.test_scenes} "
        f"test scenes ({folder})")
    rows: list[dict] | None = None

    def supervised_rows() -> list[dict]:
        nonlocal rows
        if rows is None:
            rows = stages.sft_rows(world, recipe, processor, progress)
        return rows

    def write_supervised(size, scenes: int | None):
        def write(target: pathlib.Path) -> None:
            data = supervised_rows()[:None if scenes is None else scenes * stages.rows_per_scene()]
            model, record = stages.train_supervised(size, data, recipe, processor, progress)
            stages.save_model(model, target)
            log(f"      {record['steps']} steps, final loss {record['losses'][-1]:.3f}")
        return write

    folders: dict[str, pathlib.Path] = {}
    for number, (name, size, fields, scenes) in enumerate(
            (("base", recipe.base, BASE_FIELDS, None),
             ("reward-sft", recipe.reward, REWARD_SFT_FIELDS, recipe.reward_train_scenes)), start=2):
        what = "the base model" if name == "base" else "the reward model, supervised (before DPO)"
        t = stage(number, f"{what}: hidden {size.hidden_size} x {size.layers}, vision {size.vision_hidden_size} x "
                          f"{size.vision_layers}, {scenes or recipe.train_scenes} scenes, {recipe.sft_epochs} epochs")
        folders[name], hit = cached_folder(cache, name, recipe.stage_key(*fields, code=SFT_CODE),
                                           write_supervised(size, scenes))
        done(name, t, hit, str(folders[name]))
    base = stages.load_model(folders["base"])
    reward_sft = stages.load_model(folders["reward-sft"])

    t = stage(4, "preference pairs: " + (f"{recipe.pair_scenes} fresh scenes' true answers vs the other answer"
                                         if recipe.pair_source == "labels" else
                                         f"the base's own answers, clean vs noised (step {recipe.noise_step} of 1000)"))
    pairs_folder, hit = cached_folder(
        cache, "pairs", recipe.stage_key(*PAIR_FIELDS, code=PAIR_CODE),
        lambda target: stages.make_pairs(base, world, recipe, processor, target, progress))
    pairs = stages.load_pairs(pairs_folder)
    done("pairs", t, hit, f"{len(pairs)} pairs")

    t = stage(5, f"the reward model: DPO (beta {recipe.dpo_beta:g}, {recipe.dpo_epochs} epoch(s), "
                 f"lr {recipe.dpo_lr:g})")

    def write_reward(target: pathlib.Path) -> None:
        if not pairs:  # only an undertrained base (a --quick run) answers the same either way
            log("      no pairs (the base answered every question the same with and without noise): "
                "the reward model stays as supervised")
            stages.save_model(reward_sft, target)
            return
        model, record = stages.train_reward(reward_sft, pairs, recipe, processor, progress)
        stages.save_model(model, target)
        tail = record["reward_accuracies"][-10:]
        log(f"      {record['steps']} steps, final loss {record['losses'][-1]:.3f}, "
            f"reward accuracy {sum(tail) / len(tail):.2f} (last 10 steps)")

    reward_folder, hit = cached_folder(cache, "reward", recipe.stage_key(*DPO_FIELDS, code=DPO_CODE), write_reward)
    reward = stages.load_model(reward_folder)
    done("reward", t, hit, str(reward_folder))

    t = stage(6, f"POPE: the base alone vs guidance at alpha {', '.join(f'{a:g}' for a in recipe.alphas)}")
    ref_model = reward_sft if recipe.reference == "reward-sft" else None

    def score(model, scenes: str, alphas, ref=None, splits=None) -> dict[str, Any]:
        """evaluate_pope of the base with `model` guiding it, on the validation or test scenes."""
        questions = {s: p for s, p in pope[scenes].items() if splits is None or s in splits}
        return evaluate_pope(base, model, processor, questions, folder / scenes, alphas,
                             batch_size=recipe.eval_batch, max_new_tokens=2, template=stages.TEMPLATE,
                             progress=progress, ref_model=ref)

    mixed = tuple(a for a in recipe.alphas if a <= 1.0)  # the base as the reference: 1 is the model alone
    with torch.inference_mode():
        validation = score(reward, "val", recipe.alphas, ref_model, splits=(SELECTION_SPLIT,))
        alpha = choose_alpha(validation, below_one=ref_model is None)
        # the rival: the reward model before DPO guiding the base, the base as its reference. With the
        # base as TITA's reference too it is the same guidance at the same alpha; with the reward
        # model before DPO as TITA's reference, that model as its own reference would change nothing,
        # so it gets its own alpha, chosen on validation alike
        alpha_before = alpha if ref_model is None else choose_alpha(
            score(reward_sft, "val", mixed, splits=(SELECTION_SPLIT,)))
        log(f"      validation scenes: best {SELECTION_SPLIT} F1 at alpha {alpha:g} (before DPO: {alpha_before:g})")
        sweeps = {"tita": score(reward, "test", recipe.alphas, ref_model),
                  "guided_before_dpo": score(reward_sft, "test", mixed)}
        alone = {"reward_before_dpo": sweeps["guided_before_dpo"],
                 "reward_after_dpo": sweeps["tita"] if ref_model is None else score(reward, "test", (1.0,))}
    done("pope", t, False)

    models = {"base": str(folders["base"]), "reward": str(reward_folder), "reward_sft": str(folders["reward-sft"]),
              "pairs": str(pairs_folder / "pairs.jsonl")}
    return seed_record(recipe, validation, sweeps, alone, alpha, alpha_before, pairs=len(pairs), timings=timings,
                       cached=cached, seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - cpu_started,
                       models=models)


def _one_thread_seed(recipe: DemoRecipe, out_dir: pathlib.Path, cache: pathlib.Path | None,
                     progress: bool) -> dict[str, Any]:
    """run_seed on one torch thread (restored after), its log lines prefixed with the seed; its
    record is also written to out_dir/seed-N/record.json."""
    from transformers.utils import logging as hf_logging

    threads, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    torch.set_num_threads(1)
    if not progress:  # transformers' loading / saving bars
        hf_logging.disable_progress_bar()
    try:
        record = run_seed(recipe, out_dir, cache, progress=progress,
                          log=lambda line: print(f"  seed {recipe.seed}: {line}", flush=True))
        write_summary(record, out_dir / f"seed-{recipe.seed}" / "record.json")  # kept if a later seed fails
        return record
    finally:
        torch.set_num_threads(threads)
        if bars:
            hf_logging.enable_progress_bar()


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_story(recipe: DemoRecipe, out_dir: pathlib.Path, cache: pathlib.Path | None, *, progress: bool = True,
              results_json: pathlib.Path | None = None, jobs: int | None = None) -> dict[str, Any]:
    """Run every seed of the recipe (`jobs` at once; default: one per core, at most one per seed);
    write out_dir/{seed-N/pope/, demo.json, demo.png} (and results_json when given).

    Returns the summary (see report.demo_summary): per setting and POPE split, F1 mean, spread and
    every seed's value, the paired tests, the checks, the alpha curves and the timings."""
    started, cpu_started, children = time.perf_counter(), time.process_time(), _children_cpu_seconds()
    jobs = min(len(recipe.seeds), available_cores()) if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    out_dir.mkdir(parents=True, exist_ok=True)
    bias = ", ".join(f"{a}/{b}" for a, b in PAIRS)
    print(f"  the world: companions {bias} together in {recipe.world_bias:.0%} of training scenes, "
          f"{recipe.world_test_bias:.0%} of held-out ones; seeds {', '.join(map(str, recipe.seeds))}, "
          f"{jobs} at a time, one thread each", flush=True)
    runs = [recipe.for_seed(seed) for seed in recipe.seeds]
    show = progress and jobs == 1
    if jobs == 1:
        records = [_one_thread_seed(run, out_dir, cache, show) for run in runs]
    else:
        import multiprocessing

        # a Pool (not a ProcessPoolExecutor): leaving the block, also on Ctrl-C, terminates the workers
        with multiprocessing.get_context("spawn").Pool(jobs, maxtasksperchild=1) as pool:
            records = pool.starmap(_one_thread_seed, [(run, out_dir, cache, False) for run in runs], chunksize=1)
    cpu_seconds = time.process_time() - cpu_started + _children_cpu_seconds() - children
    summary = demo_summary(recipe, records, seconds=time.perf_counter() - started, cpu_seconds=cpu_seconds, jobs=jobs)
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


def _children_cpu_seconds() -> float:
    """User + system CPU seconds of the finished worker processes (0 where unknown)."""
    try:
        import resource

        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime
    except (ImportError, OSError):
        return 0.0
