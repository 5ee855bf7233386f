"""The demo world: deterministic scenes, the co-occurrence bias, rendering, captions, POPE files."""

from __future__ import annotations

import io
import json
import random

import pytest

from tita_ext.world import (BACKGROUND, COLORS, COMPANION, PAIRS, POPE_SPLITS, SHAPES, Scene, World, caption,
                            companion_rate, object_counts, pope_questions, qa_examples, render, shape_set_distribution,
                            write_pope)
from tita_ext.tiny_models import _COLORS, _SHAPES


def _png(scene: Scene) -> bytes:
    buffer = io.BytesIO()
    render(scene).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def train_scenes() -> list[Scene]:
    return World(seed=0).scenes(2000, "train")


@pytest.fixture(scope="module")
def test_scenes() -> list[Scene]:
    return World(seed=0).scenes(300, "test")


def test_vocabulary_is_the_tiny_tokenizers():
    assert set(SHAPES) == set(_SHAPES) and set(COLORS) == set(_COLORS)
    assert all(COMPANION[COMPANION[s]] == s and COMPANION[s] != s for s in SHAPES)


def test_same_seed_same_scenes_and_image_bytes():
    a, b = World(seed=7).scenes(20, "train"), World(seed=7).scenes(20, "train")
    assert a == b
    assert [_png(s) for s in a] == [_png(s) for s in b]
    assert World(seed=7).scenes(5, "train") == a[:5]  # a prefix does not depend on n


def test_different_seed_split_or_offset_differs():
    base = World(seed=7).scenes(20, "train")
    assert World(seed=8).scenes(20, "train") != base
    assert World(seed=7).scenes(20, "test") != base
    assert World(seed=7).scenes(20, "train", seed_offset=1) != base


def test_generation_leaves_the_global_rng_alone():
    state = random.getstate()
    World(seed=3).scenes(10)
    assert random.getstate() == state


def test_scene_structure(train_scenes):
    for scene in train_scenes[:300]:
        assert 1 <= len(scene.objects) <= 3
        assert len(set(scene.shapes)) == len(scene.shapes)
        for i, obj in enumerate(scene.objects):
            assert obj.shape in SHAPES and obj.color in COLORS
            assert 0 <= obj.x and obj.x + obj.size <= scene.image_size
            assert 0 <= obj.y and obj.y + obj.size <= scene.image_size
            for other in scene.objects[i + 1:]:  # bounding boxes do not overlap
                ax0, ay0, ax1, ay1 = obj.box
                bx0, by0, bx1, by1 = other.box
                assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0


@pytest.mark.parametrize("bias", [0.0, 0.3, 0.9, 1.0])
def test_distribution_is_calibrated_exactly(bias):
    dist = shape_set_distribution(bias)
    assert sum(p for _, p in dist) == pytest.approx(1.0)
    for shape in SHAPES:
        present = sum(p for s, p in dist if shape in s)
        both = sum(p for s, p in dist if shape in s and COMPANION[shape] in s)
        assert both / present == pytest.approx(bias, abs=1e-9)


def test_bias_in_training_scenes(train_scenes):
    assert companion_rate(train_scenes) == pytest.approx(0.9, abs=0.025)
    for first, second in PAIRS:
        with_first = [s for s in train_scenes if s.has(first)]
        without_first = [s for s in train_scenes if not s.has(first)]
        rate = sum(s.has(second) for s in with_first) / len(with_first)
        base_rate = sum(s.has(second) for s in without_first) / len(without_first)
        marginal = sum(s.has(second) for s in train_scenes) / len(train_scenes)
        assert rate == pytest.approx(0.9, abs=0.05)
        assert base_rate < 0.1 and marginal < 0.6  # far below the companion rate
        for other in SHAPES:  # a non-companion is no better predicted by `first` than at random
            if other not in (first, second):
                assert sum(s.has(other) for s in with_first) / len(with_first) < 0.5


def test_test_split_has_its_own_rate(test_scenes):
    assert World(seed=0).split_bias("test") == 0.5
    assert companion_rate(test_scenes) == pytest.approx(0.5, abs=0.08)
    assert World(seed=0, test_bias=None).split_bias("test") == 0.9


def test_popular_pairs_are_more_frequent(train_scenes):
    counts = object_counts(train_scenes)
    assert counts["cube"] > counts["cone"] > counts["star"]
    freq = World(seed=0).object_frequencies("train")
    assert freq["cube"] == pytest.approx(counts["cube"] / len(train_scenes), abs=0.04)


