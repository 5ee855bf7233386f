"""Scenes of the demo world: which shapes appear together, in what colours, where.

A scene holds 1 to `max_objects` objects of distinct shapes. The six shapes come in companion
pairs (cube/ball, cone/ring, star/box). Which set of shapes a scene holds is drawn from a fixed
distribution over all allowed shape sets whose weights are calibrated so that, exactly,

    P(companion present | shape present) = bias

for every shape (default 0.9: the co-occurrence bias the base model learns from its captions).
Pairs also differ in how common they are (`pair_weights`), so POPE's "popular" split has
something to find. The test split uses its own rate (`test_bias`, default 0.5) so that held-out
images often show one member of a pair without its companion: the case the adversarial split
probes.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..tiny_models import _COLORS, _SHAPES

PAIRS: tuple[tuple[str, str], ...] = (("cube", "ball"), ("cone", "ring"), ("star", "box"))
SHAPES: tuple[str, ...] = tuple(shape for pair in PAIRS for shape in pair)
COMPANION: dict[str, str] = {a: b for a, b in PAIRS} | {b: a for a, b in PAIRS}
COLORS: dict[str, tuple[int, int, int]] = dict(_COLORS)  # name -> RGB, the words the tiny tokenizer knows
BACKGROUND: tuple[int, int, int] = (128, 128, 128)  # plain mid-grey: differs from every object colour
SPLITS: tuple[str, ...] = ("train", "test")

assert set(SHAPES) == set(_SHAPES), "the world's shapes must be the tiny tokenizer's shapes"


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its shape and colour names and its square bounding box (pixels).

    The box's top-left corner is (x, y) and its side is `size`; the shape is drawn inside it."""

    shape: str
    color: str
    x: int
    y: int
    size: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) with x1 = x + size exclusive: the object covers columns x..x1-1."""
        return (self.x, self.y, self.x + self.size, self.y + self.size)


@dataclass(frozen=True)
class Scene:
    """A picture's content: its objects (distinct shapes) on a `image_size` x `image_size` canvas."""

    objects: tuple[SceneObject, ...]
    image_size: int

    @property
    def shapes(self) -> tuple[str, ...]:
        """The shapes present, in drawing order."""
        return tuple(obj.shape for obj in self.objects)

    def has(self, shape: str) -> bool:
        """Whether an object of this shape is in the scene."""
        return shape in self.shapes


# ---------------------------------------------------------------------------------------------
# The distribution over shape sets


def _allowed_sets(max_objects: int) -> list[tuple[str, ...]]:
    """Every set of 1..max_objects distinct shapes, as tuples in SHAPES order."""
    return [combo for n in range(1, max_objects + 1) for combo in itertools.combinations(SHAPES, n)]


def _pair_state(shapes: Sequence[str], pair: tuple[str, str]) -> int:
    """How many members of `pair` are in `shapes` (0, 1 or 2)."""
    return (pair[0] in shapes) + (pair[1] in shapes)


def _set_weight(shapes: Sequence[str], pair_weights: Sequence[float], lone: Sequence[float],
                both: float) -> float:
    """Unnormalised probability of a shape set: per present pair, its popularity times
    `both` (both members) or `lone[k]` (one member)."""
    weight = 1.0
    for k, pair in enumerate(PAIRS):
        state = _pair_state(shapes, pair)
        if state:
            weight *= pair_weights[k] * (both if state == 2 else lone[k])
    return weight


def _lone_weights(bias: float, pair_weights: Sequence[float], sets: Sequence[tuple[str, ...]],
                  iterations: int = 200) -> tuple[list[float], float]:
    """Per-pair weight of "one member alone" (and the weight of "both") such that every shape's
    companion is present with probability `bias` given the shape.

    For pair k, the weight of a set holding one member alone is linear in lone[k], so
    rate_k = W(both) / (W(both) + W(member alone)) has a closed-form solution for lone[k] with the
    other pairs fixed; iterating over the pairs (Gauss-Seidel) converges in a few rounds."""
    if bias >= 1.0:
        return [0.0] * len(PAIRS), 1.0
    if bias <= 0.0:
        return [1.0] * len(PAIRS), 0.0
    lone = [1.0] * len(PAIRS)
    for _ in range(iterations):
        previous = list(lone)
        for k, (first, second) in enumerate(PAIRS):
            both_mass = sum(_set_weight(s, pair_weights, lone, 1.0) for s in sets if first in s and second in s)
            alone_mass = sum(_set_weight(s, pair_weights, lone, 1.0) / lone[k]
                             for s in sets if first in s and second not in s)
            lone[k] = both_mass * (1.0 - bias) / (bias * alone_mass)
        if max(abs(a - b) / b for a, b in zip(lone, previous)) < 1e-12:
            break
    return lone, 1.0


