"""The real-weights text demo's pieces that need no model: the task (problems, prompts, checking)
and how pairs are made from sampled answers. The demo itself (SmolLM2, minutes of CPU) runs as
`python3 -m tita_ext.demo.text_demo`; its results are in benchmarks/results/demo-text.json."""

from __future__ import annotations

import pytest

from tita_ext.demo.text_demo import TextRecipe, make_pairs
from tita_ext.demo.text_task import is_correct, parse_integer, problems, prompt_text


def test_problems_are_distinct_seeded_and_avoid_the_excluded_ones():
    test = problems(-2, 100)
    assert len(set(test)) == 100 and all(10 <= a <= 99 and 10 <= b <= 99 for a, b in test)
    assert problems(-2, 100) == test and problems(-1, 100) != test
    train = problems(0, 500, exclude=test)
    assert not set(train) & set(test)
    with pytest.raises(ValueError, match="only 4 distinct problems"):
        problems(0, 5, low=1, high=2)


@pytest.mark.parametrize("text, value", [("85", 85), (" 1,204.", 1204), ("-3 apples", -3), ("about 7 or 8", 7),
                                         ("none", None), ("", None)])
def test_parse_integer_takes_the_first_integer(text, value):
    assert parse_integer(text) == value


def test_is_correct_checks_the_sum():
    assert is_correct("85", (37, 48)) and is_correct(" 85.", (37, 48))
    assert not is_correct("84", (37, 48)) and not is_correct("eighty-five", (37, 48))


class ChatTemplate:
    """A tokenizer stand-in: the chat template as role: content lines."""

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def test_prompt_begins_the_equation_in_the_assistant_turn():
    text = prompt_text(ChatTemplate(), (37, 48))
    assert "user: What is 37 + 48?\n" in text and text.endswith("assistant: 37 + 48 =")


def test_pairs_need_a_right_and_a_wrong_sample():
    prompts, probs = ["p1", "p2", "p3"], [(10, 20), (11, 22), (40, 2)]
    samples = [["30", "31", "30"], ["33", "33"], ["41", "", "42"]]
    pairs = make_pairs(prompts, probs, samples)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("p1", "30", "31"), ("p3", "42", "41")]
    assert all(p.image is None for p in pairs)


def test_quick_recipe_is_small():
    quick, full = TextRecipe.quick(), TextRecipe()
    assert len(quick.seeds) == 1 and quick.test_problems < full.test_problems and 1.0 in full.alphas


@pytest.mark.parametrize("flag", ["--seeds", "--threads"])
def test_text_demo_refuses_counts_below_one(capsys, flag):
    from tita_ext.demo.text_demo import main

    with pytest.raises(SystemExit) as exit_info:
        main([flag, "0"])
    assert exit_info.value.code == 2 and f"{flag} must be at least 1, got 0" in capsys.readouterr().err
