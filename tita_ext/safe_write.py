"""Crash-safe output: a file or a folder appears complete, or not at all.

Writers fill a temporary sibling (`.NAME.tmp-HOST-PID-RAND`, hidden, in the same folder, so the
rename cannot cross file systems), flush and fsync it, then rename it over NAME and fsync the
parent folder (so the rename itself survives a power cut):

    with atomic_file("pairs.jsonl") as f: ...            # os.replace over the old file
    write_json("results.json", results)
    with atomic_folder("reward-dpo") as tmp:              # a whole folder, replaced at once
        model.save_pretrained(tmp)

A folder replaces an existing one with one atomic exchange where Linux offers it (renameat2
RENAME_EXCHANGE), else with two renames (old aside, new in); either way the old folder is there
complete until the new one is, and never mixed with it. A folder also gets a manifest
(`tita-manifest.json`, written last: every file's size and sha256) that `verify_folder` checks,
so a later truncation or deletion inside it is found.

A writer killed by SIGKILL leaves only its temporary sibling, which no reader opens;
`clean_stale` removes such siblings once their writer's process is gone (same host) or they are
older than `max_age` (a process on another host sharing the folder). Every atomic write cleans its
own target's stale siblings first.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import pathlib
import re
import secrets
import shutil
import socket
import sys
import time
from typing import IO, Any, Iterator, Sequence

MANIFEST = "tita-manifest.json"
MANIFEST_FORMAT = 1
STALE_AGE = 7 * 24 * 3600.0  # seconds: a temporary sibling this old is removed whoever wrote it
_HOST = re.sub(r"\W", "_", socket.gethostname())[:32] or "host"
_SIBLING = re.compile(r"^\.(?P<target>.+)\.(?:tmp|old)-(?P<host>\w+)-(?P<pid>\d+)-[0-9a-f]{8}$")
PathLike = str | os.PathLike


class IncompleteOutput(ValueError):
    """A folder that fails its manifest check (missing, truncated or changed files, no manifest)."""


class OutputPathError(ValueError):
    """An output path that cannot be written (a folder where a file goes, a read-only parent, ...)."""


# --------------------------------------------------------------------------- names and syncing


def temp_sibling(path: PathLike, kind: str = "tmp") -> pathlib.Path:
    """A fresh hidden sibling name of `path` that `clean_stale` recognises: .NAME.KIND-HOST-PID-RAND."""
    path = pathlib.Path(path)
    return path.with_name(f".{path.name}.{kind}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_dir(folder: pathlib.Path) -> None:
    if sys.platform == "win32":  # no directory handles to sync; NTFS journals the rename
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: pathlib.Path) -> None:
    """fsync every file under `folder`, then every folder (deepest first)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for root, _, _ in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
        _fsync_dir(pathlib.Path(root))


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# --------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_file(path: PathLike, mode: str = "w", encoding: str | None = "utf-8", clean: bool = True) -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing ("w" text or "wb" bytes); on a clean exit
    it is flushed, fsynced and renamed over `path` (the parent folder is created if needed). On an
    exception it is removed and `path` is left as it was. clean=False skips `clean_stale` of the
    parent folder (a caller writing many files into one folder cleans it once)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if clean:
        clean_stale(path.parent, target=path.name)
    temp = temp_sibling(path)
    handle = open(temp, mode, encoding=None if "b" in mode else encoding)
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        _remove(temp)
        raise
    _fsync_dir(path.parent)


def write_text(path: PathLike, text: str) -> None:
    """`path` holds `text` (UTF-8), written atomically."""
    with atomic_file(path) as f:
        f.write(text)


def write_json(path: PathLike, value: Any, indent: int | None = 2) -> None:
    """`path` holds `value` as JSON (and a final newline), written atomically."""
    write_text(path, json.dumps(value, indent=indent) + "\n")


# --------------------------------------------------------------------------- folders