@pytest.mark.parametrize("size", [32, 64])
def test_render_size_and_colours(train_scenes, size):
    for scene in World(seed=1, image_size=size).scenes(30):
        image = render(scene)
        assert image.size == (size, size) and image.mode == "RGB"
        for obj in scene.objects:
            inside = [image.getpixel((x, y)) for x in range(obj.x, obj.x + obj.size)
                      for y in range(obj.y, obj.y + obj.size)]
            # every object puts a visible amount of its exact colour inside its own box
            assert inside.count(COLORS[obj.color]) >= 0.15 * obj.size ** 2, (obj, size)
        colours = {COLORS[o.color] for o in scene.objects}
        assert {rgb for _, rgb in image.getcolors()} <= colours | {BACKGROUND}  # nothing else is drawn


def test_caption_and_qa_examples():
    scene = World(seed=2).scenes(50)[0]
    text = caption(scene)
    assert text[0].isupper() and text.endswith(".")
    for obj in scene.objects:
        assert f"{obj.color} {obj.shape}" in text
    pairs = qa_examples(scene)
    assert pairs[0] == ("USER: <image>\nWhat is in the picture? ASSISTANT:", text)
    yes_no = dict(pairs[1:])
    assert len(yes_no) == len(SHAPES)
    for shape in SHAPES:
        prompt = f"USER: <image>\nIs there a {shape} in the image? ASSISTANT:"
        assert yes_no[prompt] == ("Yes" if scene.has(shape) else "No")
    assert len(qa_examples(scene, include_caption=False)) == len(SHAPES)
    three = next(s for s in World(seed=2).scenes(50) if len(s.objects) == 3)
    assert caption(three).count(",") == 1 and " and " in caption(three)


@pytest.mark.parametrize("split", POPE_SPLITS)
def test_pope_balanced_and_correct(test_scenes, split):
    questions = pope_questions(test_scenes, split)
    per_image: dict[int, list[dict]] = {}
    for q in questions:
        per_image.setdefault(q["image_id"], []).append(q)
        scene = test_scenes[q["image_id"]]
        assert q["label"] == ("yes" if scene.has(q["object"]) else "no")
        assert q["question"] == f"Is there a {q['object']} in the image?"
    assert len(per_image) == len(test_scenes)
    for image_id, qs in per_image.items():
        labels = [q["label"] for q in qs]
        assert labels.count("yes") == labels.count("no") == len(test_scenes[image_id].objects)
        assert len({q["object"] for q in qs}) == len(qs)  # no object asked twice
    assert pope_questions(test_scenes, split) == questions  # deterministic


def test_pope_adversarial_asks_about_absent_companions(test_scenes):
    questions = pope_questions(test_scenes, "adversarial")
    asked_companions = 0
    for image_id, scene in enumerate(test_scenes):
        negatives = [q["object"] for q in questions if q["image_id"] == image_id and q["label"] == "no"]
        absent_companions = {COMPANION[s] for s in scene.shapes} - set(scene.shapes)
        # every absent companion is asked about (there is always room: no-questions = present shapes)
        assert absent_companions <= set(negatives)
        asked_companions += len(absent_companions)
    assert asked_companions > len(test_scenes) // 2  # the held-out split does exercise the trap


def test_pope_popular_uses_frequencies(test_scenes):
    ranking = {"star": 10, "box": 9, "cone": 8, "ring": 7, "cube": 1, "ball": 0}
    for image_id, scene in enumerate(test_scenes[:50]):
        qs = [q for q in pope_questions(test_scenes, "popular", frequencies=ranking) if q["image_id"] == image_id]
        negatives = [q["object"] for q in qs if q["label"] == "no"]
        absent = sorted((s for s in SHAPES if not scene.has(s)), key=lambda s: -ranking[s])
        assert negatives == absent[:len(negatives)]


def test_pope_random_varies_with_seed(test_scenes):
    assert pope_questions(test_scenes, "random", seed=0) != pope_questions(test_scenes, "random", seed=1)
    with pytest.raises(ValueError, match="split"):
        pope_questions(test_scenes, "hard")


