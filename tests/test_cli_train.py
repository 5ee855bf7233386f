"""`tita-ext pairs` and `tita-ext train-reward` (tita_ext/training/cli_train.py) on tiny models saved
to folders: the pairs file, a trained reward folder that guided_generate runs, LoRA, and input errors."""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("PIL")

import tita_ext  # noqa: E402
from tita_ext.cli import CLIError, load_model, load_preprocessors  # noqa: E402
from tita_ext.tiny_models import demo_image, tiny_llama, tiny_llava, tiny_llava_processor, tiny_tokenizer  # noqa: E402
from tita_ext.training import cli_train  # noqa: E402

COLORS = ("red", "green", "blue", "yellow", "white", "black")
QUESTIONS = ("What is in the picture?", "Is there a cube in the image?")


def parse(*argv: str) -> argparse.Namespace:
    """The arguments as `tita-ext` parses them, with only this module's subcommands."""
    parser = argparse.ArgumentParser(prog="tita-ext")
    cli_train.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args([str(a) for a in argv])


def call(*argv: str) -> int:
    return cli_train.run(parse(*argv))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, pathlib.Path]:
    """base/ (tiny LLaVA), init/ (a smaller tiny LLaVA), text-init/ (a tiny Llama) saved with the
    processor or tokenizer; data/images/*.png and data/items.jsonl (6 items, labelled)."""
    root = tmp_path_factory.mktemp("cli-train")
    processor = tiny_llava_processor(tiny_tokenizer())
    for name, model in {"base": tiny_llava(seed=0), "init": tiny_llava(seed=1, hidden_size=32, layers=1)}.items():
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    tiny_llama(seed=2, hidden_size=32, layers=1).save_pretrained(root / "text-init")
    processor.tokenizer.save_pretrained(root / "text-init")
    (root / "data" / "images").mkdir(parents=True)
    lines = []
    for i, color in enumerate(COLORS):
        demo_image(color).save(root / "data" / "images" / f"{color}.png")
        lines.append({"image": f"images/{color}.png", "question": QUESTIONS[i % 2],
                      "answer": f"A {color} cube on a table."})
    (root / "data" / "items.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {"root": root, "base": root / "base", "init": root / "init", "text-init": root / "text-init",
            "data": root / "data" / "items.jsonl"}


@pytest.fixture(scope="module")
def labelled_pairs(world) -> pathlib.Path:
    """Labelled pairs (chosen: the data's answers, which the random base never says), written into a
    folder other than the data's so the image paths must be rewritten relative to it."""
    out = world["root"] / "elsewhere" / "pairs.jsonl"
    assert call("pairs", "--base", world["base"], "--data", world["data"], "--out", out, "--labelled",
                "--max-new-tokens", "4", "--batch-size", "4", "--no-progress") == 0
    return out


def read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- pairs


