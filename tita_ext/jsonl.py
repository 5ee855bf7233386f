"""Reading JSON-lines input files (data, pairs, POPE questions) with errors that name the file,
the line and the key: one reader for every command.

    for where, record in read_json_lines(path, "keys image, question"):
        question = string_field(record, "question", where, "keys image, question")

`where` is "FILE:LINE" (1-based); every problem raises InputFileError (a ValueError) starting
with it: bytes that are not UTF-8, a line that is not JSON, a line that is not a JSON object, a
missing key, a value of the wrong type, an image that does not exist.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Iterator

_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "true/false", type(None): "null"}


class InputFileError(ValueError):
    """A problem in an input file, "FILE:LINE: what is wrong"."""


def json_type(value: Any) -> str:
    """How JSON calls the type of `value` ("an array", "a number", ...)."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def read_json_lines(path: str | os.PathLike, what: str) -> Iterator[tuple[str, dict]]:
    """("FILE:LINE", object) for each non-blank line of `path`; `what` says what a line should hold
    (e.g. "keys image, question") for the messages. A UTF-8 byte-order mark is allowed."""
    file = pathlib.Path(path)
    with open(file, "rb") as lines:
        for number, raw in enumerate(lines, 1):
            where = f"{file}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise InputFileError(f"{where}: not valid UTF-8 (byte {error.start + 1} of the line is "
                                     f"{raw[error.start:error.start + 1]!r}): save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputFileError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(record, dict):
                raise InputFileError(f"{where}: expected a JSON object with {what}, got {json_type(record)}")
            yield where, record


def string_field(record: dict, key: str, where: str, what: str, optional: bool = False) -> str | None:
    """record[key], which must be a string (None allowed when `optional` and the key is absent or
    null); an InputFileError naming the line and the key otherwise."""
    value = record.get(key)
    if value is None and optional:
        return None
    if key not in record:
        raise InputFileError(f"{where}: missing key {key!r} ({what})")
    if not isinstance(value, str):
        raise InputFileError(f"{where}: {key!r} must be a string, got {json_type(value)} ({json.dumps(value)[:40]})")
    return value


def image_file(root: pathlib.Path, name: str, where: str, key: str = "image") -> pathlib.Path:
    """The image `name` (relative to `root` unless absolute), which must exist and be a file PIL
    can read the header of; an InputFileError naming the line and the key otherwise."""
    path = pathlib.Path(name)
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise InputFileError(f"{where}: {key!r}: image {str(path)!r} does not exist")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):  # reads the header only
            pass
    except (UnidentifiedImageError, OSError) as error:
        raise InputFileError(f"{where}: {key!r}: {str(path)!r} is not an image PIL can read ({error})") from None
    return path
