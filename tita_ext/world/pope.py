"""POPE-style object-probing questions about scenes, and writing them as an evaluation folder.

Per scene: one yes-question for every present shape and as many no-questions about absent
shapes, chosen as in POPE (Li et al., 2023):

    random       absent shapes drawn uniformly at random
    popular      the absent shapes that are most frequent in the data
    adversarial  the absent usual companions of present shapes first (the co-occurrence trap),
                 then, when there are not enough, popular ones

Folder format (read by the POPE evaluator):

    folder/images/000012.png
    folder/pope_adversarial.jsonl   one JSON object a line, e.g.
        {"image": "images/000012.png", "question": "Is there a ball in the image?", "label": "yes"}
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .render import render
from .scenes import COMPANION, SHAPES, Scene, object_counts
from .text import yes_no_question

POPE_SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")


def _popularity_order(frequencies: Mapping[str, float]) -> list[str]:
    """Shapes from most to least frequent (ties in vocabulary order)."""
    return sorted(SHAPES, key=lambda shape: (-frequencies.get(shape, 0.0), SHAPES.index(shape)))


def _absent(scene: Scene) -> list[str]:
    """The shapes of the vocabulary that the scene lacks, in vocabulary order."""
    return [shape for shape in SHAPES if not scene.has(shape)]


def _negatives(scene: Scene, split: str, count: int, rng: random.Random, popular: Sequence[str]) -> list[str]:
    """`count` absent shapes to ask about, chosen by the split's rule."""
    absent = _absent(scene)
    if split == "random":
        return rng.sample(absent, count)
    ranked = [shape for shape in popular if shape in absent]
    if split == "popular":
        return ranked[:count]
    companions = [COMPANION[shape] for shape in scene.shapes if COMPANION[shape] in absent]
    rest = [shape for shape in ranked if shape not in companions]
    return (companions + rest)[:count]


def _question(image_id: int, shape: str, label: str) -> dict[str, Any]:
    return {"image_id": image_id, "question": yes_no_question(shape), "label": label, "object": shape}


def pope_questions(scenes: Sequence[Scene], split: str, *, frequencies: Mapping[str, float] | None = None,
                   seed: int = 0) -> list[dict[str, Any]]:
    """The POPE questions of one split: dicts with image_id (index into `scenes`), question,
    label ("yes"/"no") and object (the shape asked about); yes and no equally many per scene.

    Args:
        scenes: the images to ask about.
        split: "random", "popular" or "adversarial".
        frequencies: how common each shape is in the training data (counts or probabilities),
            for the popular ranking; default: counted over `scenes` themselves, as POPE does.
            `World.object_frequencies("train")` gives the exact training frequencies.
        seed: seeds the random split's draws (a local RNG; the order never depends on others).
    """
    if split not in POPE_SPLITS:
        raise ValueError(f"split must be one of {POPE_SPLITS}, got {split!r}")
    popular = _popularity_order(frequencies if frequencies is not None else object_counts(scenes))
    rng = random.Random(f"tita-pope:{seed}:{split}")
    questions: list[dict[str, Any]] = []
    for image_id, scene in enumerate(scenes):
        present = list(dict.fromkeys(scene.shapes))
        negatives = _negatives(scene, split, len(present), rng, popular)
        if len(negatives) != len(present):
            raise ValueError(f"scene {image_id} has too few absent shapes for a balanced set of questions")
        questions += [_question(image_id, shape, "yes") for shape in present]
        questions += [_question(image_id, shape, "no") for shape in negatives]
    return questions


def image_name(image_id: int) -> str:
    """The image's path relative to the POPE folder."""
    return f"images/{image_id:06d}.png"


def write_pope(folder: str | Path, scenes: Sequence[Scene], splits: Iterable[str] = POPE_SPLITS, *,
               frequencies: Mapping[str, float] | None = None, seed: int = 0) -> dict[str, Path]:
    """Render `scenes` into folder/images/NNNNNN.png and write folder/pope_{split}.jsonl for each
    split, one {"image", "question", "label"} object a line. Returns {split: jsonl path}."""
    from ..safe_write import atomic_file, clean_stale

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    clean_stale(folder / "images")
    for image_id, scene in enumerate(scenes):  # each file appears whole or not at all
        with atomic_file(folder / image_name(image_id), "wb", clean=False) as out:
            render(scene).save(out, format="PNG")
    paths: dict[str, Path] = {}
    for split in splits:
        path = folder / f"pope_{split}.jsonl"
        with atomic_file(path) as out:
            for q in pope_questions(scenes, split, frequencies=frequencies, seed=seed):
                record = {"image": image_name(q["image_id"]), "question": q["question"], "label": q["label"]}
                out.write(json.dumps(record) + "\n")
        paths[split] = path
    return paths


__all__ = ["POPE_SPLITS", "pope_questions", "write_pope", "image_name"]