def test_write_pope(tmp_path, test_scenes):
    from PIL import Image

    scenes = test_scenes[:15]
    paths = write_pope(tmp_path, scenes, frequencies=World(seed=0).object_frequencies("train"))
    assert set(paths) == set(POPE_SPLITS)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"{i:06d}.png" for i in range(15)]
    for split in POPE_SPLITS:
        path = tmp_path / f"pope_{split}.jsonl"
        assert paths[split] == path
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(records) == 2 * sum(len(s.objects) for s in scenes)
        for record in records:
            assert set(record) == {"image", "question", "label"}
            assert record["label"] in ("yes", "no")
            image_id = int(record["image"].removeprefix("images/").removesuffix(".png"))
            shape = record["question"].removeprefix("Is there a ").removesuffix(" in the image?")
            assert record["label"] == ("yes" if scenes[image_id].has(shape) else "no")
    first = json.loads((tmp_path / "pope_adversarial.jsonl").read_text().splitlines()[0])
    assert first["image"] == "images/000000.png"
    with Image.open(tmp_path / "images" / "000003.png") as image:
        assert image.size == (64, 64)
        assert image.convert("RGB").tobytes() == render(scenes[3]).tobytes()


def test_bad_arguments():
    with pytest.raises(ValueError, match="bias"):
        World(seed=0, bias=1.5)
    with pytest.raises(ValueError, match="split"):
        World(seed=0).scenes(3, "val")


def test_shape_colors_fix_each_shapes_colour_and_keep_the_layout():
    from tita_ext.world import SHAPE_COLORS

    plain, fixed = World(seed=4), World(seed=4, shape_colors=True)
    for a, b in zip(plain.scenes(50), fixed.scenes(50)):
        assert [(o.shape, o.x, o.y, o.size) for o in a.objects] == [(o.shape, o.x, o.y, o.size) for o in b.objects]
        assert all(o.color == SHAPE_COLORS[o.shape] for o in b.objects)
    assert len(set(SHAPE_COLORS.values())) == len(SHAPE_COLORS)


def test_bad_world_arguments():
    with pytest.raises(ValueError, match="image_size must be at least 16, got 8"):
        World(seed=0, image_size=8)
    with pytest.raises(ValueError, match=r"size_range must satisfy 0 < min <= max <= 0.45, got \(0.3, 0.5\)"):
        World(seed=0, size_range=(0.3, 0.5))
    with pytest.raises(ValueError, match="pair_weights must be 3 positive numbers"):
        World(seed=0, pair_weights=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="max_objects must be 1, 2 or 3, got 4"):
        World(seed=0, max_objects=4)
    with pytest.raises(ValueError, match=r"a positive bias needs room for two objects \(max_objects >= 2\)"):
        World(seed=0, max_objects=1)
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        World(seed=0).scenes(-1)


def test_annotations_name_absent_companions_at_the_hallucination_rate():
    from tita_ext.world import COMPANION, SHAPE_COLORS

    world = World(seed=6, hallucination=0.6, shape_colors=True, bias=0.5)
    scenes = world.scenes(2000)
    named = world.named_anyway(scenes)
    assert named == world.named_anyway(scenes)  # deterministic
    chances = hits = 0
    for scene, extra in zip(scenes, named):
        absent = [COMPANION[s] for s in scene.shapes if not scene.has(COMPANION[s])]
        assert set(extra) <= set(absent) and list(extra) == [s for s in absent if s in extra]
        chances, hits = chances + len(absent), hits + len(extra)
    assert chances > 1000 and abs(hits / chances - 0.6) < 0.05
    # the careless answer is "Yes"; the caption stays the truth
    scene, extra = next((s, e) for s, e in zip(scenes, named) if e)
    pairs = dict(qa_examples(scene, named_anyway=extra))
    assert pairs["USER: <image>\nWhat is in the picture? ASSISTANT:"] == caption(scene)
    for shape in extra:
        assert f"a {SHAPE_COLORS[shape]} {shape}" not in caption(scene)
        assert pairs[f"USER: <image>\nIs there a {shape} in the image? ASSISTANT:"] == "Yes"
    # test annotations are the truth; no noise at rate 0
    assert all(not e for e in world.named_anyway(world.scenes(200, "test"), "test"))
    assert all(not e for e in World(seed=6, bias=0.5).named_anyway(scenes))
    with pytest.raises(ValueError, match=r"hallucination must be a probability in \[0, 1\], got 1.5"):
        World(seed=0, hallucination=1.5)
