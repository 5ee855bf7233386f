"""`tita-ext demo`: the recipe, the stage cache, the alpha choice and summary, and a short run of the
whole story (every stage, tiny budgets) through the command line, twice: the second from the cache."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("PIL")

from tita_ext.cli import main  # noqa: E402
from tita_ext.demo import DemoRecipe, ModelSize, stages  # noqa: E402
from tita_ext.demo.cache import cached_folder, default_cache_dir  # noqa: E402
from tita_ext.demo.recipe import (BASE_FIELDS, DPO_CODE, DPO_FIELDS, PAIR_FIELDS, REWARD_SFT_FIELDS,  # noqa: E402
                                  SFT_CODE)
from tita_ext.demo.report import choose_alpha, demo_summary, format_summary, seed_record  # noqa: E402
from tita_ext.demo.stats import paired_t_test, sign_flip_test  # noqa: E402
from tita_ext.tiny_models import demo_image, tiny_llava_processor  # noqa: E402
from tita_ext.training.pairs import PreferencePair  # noqa: E402
from tita_ext.world import SHAPES, format_prompt, render, yes_no_question  # noqa: E402

SPLITS = ("random", "popular", "adversarial")


def metrics(f1: float, fp: int = 1) -> dict:
    return {"accuracy": f1, "precision": f1, "recall": f1, "f1": f1, "yes_ratio": 50.0, "n": 10,
            "tp": 4, "fp": fp, "tn": 5 - fp, "fn": 1, "unparsed": 0}


def results(base: float, by_alpha: dict[float, float]) -> dict:
    """evaluate_pope's shape: every split the same scores."""
    return {"splits": {s: {"base": metrics(base), "alphas": {a: metrics(f) for a, f in by_alpha.items()}}
                       for s in SPLITS}}


# --------------------------------------------------------------------------- recipe and cache

def test_stage_keys_change_only_downstream_of_a_field():
    recipe = DemoRecipe()
    changed = DemoRecipe(dpo_lr=recipe.dpo_lr * 2)
    assert recipe.stage_key(*BASE_FIELDS) == changed.stage_key(*BASE_FIELDS)
    assert recipe.stage_key(*PAIR_FIELDS) == changed.stage_key(*PAIR_FIELDS)
    assert recipe.stage_key(*DPO_FIELDS) != changed.stage_key(*DPO_FIELDS)
    smaller = DemoRecipe(reward=ModelSize(hidden_size=24, layers=1, vision_hidden_size=24, vision_layers=1, seed=1))
    assert recipe.stage_key(*BASE_FIELDS) == smaller.stage_key(*BASE_FIELDS)
    assert recipe.stage_key(*REWARD_SFT_FIELDS) != smaller.stage_key(*REWARD_SFT_FIELDS)
    for world in (DemoRecipe(world_bias=0.8), DemoRecipe(world_hallucination=0.5)):
        assert all(recipe.stage_key(*f) != world.stage_key(*f) for f in (BASE_FIELDS, REWARD_SFT_FIELDS, DPO_FIELDS))
    labelled = DemoRecipe(pair_source="noise")
    assert recipe.stage_key(*BASE_FIELDS) == labelled.stage_key(*BASE_FIELDS)
    assert recipe.stage_key(*PAIR_FIELDS) != labelled.stage_key(*PAIR_FIELDS)
    other_seed = recipe.for_seed(3)
    assert all(recipe.stage_key(*f) != other_seed.stage_key(*f) for f in (BASE_FIELDS, REWARD_SFT_FIELDS, DPO_FIELDS))
    # the list of runs is not a stage input
    assert recipe.stage_key(*BASE_FIELDS) == DemoRecipe(seeds=(0, 7)).stage_key(*BASE_FIELDS)
    weaker = DemoRecipe(reward_train_scenes=100)
    assert recipe.stage_key(*BASE_FIELDS) == weaker.stage_key(*BASE_FIELDS)
    assert recipe.stage_key(*REWARD_SFT_FIELDS) != weaker.stage_key(*REWARD_SFT_FIELDS)


