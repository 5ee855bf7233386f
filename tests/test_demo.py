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
from tita_ext.demo.recipe import BASE_FIELDS, DPO_FIELDS, PAIR_FIELDS, REWARD_SFT_FIELDS  # noqa: E402
from tita_ext.demo.report import choose_alpha, demo_summary, format_summary  # noqa: E402
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
    smaller = DemoRecipe(reward=ModelSize(hidden_size=32, layers=1, vision_hidden_size=32, vision_layers=1, seed=1))
    assert recipe.stage_key(*BASE_FIELDS) == smaller.stage_key(*BASE_FIELDS)
    assert recipe.stage_key(*REWARD_SFT_FIELDS) != smaller.stage_key(*REWARD_SFT_FIELDS)
    world = DemoRecipe(world_bias=0.8)
    assert all(recipe.stage_key(*f) != world.stage_key(*f) for f in (BASE_FIELDS, REWARD_SFT_FIELDS, DPO_FIELDS))


@pytest.mark.parametrize("bad, match", [(dict(reference="reward"), "reference must be"),
                                        (dict(alphas=()), "alphas must be"), (dict(alphas=(0.0, 0.5)), "alphas"),
                                        (dict(train_scenes=0), "train_scenes must be at least 1"),
                                        (dict(pair_split="val"), "pair_split must be 'train' or 'test'")])
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


def test_summary_holds_base_and_tita_per_split_at_the_chosen_alpha():
    test = results(60.0, {0.4: 64.0, 0.8: 67.5, 1.0: 66.0})
    alone = {"reward_before_dpo": results(60.0, {1.0: 55.0}), "reward_after_dpo": results(60.0, {1.0: 58.0}),
             "base_with_dpo_delta": results(60.0, {1.0: 62.0})}
    summary = demo_summary(DemoRecipe(), results(61.0, {0.4: 62.0, 0.8: 63.0, 1.0: 64.0}), test, 0.8, alone,
                           {"base": 1.0}, 12.34, {"base": "b", "reward": "r"}, 42)
    assert set(summary["base"]) == set(SPLITS) and summary["base"]["adversarial"]["f1"] == 60.0
    assert summary["tita"]["alpha"] == summary["alpha"] == 0.8 and summary["tita"]["adversarial"]["f1"] == 67.5
    assert summary["gain"] == {s: 7.5 for s in SPLITS} and summary["seconds"] == 12.3
    assert summary["sweep"]["random"] == {"0": 60.0, "0.4": 64.0, "0.8": 67.5, "1": 66.0}
    assert summary["validation"]["random"]["1"] == 64.0 and summary["pairs"] == 42
    assert summary["comparisons"]["reward_before_dpo"]["adversarial"]["f1"] == 55.0
    assert summary["comparisons"]["reward_after_dpo"]["random"]["f1"] == 58.0
    assert summary["comparisons"]["base_with_dpo_delta"]["popular"]["f1"] == 62.0
    assert summary["base"]["random"]["false_yes"] == 20.0  # 1 of the 5 absent objects answered yes
    text = format_summary(summary)
    assert "reward model alone, before DPO" in text and "TITA, alpha 0.8" in text and "+7.5" in text
    assert "DPO's change only" in text
    json.dumps(summary)  # JSON-ready as it is


# --------------------------------------------------------------------------- stages

def test_dpo_stage_moves_the_reward_model_and_leaves_its_start_alone():
    recipe = DemoRecipe(dpo_batch=2, dpo_lr=1e-2)
    processor = tiny_llava_processor()
    start = stages.new_model(recipe.reward)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    prompt = format_prompt("Is there a ball in the image?")
    pairs = [PreferencePair(demo_image("red"), prompt, "No", "Yes"), PreferencePair(demo_image("blue"), prompt, "Yes", "No")]
    trained, record = stages.train_reward(start, pairs, recipe, processor, progress=False)
    assert record["steps"] == 1 and trained is not start
    assert all(torch.equal(before[k], v) for k, v in start.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items())


@pytest.mark.parametrize("split", ["train", "test"])
def test_pair_items_ask_about_every_shape_on_scenes_no_other_stage_uses(split):
    recipe = DemoRecipe(pair_scenes=30, pair_split=split, val_scenes=40, test_scenes=40, train_scenes=200)
    world = stages.make_world(recipe)
    items = stages.pair_items(world, recipe)
    assert len(items) == 30 * len(SHAPES) and {q for _, q in items} == {yes_no_question(s) for s in SHAPES}
    used = [world.scenes(recipe.train_scenes, "train"), world.scenes(recipe.test_scenes, "test"),
            world.scenes(recipe.val_scenes, "test", seed_offset=stages.VALIDATION_OFFSET)]
    elsewhere = {render(s).tobytes() for scenes in used for s in scenes}
    assert not any(image.tobytes() in elsewhere for image, _ in items)


# --------------------------------------------------------------------------- the whole story, short

def test_demo_refuses_a_thread_count_below_one(capsys):
    assert main(["demo", "--quick", "--threads", "0", "--no-cache"]) == 2
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err


def test_quick_demo_runs_every_stage_then_reuses_the_cache(tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "out"
    args = ["demo", "--quick", "--cache-dir", str(cache), "--out", str(out), "--no-progress",
            "--results", str(tmp_path / "results" / "demo.json")]
    assert main(args) == 0
    first = capsys.readouterr().out
    for stage in range(1, 7):
        assert f"[{stage}/6]" in first
    assert "from the cache" not in first and "POPE on 10 held-out scenes" in first
    summary = json.loads((out / "demo.json").read_text())
    assert json.loads((tmp_path / "results" / "demo.json").read_text()) == summary
    assert set(summary["base"]) == set(summary["gain"]) == set(SPLITS)
    for split in SPLITS:
        assert 0.0 <= summary["base"][split]["f1"] <= 100.0 and "f1" in summary["tita"][split]
    assert summary["alpha"] == summary["tita"]["alpha"] < 1.0 and summary["seconds"] > 0
    assert (out / "demo.png").stat().st_size > 0
    for split in SPLITS:
        assert (out / "pope" / "test" / f"pope_{split}.jsonl").is_file()
    assert pathlib.Path(summary["models"]["base"], "config.json").is_file()

    assert main(args) == 0
    second = capsys.readouterr().out
    assert second.count("from the cache") == 4  # base, reward SFT, pairs, reward: only POPE runs again
    again = json.loads((out / "demo.json").read_text())
    assert again["base"] == summary["base"] and again["tita"] == summary["tita"]
