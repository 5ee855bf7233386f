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
    assert "the following arguments are required: --reward" in capsys.readouterr().err
    assert main(["generate", "--base", folders["base"], "--reward", folders["reward"]]) == 2
    assert "one of the arguments --prompt --prompts is required" in capsys.readouterr().err


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


def test_help_imports_neither_torch_nor_transformers():
    """`tita-ext --help` prints at once: the top level and its command list load no heavy module."""
    probe = ("import runpy, sys\n"
             "sys.argv = ['tita-ext', '--help']\n"
             "try:\n"
             "    runpy.run_module('tita_ext', run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'numpy'))\n"
             "print('HEAVY', heavy)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "train-reward" in done.stdout and "eval-pope" in done.stdout  # every command is listed
    assert done.stdout.strip().endswith("HEAVY []"), done.stdout[-500:]


def test_subcommand_help_still_complete(capsys):
    for command, option in (("generate", "--prompts"), ("pairs", "--base"), ("eval-pope", "--alphas"),
                            ("demo", "--quick")):
        assert main([command, "--help"]) == 0
        assert option in capsys.readouterr().out


def write_prompts(path: pathlib.Path, lines: list) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def test_prompts_file_to_jsonl_out(folders, tmp_path, capsys):
    """--prompts in, --out JSON lines (atomic: no temporary file left), each line the same decode
    as a --prompt run; --threads sets torch's threads."""
    image = pathlib.Path(folders["image"])
    shutil.copy(image, tmp_path / "red.png")
    prompts = write_prompts(tmp_path / "prompts.jsonl", [
        {"prompt": DEMO_PROMPT, "image": "red.png", "id": "a"}, "", {"prompt": "What is in the picture?",
                                                                   "image": "red.png"}])
    out = tmp_path / "results.jsonl"
    threads = torch.get_num_threads()
    try:
        assert main(["generate", "--base", folders["base"], "--reward", folders["reward"], "--prompts", prompts,
                     "--out", str(out), "--max-new-tokens", "4", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 3] and records[0]["id"] == "a" and "id" not in records[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.jsonl", "red.png", "results.jsonl"]
    capsys.readouterr()
    assert main(generate_args(folders, "--max-new-tokens", "4", "--show-rewards")) == 0
    ids, *_ = reward_table(capsys.readouterr().out)
    assert records[0]["new_tokens"] == ids and records[0]["prompt"] == DEMO_PROMPT
    assert records[0]["text"] == tiny.tiny_tokenizer().decode(ids, skip_special_tokens=True)
    # Without --out: the same JSON lines on stdout.
    assert main(["generate", "--base", folders["base"], "--reward", folders["reward"], "--prompts", prompts,
                 "--max-new-tokens", "4"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["new_tokens"] for r in printed] == [r["new_tokens"] for r in records]


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "hi"', ], r"prompts.jsonl:1: not valid JSON"),
    ([{"prompt": "hi"}, ["hi"]], r"prompts.jsonl:2: each line must be a JSON object .* got a list"),
    ([{"prompt": 123}], r"prompts.jsonl:1: key \"prompt\" must be a non-empty string, got 123"),
    ([{"prompt": "hi", "image": "missing.png"}], r"prompts.jsonl:1: key \"image\": no file .*missing.png"),
    ([{"prompt": "hi", "answer": "x"}], r"prompts.jsonl:1: unknown key\(s\) answer"),
    ([], r"holds no prompts"),
])
def test_bad_prompts_file_names_file_line_and_key(folders, tmp_path, capsys, lines, message):
    prompts = write_prompts(tmp_path / "prompts.jsonl", lines)
    assert main(["generate", "--base", folders["base"], "--reward", folders["reward"], "--prompts", prompts]) == 2
    captured = capsys.readouterr()
    assert re.search(message, captured.err) and captured.out == ""


def test_out_path_checked_before_any_work(folders, tmp_path, capsys):
    args = ["generate", "--base", folders["base"], "--reward", folders["reward"], "--prompt", "hi"]
    assert main(args + ["--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "no" / "r.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_bytes(b'{"prompt": "ok"}\n{"prompt": "\xff"}\n')
    assert main(["generate", "--base", folders["base"], "--reward", folders["reward"], "--prompts",
                 str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl:2: not valid UTF-8" in capsys.readouterr().err


def test_chat_template(folders, tmp_path, capsys):
    """--chat wraps the prompt in the tokenizer's template; a tokenizer without one is a clear error."""
    args = generate_args(folders, "--max-new-tokens", "3", "--chat")
    args[args.index(DEMO_PROMPT)] = "What is in the picture?"
    assert main(args) == 2
    assert "--chat: the base model's tokenizer has no chat template" in capsys.readouterr().err
    base = tmp_path / "base"
    shutil.copytree(folders["base"], base)
    # LLaVA-style: the processor's template gets [{"type": "image"}, {"type": "text", ...}] content.
    template = ("{% for m in messages %}USER: {% if m['content'] is string %}{{ m['content'] }}{% else %}"
                "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}"
                "{% endif %}{% endfor %}{% endif %} ASSISTANT:{% endfor %}")
    (base / "chat_template.jinja").write_text(template)
    args[args.index("--base") + 1] = str(base)
    assert main(args + ["--show-rewards"]) == 0
    chat_ids, *_ = reward_table(capsys.readouterr().out)
    plain = generate_args(folders, "--max-new-tokens", "3", "--show-rewards")
    plain[plain.index(DEMO_PROMPT)] = "USER: <image>\nWhat is in the picture? ASSISTANT:"
    assert main(plain) == 0
    assert chat_ids == reward_table(capsys.readouterr().out)[0]  # the template's text, decoded the same
