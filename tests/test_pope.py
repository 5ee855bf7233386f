"""POPE: the answer parser, the metrics against hand-computed values, and the harness end to end
with tiny models (the eval-pope command included)."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from tita_ext.eval import evaluate_pope, load_questions, parse_answer, pope_metrics, reference_parse, write_results
from tita_ext.eval import cli_pope
from tita_ext.eval.run_pope import collate_left, format_table
from tita_ext.prompt_inputs import Preprocessor, build_inputs
from tita_ext.tiny_models import PAD_ID, demo_image, tiny_llava, tiny_llava_processor, tiny_tokenizer

# --------------------------------------------------------------------------- parser

PARSER_TABLE = [
    ("Yes", "yes"), ("Yes.", "yes"), (" no,", "no"), ("YES!", "yes"), ("no", "no"), ("No.", "no"),
    ("Yes, there is a cat in the image.", "yes"), ("No, there is no dog.", "no"), ('"Yes"', "yes"),
    ("“No”", "no"), ("  (yes)", "yes"), ("\nNo\n", "no"), ("Answer: yes", "yes"), ("answer:No", "no"),
    ("...yes", "yes"), ("yEs", "yes"),
    # fallback: "There is/are ..."
    ("There is a dog.", "yes"), ("There are two cats", "yes"), ("There's a cup", "yes"),
    ("There is no dog.", "no"), ("There are not any cats", "no"), ("There isn't a dog", "no"),
    ("There aren’t any", "no"), ("There's nothing", "no"), ("there is none", "no"),
    # undecidable
    ("", None), ("   ", None), ("I cannot tell.", None), ("A red cube", None), ("yesterday", None),
    ("Nope", None), ("Not sure", None), ("The answer is yes", None), ("There", None), ("nonetheless", None),
]


@pytest.mark.parametrize("text,expected", PARSER_TABLE)
def test_parse_answer(text, expected):
    assert parse_answer(text) == expected


def test_parse_answer_rejects_non_text():
    with pytest.raises(TypeError):
        parse_answer(None)


@pytest.mark.parametrize("text,expected", [("Yes, there is.", "yes"), ("No.", "no"), ("There is not a dog", "no"),
                                           ("I cannot tell", "yes"), ("Yes. No.", "yes"), ("no, it is", "no")])
def test_reference_parse_is_the_reference_rule(text, expected):
    assert reference_parse(text) == expected


# --------------------------------------------------------------------------- metrics


def test_metrics_hand_computed():
    # labels:  y  y  y  y  n  n  n  n  n  n
    # answers: y  y  y  n  y  n  n  n  n  None(-> no)
    # TP 3, FN 1, FP 1, TN 5: acc 8/10, P 3/4, R 3/4, F1 3/4, yes 4/10
    labels = ["yes"] * 4 + ["no"] * 6
    answers = ["yes", "yes", "yes", "no", "yes", "no", "no", "no", "no", None]
    m = pope_metrics(labels, answers)
    assert m == pytest.approx({"accuracy": 80.0, "precision": 75.0, "recall": 75.0, "f1": 75.0, "yes_ratio": 40.0,
                               "n": 10, "tp": 3, "fp": 1, "tn": 5, "fn": 1, "unparsed": 1})


def test_metrics_unequal_precision_recall():
    # TP 2, FP 2, FN 1, TN 1: P 1/2, R 2/3, F1 = 2*(1/2)(2/3)/(1/2+2/3) = 4/7
    labels = ["yes", "yes", "yes", "no", "no", "no"]
    answers = ["yes", "yes", "no", "yes", "yes", "no"]
    m = pope_metrics(labels, answers)
    assert m["precision"] == pytest.approx(50.0)
    assert m["recall"] == pytest.approx(200 / 3)
    assert m["f1"] == pytest.approx(400 / 7)
    assert m["accuracy"] == pytest.approx(50.0)
    assert m["yes_ratio"] == pytest.approx(400 / 6)


def test_metrics_all_yes():
    labels = ["yes", "no", "no", "yes"]
    m = pope_metrics(labels, ["yes"] * 4)  # TP 2, FP 2: P 1/2, R 1, F1 2/3
    assert m["accuracy"] == pytest.approx(50.0)
    assert m["precision"] == pytest.approx(50.0)
    assert m["recall"] == pytest.approx(100.0)
    assert m["f1"] == pytest.approx(200 / 3)
    assert m["yes_ratio"] == pytest.approx(100.0)


def test_metrics_all_no_has_zero_precision_not_an_error():
    labels = ["yes", "no", "no", "yes"]
    m = pope_metrics(labels, ["no"] * 4)  # no predicted yes: precision 0/0 -> 0
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"], m["yes_ratio"]) == (50.0, 0.0, 0.0, 0.0, 0.0)


def test_metrics_no_positive_labels():
    m = pope_metrics(["no", "no"], ["yes", "no"])  # recall 0/0 -> 0, precision 0/1
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"], m["yes_ratio"]) == (50.0, 0.0, 0.0, 0.0, 50.0)


def test_metrics_perfect_and_empty():
    m = pope_metrics(["YES", " no "], ["yes", "no"])
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"]) == (100.0, 100.0, 100.0, 100.0)
    empty = pope_metrics([], [])
    assert empty["n"] == 0 and all(empty[k] == 0.0 for k in ("accuracy", "precision", "recall", "f1", "yes_ratio"))


def test_metrics_unparsed_as_yes_is_the_reference_convention():
    m = pope_metrics(["yes", "no"], [None, None], unparsed="yes")
    assert (m["tp"], m["fp"], m["yes_ratio"], m["unparsed"]) == (1, 1, 100.0, 2)


@pytest.mark.parametrize("labels,answers", [(["yes"], []), (["maybe"], ["yes"]), (["yes"], ["Yes."])])
def test_metrics_reject_bad_input(labels, answers):
    with pytest.raises(ValueError):
        pope_metrics(labels, answers)


# --------------------------------------------------------------------------- harness

COLORS = ("red", "green", "blue")


def write_split(folder, name="pope_random.jsonl", count=6):
    """`count` questions over three demo images saved as PNGs; labels alternate no/yes."""
    for color in COLORS:
        demo_image(color).save(folder / f"{color}.png")
    lines = [{"image": f"{COLORS[i % 3]}.png", "question": f"Is there a {('ball', 'cube')[i % 2]} in the image?",
              "label": ("no", "yes")[i % 2]} for i in range(count)]
    (folder / name).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder / name


@pytest.fixture(scope="module")
def models():
    return tiny_llava(seed=0), tiny_llava(seed=1, hidden_size=32, layers=1, vocab_width=448)


def test_load_questions_reads_the_official_text_key(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "image": "a.png", "text": "Is there a cat?", "label": "Yes"}\n\n'
                    '{"image": "b.png", "question": "Is there a dog?", "label": "no"}\n')
    assert load_questions(path) == [{"image": "a.png", "question": "Is there a cat?", "label": "yes",
                                     "line": f"{path}:1"},
                                    {"image": "b.png", "question": "Is there a dog?", "label": "no",
                                     "line": f"{path}:3"}]
    assert len(load_questions(path, limit=1)) == 1
    path.write_text('{"image": "a.png", "label": "yes"}\n')
    with pytest.raises(ValueError, match="question"):
        load_questions(path)


def test_collate_left_pads_tokens_and_stacks_pixels():
    rows = [{"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.int64),
             "pixel_values": torch.zeros(1, 3, 4, 4)},
            {"input_ids": torch.tensor([[8]]), "attention_mask": torch.ones(1, 1, dtype=torch.int64),
             "pixel_values": torch.ones(1, 3, 4, 4)}]
    batch = collate_left(rows, pad_id=PAD_ID)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [PAD_ID, PAD_ID, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["pixel_values"].shape == (2, 3, 4, 4)


def test_evaluate_pope_end_to_end(tmp_path, models):
    base, reward = models
    processor = tiny_llava_processor(tiny_tokenizer())
    path = write_split(tmp_path)
    records = load_questions(path)
    results = evaluate_pope(base, reward, processor, {"random": path, "adversarial": records[:4]}, tmp_path,
                            alphas=(0.0, 0.5, 1.0), batch_size=4, keep_answers=True, progress=False)

    assert set(results["splits"]) == {"random", "adversarial"}
    assert results["alphas"] == [0.0, 0.5, 1.0]
    keys = {"accuracy", "precision", "recall", "f1", "yes_ratio"}
    for split, n in (("random", 6), ("adversarial", 4)):
        result = results["splits"][split]
        assert set(result["alphas"]) == {0.0, 0.5, 1.0}
        for metrics in [result["base"], *result["alphas"].values()]:
            assert metrics["n"] == n
            assert all(0.0 <= metrics[k] <= 100.0 and math.isfinite(metrics[k]) for k in keys)
        assert result["alphas"][0.0] == result["base"]
        # The metrics are those of the kept answers, parsed.
        labels = [r["label"] for r in records[:n]]
        for setting, texts in result["answers"].items():
            scored = result["base"] if setting == "base" else result["alphas"][setting]
            assert scored == pope_metrics(labels, [parse_answer(t) for t in texts])

    # The base (guided_generate at alpha 0) answers what the base model's own greedy generate does.
    pre = Preprocessor("llava", processor.tokenizer, processor=processor)
    rows = [build_inputs(pre, f"USER: <image>\n{r['question']} Answer yes or no. ASSISTANT:",
                         demo_image(r["image"].removesuffix(".png"))) for r in records[:4]]
    inputs = collate_left(rows, PAD_ID)
    with torch.inference_mode():
        reference = base.generate(**inputs, max_new_tokens=4, do_sample=False)
    texts = processor.tokenizer.batch_decode(reference[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert results["splits"]["random"]["answers"]["base"][:4] == texts

    assert "adversarial" in format_table(results)
    write_results(results, tmp_path / "out" / "results.json", tmp_path / "out" / "f1.png")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["splits"]["random"]["alphas"]["0.5"]["n"] == 6
    assert (tmp_path / "out" / "f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_pope_command(tmp_path, models, capsys):
    processor = tiny_llava_processor(tiny_tokenizer())
    for role, model in zip(("base", "reward"), models):
        model.save_pretrained(tmp_path / role)
        processor.save_pretrained(tmp_path / role)
    data = tmp_path / "data"
    data.mkdir()
    write_split(data, "pope_adversarial.jsonl")
    parser = argparse.ArgumentParser()
    cli_pope.add_parser(parser.add_subparsers(dest="command"))
    common = ["eval-pope", "--base", str(tmp_path / "base"), "--reward", str(tmp_path / "reward"),
              "--data", str(data), "--alphas", "0.5", "--batch-size", "4", "--no-progress"]
    args = parser.parse_args(common + ["--splits", "adversarial", "--limit", "5", "--out", str(tmp_path / "r.json"),
                                       "--plot", str(tmp_path / "f1.png")])
    assert cli_pope.run(args) == 0
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["splits"]["adversarial"]["base"]["n"] == 5
    assert list(saved["splits"]["adversarial"]["alphas"]) == ["0.5"]
    assert (tmp_path / "f1.png").is_file()
    assert "alpha 0.5" in capsys.readouterr().out

    from tita_ext.cli import CLIError

    with pytest.raises(CLIError, match="pope_random.jsonl"):
        cli_pope.run(parser.parse_args(common))  # the default splits: only adversarial exists
    with pytest.raises(CLIError, match="template"):
        cli_pope.run(parser.parse_args(common + ["--splits", "adversarial", "--template", "{image} {question}"]))


def test_eval_pope_without_matplotlib_says_so_before_evaluating(tmp_path, monkeypatch):
    """--plot needs matplotlib: refused up front with what to do; --plot '' needs none."""
    import importlib.util

    from tita_ext.cli import CLIError

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
    parser = argparse.ArgumentParser()
    cli_pope.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval-pope", "--base", str(tmp_path / "missing"), "--reward", str(tmp_path / "missing"),
                              "--data", str(tmp_path)])
    with pytest.raises(CLIError, match=r"--plot needs matplotlib: pip install matplotlib .*or pass --plot ''"):
        cli_pope.run(args)
    results = {"splits": {}, "alphas": [], "seconds": 0.0}
    write_results(results, tmp_path / "r.json", "")  # an empty plot path writes no plot
    assert (tmp_path / "r.json").is_file() and not (tmp_path / "f1.png").exists()
