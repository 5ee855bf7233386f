"""Every command fails before the work (item 4 of issue 15) and every input-file error names the
file, the line and the key (item 5): `tita-ext pairs`, `train-reward` and `eval-pope` share one
JSON-lines reader (tita_ext/jsonl.py), check their output paths, images and prompt lengths
(against the model's maximum positions) before any model is loaded. Here a loaded model is a
test failure: tita_ext.cli.load_model is replaced by one that raises."""

from __future__ import annotations

import argparse
import json
import pathlib

import pytest

pytest.importorskip("transformers")
pytest.importorskip("PIL")

from tita_ext import cli  # noqa: E402
from tita_ext.eval import cli_pope  # noqa: E402
from tita_ext.safe_write import MANIFEST, OutputPathError, verify_folder  # noqa: E402
from tita_ext.tiny_models import demo_image, tiny_llava, tiny_llava_processor, tiny_tokenizer  # noqa: E402
from tita_ext.training import cli_train  # noqa: E402

LONG = "cube " * 3000  # over 1000 tokens: more than the tiny models' 1024 positions with the image


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, pathlib.Path]:
    """base/ and reward/ (tiny LLaVAs with the processor) and images/red.png."""
    root = tmp_path_factory.mktemp("inputs")
    processor = tiny_llava_processor(tiny_tokenizer())
    for name, model in {"base": tiny_llava(seed=0), "reward": tiny_llava(seed=1, hidden_size=32, layers=1)}.items():
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    (root / "images").mkdir()
    demo_image("red").save(root / "images" / "red.png")
    return {"root": root, "base": root / "base", "reward": root / "reward"}


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input check")

    monkeypatch.setattr(cli, "load_model", refuse)


def parse(module, *argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tita-ext")
    module.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args([str(a) for a in argv])


def lines(*records) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def run_pairs(world, data: pathlib.Path, out: pathlib.Path | None = None, *extra) -> int:
    out = out or data.parent / "pairs-out.jsonl"
    return cli_train.run(parse(cli_train, "pairs", "--base", world["base"], "--data", data, "--out", out,
                               "--images", world["root"] / "images", "--no-progress", *extra))


def run_train(world, pairs: pathlib.Path, out: pathlib.Path | None = None, init: str = "reward", *extra) -> int:
    out = out or pairs.parent / "reward-out"
    return cli_train.run(parse(cli_train, "train-reward", "--init", world[init], "--pairs", pairs, "--out", out,
                               "--images", world["root"] / "images", "--no-progress", *extra))


def run_pope(world, data: pathlib.Path, *extra) -> int:
    return cli_pope.run(parse(cli_pope, "eval-pope", "--base", world["base"], "--reward", world["reward"],
                              "--data", data.parent, "--images", world["root"] / "images", "--splits", "random",
                              "--no-progress", "--plot", "", *extra))


GOOD = {"pairs": {"image": "red.png", "question": "Is there a cube?"},
        "train-reward": {"image": "red.png", "prompt": "USER: <image>\nIs there a cube? ASSISTANT:",
                         "chosen": "Yes.", "rejected": "No."},
        "eval-pope": {"image": "red.png", "question": "Is there a cube?", "label": "yes"}}
TEXT_KEY = {"pairs": "question", "train-reward": "chosen", "eval-pope": "question"}
EMPTY = {"pairs": "holds no items", "train-reward": "holds no pairs", "eval-pope": "holds no questions"}


def command_file(world, tmp_path, command: str, content: bytes):
    """The input file of `command` holding `content`, and a call that runs the command on it."""
    path = tmp_path / ("pope_random.jsonl" if command == "eval-pope" else "input.jsonl")
    path.write_bytes(content)
    runner = {"pairs": run_pairs, "train-reward": run_train, "eval-pope": run_pope}[command]
    return path, lambda: runner(world, path)


def bad_files(command: str) -> list[tuple[bytes, str]]:
    good, key = GOOD[command], TEXT_KEY[command]
    return [
        (lines(good, b'{"image": "red.png", "question": '), r":2: not valid JSON \(Expecting value at column"),
        (lines(good, ["red.png", "Is there a cube?"]), r":2: expected a JSON object with keys .*, got an array"),
        (lines(good, dict(good, **{key: 123})), rf":2: '{key}' must be a string, got a number \(123\)"),
        (lines(good, {k: v for k, v in good.items() if k != key}), rf":2: missing key '{key}'"),
        (lines(good, b'{"image": "red.png", "question": "caf\xe9?"}'), r":2: not valid UTF-8 \(byte 38 .*b'\\xe9'"),
        (lines(good, dict(good, image="gone.png")), r":2: 'image': image '.*gone\.png' does not exist"),
        (lines(good, dict(good, image="../inputs.txt")), r":2: 'image': .*inputs\.txt' is not an image PIL can read"),
        (lines(dict(good, **{key: LONG})), r":1: the prompt with its .* is \d+ tokens, \d+ with the image and new "
                                          r"tokens: more than the 1024 positions of .* \(max_position_embeddings"),
        (b"\n  \n", EMPTY[command]),
    ]


CASES = [(command, content, match) for command in GOOD for content, match in bad_files(command)]


@pytest.mark.parametrize("command,content,match", CASES,
                         ids=[f"{c}-{i % len(bad_files(c))}" for i, (c, _, _) in enumerate(CASES)])
def test_input_file_errors_name_the_file_line_and_key_before_any_model_loads(world, tmp_path, no_model_loads,
                                                                              command, content, match):
    (world["root"] / "inputs.txt").write_text("not an image")
    path, run = command_file(world, tmp_path, command, content)
    prefix = "" if match == EMPTY[command] else str(path).replace(".", r"\.")
    with pytest.raises(Exception, match=prefix + match) as error:
        run()
    assert isinstance(error.value, (ValueError, cli.CLIError)), type(error.value)


def test_a_bom_and_blank_lines_are_fine(world, tmp_path):
    path = tmp_path / "pope_random.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + lines(GOOD["eval-pope"]) + b"\n")
    from tita_ext.eval.run_pope import load_questions

    assert [q["question"] for q in load_questions(path, image_folder=world["root"] / "images")] == ["Is there a cube?"]


# --------------------------------------------------------------------------- output paths, before the work


def test_output_paths_are_checked_before_any_model_loads(world, tmp_path, no_model_loads):
    data = tmp_path / "items.jsonl"
    data.write_bytes(lines(GOOD["pairs"]))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(lines(GOOD["train-reward"]))
    (tmp_path / "pope_random.jsonl").write_bytes(lines(GOOD["eval-pope"]))
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "my-notes").mkdir()
    (tmp_path / "my-notes" / "notes.txt").write_text("keep me")

    with pytest.raises(OutputPathError, match=r"--out '.*a-folder' is a folder: give the path of the file"):
        run_pairs(world, data, tmp_path / "a-folder")
    with pytest.raises(OutputPathError, match=r"--out '.*a-file' is an existing file: give the path of a folder"):
        run_train(world, pairs, tmp_path / "a-file")
    with pytest.raises(OutputPathError, match=r"--out folder '.*my-notes' holds other files .*new or empty folder"):
        run_train(world, pairs, tmp_path / "my-notes")
    assert (tmp_path / "my-notes" / "notes.txt").read_text() == "keep me"
    with pytest.raises(OutputPathError, match=r"--out '.*a-folder' is a folder"):
        run_pope(world, tmp_path / "pope_random.jsonl", "--out", tmp_path / "a-folder")
    with pytest.raises(OutputPathError, match=r"--plot '.*a-folder' is a folder"):
        run_pope(world, tmp_path / "pope_random.jsonl", "--out", tmp_path / "r.json", "--plot", tmp_path / "a-folder")