def test_pairs_writes_the_pairs_and_counts_every_item(world, tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    assert call("pairs", "--base", world["base"], "--data", world["data"], "--out", out, "--max-new-tokens", "4",
                "--batch-size", "4", "--step", "900", "--no-progress") == 0
    printed = capsys.readouterr().out
    match = re.search(r"kept (\d+) pairs, dropped (\d+) .*\(of (\d+) items\)", printed)
    kept, dropped, items = (int(x) for x in match.groups())
    rows = read_jsonl(out)
    assert items == len(COLORS) and kept + dropped == items and kept == len(rows)
    for row in rows:
        assert set(row) == {"image", "prompt", "chosen", "rejected"}
        assert (tmp_path / row["image"]).resolve().is_file()
        assert row["prompt"].startswith("USER: <image>\n") and row["prompt"].endswith(" ASSISTANT:")
        assert row["chosen"] != row["rejected"]


def test_pairs_labelled_and_limit(world, labelled_pairs, tmp_path, capsys):
    rows = read_jsonl(labelled_pairs)
    assert len(rows) == len(COLORS)  # the random base never says the labelled answer
    assert [row["chosen"] for row in rows] == [f"A {color} cube on a table." for color in COLORS]
    assert all(not pathlib.Path(row["image"]).is_absolute() and row["image"].startswith("..") for row in rows)
    assert all((labelled_pairs.parent / row["image"]).resolve().is_file() for row in rows)

    out = tmp_path / "two.jsonl"
    assert call("pairs", "--base", world["base"], "--data", world["data"], "--out", out, "--labelled",
                "--limit", "2", "--max-new-tokens", "2", "--no-progress", "--template",
                "{question}\\nAnswer:") == 0
    rows = read_jsonl(out)
    assert len(rows) == 2 and rows[0]["prompt"] == "<image>\nWhat is in the picture?\nAnswer:"
    assert "(of 2 items)" in capsys.readouterr().out


# --------------------------------------------------------------------------- train-reward


def reward_state(folder):
    """The folder's preprocessor and model, as the tita-ext commands load them."""
    pre = load_preprocessors({"reward": str(folder)})["reward"]
    return pre, load_model(str(folder), pre, torch.float32, "cpu")


def test_train_reward_saves_a_trained_folder_that_guides(world, labelled_pairs, tmp_path, capsys):
    out = tmp_path / "reward"
    assert call("train-reward", "--init", world["init"], "--pairs", labelled_pairs, "--out", out, "--lr", "1e-2",
                "--batch-size", "2", "--max-steps", "3", "--no-progress") == 0
    printed = capsys.readouterr().out
    assert "3 steps in" in printed and "loss 0.6931 ->" in printed and f"saved the reward model to {out}" in printed

    _, init = reward_state(world["init"])
    pre, reward = reward_state(out)
    changed = [k for k, v in reward.state_dict().items() if not torch.equal(v, init.state_dict()[k])]
    assert "lm_head.weight" in changed and any("vision_tower" in k for k in changed)

    base_pre = load_preprocessors({"base": str(world["base"])})["base"]
    base = load_model(str(world["base"]), base_pre, torch.float32, "cpu")
    rows = read_jsonl(labelled_pairs)[:2]
    images = [demo_image(COLORS[0]), demo_image(COLORS[1])]
    inputs = pre.processor(text=[row["prompt"] for row in rows], images=images, return_tensors="pt", padding=True)
    out = tita_ext.guided_generate(base, reward, inputs, alpha=0.6, max_new_tokens=4, tokenizer=pre.tokenizer)
    assert out.new_tokens.shape == (2, 4) and bool(out.token_rewards.abs().sum() > 0)


def test_train_reward_text_only_init_drops_the_images(world, labelled_pairs, tmp_path):
    out = tmp_path / "text-reward"
    assert call("train-reward", "--init", world["text-init"], "--pairs", labelled_pairs, "--out", out,
                "--lr", "1e-2", "--batch-size", "3", "--max-steps", "1", "--no-progress") == 0
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()


def test_train_reward_lora_merges_the_adapter(world, labelled_pairs, tmp_path, capsys):
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    assert call("train-reward", "--init", world["init"], "--pairs", labelled_pairs, "--out", out, "--lr", "1e-2",
                "--batch-size", "2", "--max-steps", "2", "--lora", "4", "--no-progress") == 0
    assert "LoRA rank 4" in capsys.readouterr().out
    _, init = reward_state(world["init"])
    _, reward = reward_state(out)
    assert set(reward.state_dict()) == set(init.state_dict())  # merged: no lora_ keys left
    changed = {k for k, v in reward.state_dict().items() if not torch.equal(v, init.state_dict()[k])}
    assert changed and all("language_model" in k and k.rsplit(".", 2)[-2] in cli_train.ATTENTION_PROJECTIONS
                           for k in changed)


def test_train_reward_lora_without_peft_says_how_to_install(world, labelled_pairs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    with pytest.raises(CLIError, match=r"pip install tita-ext\[train\]"):
        call("train-reward", "--init", world["init"], "--pairs", labelled_pairs, "--out", tmp_path / "r",
             "--lora", "4")


# --------------------------------------------------------------------------- errors


def write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    return path


def pairs_error(world, tmp_path, *extra, data=None):
    return call("pairs", "--base", world["base"], "--data", data or world["data"], "--out", tmp_path / "p.jsonl",
                "--no-progress", *extra)


def test_pairs_input_errors(world, tmp_path):
    image = str(world["root"] / "data" / "images" / "red.png")
    with pytest.raises(CLIError, match="--data file .* does not exist"):
        pairs_error(world, tmp_path, data=tmp_path / "missing.jsonl")
    bad = write(tmp_path / "bad.jsonl", json.dumps({"image": image, "question": "q"}) + "\n\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: not valid JSON"):
        pairs_error(world, tmp_path, data=bad)
    bad = write(tmp_path / "nokey.jsonl", json.dumps({"image": image}) + "\n")
    with pytest.raises(ValueError, match=r"nokey\.jsonl:1: missing key 'question'"):
        pairs_error(world, tmp_path, data=bad)
    with pytest.raises(ValueError, match=r"nokey\.jsonl:1: missing key 'answer'"):
        pairs_error(world, tmp_path, "--labelled", data=write(bad, json.dumps({"image": image, "question": "q"})))
    bad = write(tmp_path / "noimage.jsonl", json.dumps({"image": image, "question": "q"}) + "\n"
                + json.dumps({"image": "nowhere.png", "question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"noimage\.jsonl:2: 'image': image .*nowhere\.png.* does not exist"):
        pairs_error(world, tmp_path, data=bad)
    bad = write(tmp_path / "prompt.jsonl", json.dumps({"image": image, "question": "USER: <image>\nq ASSISTANT:"}))
    with pytest.raises(ValueError, match=r"prompt\.jsonl:1: 'question' holds the image placeholder '<image>'"):
        pairs_error(world, tmp_path, data=bad)
    with pytest.raises(CLIError, match="holds no items"):
        pairs_error(world, tmp_path, data=write(tmp_path / "empty.jsonl", "\n"))
    with pytest.raises(CLIError, match=r"--step must be in \[0, --steps\)"):
        pairs_error(world, tmp_path, "--step", "1000")
    with pytest.raises(CLIError, match="--batch-size must be at least 1"):
        pairs_error(world, tmp_path, "--batch-size", "0")
    with pytest.raises(CLIError, match=r"--template must hold \{question\}"):
        pairs_error(world, tmp_path, "--template", "USER: <image> ASSISTANT:")
    with pytest.raises(CLIError, match="--base folder .* does not exist"):
        call("pairs", "--base", tmp_path / "nobase", "--data", world["data"], "--out", tmp_path / "p.jsonl")
    with pytest.raises(CLIError, match="text-only model"):
        call("pairs", "--base", world["text-init"], "--data", world["data"], "--out", tmp_path / "p.jsonl")


def test_train_reward_input_errors(world, labelled_pairs, tmp_path):
    def train(pairs, *extra):
        # copies of the pairs file's lines, written elsewhere: --images is where their paths start
        return call("train-reward", "--init", world["init"], "--pairs", pairs, "--out", tmp_path / "r",
                    "--images", labelled_pairs.parent, "--no-progress", *extra)

    good = labelled_pairs.read_text().splitlines()
    with pytest.raises(CLIError, match="--pairs file .* does not exist"):
        train(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match=r"p1\.jsonl:2: not valid JSON"):
        train(write(tmp_path / "p1.jsonl", good[0] + "\n[1, 2\n"))
    with pytest.raises(ValueError, match=r"p2\.jsonl:2: missing key 'rejected'"):
        row = json.loads(good[1])
        del row["rejected"]
        train(write(tmp_path / "p2.jsonl", good[0] + "\n" + json.dumps(row) + "\n"))
    with pytest.raises(ValueError, match=r"p3\.jsonl:1: 'chosen' must be a string"):
        row = dict(json.loads(good[0]), chosen=3)
        train(write(tmp_path / "p3.jsonl", json.dumps(row) + "\n"))
    with pytest.raises(ValueError, match=r"p4\.jsonl:1: 'image': image .* does not exist"):
        row = dict(json.loads(good[0]), image="gone.png")
        train(write(tmp_path / "p4.jsonl", json.dumps(row) + "\n"))
    with pytest.raises(CLIError, match="holds no pairs"):
        train(write(tmp_path / "p5.jsonl", ""))
    with pytest.raises(CLIError, match="--max-steps must be at least 1"):
        train(labelled_pairs, "--max-steps", "0")
    with pytest.raises(CLIError, match="--out must differ from --init"):
        call("train-reward", "--init", world["init"], "--pairs", labelled_pairs, "--out", world["init"])
    with pytest.raises(CLIError, match="--init folder .* has no config.json"):
        call("train-reward", "--init", tmp_path, "--pairs", labelled_pairs, "--out", tmp_path / "r")


def test_errors_exit_2_through_the_tita_ext_command(world, tmp_path, capsys):
    """Once tita_ext/cli.py wires these subcommands: an input error is `tita-ext: error: ...`, exit 2."""
    from tita_ext import cli

    try:
        cli.build_parser().parse_args(["pairs", "--base", "b", "--data", "d", "--out", "o"])
    except SystemExit:
        pytest.skip("tita_ext/cli.py does not wire the pairs command yet")
    bad = write(tmp_path / "bad.jsonl", "{}\n")
    assert cli.main(["pairs", "--base", str(world["base"]), "--data", str(bad), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tita-ext: error: ") and "bad.jsonl:1: missing key 'image'" in err
