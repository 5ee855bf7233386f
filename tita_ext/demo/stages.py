"""The demo's stages, each a plain function over the recipe: the world's data, supervised training
of a tiny LLaVA, preference pairs from the base's own answers, DPO of the reward model, and the
POPE question sets. `story.py` strings them together and caches their outputs.
"""

from __future__ import annotations

import pathlib
from typing import Any

import torch

from ..tiny_models import tiny_llava, tiny_llava_processor
from ..training.dpo import train_reward_dpo
from ..training.pairs import PreferencePair, build_pairs, read_pairs, write_pairs
from ..training.sft import encode_examples, train_sft
from ..world import POPE_SPLITS, SHAPES, World, qa_examples, render, write_pope, yes_no_question
from ..world.text import PROMPT_TEMPLATE
from .recipe import DemoRecipe, ModelSize

# The demo's models are trained on prompts in this template; POPE asks in it too.
TEMPLATE = PROMPT_TEMPLATE
VALIDATION_OFFSET = 1  # World.scenes seed offset of the validation images (test images: 0)
# Seed offset of the scenes the pairs are built on: apart from the SFT scenes (train, 0) and from
# the validation and test scenes (test, 1 and 0).
PAIR_OFFSET = {"train": 1, "test": 2}
OTHER_ANSWER = {"Yes": "No", "No": "Yes"}
NOISE_SEED_STRIDE = 10**7  # the pairs' noise seeds: this times the run's seed, plus the item's index


def make_world(recipe: DemoRecipe) -> World:
    """The recipe's world: every shape in its own colour (see World's shape_colors)."""
    return World(seed=recipe.seed, image_size=recipe.image_size, bias=recipe.world_bias,
                 test_bias=recipe.world_test_bias, size_range=recipe.world_size_range, shape_colors=True,
                 hallucination=recipe.world_hallucination)


def new_model(size: ModelSize, seed: int) -> torch.nn.Module:
    """An untrained tiny LLaVA of this size (its weights a function of `seed`)."""
    return tiny_llava(hidden_size=size.hidden_size, layers=size.layers, vision_hidden_size=size.vision_hidden_size,
                      vision_layers=size.vision_layers, seed=seed)


def load_model(folder: pathlib.Path) -> torch.nn.Module:
    """A model folder written by `save_model`, in eval mode."""
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(folder).eval()


def save_model(model: torch.nn.Module, folder: pathlib.Path) -> None:
    """Weights, config and the tiny processor: a folder `tita-ext generate` / `eval-pope` load."""
    model.save_pretrained(folder)
    tiny_llava_processor().save_pretrained(folder)


def sft_rows(world: World, recipe: DemoRecipe, processor: Any, progress: bool,
             count: int | None = None) -> list[dict]:
    """The supervised rows of the first `count` training scenes (None: all `recipe.train_scenes`):
    every scene's caption and its six yes/no questions, as its (noisy: World.named_anyway)
    annotation says, scene by scene (the first k scenes are the same whatever the count:
    World.scenes)."""
    scenes = world.scenes(recipe.train_scenes if count is None else count, "train")
    examples = [(render(scene), prompt, answer)
                for scene, named in zip(scenes, world.named_anyway(scenes, "train"))
                for prompt, answer in qa_examples(scene, named_anyway=named)]
    return encode_examples(processor, examples, progress=progress)


def train_supervised(size: ModelSize, rows: list[dict], recipe: DemoRecipe, processor: Any,
                     progress: bool) -> tuple[torch.nn.Module, dict]:
    """A new model of `size` trained on `rows`; returns (model, train_sft's record)."""
    seed = recipe.model_seed(size)
    model = new_model(size, seed)
    record = train_sft(model, processor, rows, lr=recipe.sft_lr, epochs=recipe.sft_epochs,
                       batch_size=recipe.sft_batch, seed=seed, progress=progress)
    return record.pop("model"), record


def pair_items(world: World, recipe: DemoRecipe) -> list[tuple]:
    """The pairs' items: every shape of the vocabulary asked about on scenes no other stage uses.
    (image, question) for the "noise" source: nothing about the scenes' content is read (the
    questions do not depend on what is in the picture); (image, question, true answer) for
    "labels"."""
    scenes = world.scenes(recipe.pair_scenes, recipe.pair_split, seed_offset=PAIR_OFFSET[recipe.pair_split])
    labelled = recipe.pair_source == "labels"
    return [(image, yes_no_question(shape)) + (("Yes" if scene.has(shape) else "No",) if labelled else ())
            for scene, image in zip(scenes, map(render, scenes)) for shape in SHAPES]


def make_pairs(base: torch.nn.Module | None, world: World, recipe: DemoRecipe, processor: Any, folder: pathlib.Path,
               progress: bool) -> int:
    """Build the preference pairs and write folder/pairs.jsonl, the format `tita-ext pairs` writes,
    with image paths relative to the folder (folder/images/scene-N.png, one per scene); returns
    their count. The base answers the unlabelled ("noise") pairs; labelled pairs do not use it."""
    items = pair_items(world, recipe)
    if recipe.pair_source == "labels":
        pairs = [PreferencePair(image, TEMPLATE.format(question=question), answer, OTHER_ANSWER[answer])
                 for image, question, answer in items]
    else:
        pairs = build_pairs(base, processor, items, step=recipe.noise_step, max_new_tokens=3, batch_size=64,
                            prompt_template=TEMPLATE, seed=NOISE_SEED_STRIDE * recipe.seed, progress=progress)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    names: dict[int, str] = {}
    stored = []
    for pair in pairs:
        if id(pair.image) not in names:
            names[id(pair.image)] = f"images/scene-{len(names):06d}.png"
            pair.image.save(folder / names[id(pair.image)])
        stored.append(PreferencePair(names[id(pair.image)], pair.prompt, pair.chosen, pair.rejected))
    return write_pairs(folder / "pairs.jsonl", stored)


def load_pairs(folder: pathlib.Path) -> list[PreferencePair]:
    """The pairs `make_pairs` wrote, image paths made absolute."""
    return [PreferencePair(str(folder / p.image), p.prompt, p.chosen, p.rejected)
            for p in read_pairs(folder / "pairs.jsonl")]


def train_reward(reward_sft: torch.nn.Module, pairs: list[PreferencePair], recipe: DemoRecipe, processor: Any,
                 progress: bool) -> tuple[torch.nn.Module, dict]:
    """DPO from the supervised reward model (a frozen copy of it is DPO's reference)."""
    import copy

    model = copy.deepcopy(reward_sft)
    record = train_reward_dpo(model, processor, pairs, beta=recipe.dpo_beta, lr=recipe.dpo_lr,
                              epochs=recipe.dpo_epochs, batch_size=recipe.dpo_batch,
                              rpo_alpha=recipe.dpo_rpo_alpha, seed=recipe.seed, progress=progress)
    return record.pop("model"), record


def write_pope_sets(world: World, recipe: DemoRecipe, folder: pathlib.Path) -> dict[str, dict[str, pathlib.Path]]:
    """POPE folders for the validation and the test images: folder/{val,test}/pope_{split}.jsonl
    and images/. The popular ranking uses the training frequencies."""
    frequencies = world.object_frequencies("train")
    sets = {"val": world.scenes(recipe.val_scenes, "test", seed_offset=VALIDATION_OFFSET),
            "test": world.scenes(recipe.test_scenes, "test")}
    return {name: write_pope(folder / name, scenes, POPE_SPLITS, frequencies=frequencies)
            for name, scenes in sets.items()}
