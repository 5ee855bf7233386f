"""The demo's stage cache (tita_ext/demo/cache.py) trusts nothing it did not check: entries that are
damaged (config.json missing, model.safetensors truncated, pairs.jsonl cut at a line boundary) or
written without a manifest are built again with a CacheWarning; a writer killed with SIGKILL
leaves a hidden folder that the next use removes."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("transformers")

from tita_ext.demo import stages  # noqa: E402
from tita_ext.demo.cache import CacheWarning, cached_folder  # noqa: E402
from tita_ext.demo.recipe import ModelSize  # noqa: E402
from tita_ext.training.pairs import PreferencePair, read_pairs, write_pairs  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ModelSize(hidden_size=16, layers=1, vision_hidden_size=16, vision_layers=1, seed=0)


def save_tiny_model(folder: pathlib.Path) -> None:
    stages.save_model(stages.new_model(TINY, seed=0), folder)


def save_pairs(folder: pathlib.Path) -> None:
    write_pairs(folder / "pairs.jsonl", [PreferencePair(None, f"prompt {i}", "yes", "no") for i in range(10)])


def truncate(path: pathlib.Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def cut_at_a_line_boundary(path: pathlib.Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:6]))


@pytest.mark.parametrize("write,damage,expect", [
    (save_tiny_model, lambda f: (f / "config.json").unlink(), r"config\.json is missing"),
    (save_tiny_model, lambda f: truncate(f / "model.safetensors", 1000), r"model\.safetensors has 1000 bytes"),
    (save_pairs, lambda f: cut_at_a_line_boundary(f / "pairs.jsonl"), r"pairs\.jsonl has \d+ bytes"),
    (save_pairs, lambda f: (f / "tita-manifest.json").unlink(), "no tita-manifest.json"),  # an older version's
], ids=["no-config", "truncated-safetensors", "truncated-pairs", "no-manifest"])
def test_a_damaged_entry_is_rebuilt_with_a_warning(tmp_path, write, damage, expect):
    calls = []

    def counted(folder: pathlib.Path) -> None:
        calls.append(folder)
        write(folder)

    folder, hit = cached_folder(tmp_path, "stage", "k", counted)
    assert not hit
    damage(folder)
    with pytest.warns(CacheWarning, match=f"the cached stage stage fails its check .*{expect}.*building it again"):
        again, hit = cached_folder(tmp_path, "stage", "k", counted)
    assert again == folder and not hit and len(calls) == 2
    if write is save_tiny_model:
        model = stages.load_model(folder)  # the real config, not a default 7B one
        assert model.config.text_config.hidden_size == TINY.hidden_size
    else:
        assert len(read_pairs(folder / "pairs.jsonl")) == 10
    _, hit = cached_folder(tmp_path, "stage", "k", counted)  # now whole: from the cache, no warning
    assert hit and len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage-k"]


def test_required_names_must_be_in_the_entry(tmp_path):
    cached_folder(tmp_path, "base", "k", save_pairs)
    with pytest.warns(CacheWarning, match="does not hold config.json"):
        folder, hit = cached_folder(tmp_path, "base", "k", save_tiny_model, required=("config.json",))
    assert not hit and (folder / "config.json").is_file() and not (folder / "pairs.jsonl").exists()


def test_a_killed_stage_leaves_nothing_a_later_run_trusts_or_keeps(tmp_path):
    """SIGKILL in the middle of a stage: no entry appears, and the hidden temporary folder it
    leaves is removed by the next use of the cache (main kept it forever)."""
    ready = tmp_path / "ready"
    cache = tmp_path / "cache"
    code = f"""
        import pathlib, time
        from tita_ext.demo.cache import cached_folder
        def write(folder):
            (folder / "model.safetensors").write_text("half")
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(600)
        cached_folder(pathlib.Path({str(cache)!r}), "base", "k", write)
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    left = sorted(p.name for p in cache.iterdir())
    assert len(left) == 1 and left[0].startswith(".base-k.tmp-")  # hidden, never read as an entry
    folder, hit = cached_folder(cache, "pairs", "k", save_pairs)  # any later use of the cache cleans it
    assert not hit and sorted(p.name for p in cache.iterdir()) == ["pairs-k"]
    assert json.loads((folder / "pairs.jsonl").read_text().splitlines()[0])["prompt"] == "prompt 0"


def test_partial_folders_of_older_versions_are_removed_once_a_day_old(tmp_path):
    old = tmp_path / ".base-0123456789ab-k2_x9zqa"  # what tempfile.mkdtemp(prefix=".base-KEY-") made
    recent = tmp_path / ".reward-0123456789ab-abcdefgh"
    for folder in (old, recent):
        folder.mkdir()
        (folder / "model.safetensors").write_text("half")
    os.utime(old, (time.time() - 2 * 24 * 3600,) * 2)
    cached_folder(tmp_path, "pairs", "k", save_pairs)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([recent.name, "pairs-k"])
