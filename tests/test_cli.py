"""The `tita-ext` command (in process, and once through `python3 -m tita_ext`), the prompt-input
builder it uses, and the guided_generate example program."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("PIL")

from tita_ext import guided_generate  # noqa: E402
from tita_ext import tiny_models as tiny  # noqa: E402
from tita_ext.cli import DEMO_PROMPT, main  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+('.*'|\".*\")\s+(-?\d+\.\d+)\s+([+-]\d+\.\d+)$")
SUMMARY = re.compile(r"^finish: (\w+), (\d+) new tokens, mean reward ([+-]\d+\.\d+), .* ([\d.]+) tokens/s$")


def reward_table(stdout: str) -> tuple[list[int], list[float], str, int]:
    """The printed table: token ids, rewards, finish reason and the summary's token count."""
    rows = [ROW.match(line) for line in stdout.splitlines()]
    rows = [m for m in rows if m]
    assert [int(m.group(1)) for m in rows] == list(range(len(rows)))
    (summary,) = [m for m in map(SUMMARY.match, stdout.splitlines()) if m]
    return [int(m.group(2)) for m in rows], [float(m.group(5)) for m in rows], summary.group(1), int(summary.group(2))


def without_timings(stdout: str) -> str:
    return "\n".join(line for line in stdout.splitlines() if not line.startswith("finish:"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    """The demo's models saved by `tita-ext decode-demo --save-demo-models`, and a red image written by PIL."""
    root = tmp_path_factory.mktemp("demo-models")
    assert main(["decode-demo", "--save-demo-models", str(root), "--max-new-tokens", "1"]) == 0
    tiny.demo_image("red").save(root / "red.png")
    return {"base": str(root / "base"), "reward": str(root / "reward"), "image": str(root / "red.png")}


def generate_args(folders: dict[str, str], *extra: str, reward: str | None = None) -> list[str]:
    return ["generate", "--base", folders["base"], "--reward", reward or folders["reward"], "--image",
            folders["image"], "--prompt", DEMO_PROMPT, *extra]


def test_no_arguments_runs_the_demo_story(monkeypatch):
    """`tita-ext` alone is `tita-ext demo` with its defaults (the story itself: tests/test_demo.py)."""
    from tita_ext.demo import cli_demo

    seen = []
    monkeypatch.setattr(cli_demo, "run", lambda args: seen.append(args) or 0)
    assert main([]) == 0
    (args,) = seen
    assert args.command == "demo" and not args.quick and args.out == "tita-demo" and args.results is None


def test_decode_demo_prints_guided_tokens(capsys):
    """The decode demo's streamed text and reward table are guided_generate's output."""
    assert main(["decode-demo"]) == 0
    stdout = capsys.readouterr().out
    ids, rewards, finish, count = reward_table(stdout)

    processor = tiny.tiny_llava_processor(tiny.tiny_tokenizer())
    inputs = processor(images=tiny.demo_image("red"), text=DEMO_PROMPT, return_tensors="pt")
    want = guided_generate(tiny.tiny_llava(seed=0), tiny.tiny_llava(seed=1, hidden_size=32, layers=1, vocab_width=448),
                           inputs, alpha=0.6, max_new_tokens=16, tokenizer=processor)
    length = int(want.lengths[0])
    assert ids == want.new_tokens[0, :length].tolist() and count == length and finish == want.finish_reason[0]
    torch.testing.assert_close(torch.tensor(rewards), want.token_rewards[0, :length], atol=1e-3, rtol=0)
    text = processor.tokenizer.decode(ids, skip_special_tokens=True)
    assert f"guided (alpha 0.6):  {text}\n" in stdout
    assert "base only (alpha 0): " in stdout and "random" in stdout


def test_generate_on_saved_folders_matches_the_demo(folders, capsys):
    """Saved, reloaded from folders, with the image read from a file: the same tokens as the demo."""
    assert main(["decode-demo", "--max-new-tokens", "5"]) == 0
    demo_ids, *_ = reward_table(capsys.readouterr().out)
    assert main(generate_args(folders, "--max-new-tokens", "5", "--show-rewards")) == 0
    captured = capsys.readouterr()
    ids, rewards, finish, count = reward_table(captured.out)
    assert ids == demo_ids and count == len(ids) == 5 and finish == "length"
    assert captured.out.startswith(tiny.tiny_tokenizer().decode(ids, skip_special_tokens=True))
    assert "Loading weights" not in captured.err  # progress bars are off


def test_generate_places_the_image_placeholder(folders, capsys):
    """A prompt without "<image>" gets it at the start; without --show-rewards only the text is printed."""
    outputs = []
    for prompt in ("What is in the picture?", "<image>\nWhat is in the picture?"):
        args = generate_args(folders, "--max-new-tokens", "3")
        args[args.index(DEMO_PROMPT)] = prompt
        assert main(args) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and "finish:" not in outputs[0]


def test_sampling_with_a_seed_is_reproducible(folders, capsys):
    outputs = []
    for seed in ("3", "3", "4"):
        assert main(generate_args(folders, "--do-sample", "--seed", seed, "--temperature", "1.5",
                                  "--max-new-tokens", "8", "--show-rewards")) == 0
        outputs.append(without_timings(capsys.readouterr().out))
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_missing_folder_is_a_clean_error(folders, tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")
    assert main(["generate", "--base", missing, "--reward", folders["reward"], "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert f"tita-ext: error: --base folder {missing!r} does not exist" in err and "Traceback" not in err
    assert main(["generate", "--base", folders["base"]]) == 2  # argparse: required options
    assert "the following arguments are required: --reward, --prompt" in capsys.readouterr().err


def test_reward_tokenizer_that_differs_is_refused(folders, tmp_path, capsys):
    """Two ids swapped in the reward folder's tokenizer.json: refused, naming the first differing token."""
    reward = tmp_path / "reward"
    shutil.copytree(folders["reward"], reward)
    config = json.loads((reward / "tokenizer.json").read_text())
    vocab = config["model"]["vocab"]
    token_of = {i: token for token, i in vocab.items()}
    vocab[token_of[300]], vocab[token_of[301]] = 301, 300
    (reward / "tokenizer.json").write_text(json.dumps(config))

    assert main(generate_args(folders, reward=str(reward))) == 2
    captured = capsys.readouterr()
    assert (f"tita-ext: error: the base and reward tokenizers differ at id 300: base has {token_of[300]!r}, "
            f"reward has {token_of[301]!r}") in captured.err
    assert captured.out == ""  # refused before any model was loaded or text printed


def test_qwen2_vl_inputs_without_the_processor(tmp_path):
    """A Qwen2-VL folder whose processor cannot load (no torchvision) still gets what the processor
    would give: the tokenizer + PIL image processor path equals tiny_models.qwen2_vl_inputs."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from tita_ext.prompt_inputs import build_inputs, load_preprocessor

    tiny.tiny_qwen2_vl().config.save_pretrained(tmp_path)
    tokenizer = tiny.tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    Qwen2VLImageProcessorPil(min_pixels=tiny.IMAGE_SIZE ** 2 // 4, max_pixels=tiny.IMAGE_SIZE ** 2,
                             patch_size=tiny.PATCH_SIZE, merge_size=2, temporal_patch_size=2).save_pretrained(tmp_path)
    pre = load_preprocessor(str(tmp_path), "qwen2_vl")
    image = tiny.demo_image("green")
    want = tiny.qwen2_vl_inputs(tokenizer, ["<image> What is it?"], [image])
    for prompt in ("<image> What is it?", " What is it?"):  # placeholder given, or put at the start
        got = build_inputs(pre, prompt, image)
        for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"):
            if key in got or pre.processor is None:  # a real processor (with torchvision) may omit the last
                assert torch.equal(got[key], want[key]), key
    with pytest.raises(ValueError, match="no image was given"):
        build_inputs(pre, "<image> What is it?")


def test_python_m_tita_ext_decode_demo():
    done = subprocess.run([sys.executable, "-m", "tita_ext", "decode-demo", "--max-new-tokens", "3", "--color", "blue"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    ids, _, _, count = reward_table(done.stdout)
    assert len(ids) == count == 3 and "a blue 40x40 square" in done.stdout


def test_guided_generate_example_runs():
    done = subprocess.run([sys.executable, str(ROOT / "python" / "guided_generate_example.py")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"^row (\d): .*\n +(\d+) tokens \((\w+)\), mean token reward ([+-]\d+\.\d+)$", done.stdout, re.M)
    assert [row[0] for row in rows] == ["0", "1"]
    assert all(1 <= int(row[1]) <= 12 and row[2] in ("eos", "length", "stop_string") for row in rows)
