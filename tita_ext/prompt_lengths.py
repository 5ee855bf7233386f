"""Prompt lengths against a model's maximum positions, checked from the tokenizer and the config
before any model is loaded (a 6 MB line otherwise reaches the model and asks for terabytes).

    limit = max_positions(folder)                          # from config.json; None: no limit known
    extra = image_tokens(pre, first_prompt, first_image) + max_new_tokens
    check_prompt_lengths(pre.tokenizer, [(where, prompt), ...], limit, extra, "the question", folder)
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
BATCH = 512  # prompts per tokenizer call


def max_positions(folder: str | os.PathLike) -> int | None:
    """The text model's maximum positions from `folder`'s config.json (a VLM's text_config first);
    None when the config names none."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    for part in (getattr(config, "text_config", None), config):
        for key in POSITION_KEYS:
            value = getattr(part, key, None) if part is not None else None
            if isinstance(value, int) and value > 0:
                return value
    return None


def smallest_limit(folders: Sequence[str | os.PathLike]) -> tuple[int | None, str]:
    """The smallest `max_positions` over the folders and the folder it comes from."""
    known = [(limit, str(folder)) for folder in folders if (limit := max_positions(folder)) is not None]
    return min(known) if known else (None, "")


def image_tokens(pre: Any, prompt: str, image: Any) -> int:
    """How many more tokens `prompt` is with `image` (the placeholder expanded by the processor)
    than as plain text: the image's share of the sequence (0 for a text-only model)."""
    from .prompt_inputs import build_inputs, place_image

    if image is None or not pre.is_vlm:
        return 0
    with_image = build_inputs(pre, prompt, image)["input_ids"].shape[-1]
    return max(0, with_image - len(pre.tokenizer(place_image(pre, prompt))["input_ids"]))


def check_prompt_lengths(tokenizer: Any, prompts: Iterable[tuple[str, str]], limit: int | None, extra: int,
                         what: str, folder: str | os.PathLike) -> None:
    """Each (where, text)'s token count plus `extra` (image tokens, new tokens) must fit in `limit`
    positions (None: no check). Raises ValueError naming the line, the lengths and what to do."""
    if limit is None:
        return
    prompts = list(prompts)
    for start in range(0, len(prompts), BATCH):
        chunk = prompts[start:start + BATCH]
        counts = [len(ids) for ids in tokenizer([text for _, text in chunk])["input_ids"]]
        for (where, _), count in zip(chunk, counts):
            if count + extra > limit:
                raise ValueError(f"{where}: {what} is {count} tokens, {count + extra} with the image and new "
                                 f"tokens: more than the {limit} positions of {folder} (max_position_embeddings "
                                 f"in its config.json): shorten it")