def _exchange(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or file system does not offer it."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTDIR):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_folder(source: pathlib.Path, target: pathlib.Path) -> None:
    """Put the folder `source` at `target` (a sibling), replacing whatever is there; a reader sees
    the old folder or the new one, never a mix."""
    if target.is_dir() and not target.is_symlink():
        if _exchange(source, target):
            _remove(source)  # now holds the old folder
        else:
            aside = temp_sibling(target, "old")
            os.rename(target, aside)
            os.rename(source, target)
            _remove(aside)
    else:
        if target.exists() or target.is_symlink():
            target.unlink()
        os.rename(source, target)
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_folder(path: PathLike, manifest: bool = True) -> Iterator[pathlib.Path]:
    """Yield a fresh temporary sibling folder of `path` to fill; on a clean exit write its manifest
    (unless manifest=False), fsync everything and put it at `path`, replacing any folder there. On
    an exception the temporary folder is removed and `path` is left as it was."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path.parent, target=path.name)
    temp = temp_sibling(path)
    temp.mkdir()
    try:
        yield temp
        if manifest:
            write_manifest(temp)
        _fsync_tree(temp)
        replace_folder(temp, path)
    except BaseException:
        _remove(temp)
        raise


# --------------------------------------------------------------------------- manifests


def _sha256(file: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: PathLike) -> dict[str, Any]:
    """Write folder/tita-manifest.json: {"format": 1, "files": {relative path: {"size": bytes,
    "sha256": hex}}} for every file below `folder` (the manifest itself excluded). Returns it."""
    folder = pathlib.Path(folder)
    files = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[file.relative_to(folder).as_posix()] = {"size": file.stat().st_size, "sha256": _sha256(file)}
    manifest = {"format": MANIFEST_FORMAT, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def verify_folder(folder: PathLike, hashes: bool = True, required: Sequence[str] = ()) -> dict[str, Any]:
    """Check `folder` against its manifest: every listed file present with its size (and, with
    hashes=True, its sha256), and every name in `required` listed. Returns the manifest; raises
    IncompleteOutput saying what is wrong."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise IncompleteOutput(f"{folder} is not a folder")
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {manifest.get('format')!r}")
    except FileNotFoundError:
        raise IncompleteOutput(f"{folder} has no {MANIFEST} (its writer was interrupted, or an older "
                               "version wrote it)") from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise IncompleteOutput(f"{folder}/{MANIFEST} is not a manifest ({error})") from None
    for name in required:
        if name not in files:
            raise IncompleteOutput(f"{folder} does not hold {name}")
    for name, entry in files.items():
        file = folder / name
        if not file.is_file():
            raise IncompleteOutput(f"{file} is missing")
        size = file.stat().st_size
        if size != entry.get("size"):
            raise IncompleteOutput(f"{file} has {size} bytes, its manifest says {entry.get('size')}")
        if hashes and _sha256(file) != entry.get("sha256"):
            raise IncompleteOutput(f"{file} differs from the file its manifest lists (sha256)")
    return manifest


# --------------------------------------------------------------------------- stale siblings


def _process_gone(pid: int) -> bool:
    if sys.platform == "win32":
        return False  # os.kill would end the process: age alone decides there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def clean_stale(folder: PathLike, target: str | None = None, max_age: float = STALE_AGE) -> list[pathlib.Path]:
    """Remove the temporary siblings in `folder` (of `target` only, when given) left by writers
    that died: written on this host by a process that no longer runs, or older than `max_age`
    seconds (by modification time). Returns what was removed."""
    folder = pathlib.Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    now = time.time()
    for entry in entries:
        match = _SIBLING.match(entry.name)
        if match is None or (target is not None and match["target"] != target):
            continue
        pid = int(match["pid"])
        mine = match["host"] == _HOST
        try:
            age = now - entry.lstat().st_mtime
        except FileNotFoundError:
            continue
        if (mine and pid != os.getpid() and _process_gone(pid)) or age > max_age:
            _remove(entry)
            removed.append(entry)
    return removed


# --------------------------------------------------------------------------- checking output paths


def check_output_path(path: PathLike, kind: str, flag: str, may_replace: Sequence[str] = ()) -> pathlib.Path:
    """Check before any work that `path` can be written as a `kind` ("file" or "folder"); `flag`
    names it in the message (e.g. "--out"). An existing non-empty folder is replaced only when it
    holds one of the names in `may_replace` (e.g. config.json: a saved model), so a typo cannot
    wipe an unrelated folder. Raises OutputPathError; returns the path."""
    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder', got {kind!r}")
    path = pathlib.Path(path)
    if kind == "file" and path.is_dir():
        raise OutputPathError(f"{flag} {str(path)!r} is a folder: give the path of the file to write")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise OutputPathError(f"{flag} {str(path)!r} is an existing file: give the path of a folder to write")
    if kind == "folder" and path.is_dir() and any(path.iterdir()):
        if not any((path / name).exists() for name in may_replace):
            raise OutputPathError(f"{flag} folder {str(path)!r} holds other files ({', '.join(may_replace)} "
                                  "missing) and would be replaced: give a new or empty folder")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{flag} {str(path)!r}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {str(path)!r}: the folder {parent} is not writable")
    return path