def test_stage_keys_follow_the_machine_and_the_code(monkeypatch):
    from tita_ext.demo import recipe as recipe_module

    recipe = DemoRecipe()
    key = recipe.stage_key(*DPO_FIELDS, code=DPO_CODE)
    assert key == recipe.stage_key(*DPO_FIELDS, code=DPO_CODE)  # stable
    assert key != recipe.stage_key(*DPO_FIELDS, code=SFT_CODE)  # another stage's source
    real = recipe_module.environment()
    assert set(real) == {"torch", "transformers", "cpu_capability"}
    monkeypatch.setattr(recipe_module, "environment", lambda: {**real, "cpu_capability": "AVX2-elsewhere"})
    assert key != recipe.stage_key(*DPO_FIELDS, code=DPO_CODE)  # another instruction set: trained again
    monkeypatch.setattr(recipe_module, "environment", lambda: real)
    monkeypatch.setattr(recipe_module, "code_version", lambda paths: "edited")
    assert key != recipe.stage_key(*DPO_FIELDS, code=DPO_CODE)  # the stage's code changed


@pytest.mark.parametrize("bad, match", [(dict(reference="reward"), "reference must be"),
                                        (dict(alphas=()), "alphas must be"), (dict(alphas=(0.0, 0.5)), "alphas"),
                                        (dict(train_scenes=0), "train_scenes must be at least 1"),
                                        (dict(pair_split="val"), "pair_split must be 'train' or 'test'"),
                                        (dict(alphas=(0.4, 0.8)), "must hold 1"),
                                        (dict(seeds=(1, 1)), "seeds must be distinct"),
                                        (dict(seeds=()), "seeds must be"),
                                        (dict(reward_train_scenes=2000), "reward_train_scenes must be between"),
                                        (dict(pair_source="corrections"), "pair_source must be 'noise' or 'labels'"),
                                        (dict(world_hallucination=-0.1), "world_hallucination must be a probability")])
def test_recipe_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        DemoRecipe(**bad)


