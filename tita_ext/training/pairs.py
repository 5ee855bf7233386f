"""Preference pairs for reward-model DPO, built the way TITA's authors built them: no labels needed.

For each (image, question) the base model answers greedily twice: on the clean image (chosen) and
on a diffusion-noised copy (rejected: what the model says when it cannot see well, i.e. its
language prior). Pairs whose two answers are the same are dropped. With labels, a second variant
takes the ground truth as chosen and the base's clean-image answer as rejected where it differs.

Pairs are stored as JSON lines: {"image": path, "prompt": text with the image placeholder,
"chosen": text, "rejected": text}.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image

DEFAULT_PROMPT = "USER: <image>\n{question} ASSISTANT:"
DEFAULT_NOISE_STEP = 500
DEFAULT_NOISE_STEPS = 1000

ImageLike = Union[str, os.PathLike, Image.Image]


@dataclass(frozen=True)
class PreferencePair:
    """One DPO example. image: a path (str) or, before it is written out, an in-memory PIL image;
    prompt: the model prompt with the image placeholder (e.g. "USER: <image>\\n... ASSISTANT:");
    chosen, rejected: response texts that follow the prompt (stripped, no special tokens)."""

    image: str | Image.Image | None
    prompt: str
    chosen: str
    rejected: str


# --- noise --------------------------------------------------------------------------------------


def alpha_bars(steps: int = DEFAULT_NOISE_STEPS, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """float64 [steps]: abar_t = prod_{s <= t} (1 - beta_s), DDPM's linear beta schedule."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def noise_image(image: Image.Image, step: int = DEFAULT_NOISE_STEP, steps: int = DEFAULT_NOISE_STEPS,
                seed: int = 0) -> Image.Image:
    """The image after `step` (0-based, < steps) steps of DDPM forward diffusion:
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, eps ~ N(0, I), pixels mapped to [-1, 1] and back
    (clamped, rounded). The same (image, step, steps, seed) gives the same RGB image."""
    if not 0 <= step < steps:
        raise ValueError(f"step must be in [0, {steps}), got {step}")
    abar = float(alpha_bars(steps)[step])
    x0 = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)) / 127.5 - 1.0
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    xt = abar ** 0.5 * x0 + (1.0 - abar) ** 0.5 * eps
    pixels = ((xt.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return Image.fromarray(pixels.numpy())  # uint8 [H, W, 3]: RGB


# --- building -----------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: 'A red cube.' == 'a red  cube'."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def same_answer(a: str, b: str) -> bool:
    """Default test for "the two answers are the same" (after `normalize_answer`)."""
    return normalize_answer(a) == normalize_answer(b)


def load_image(image: ImageLike, root: str | os.PathLike | None = None) -> Image.Image:
    """An RGB PIL image from a PIL image or a path (relative paths are taken under `root`)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    if root is not None and not path.is_absolute():
        path = Path(root) / path
    with Image.open(path) as img:
        return img.convert("RGB")


def _image_ref(image: ImageLike) -> str | Image.Image:
    return str(image) if isinstance(image, (str, os.PathLike)) else image


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


@torch.no_grad()
def greedy_answers(model, processor, prompts: Sequence[str], images: Sequence[Image.Image], *,
                   max_new_tokens: int = 32) -> list[str]:
    """The model's greedy answers (decoded, special tokens dropped, stripped) to left-padded
    prompts with one image each, through `model.generate`."""
    tokenizer = _tokenizer(processor)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right
    try:
        inputs = processor(text=list(prompts), images=list(images), return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad)
    new = out[:, inputs["input_ids"].shape[1]:]
    return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]


def build_pairs(base, processor, items: Iterable[Sequence], *, step: int = DEFAULT_NOISE_STEP,
                steps: int = DEFAULT_NOISE_STEPS, max_new_tokens: int = 32, batch_size: int = 8,
                prompt_template: str = DEFAULT_PROMPT, labelled: bool = False, seed: int = 0,
                same: Callable[[str, str], bool] = same_answer, progress: bool = True) -> list[PreferencePair]:
    """Preference pairs from the base model's own answers.

    items: (image, question) or (image, question, answer) tuples; image is a PIL image or a path.
    Unlabelled (default): chosen = the base's greedy answer on the clean image, rejected = its
        greedy answer on `noise_image(image, step, steps, seed + item index)`.
    labelled=True: chosen = the item's answer, rejected = the base's clean-image answer.
    Either way pairs whose answers are `same` are dropped. Prompts are
    `prompt_template.format(question=...)`; the base answers `batch_size` items per call (clean
    and noised images in one left-padded batch). Returns the kept pairs in item order.
    """
    from tqdm.auto import tqdm

    items = list(items)
    pairs: list[PreferencePair] = []
    bar = tqdm(total=len(items), desc="pairs", unit="item", disable=not progress)
    dropped = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        if labelled and any(len(item) < 3 for item in chunk):
            raise ValueError("labelled=True needs (image, question, answer) items")
        images = [load_image(item[0]) for item in chunk]
        prompts = [prompt_template.format(question=item[1]) for item in chunk]
        if labelled:
            answers = greedy_answers(base, processor, prompts, images, max_new_tokens=max_new_tokens)
            chosen, rejected = [str(item[2]).strip() for item in chunk], answers
        else:
            noised = [noise_image(img, step, steps, seed + start + i) for i, img in enumerate(images)]
            answers = greedy_answers(base, processor, prompts + prompts, images + noised,
                                     max_new_tokens=max_new_tokens)
            chosen, rejected = answers[:len(chunk)], answers[len(chunk):]
        for item, prompt, good, bad in zip(chunk, prompts, chosen, rejected):
            if same(good, bad):
                dropped += 1
                continue
            pairs.append(PreferencePair(_image_ref(item[0]), prompt, good, bad))
        bar.update(len(chunk))
        bar.set_postfix(kept=len(pairs), dropped=dropped)
    bar.close()
    return pairs


# --- storage ------------------------------------------------------------------------------------


def write_pairs(path: str | os.PathLike, pairs: Iterable[PreferencePair | dict], *,
                image_dir: str | os.PathLike | None = None) -> int:
    """Write pairs as JSON lines (image, prompt, chosen, rejected); returns how many.

    An image given as a path is written as that path. An in-memory image that came from a file
    (PIL's `filename`) is written as that file's path; any other in-memory image is saved as PNG
    under `image_dir` (required then) and written as that file's path. Every file is written
    crash-safe (`tita_ext.safe_write`): an interrupted call leaves any previous pairs file whole."""
    from ..safe_write import atomic_file, clean_stale

    if image_dir is not None:
        clean_stale(image_dir)  # once, not per image
    count = 0
    with atomic_file(path) as f:
        for i, pair in enumerate(pairs):
            pair = _as_pair(pair)
            image = pair.image
            if isinstance(image, Image.Image):
                if getattr(image, "filename", ""):
                    image = image.filename
                elif image_dir is None:
                    raise ValueError(f"pair {i} holds an in-memory image: pass image_dir= to save it, or give "
                                     "build_pairs image paths")
                else:
                    file = Path(image_dir) / f"pair-{i:06d}.png"
                    with atomic_file(file, "wb", clean=False) as png:
                        image.save(png, format="PNG")
                    image = str(file)
            record = {"image": None if image is None else str(image), "prompt": pair.prompt,
                      "chosen": pair.chosen, "rejected": pair.rejected}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_pairs(path: str | os.PathLike) -> list[PreferencePair]:
    """Pairs from a JSON-lines file written by `write_pairs` (blank lines skipped); a ValueError
    naming the file, the line and the key for anything else."""
    from ..jsonl import read_json_lines, string_field

    what = "keys image, prompt, chosen, rejected"
    return [PreferencePair(string_field(record, "image", where, what, optional=True),
                           *(string_field(record, key, where, what) for key in ("prompt", "chosen", "rejected")))
            for where, record in read_json_lines(path, what)]


def _as_pair(pair: PreferencePair | dict) -> PreferencePair:
    if isinstance(pair, PreferencePair):
        return pair
    missing = {"prompt", "chosen", "rejected"} - set(pair)
    if missing:
        raise KeyError(f"missing keys {sorted(missing)}")
    return PreferencePair(pair.get("image"), pair["prompt"], pair["chosen"], pair["rejected"])