# --------------------------------------------------------------------------- the runs themselves


def test_train_reward_on_mixed_image_and_text_only_pairs_replaces_out_whole(world, tmp_path, capsys):
    """A pairs file mixing image pairs and text-only pairs (image null) trains (main: KeyError
    'pixel_values'); --out, a previous model folder, is replaced whole, with a manifest."""
    text_only = {"image": None, "prompt": "USER: Is the sky green? ASSISTANT:", "chosen": "No.", "rejected": "Yes."}
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(lines(text_only, GOOD["train-reward"], text_only, GOOD["train-reward"]))
    out = tmp_path / "reward"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "from-the-previous-run.bin").write_text("old")
    assert run_train(world, pairs, out, "reward", "--max-steps", "2", "--batch-size", "2", "--lr", "1e-3") == 0
    assert "2 steps in" in capsys.readouterr().out
    assert not (out / "from-the-previous-run.bin").exists()
    assert {"config.json", "model.safetensors", MANIFEST} <= {p.name for p in out.iterdir()}
    verify_folder(out, required=("config.json", "model.safetensors"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl", "reward"]


def test_eval_pope_results_say_when_and_from_what_and_a_failed_write_keeps_the_old(world, tmp_path, capsys,
                                                                                     monkeypatch):
    data = tmp_path / "pope_random.jsonl"
    data.write_bytes(lines(GOOD["eval-pope"], dict(GOOD["eval-pope"], label="no")))
    out = tmp_path / "results.json"
    out.write_text('{"from": "an older run"}\n')
    assert run_pope(world, data, "--out", out, "--alphas", "0.5", "--max-new-tokens", "1") == 0
    assert f"note: --out {out} exists; it is replaced when this run finishes" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["finished"].endswith("+00:00") and saved["inputs"]["base"] == str(world["base"])
    assert saved["splits"]["random"]["base"]["n"] == 2

    from tita_ext.eval import run_pope as harness

    def broken_plot(results, png):
        png.write(b"\x89PNG half")
        raise OSError("no space left on device")

    monkeypatch.setattr(harness, "plot_f1", broken_plot)
    before = out.read_bytes()
    with pytest.raises(OSError, match="no space"):
        harness.write_results({"splits": {}}, out, tmp_path / "f1.png")
    assert out.read_bytes() == before and not (tmp_path / "f1.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pope_random.jsonl", "results.json"]


def test_evaluate_pope_checks_every_split_s_images_before_answering(world, monkeypatch):
    """The library call too: a missing image in the last split is found before the first batch
    (main: after answering every earlier split, without naming the question)."""
    from tita_ext.eval import run_pope as harness

    def refuse(*args, **kwargs):
        raise AssertionError("a batch was answered before the images were checked")

    monkeypatch.setattr(harness, "answer_batch", refuse)
    good = GOOD["eval-pope"]
    gone = dict(good, image="gone.png")
    questions = {"random": [good] * 3, "adversarial": [good, gone, gone]}
    with pytest.raises(ValueError, match=r"adversarial question 1: 'image': image '.*gone\.png' does not exist"):
        harness.evaluate_pope(tiny_llava(seed=0), tiny_llava(seed=1, hidden_size=32, layers=1),
                              tiny_llava_processor(tiny_tokenizer()), questions, world["root"] / "images",
                              progress=False)