def test_cached_folder_writes_once_and_leaves_nothing_half_written(tmp_path):
    calls = []

    def write(folder: pathlib.Path) -> None:
        calls.append(folder)
        (folder / "weights").write_text("w")

    folder, hit = cached_folder(tmp_path, "base", "abc", write)
    assert not hit and folder == tmp_path / "base-abc" and (folder / "weights").read_text() == "w"
    again, hit = cached_folder(tmp_path, "base", "abc", write)
    assert hit and again == folder and len(calls) == 1

    def broken(folder: pathlib.Path) -> None:
        (folder / "partial").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        cached_folder(tmp_path, "reward", "abc", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base-abc"]  # the partial folder is gone
    fresh, hit = cached_folder(None, "base", "abc", write)  # no cache: written every time, elsewhere
    assert not hit and fresh != folder and (fresh / "weights").is_file()


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TITA_EXT_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "demo"
    monkeypatch.delenv("TITA_EXT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "tita_ext" / "demo"


# --------------------------------------------------------------------------- choosing alpha and the summary

def test_choose_alpha_takes_the_best_validation_f1_below_one():
    assert choose_alpha(results(70.0, {0.2: 71.0, 0.6: 75.0, 0.8: 74.0, 1.0: 80.0})) == 0.6  # 1.0 is never chosen
    assert choose_alpha(results(70.0, {0.2: 75.0, 0.6: 75.0})) == 0.2  # ties: the smaller alpha
    with pytest.raises(ValueError, match="below 1"):
        choose_alpha(results(70.0, {1.0: 80.0, 1.5: 81.0}))
    # with the reward model before DPO as the reference, alpha 1 is guidance like any other
    assert choose_alpha(results(70.0, {0.6: 75.0, 1.0: 80.0, 1.5: 79.0}), below_one=False) == 1.0
    with pytest.raises(ValueError, match="needs at least one alpha to choose from"):
        choose_alpha({"splits": {"adversarial": {"alphas": {}}}}, below_one=False)


def record(seed: int, base: float, tita: float, before: float, alone_before: float, alone_after: float) -> dict:
    """A seed's record from made-up evaluate_pope results (every split the same scores)."""
    recipe = DemoRecipe(alphas=(0.4, 0.8, 1.0)).for_seed(seed)
    sweeps = {"tita": results(base, {0.4: tita - 1, 0.8: tita, 1.0: alone_after}),
              "guided_before_dpo": results(base, {0.4: before - 1, 0.8: before, 1.0: alone_before})}
    alone = {"reward_before_dpo": sweeps["guided_before_dpo"], "reward_after_dpo": sweeps["tita"]}
    validation = results(base, {0.4: 1.0, 0.8: 2.0, 1.0: 3.0})
    return seed_record(recipe, validation, sweeps, alone, choose_alpha(validation), choose_alpha(validation),
                       pairs=40 + seed,
                       timings={"base": 1.0}, cached=[], seconds=2.0, cpu_seconds=1.5, models={"base": "b"})


def test_summary_reports_every_seed_mean_spread_tests_and_checks():
    records = [record(s, base, base + gain, base + 1, base - 10, base - 5)
               for s, (base, gain) in enumerate([(60.0, 7.0), (62.0, 5.0), (58.0, 6.0), (61.0, 8.0), (59.0, 6.5)])]
    assert records[0]["alpha"] == 0.8 and records[0]["test"]["tita"]["random"]["f1"] == 67.0
    assert records[0]["test"]["base"]["random"]["false_yes"] == 20.0  # 1 of the 5 absent objects answered yes
    summary = demo_summary(DemoRecipe(alphas=(0.4, 0.8, 1.0)), records, seconds=12.34, cpu_seconds=20.0, jobs=2)
    base = summary["rows"]["base"]["adversarial"]["f1"]
    assert base["values"] == [60.0, 62.0, 58.0, 61.0, 59.0] and base["mean"] == 60.0 and base["sd"] == 1.58
    assert summary["gain"]["random"]["values"] == [7.0, 5.0, 6.0, 8.0, 6.5] and summary["gain"]["random"]["mean"] == 6.5
    test = summary["tests"]["adversarial"]["tita_vs_base"]
    assert test["paired_t"]["df"] == 4 and test["paired_t"]["p"] < 0.001 and test["sign_flip"]["p"] == 2 / 32
    checks = summary["checks"]
    assert checks["a_reward_alone_weaker_than_base"]["holds"] and checks["b_tita_beats_both"]["holds"]
    assert checks["c_gain_from_dpo"]["holds"] and checks["tita_significantly_above_base"]
    assert summary["curves"]["tita"]["adversarial"]["0"]["mean"] == 60.0
    assert summary["curves"]["guided_before_dpo"]["adversarial"]["1"]["mean"] == 50.0
    assert summary["machine"]["cpu_capability"] and summary["machine"]["torch"] == torch.__version__
    op = summary["machine"]["op_cpu_capability"]
    assert op in ("avx512", "avx2", "default") or op.startswith("not built")
    text = format_summary(summary)
    for line in ("reward model alone, before DPO", "TITA (reward after DPO)", "+6.5 ±", "(a) the reward model alone "
                 "is weaker than the base: yes", "(c) the gain comes from DPO: yes", "sign-flip p=0.0625"):
        assert line in text
    json.dumps(summary)  # JSON-ready as it is


def test_summary_of_the_explicit_reference_form_keeps_each_sweeps_alphas():
    recipe = DemoRecipe(alphas=(0.4, 1.0, 1.5), reference="reward-sft")
    records = []
    for seed in range(3):
        sweeps = {"tita": results(60.0, {0.4: 62.0, 1.0: 66.0 + seed, 1.5: 64.0}),
                  "guided_before_dpo": results(60.0, {0.4: 61.0, 1.0: 55.0})}  # the base as reference: up to 1
        alone = {"reward_before_dpo": sweeps["guided_before_dpo"], "reward_after_dpo": results(60.0, {1.0: 50.0})}
        validation = results(60.0, {0.4: 1.0, 1.0: 3.0, 1.5: 2.0})
        records.append(seed_record(recipe.for_seed(seed), validation, sweeps, alone,
                                   choose_alpha(validation, below_one=False), 0.4, pairs=10, timings={}, cached=[],
                                   seconds=1.0, cpu_seconds=1.0, models={}))
    summary = demo_summary(recipe, records, seconds=1, cpu_seconds=1, jobs=1)
    assert summary["alphas"] == [1.0] * 3 and summary["alphas_before_dpo"] == [0.4] * 3
    assert list(summary["curves"]["tita"]["adversarial"]) == ["0", "0.4", "1", "1.5"]
    assert list(summary["curves"]["guided_before_dpo"]["adversarial"]) == ["0", "0.4", "1"]
    assert summary["rows"]["tita"]["adversarial"]["f1"]["values"] == [66.0, 67.0, 68.0]
    assert summary["rows"]["guided_before_dpo"]["adversarial"]["f1"]["mean"] == 61.0  # at its own alpha
    assert summary["rows"]["reward_after_dpo"]["adversarial"]["f1"]["mean"] == 50.0


def test_checks_fail_when_the_reward_alone_is_better_or_the_gain_is_not_from_dpo():
    records = [record(s, 60.0 + s, 66.0 + s, 66.0 + s + (0.5 if s % 2 else -0.5), 70.0, 55.0) for s in range(4)]
    checks = demo_summary(DemoRecipe(alphas=(0.4, 0.8, 1.0)), records, seconds=1, cpu_seconds=1, jobs=1)["checks"]
    assert not checks["a_reward_alone_weaker_than_base"]["holds"]  # 70 alone before DPO beats the base
    assert not checks["b_tita_beats_both"]["holds"] and not checks["c_gain_from_dpo"]["holds"]
    assert checks["tita_significantly_above_base"]


def test_paired_tests_match_scipy():
    stats_scipy = pytest.importorskip("scipy.stats")
    a, b = [71.2, 69.0, 74.5, 70.1, 72.8, 68.0], [66.0, 67.5, 70.0, 69.9, 65.2, 66.1]
    assert paired_t_test(a, b)["p"] == pytest.approx(stats_scipy.ttest_rel(a, b).pvalue, rel=1e-9)
    exact = stats_scipy.permutation_test((a, b), lambda x, y: (x - y).mean(), permutation_type="samples",
                                         n_resamples=10**6).pvalue
    assert sign_flip_test(a, b)["p"] == pytest.approx(exact)
    assert paired_t_test([1.0, 2.0], [1.0, 2.0])["p"] == 1.0
    with pytest.raises(ValueError, match="same length"):
        paired_t_test([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        sign_flip_test([1.0], [0.0])


# --------------------------------------------------------------------------- stages

def test_dpo_stage_moves_the_reward_model_and_leaves_its_start_alone():
    recipe = DemoRecipe(dpo_batch=2, dpo_lr=1e-2, dpo_epochs=1)
    processor = tiny_llava_processor()
    start = stages.new_model(recipe.reward, recipe.model_seed(recipe.reward))
    before = {k: v.clone() for k, v in start.state_dict().items()}
    prompt = format_prompt("Is there a ball in the image?")
    pairs = [PreferencePair(demo_image("red"), prompt, "No", "Yes"), PreferencePair(demo_image("blue"), prompt, "Yes", "No")]
    trained, record = stages.train_reward(start, pairs, recipe, processor, progress=False)
    assert record["steps"] == 1 and trained is not start
    assert all(torch.equal(before[k], v) for k, v in start.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items())


@pytest.mark.parametrize("split", ["train", "test"])
def test_pair_items_ask_about_every_shape_on_scenes_no_other_stage_uses(split):
    recipe = DemoRecipe(pair_scenes=30, pair_split=split, val_scenes=40, test_scenes=40, train_scenes=200,
                        reward_train_scenes=100, pair_source="noise")
    world = stages.make_world(recipe)
    items = stages.pair_items(world, recipe)
    assert len(items) == 30 * len(SHAPES) and {q for _, q in items} == {yes_no_question(s) for s in SHAPES}
    used = [world.scenes(recipe.train_scenes, "train"), world.scenes(recipe.test_scenes, "test"),
            world.scenes(recipe.val_scenes, "test", seed_offset=stages.VALIDATION_OFFSET)]
    elsewhere = {render(s).tobytes() for scenes in used for s in scenes}
    assert not any(image.tobytes() in elsewhere for image, _ in items)


def test_labelled_pairs_prefer_the_truth_to_the_other_answer(tmp_path):
    recipe = DemoRecipe(pair_scenes=5, pair_split="test", pair_source="labels")
    world = stages.make_world(recipe)
    scenes = world.scenes(5, "test", seed_offset=stages.PAIR_OFFSET["test"])
    count = stages.make_pairs(None, world, recipe, tiny_llava_processor(), tmp_path, progress=False)  # no base used
    pairs = stages.load_pairs(tmp_path)
    assert count == len(pairs) == 5 * len(SHAPES) and len(list((tmp_path / "images").iterdir())) == 5
    for k, pair in enumerate(pairs):
        scene, shape = scenes[k // len(SHAPES)], SHAPES[k % len(SHAPES)]
        assert pair.prompt == stages.TEMPLATE.format(question=yes_no_question(shape))
        assert (pair.chosen, pair.rejected) == (("Yes", "No") if scene.has(shape) else ("No", "Yes"))


# --------------------------------------------------------------------------- the whole story, short

@pytest.mark.parametrize("flag", ["--jobs", "--seeds"])
def test_demo_refuses_counts_below_one(capsys, flag):
    assert main(["demo", "--quick", flag, "0", "--no-cache"]) == 2
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err
    assert main(["demo", "--quick", "--first-seed", "-1", "--no-cache"]) == 2
    assert "--first-seed must be at least 0, got -1" in capsys.readouterr().err


def test_first_seed_runs_seeds_no_choice_has_looked_at(tmp_path, capsys):
    """--first-seed K --seeds N runs seeds K..K+N-1, the same runs as those seeds in any other list."""
    out = tmp_path / "out"
    assert main(["demo", "--quick", "--no-progress", "--jobs", "1", "--no-cache", "--first-seed", "1", "--seeds", "2",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    summary = json.loads((out / "demo.json").read_text())
    assert summary["seeds"] == [1, 2] and [r["seed"] for r in summary["per_seed"]] == [1, 2]
    quick = ["demo", "--quick", "--no-progress", "--jobs", "1", "--no-cache"]
    assert main(quick + ["--out", str(tmp_path / "first")]) == 0
    capsys.readouterr()
    first = json.loads((tmp_path / "first" / "demo.json").read_text())
    assert first["seeds"] == [0, 1]
    assert _numbers(first)["per_seed"][1] == _numbers(summary)["per_seed"][0]  # seed 1 is seed 1 in either list


def _numbers(summary: dict) -> dict:
    """What a rerun must reproduce exactly: every seed's metrics, sweeps and alpha, and the aggregates."""
    return {"rows": summary["rows"], "tests": summary["tests"], "curves": summary["curves"],
            "per_seed": [{k: r[k] for k in ("seed", "alpha", "pairs", "test", "sweep", "validation")}
                         for r in summary["per_seed"]]}


def test_quick_demo_gives_identical_numbers_when_retrained_and_from_the_cache(tmp_path, capsys):
    """Two seeds, every stage: trained in this process; trained again from scratch in two worker
    processes (--no-cache, --jobs 2); then from the cache. The numbers are the same each time."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    args = ["demo", "--quick", "--no-progress", "--jobs", "1", "--results", str(tmp_path / "results" / "demo.json")]
    assert main(args + ["--cache-dir", str(cache), "--out", str(out)]) == 0
    first = capsys.readouterr().out
    for seed in (0, 1):
        for stage in range(1, 7):
            assert f"seed {seed}: [{stage}/6]" in first
    assert "from the cache" not in first and "POPE on 10 held-out scenes per seed, 2 seeds" in first
    assert "(a) the reward model alone is weaker than the base" in first and "paired tests over seeds" in first
    summary = json.loads((out / "demo.json").read_text())
    assert json.loads((tmp_path / "results" / "demo.json").read_text()) == summary
    assert summary["seeds"] == [0, 1] and len(summary["per_seed"]) == 2
    for name in ("base", "reward_before_dpo", "reward_after_dpo", "guided_before_dpo", "tita"):
        for split in SPLITS:
            assert len(summary["rows"][name][split]["f1"]["values"]) == 2
            assert 0.0 <= summary["rows"][name][split]["f1"]["mean"] <= 100.0
    assert all(a < 1.0 for a in summary["alphas"]) and summary["seconds"] > 0 and summary["cpu_seconds"] > 0
    assert summary["machine"]["cpu_capability"] and summary["machine"]["transformers"]
    assert (out / "demo.png").stat().st_size > 0
    for seed in (0, 1):
        for split in SPLITS:
            assert (out / f"seed-{seed}" / "pope" / "test" / f"pope_{split}.jsonl").is_file()
        assert json.loads((out / f"seed-{seed}" / "record.json").read_text()) == summary["per_seed"][seed]
    assert pathlib.Path(summary["per_seed"][0]["models"]["base"], "config.json").is_file()
    # the two seeds are different runs: other scenes, other models
    assert summary["per_seed"][0]["models"]["base"] != summary["per_seed"][1]["models"]["base"]

    fresh = ["demo", "--quick", "--no-progress", "--jobs", "2", "--no-cache", "--out", str(tmp_path / "fresh")]
    assert main(fresh) == 0
    capsys.readouterr()
    assert _numbers(json.loads((tmp_path / "fresh" / "demo.json").read_text())) == _numbers(summary)

    assert main(args + ["--cache-dir", str(cache), "--out", str(out)]) == 0
    second = capsys.readouterr().out
    assert second.count("from the cache") == 8  # per seed: base, reward SFT, pairs, reward; only POPE runs again
    assert _numbers(json.loads((out / "demo.json").read_text())) == _numbers(summary)


def test_unlabelled_pairs_wait_for_the_base_on_the_workers(tmp_path, capfd):
    """With pairs from the base's own answers the reward task runs after the base's, on the worker
    pool, and its log says where the pairs came from."""
    import dataclasses

    from tita_ext.demo import run_story

    recipe = dataclasses.replace(DemoRecipe.quick(), seeds=(0, 1), pair_source="noise")
    summary = run_story(recipe, tmp_path / "out", None, progress=False, jobs=3)  # a free worker: nothing but the
    # dependency keeps a reward task from starting beside the bases
    log = capfd.readouterr().out  # the workers print to the process's stdout
    assert summary["seeds"] == [0, 1] and summary["machine"]["jobs"] == 3
    for seed in (0, 1):
        assert f"seed {seed}: [4/6] preference pairs: the base's own answers, clean vs noised" in log
        base_done = log.index(f"seed {seed}:       done", log.index(f"seed {seed}: [2/6]"))
        assert log.index(f"seed {seed}: [3/6]") > base_done


def test_unlabelled_pairs_without_the_base_are_refused(tmp_path):
    """The reward task builds unlabelled pairs from the base's answers: without the base's folder
    it says so instead of failing inside the pair builder."""
    import dataclasses

    from tita_ext.demo.story import train_reward

    recipe = dataclasses.replace(DemoRecipe.quick(), pair_source="noise").for_seed(0)
    with pytest.raises(ValueError, match=r"unlabelled pairs \(pair_source 'noise'\) need the base model's folder"):
        train_reward(recipe, tmp_path / "cache", None, log=lambda line: None)
