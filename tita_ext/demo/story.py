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

Stages 2-5 are cached (see cache.py): a second run only evaluates. Each seed is three tasks (stage
2; stages 3-5; stages 1 and 6, after both), each on one torch thread, so the numbers depend neither
on the machine's core count nor on the order the tasks run in; `jobs` worker processes take them
longest remaining chain first (schedule.py).
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
from .schedule import Task, run_tasks

Log = Callable[[str], None]
STAGES = 6


class _StageLog:
    """Numbered log lines and per-stage timings of one task of one seed."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.timings: dict[str, float] = {}
        self.cached: list[str] = []

    def start(self, number: int, title: str) -> float:
        self.log(f"[{number}/{STAGES}] {title}")
        return time.perf_counter()

    def done(self, name: str, t: float, hit: bool, detail: str = "") -> None:
        self.timings[name] = time.perf_counter() - t
        if hit:
            self.cached.append(name)
        how = "from the cache" if hit else f"{self.timings[name]:.0f} s"
        self.log(f"      done ({how}){': ' + detail if detail else ''}")


def _supervised(recipe: DemoRecipe, cache: pathlib.Path | None, name: str, size, fields, scenes: int | None,
                number: int, what: str, stage_log: _StageLog, progress: bool) -> pathlib.Path:
    """Stage 2 or 3: a model of `size` trained on the first `scenes` training scenes (None: all)."""
    count = scenes or recipe.train_scenes
    t = stage_log.start(number, f"{what}: hidden {size.hidden_size} x {size.layers}, vision {size.vision_hidden_size} "
                              f"x {size.vision_layers}, {count} scenes, {recipe.sft_epochs} epochs")

    def write(target: pathlib.Path) -> None:
        processor = tiny_llava_processor()
        rows = stages.sft_rows(stages.make_world(recipe), recipe, processor, progress, count=count)
        model, record = stages.train_supervised(size, rows, recipe, processor, progress)
        stages.save_model(model, target)
        stage_log.log(f"      {record['steps']} steps, final loss {record['losses'][-1]:.3f}")

    folder, hit = cached_folder(cache, name, recipe.stage_key(*fields, code=SFT_CODE), write)
    stage_log.done(name, t, hit, str(folder))
    return folder


def _task_result(stage_log: _StageLog, started: float, cpu_started: float, folders: dict[str, pathlib.Path],
                 **extra: Any) -> dict[str, Any]:
    return {"folders": {k: str(v) for k, v in folders.items()}, "timings": stage_log.timings,
            "cached": stage_log.cached, "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started, **extra}


def train_base(recipe: DemoRecipe, cache: pathlib.Path | None, *, progress: bool = False,
               log: Log = print) -> dict[str, Any]:
    """Stage 2 of one seed (`recipe.seed`): the base model, from the cache when it is there.
    Returns {"folders": {"base": path}, "timings", "cached", "seconds", "cpu_seconds"}."""
    started, cpu_started, stage_log = time.perf_counter(), time.process_time(), _StageLog(log)
    folder = _supervised(recipe, cache, "base", recipe.base, BASE_FIELDS, None, 2, "the base model", stage_log,
                         progress)
    return _task_result(stage_log, started, cpu_started, {"base": folder})


def train_reward(recipe: DemoRecipe, cache: pathlib.Path | None, base_folder: str | None = None, *,
                 progress: bool = False, log: Log = print) -> dict[str, Any]:
    """Stages 3-5 of one seed: the reward model's supervised training, the preference pairs and DPO.
    base_folder: the base model, needed only by unlabelled pairs (`recipe.pair_source` "noise").
    Returns {"folders": {"reward-sft", "pairs", "reward"}, "pairs": count, "timings", "cached",
    "seconds", "cpu_seconds"}."""
    started, cpu_started, stage_log = time.perf_counter(), time.process_time(), _StageLog(log)
    sft_folder = _supervised(recipe, cache, "reward-sft", recipe.reward, REWARD_SFT_FIELDS,
                             recipe.reward_train_scenes, 3, "the reward model, supervised (before DPO)", stage_log,
                             progress)
    reward_sft = stages.load_model(sft_folder)
    processor = tiny_llava_processor()

    labelled = recipe.pair_source == "labels"
    pairs_what = (f"{recipe.pair_scenes} fresh scenes' true answers vs the other answer" if labelled
                  else f"the base's own answers, clean vs noised (step {recipe.noise_step} of 1000)")
    t = stage_log.start(4, f"preference pairs: {pairs_what}")

    def write_pairs(target: pathlib.Path) -> None:
        if not labelled and base_folder is None:
            raise ValueError("unlabelled pairs (pair_source 'noise') need the base model's folder")
        base = None if labelled else stages.load_model(pathlib.Path(base_folder))
        stages.make_pairs(base, stages.make_world(recipe), recipe, processor, target, progress)

    pairs_folder, hit = cached_folder(cache, "pairs", recipe.stage_key(*PAIR_FIELDS, code=PAIR_CODE), write_pairs)
    pairs = stages.load_pairs(pairs_folder)
    stage_log.done("pairs", t, hit, f"{len(pairs)} pairs")

    t = stage_log.start(5, f"the reward model: DPO (beta {recipe.dpo_beta:g}, {recipe.dpo_epochs} epoch(s), "
                         f"lr {recipe.dpo_lr:g})")

    def write_reward(target: pathlib.Path) -> None:
        if not pairs:  # only an undertrained base (a --quick run) answers the same either way
            stage_log.log("      no pairs (the base answered every question the same with and without noise): "
                        "the reward model stays as supervised")
            stages.save_model(reward_sft, target)
            return
        model, record = stages.train_reward(reward_sft, pairs, recipe, processor, progress)
        stages.save_model(model, target)
        tail = record["reward_accuracies"][-10:]
        stage_log.log(f"      {record['steps']} steps, final loss {record['losses'][-1]:.3f}, "
                    f"reward accuracy {sum(tail) / len(tail):.2f} (last 10 steps)")

    reward_folder, hit = cached_folder(cache, "reward", recipe.stage_key(*DPO_FIELDS, code=DPO_CODE), write_reward)
    stage_log.done("reward", t, hit, str(reward_folder))
    return _task_result(stage_log, started, cpu_started,
                        {"reward-sft": sft_folder, "pairs": pairs_folder, "reward": reward_folder}, pairs=len(pairs))


def evaluate_seed(recipe: DemoRecipe, out_dir: pathlib.Path, trained: list[dict[str, Any]], *,
                  progress: bool = False, log: Log = print) -> dict[str, Any]:
    """Stages 1 and 6 of one seed: its POPE sets (out_dir/seed-N/pope) and the evaluation of the
    models `trained` holds (train_base's and train_reward's results). Returns the seed's record
    (see report.seed_record), its timings and CPU seconds those of all its tasks together; also
    written to out_dir/seed-N/record.json (kept if a later seed fails)."""
    started, cpu_started, stage_log = time.perf_counter(), time.process_time(), _StageLog(log)
    folder = out_dir / f"seed-{recipe.seed}" / "pope"
    processor = tiny_llava_processor()
    t = stage_log.start(1, "the world")
    pope = stages.write_pope_sets(stages.make_world(recipe), recipe, folder)
    stage_log.done("world", t, False, f"{recipe.val_scenes} validation and {recipe.test_scenes} test scenes ({folder})")
    folders = {k: pathlib.Path(v) for part in trained for k, v in part["folders"].items()}
    base, reward_sft, reward = (stages.load_model(folders[k]) for k in ("base", "reward-sft", "reward"))

    t = stage_log.start(6, f"POPE: the base alone vs guidance at alpha {', '.join(f'{a:g}' for a in recipe.alphas)}")
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
    stage_log.done("pope", t, False)

    parts = trained + [_task_result(stage_log, started, cpu_started, {})]
    timings = {k: v for part in parts for k, v in part["timings"].items()}
    order = ("world", "base", "reward-sft", "pairs", "reward", "pope")
    models = {"base": str(folders["base"]), "reward": str(folders["reward"]), "reward_sft": str(folders["reward-sft"]),
              "pairs": str(folders["pairs"] / "pairs.jsonl")}
    record = seed_record(recipe, validation, sweeps, alone, alpha, alpha_before,
                       pairs=next(part["pairs"] for part in trained if "pairs" in part),
                       timings={k: timings[k] for k in order if k in timings},
                       cached=[k for part in parts for k in part["cached"]],
                       seconds=sum(part["seconds"] for part in parts),
                       cpu_seconds=sum(part["cpu_seconds"] for part in parts), models=models)
    write_summary(record, out_dir / f"seed-{recipe.seed}" / "record.json")  # kept if a later seed fails
    return record


_TASKS = {"base": train_base, "reward": train_reward, "pope": evaluate_seed}


def _one_thread(task: str, progress: bool, recipe: DemoRecipe, *arguments: Any) -> Any:
    """A task of one seed (a _TASKS name) on one torch thread (restored after), its log lines
    prefixed with the seed."""
    from transformers.utils import logging as hf_logging

    threads, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    torch.set_num_threads(1)
    if not progress:  # transformers' loading / saving bars
        hf_logging.disable_progress_bar()
    try:
        return _TASKS[task](recipe, *arguments, progress=progress,
                            log=lambda line: print(f"  seed {recipe.seed}: {line}", flush=True))
    finally:
        torch.set_num_threads(threads)
        if bars:
            hf_logging.enable_progress_bar()


def seed_tasks(recipe: DemoRecipe, out_dir: pathlib.Path, cache: pathlib.Path | None,
               progress: bool = False) -> list[Task]:
    """The three tasks of each seed: the base, the reward model (supervised, pairs, DPO; after the
    base only when its pairs come from the base's answers) and the evaluation, after both. Costs
    are rough shares of one seed's CPU time at the default recipe (see demo.json's stage_seconds).
    progress: progress bars (only readable when the tasks run one at a time)."""
    tasks = []
    for run in (recipe.for_seed(seed) for seed in recipe.seeds):
        base, reward, pope = ("base", run.seed), ("reward", run.seed), ("pope", run.seed)
        needs_base = run.pair_source != "labels"
        tasks += [
            Task(base, _one_thread, lambda done, run=run: ("base", progress, run, cache), cost=6.0),
            Task(reward, _one_thread, after=(base,) if needs_base else (), cost=2.0, arguments=(
                lambda done, run=run, base=base: ("reward", progress, run, cache,
                                                  done[base]["folders"]["base"] if needs_base else None))),
            Task(pope, _one_thread, after=(base, reward), cost=2.0, arguments=(
                lambda done, run=run, base=base, reward=reward: ("pope", progress, run, out_dir,
                                                                 [done[base], done[reward]]))),
        ]
    return tasks


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_story(recipe: DemoRecipe, out_dir: pathlib.Path, cache: pathlib.Path | None, *, progress: bool = True,
              results_json: pathlib.Path | None = None, jobs: int | None = None) -> dict[str, Any]:
    """Run every seed of the recipe on `jobs` worker processes (default: one per core, at most
    three per seed), its tasks (see seed_tasks) scheduled longest remaining path first; write
    out_dir/{seed-N/pope/, demo.json, demo.png} (and results_json when given).

    Returns the summary (see report.demo_summary): per setting and POPE split, F1 mean, spread and
    every seed's value, the paired tests, the checks, the alpha curves and the timings."""
    started, cpu_started, children = time.perf_counter(), time.process_time(), _children_cpu_seconds()
    jobs = min(3 * len(recipe.seeds), available_cores()) if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    out_dir.mkdir(parents=True, exist_ok=True)
    bias = ", ".join(f"{a}/{b}" for a, b in PAIRS)
    print(f"  the world: companions {bias} together in {recipe.world_bias:.0%} of training scenes, "
          f"{recipe.world_test_bias:.0%} of held-out ones; seeds {', '.join(map(str, recipe.seeds))}, "
          f"their stages on {jobs} worker{'s' if jobs > 1 else ''}, one thread each", flush=True)
    done = run_tasks(seed_tasks(recipe, out_dir, cache, progress and jobs == 1), jobs)
    records = [done[("pope", seed)] for seed in recipe.seeds]
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
