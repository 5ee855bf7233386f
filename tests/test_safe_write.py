"""Crash-safe output (tita_ext/safe_write.py): files and folders appear whole or not at all, with
failures injected mid-write and writers killed with SIGKILL between writes; manifests catch
truncated, missing and changed files; stale temporary siblings are cleaned; output paths are
checked before any work."""

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

from tita_ext import safe_write
from tita_ext.safe_write import (MANIFEST, IncompleteOutput, OutputPathError, atomic_file, atomic_folder,
                                 check_output_path, clean_stale, temp_sibling, verify_folder, write_json)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def siblings(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def run_until_ready_then_kill(code: str, ready: pathlib.Path, timeout: float = 120.0) -> None:
    """Run `code` in a fresh Python; once it creates `ready`, SIGKILL it (no cleanup runs)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None:
            raise AssertionError(f"the writer exited early: {process.stderr.read().decode()}")
        assert time.monotonic() < deadline, "the writer never got ready"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


# --------------------------------------------------------------------------- files


def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("old 1\nold 2\n")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_file(path) as f:
            f.write("new 1\n")
            raise RuntimeError("disk on fire")
    assert path.read_text() == "old 1\nold 2\n" and siblings(tmp_path) == ["pairs.jsonl"]
    write_json(tmp_path / "sub" / "r.json", {"a": 1})
    assert json.loads((tmp_path / "sub" / "r.json").read_text()) == {"a": 1}
    assert siblings(tmp_path / "sub") == ["r.json"]


def test_pairs_writer_killed_between_lines_leaves_the_previous_file_whole(tmp_path):
    """`tita-ext pairs` writes through write_pairs: killed after 36 of 60 lines, the previous
    pairs file must still be there, whole (main truncated it at once)."""
    out, ready = tmp_path / "pairs.jsonl", tmp_path / "ready"
    old = "".join(json.dumps({"image": None, "prompt": f"p{i}", "chosen": "a", "rejected": "b"}) + "\n"
                  for i in range(60))
    out.write_text(old)
    run_until_ready_then_kill(f"""
        import pathlib, time
        from tita_ext.training.pairs import PreferencePair, write_pairs
        def pairs():
            for i in range(60):
                if i == 36:
                    pathlib.Path({str(ready)!r}).touch()
                    time.sleep(600)
                yield PreferencePair(None, f"new {{i}}", "c", "r")
        write_pairs({str(out)!r}, pairs())
    """, ready)
    assert out.read_text() == old
    leftovers = [name for name in siblings(tmp_path) if name not in ("pairs.jsonl", "ready")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".pairs.jsonl.tmp-")  # the killed writer's
    assert clean_stale(tmp_path) == [tmp_path / leftovers[0]]  # its process is gone
    assert siblings(tmp_path) == ["pairs.jsonl", "ready"]


# --------------------------------------------------------------------------- folders


def fill(folder: pathlib.Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_a_folder_is_replaced_whole_and_verifies(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(safe_write, "_exchange", lambda a, b: False)
    target = tmp_path / "reward"
    with atomic_folder(target) as partial:
        fill(partial, {"config.json": "{}", "model.safetensors": "old weights", "old-only.txt": "x"})
    with atomic_folder(target) as partial:
        fill(partial, {"config.json": "{}", "model.safetensors": "new weights", "sub/tokenizer.json": "t"})
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == \
        sorted([MANIFEST, "config.json", "model.safetensors", "sub/tokenizer.json"])
    assert (target / "model.safetensors").read_text() == "new weights"
    manifest = verify_folder(target, required=("config.json",))
    assert manifest["files"]["model.safetensors"]["size"] == len("new weights")
    assert siblings(tmp_path) == ["reward"]


def test_a_failure_mid_save_leaves_the_old_folder(tmp_path):
    target = tmp_path / "reward"
    with atomic_folder(target) as partial:
        fill(partial, {"config.json": "{}", "model.safetensors": "old weights"})
    with pytest.raises(OSError, match="no space"):
        with atomic_folder(target) as partial:
            fill(partial, {"model.safetensors": "new wei"})
            raise OSError("no space left on device")
    assert (target / "model.safetensors").read_text() == "old weights" and verify_folder(target)
    assert siblings(tmp_path) == ["reward"]


def test_reward_save_killed_mid_save_leaves_the_previous_model(tmp_path):
    """train-reward saves through save_reward_model: killed after the weights, before the
    tokenizer, the previous folder must be whole (main left new weights beside the old tokenizer)."""
    out, ready = tmp_path / "reward", tmp_path / "ready"
    fill(out, {"config.json": "{}", "model.safetensors": "previous run", "tokenizer.json": "previous"})
    run_until_ready_then_kill(f"""
        import pathlib, time
        from tita_ext.training.dpo import save_reward_model
        class Model:
            def save_pretrained(self, folder):
                (pathlib.Path(folder) / "model.safetensors").write_text("new weights, half")
        class Processor:
            def save_pretrained(self, folder):
                pathlib.Path({str(ready)!r}).touch()
                time.sleep(600)
        save_reward_model(Model(), Processor(), {str(out)!r})
    """, ready)
    assert (out / "model.safetensors").read_text() == "previous run"
    assert (out / "tokenizer.json").read_text() == "previous"
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".reward.tmp-")]
    assert len(stale) == 1
    with atomic_folder(out) as partial:  # the next save cleans what the killed one left
        fill(partial, {"config.json": "{}"})
    assert siblings(tmp_path) == ["ready", "reward"]


# --------------------------------------------------------------------------- manifests


@pytest.fixture
def saved(tmp_path) -> pathlib.Path:
    folder = tmp_path / "entry"
    with atomic_folder(folder) as partial:
        fill(partial, {"config.json": '{"hidden_size": 8}', "model.safetensors": "w" * 100,
                       "pairs.jsonl": "{}\n{}\n{}\n"})
    return folder


@pytest.mark.parametrize("damage,match", [
    (lambda f: (f / "config.json").unlink(), r"config\.json is missing"),
    (lambda f: (f / "model.safetensors").write_text("w" * 40),
     r"model\.safetensors has 40 bytes, its manifest says 100"),
    (lambda f: (f / "pairs.jsonl").write_text("{}\n"), r"pairs\.jsonl has 3 bytes, its manifest says 9"),
    (lambda f: (f / "config.json").write_text('{"hidden_size": 9}'), r"config\.json differs .*sha256"),
    (lambda f: (f / MANIFEST).unlink(), "has no tita-manifest.json"),
    (lambda f: (f / MANIFEST).write_text("[1"), "is not a manifest"),
])
def test_verify_folder_finds_damage(saved, damage, match):
    verify_folder(saved)
    damage(saved)
    with pytest.raises(IncompleteOutput, match=match):
        verify_folder(saved)


def test_verify_folder_required_names(saved):
    with pytest.raises(IncompleteOutput, match="does not hold tokenizer.json"):
        verify_folder(saved, required=("config.json", "tokenizer.json"))
    (saved / "model.safetensors").write_text("x" * 100)  # same size, other bytes
    verify_folder(saved, hashes=False)
    with pytest.raises(IncompleteOutput, match="sha256"):
        verify_folder(saved)


# --------------------------------------------------------------------------- stale siblings


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_clean_stale_removes_only_dead_or_old_writers_leftovers(tmp_path):
    host = safe_write._HOST
    dead = tmp_path / f".base-abc.tmp-{host}-{dead_pid()}-0123abcd"
    dead.mkdir()
    (dead / "weights").write_text("half")
    alive = tmp_path / f".base-abc.tmp-{host}-{os.getppid()}-0123abcd"  # a running process
    alive.mkdir()
    other_host = tmp_path / f".pairs.jsonl.tmp-elsewhere-{os.getppid()}-89abcdef"
    other_host.write_text("?")
    old = tmp_path / ".r.json.old-elsewhere-1-0000ffff"
    old.write_text("?")
    os.utime(old, (time.time() - safe_write.STALE_AGE - 10,) * 2)
    keep = [tmp_path / ".hidden", tmp_path / "base-abc"]
    for path in keep:
        path.write_text("user file")
    assert sorted(clean_stale(tmp_path)) == sorted([dead, old])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in [alive, other_host, *keep])
    assert sorted(clean_stale(tmp_path, max_age=0)) == sorted([alive, other_host])  # the age rule: any writer
    assert not alive.exists() and not other_host.exists() and all(p.exists() for p in keep)


def test_temp_sibling_names_are_recognised():
    name = temp_sibling(pathlib.Path("/x/model.v1.safetensors")).name
    match = safe_write._SIBLING.match(name)
    assert match and match["target"] == "model.v1.safetensors" and int(match["pid"]) == os.getpid()


# --------------------------------------------------------------------------- output paths


def test_check_output_path(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    assert check_output_path(tmp_path / "new" / "deeper" / "out.jsonl", "file", "--out")
    with pytest.raises(OutputPathError, match=r"--out '.*empty' is a folder: give the path of the file"):
        check_output_path(tmp_path / "empty", "file", "--out")
    with pytest.raises(OutputPathError, match=r"--out '.*file' is an existing file: give the path of a folder"):
        check_output_path(tmp_path / "file", "folder", "--out")
    with pytest.raises(OutputPathError, match=r"is a file, not a folder"):
        check_output_path(tmp_path / "file" / "out.json", "file", "--out")
    for ok in ("empty", "model", "brand-new"):
        check_output_path(tmp_path / ok, "folder", "--out", may_replace=("config.json",))
    with pytest.raises(OutputPathError, match=r"holds other files .* give a new or empty folder"):
        check_output_path(tmp_path / "mine", "folder", "--out", may_replace=("config.json",))
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "locked").mkdir(mode=0o500)
        with pytest.raises(OutputPathError, match="not writable"):
            check_output_path(tmp_path / "locked" / "r.json", "file", "--out")
