"""Where the demo keeps what it trained, so a second `tita-ext demo` skips the training.

Each stage's output is a folder named after the stage and the hash of the recipe fields it
depends on (`DemoRecipe.stage_key`): change a field and only the stages downstream of it run
again. Models are Hugging Face folders (weights, config, processor) that `tita-ext generate` and
`tita-ext eval-pope` load as they are. A folder appears only once complete (written under a
temporary name, then renamed), so an interrupted run never leaves a half-written stage behind.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from typing import Callable

CACHE_ENV = "TITA_EXT_CACHE"


def default_cache_dir() -> pathlib.Path:
    """$TITA_EXT_CACHE, else $XDG_CACHE_HOME/tita_ext, else ~/.cache/tita_ext; with /demo appended."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tita_ext")
    return pathlib.Path(root) / "demo"


def cached_folder(cache: pathlib.Path | None, name: str, key: str,
                  write: Callable[[pathlib.Path], None]) -> tuple[pathlib.Path, bool]:
    """The folder cache/name-key, written by `write(folder)` when it is not there yet.

    With cache None, `write` fills a fresh temporary folder every time (nothing is kept).
    Returns (folder, True when it came from the cache)."""
    if cache is None:
        folder = pathlib.Path(tempfile.mkdtemp(prefix=f"tita-demo-{name}-"))
        write(folder)
        return folder, False
    folder = cache / f"{name}-{key}"
    if folder.is_dir():
        return folder, True
    cache.mkdir(parents=True, exist_ok=True)
    partial = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}-{key}-", dir=cache))
    try:
        write(partial)
        partial.rename(folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return folder, False
