"""`tita-ext generate --prompts FILE.jsonl [--out FILE.jsonl]`: the prompts file, read and checked
whole before any model loads, and the JSON-lines results, written atomically.

Input: one JSON object per line, {"prompt": text[, "image": path][, "id": anything]}; an image path
is relative to the prompts file's folder. Blank lines are skipped. Every problem names the file,
the line and the key.

Output: one JSON object per returned sequence, {"line", "id" (when given), "prompt", "text",
"new_tokens", "finish_reason", "mean_reward"}. --out is written to a temporary sibling, fsynced and
renamed over the target: a killed run leaves the previous file (or none), never a partial one.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass
from typing import Any, Iterable


class PromptsError(ValueError):
    """A problem in the prompts file or the output path (printed as `tita-ext: error: ...`)."""


@dataclass(frozen=True)
class PromptLine:
    line: int  # 1-based line number in the file
    prompt: str
    image: str | None  # resolved path, or None
    id: Any = None


def read_prompts(path: str) -> list[PromptLine]:
    """Every prompt of the file, checked (JSON objects, "prompt" a non-empty string, "image" an
    existing file), or a PromptsError naming the file, line and key."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise PromptsError(f"--prompts file {path!r} does not exist")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = file.read_bytes()[:err.start].count(b"\n") + 1
        raise PromptsError(f"{path}:{line}: not valid UTF-8 ({err.reason})") from None
    prompts = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise PromptsError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise PromptsError(f"{where}: each line must be a JSON object like {{\"prompt\": \"...\"}}, got a "
                               f"{type(record).__name__}")
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptsError(f"{where}: key \"prompt\" must be a non-empty string, got {prompt!r}")
        image = record.get("image")
        if image is not None:
            if not isinstance(image, str):
                raise PromptsError(f"{where}: key \"image\" must be a path string, got {image!r}")
            resolved = file.parent / image
            if not resolved.is_file():
                raise PromptsError(f"{where}: key \"image\": no file {str(resolved)!r}")
            image = str(resolved)
        unknown = set(record) - {"prompt", "image", "id"}
        if unknown:
            raise PromptsError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (allowed: prompt, image, id)")
        prompts.append(PromptLine(number, prompt, image, record.get("id")))
    if not prompts:
        raise PromptsError(f"--prompts file {path!r} holds no prompts")
    return prompts


def check_out_path(path: str) -> None:
    """--out must be a file path in an existing folder (checked before any work)."""
    target = pathlib.Path(path)
    if target.is_dir():
        raise PromptsError(f"--out {path!r} is a folder: give a file path such as {path.rstrip('/')}/results.jsonl")
    if not target.parent.is_dir():
        raise PromptsError(f"--out {path!r}: the folder {str(target.parent)!r} does not exist")


def write_jsonl_atomically(path: str, records: Iterable[dict]) -> None:
    """Write `records` as JSON lines, crash-safe (safe_write.atomic_file: temp sibling, fsync, rename)."""
    from .safe_write import atomic_file

    with atomic_file(path) as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