@functools.lru_cache(maxsize=32)
def shape_set_distribution(bias: float, pair_weights: tuple[float, ...] = (3.0, 2.0, 1.0),
                           max_objects: int = 3) -> tuple[tuple[tuple[str, ...], float], ...]:
    """The calibrated distribution: ((shapes, probability), ...) over every allowed shape set."""
    if not 0.0 <= bias <= 1.0:
        raise ValueError(f"bias must be in [0, 1], got {bias}")
    if len(pair_weights) != len(PAIRS) or min(pair_weights) <= 0:
        raise ValueError(f"pair_weights must be {len(PAIRS)} positive numbers, got {pair_weights}")
    if not 1 <= max_objects <= 3:
        raise ValueError(f"max_objects must be 1, 2 or 3, got {max_objects}")
    sets = _allowed_sets(max_objects)
    if max_objects == 1 and bias > 0:
        raise ValueError("a positive bias needs room for two objects (max_objects >= 2)")
    lone, both = _lone_weights(bias, pair_weights, sets)
    weights = [_set_weight(s, pair_weights, lone, both) for s in sets]
    total = sum(weights)
    return tuple((s, w / total) for s, w in zip(sets, weights) if w > 0)


# ---------------------------------------------------------------------------------------------
# Placement


def _overlaps(box: tuple[int, int, int, int], others: Iterable[SceneObject], gap: int) -> bool:
    """Whether `box` comes within `gap` pixels of any other object's box."""
    x0, y0, x1, y1 = box
    for other in others:
        a0, b0, a1, b1 = other.box
        if x0 < a1 + gap and a0 < x1 + gap and y0 < b1 + gap and b0 < y1 + gap:
            return True
    return False


def _try_place(rng: random.Random, shape: str, color: str, size: int, image_size: int, gap: int,
               placed: Sequence[SceneObject], tries: int = 200) -> SceneObject | None:
    """A box of side `size` at a random free spot, or None when `tries` random spots all collide."""
    for _ in range(tries):
        x = rng.randint(gap, image_size - size - gap)
        y = rng.randint(gap, image_size - size - gap)
        candidate = SceneObject(shape, color, x, y, size)
        if not _overlaps(candidate.box, placed, gap):
            return candidate
    return None


