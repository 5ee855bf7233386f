"""Scale-out of the POPE evaluation: the question split (coverage, disjointness, order), the
launcher environment, and a real two-process CPU run under torchrun whose results JSON equals a
single process's."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from tita_ext.eval import cli_pope
from tita_ext.eval.sharding import Shard, detect_shard, gather_answers, rank_gpus, shard_indices, shard_questions
from tita_ext.tiny_models import demo_image, tiny_llava, tiny_llava_processor, tiny_tokenizer

# --------------------------------------------------------------------------- the split


@pytest.mark.parametrize("mode", ["strided", "contiguous"])
@pytest.mark.parametrize("count", [0, 1, 5, 8, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_shard_questions_cover_each_question_once(mode, count, world):
    questions = [f"q{i}" for i in range(count)]
    shards = [shard_questions(questions, Shard(rank, world, rank), mode) for rank in range(world)]
    indices = [index for part in shards for index, _ in part]
    assert sorted(indices) == list(range(count))  # every question, exactly once
    assert all(questions[index] == q for part in shards for index, q in part)
    sizes = [len(part) for part in shards]
    assert max(sizes) - min(sizes) <= 1  # balanced
    for part in shards:  # each rank's share is in the file's order
        assert [i for i, _ in part] == sorted(i for i, _ in part)
    # the answers, gathered in any rank order, come back in the questions' order
    pairs = [(index, q.upper()) for part in reversed(shards) for index, q in part]
    assert gather_answers(pairs, Shard(), count) == [q.upper() for q in questions]


def test_shard_layouts():
    assert [shard_indices(7, Shard(r, 3)) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert [shard_indices(7, Shard(r, 3), "contiguous") for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert shard_indices(2, Shard(3, 4)) == []  # more ranks than questions: some answer none
    with pytest.raises(ValueError, match="mode"):
        shard_indices(3, Shard(), "random")


def test_gather_rejects_gaps_and_repeats():
    with pytest.raises(ValueError, match="no answer"):
        gather_answers([(0, "a"), (2, "c")], Shard(), 3)
    with pytest.raises(ValueError, match="twice"):
        gather_answers([(0, "a"), (0, "b"), (1, "c")], Shard(), 2)
    with pytest.raises(ValueError, match="outside"):
        gather_answers([(0, "a"), (5, "b")], Shard(), 2)


def test_detect_shard_reads_the_launcher_environment():
    assert detect_shard({}) == Shard(0, 1, 0)
    assert detect_shard({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Shard(3, 4, 1)
    assert detect_shard({"RANK": "1", "WORLD_SIZE": "2"}) == Shard(1, 2, 1)
    assert Shard(1, 2, 1).device() == (torch.device("cuda", 1 % torch.cuda.device_count())
                                       if torch.cuda.is_available() else torch.device("cpu"))
    assert Shard().is_main and not Shard(1, 2).is_main and Shard(1, 2).distributed
    with pytest.raises(ValueError):
        detect_shard({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="integers"):
        detect_shard({"WORLD_SIZE": "two"})


def test_rank_gpus_groups():
    assert rank_gpus(Shard(), gpu_count=4) == [0, 1, 2, 3]
    assert [rank_gpus(Shard(r, 2, r), gpu_count=8, local_world_size=2) for r in range(2)] == [[0, 1, 2, 3],
                                                                                              [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="cannot be split"):
        rank_gpus(Shard(1, 4, 1), gpu_count=2, local_world_size=4)


# --------------------------------------------------------------------------- two processes

COLORS = ("red", "green", "blue", "yellow")
OBJECTS = ("ball", "cube", "cat", "cup")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A POPE data folder (4 PNGs, 9 questions) and the tiny base and reward folders."""
    root = tmp_path_factory.mktemp("pope_world")
    data = root / "data"
    data.mkdir()
    for color in COLORS:
        demo_image(color).save(data / f"{color}.png")
    lines = [{"image": f"{COLORS[i % 4]}.png", "question": f"Is there a {OBJECTS[(i * 3) % 4]} in the image?",
              "label": ("yes", "no")[i % 3 == 0]} for i in range(9)]
    (data / "pope_random.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    processor = tiny_llava_processor(tiny_tokenizer())
    models = {"base": tiny_llava(seed=0), "reward": tiny_llava(seed=1, hidden_size=32, layers=1, vocab_width=448)}
    for role, model in models.items():
        model.save_pretrained(root / role)
        processor.save_pretrained(root / role)
    return root


def _args(root, out, *extra):
    return ["eval-pope", "--base", str(root / "base"), "--reward", str(root / "reward"), "--data",
            str(root / "data"), "--splits", "random", "--alphas", "0.6", "--batch-size", "3",
            "--max-new-tokens", "3", "--keep-answers", "--out", str(out), "--plot", str(out.with_suffix(".png")),
            *extra]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _metrics(path):
    """Each split's metrics and answer texts (the timings differ from run to run)."""
    saved = json.loads(path.read_text())
    return {split: {"base": r["base"], "alphas": r["alphas"], "answers": r["answers"]}
            for split, r in saved["splits"].items()}


def _run_in_process(argv, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    parser = argparse.ArgumentParser()
    cli_pope.add_parser(parser.add_subparsers(dest="command"))
    return cli_pope.run(parser.parse_args(argv))


def test_two_processes_under_torchrun_match_one(world, tmp_path, monkeypatch):
    single = tmp_path / "single.json"
    assert _run_in_process(_args(world, single, "--no-progress"), monkeypatch) == 0

    sharded = tmp_path / "sharded.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "tita_ext", *_args(world, sharded, "--device", "auto")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    saved = json.loads(sharded.read_text())
    assert saved["world_size"] == 2
    assert saved["splits"]["random"]["base"]["n"] == 9
    answers = saved["splits"]["random"]["answers"]
    assert list(answers) == ["base", "0.6"] and len(answers["base"]) == 9
    assert len(set(answers["base"])) > 1  # the answers differ from question to question: the order is checked
    assert _metrics(sharded) == _metrics(single)  # the same answers, in the same order, and the same metrics
    assert sharded.with_suffix(".png").is_file()
    assert done.stdout.count("wrote ") == 1  # rank 0 alone reports (and writes)
    assert "over 2 processes" in done.stdout


def test_device_map_loads_the_base_and_checks_its_logits(world, tmp_path, monkeypatch):
    """--device-map auto on a machine without GPUs: the whole base on the CPU, the same results."""
    plain, mapped = tmp_path / "plain.json", tmp_path / "mapped.json"
    assert _run_in_process(_args(world, plain, "--no-progress", "--limit", "4"), monkeypatch) == 0
    assert _run_in_process(_args(world, mapped, "--no-progress", "--limit", "4", "--device-map", "auto"),
                           monkeypatch) == 0
    assert _metrics(mapped) == _metrics(plain)
