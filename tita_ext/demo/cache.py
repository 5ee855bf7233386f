"""Where the demo keeps what it trained, so a second `tita-ext demo` skips the training.

Each stage's output is a folder named after the stage and the hash of the recipe fields it
depends on (`DemoRecipe.stage_key`): change a field and only the stages downstream of it run
again. Models are Hugging Face folders (weights, config, processor) that `tita-ext generate` and
`tita-ext eval-pope` load as they are.

Nothing is trusted blindly (`tita_ext.safe_write`): a folder appears only once complete (written
under a temporary name with a manifest of its files' sizes and sha256, fsynced, then renamed), and
every later use checks it against that manifest first. An entry that fails the check (a file
missing, truncated or changed; no manifest: written by an older version) is built again, with a
CacheWarning saying why. Temporary folders left by a killed run are removed once their process
is gone.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import tempfile
import time
import warnings
from typing import Callable, Sequence

from ..safe_write import IncompleteOutput, atomic_folder, clean_stale, verify_folder

CACHE_ENV = "TITA_EXT_CACHE"
# Partial folders of versions before tita_ext.safe_write (tempfile.mkdtemp(prefix=".NAME-KEY-")):
# no writer pid in the name, so removed by age alone.
LEGACY_PARTIAL = re.compile(r"^\.[\w-]+-[0-9a-f]{12}-[\w]{8}$")
LEGACY_AGE = 24 * 3600.0


class CacheWarning(UserWarning):
    """A cache entry failed its check and is being built again."""


def default_cache_dir() -> pathlib.Path:
    """$TITA_EXT_CACHE, else $XDG_CACHE_HOME/tita_ext, else ~/.cache/tita_ext; with /demo appended."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tita_ext")
    return pathlib.Path(root) / "demo"


def cached_folder(cache: pathlib.Path | None, name: str, key: str, write: Callable[[pathlib.Path], None], *,
                  required: Sequence[str] = ()) -> tuple[pathlib.Path, bool]:
    """The folder cache/name-key, written by `write(folder)` when it is not there yet or fails its
    check (its manifest: every file's size and sha256; and every name in `required` present).

    With cache None, `write` fills a fresh temporary folder every time (nothing is kept).
    Returns (folder, True when it came from the cache)."""
    if cache is None:
        folder = pathlib.Path(tempfile.mkdtemp(prefix=f"tita-demo-{name}-"))
        write(folder)
        return folder, False
    folder = cache / f"{name}-{key}"
    cache.mkdir(parents=True, exist_ok=True)
    clean_stale(cache)  # what killed runs left, any stage
    _clean_legacy_partials(cache)
    if folder.exists():
        try:
            verify_folder(folder, hashes=True, required=required)
            return folder, True
        except IncompleteOutput as error:
            warnings.warn(f"the cached {name} stage fails its check ({error}): building it again", CacheWarning,
                          stacklevel=2)
    with atomic_folder(folder) as partial:
        write(partial)
    return folder, False


def _clean_legacy_partials(cache: pathlib.Path) -> None:
    """Remove the partial folders older versions left when killed (older than LEGACY_AGE)."""
    for entry in cache.iterdir():
        if LEGACY_PARTIAL.match(entry.name) and entry.is_dir() and time.time() - entry.stat().st_mtime > LEGACY_AGE:
            shutil.rmtree(entry, ignore_errors=True)