def _place(rng: random.Random, shapes: Sequence[str], colors: Sequence[str], image_size: int,
           size_range: tuple[float, float]) -> tuple[SceneObject, ...]:
    """Non-overlapping square boxes inside the canvas, one per shape, at least `gap` pixels apart
    (rejection sampling; an object that finds no room is retried 15% smaller)."""
    gap = max(1, image_size // 32)
    placed: list[SceneObject] = []
    for shape, color in zip(shapes, colors):
        size = max(4, round(rng.uniform(*size_range) * image_size))
        while (obj := _try_place(rng, shape, color, size, image_size, gap, placed)) is None:
            if size <= 4:
                raise RuntimeError(f"no room for {len(shapes)} objects on a {image_size}px canvas")
            size = max(4, int(size * 0.85))
        placed.append(obj)
    return tuple(placed)


# ---------------------------------------------------------------------------------------------
# The world


# One colour per shape, for World(shape_colors=True).
SHAPE_COLORS: dict[str, str] = dict(zip(SHAPES, ("red", "blue", "green", "yellow", "white", "black")))


class World:
    """A seeded generator of scenes with a companion co-occurrence bias.

    Args:
        seed: everything the world makes is a pure function of this seed (and the arguments).
        image_size: canvas side in pixels (square images).
        bias: P(companion present | shape present) in the training split.
        test_bias: the same rate in the test split (None: same as `bias`). Lower by default so
            held-out images often show a shape without its usual companion.
        pair_weights: relative popularity of the pairs (cube/ball, cone/ring, star/box).
        max_objects: at most this many objects (distinct shapes) per scene, 1 to 3.
        size_range: object side as a fraction of `image_size` (min, max).
        shape_colors: draw every shape in its own fixed colour (SHAPE_COLORS) instead of a random
            one. A vision tower small enough to train on a CPU in minutes tells colours apart long
            before shapes, so the demo's tiny models see the world this way.
        hallucination: in the training split's yes/no answers, the probability that the absent
            companion of a shown shape is answered "yes" anyway, as careless annotators answer from
            what usually goes together (captions stay true). A model trained on them learns to say
            it sees what is not there, though it could tell: the hallucination TITA is meant to fix.
            Test annotations are always the truth.
    """

    def __init__(self, seed: int, image_size: int = 64, bias: float = 0.9, *, test_bias: float | None = 0.5,
                 pair_weights: Sequence[float] = (3.0, 2.0, 1.0), max_objects: int = 3,
                 size_range: tuple[float, float] = (0.28, 0.4), shape_colors: bool = False,
                 hallucination: float = 0.0) -> None:
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {image_size}")
        if not 0.0 < size_range[0] <= size_range[1] <= 0.45:
            raise ValueError(f"size_range must satisfy 0 < min <= max <= 0.45, got {size_range}")
        self.seed = seed
        self.image_size = image_size
        self.bias = bias
        self.test_bias = bias if test_bias is None else test_bias
        self.pair_weights = tuple(float(w) for w in pair_weights)
        self.max_objects = max_objects
        self.size_range = (float(size_range[0]), float(size_range[1]))
        self.shape_colors = shape_colors
        if not 0.0 <= hallucination <= 1.0:
            raise ValueError(f"hallucination must be a probability in [0, 1], got {hallucination}")
        self.hallucination = float(hallucination)
        for rate in (self.bias, self.test_bias):  # validate both eagerly
            shape_set_distribution(rate, self.pair_weights, max_objects)

    def split_bias(self, split: str) -> float:
        """The companion rate of a split."""
        _check_split(split)
        return self.bias if split == "train" else self.test_bias

    def distribution(self, split: str = "train") -> tuple[tuple[tuple[str, ...], float], ...]:
        """((shapes, probability), ...): the exact distribution of shape sets in a split."""
        return shape_set_distribution(self.split_bias(split), self.pair_weights, self.max_objects)

    def object_frequencies(self, split: str = "train") -> dict[str, float]:
        """Exact probability that a scene of `split` holds each shape (POPE's "popular" ranking)."""
        freq = dict.fromkeys(SHAPES, 0.0)
        for shapes, prob in self.distribution(split):
            for shape in shapes:
                freq[shape] += prob
        return freq

    def scenes(self, n: int, split: str = "train", seed_offset: int = 0) -> list[Scene]:
        """`n` scenes of a split, deterministic given (seed, split, seed_offset).

        Different splits and offsets draw from independent streams; the first k scenes of a
        call with n > k are the same as those of a call with n = k."""
        _check_split(split)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = random.Random(f"tita-world:{self.seed}:{split}:{seed_offset}")
        sets, probs = zip(*self.distribution(split))
        return [self._scene(rng, sets, probs) for _ in range(n)]

    def named_anyway(self, scenes: Sequence[Scene], split: str = "train", seed_offset: int = 0
                     ) -> list[tuple[str, ...]]:
        """Per scene, the absent companions its annotation names although they are not drawn
        (see `hallucination`): each absent companion of a present shape with that probability,
        in drawing order; always empty outside the training split. Deterministic given (seed,
        split, seed_offset) and the scenes, as `scenes(n, split, seed_offset)` made them."""
        _check_split(split)
        if split != "train" or self.hallucination == 0.0:
            return [() for _ in scenes]
        rng = random.Random(f"tita-world:{self.seed}:{split}:{seed_offset}:named-anyway")
        named = []
        for scene in scenes:
            absent = [COMPANION[shape] for shape in scene.shapes if not scene.has(COMPANION[shape])]
            named.append(tuple(shape for shape in absent if rng.random() < self.hallucination))
        return named

    def _scene(self, rng: random.Random, sets: Sequence[tuple[str, ...]], probs: Sequence[float]) -> Scene:
        """One scene: a shape set from the distribution, shuffled, coloured and placed."""
        shapes = list(rng.choices(sets, weights=probs, k=1)[0])
        rng.shuffle(shapes)
        colors = [rng.choice(list(COLORS)) for _ in shapes]  # drawn either way: the same seed, the same layout
        if self.shape_colors:
            colors = [SHAPE_COLORS[shape] for shape in shapes]
        objects = _place(rng, shapes, colors, self.image_size, self.size_range)
        return Scene(objects=objects, image_size=self.image_size)

    def __repr__(self) -> str:
        return (f"World(seed={self.seed}, image_size={self.image_size}, bias={self.bias}, "
                f"test_bias={self.test_bias}, pair_weights={self.pair_weights}, max_objects={self.max_objects}, "
                f"shape_colors={self.shape_colors}, hallucination={self.hallucination})")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def object_counts(scenes: Iterable[Scene]) -> Counter[str]:
    """How many scenes hold each shape (every shape is a key, possibly with count 0)."""
    counts: Counter[str] = Counter(dict.fromkeys(SHAPES, 0))
    for scene in scenes:
        counts.update(set(scene.shapes))
    return counts


def companion_rate(scenes: Iterable[Scene]) -> float:
    """Empirical P(companion present | shape present), pooled over all shapes."""
    present = with_companion = 0
    for scene in scenes:
        for shape in scene.shapes:
            present += 1
            with_companion += scene.has(COMPANION[shape])
    return with_companion / present if present else float("nan")


__all__ = ["PAIRS", "SHAPES", "COMPANION", "COLORS", "BACKGROUND", "SceneObject", "Scene", "World",
           "shape_set_distribution", "object_counts", "companion_rate"]
