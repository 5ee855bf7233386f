"""A built-in world for the demo: procedurally drawn coloured shapes with a co-occurrence bias.

Six shapes (cube, ball, cone, ring, star, box: words the tiny tokenizer knows) in companion pairs
(cube/ball, cone/ring, star/box). In the training split a shape's companion is present with
probability `bias` (0.9), so a base model trained on the captions learns to expect it; POPE
questions on held-out scenes (adversarial split: the absent companion) expose the hallucination.

    world = World(seed=0)
    train = world.scenes(2000, "train")
    image = render(train[0])                      # 64x64 PIL image
    pairs = qa_examples(train[0])                 # [(prompt, answer), ...] for training
    write_pope("pope/", world.scenes(200, "test"), frequencies=world.object_frequencies("train"))
"""

from .pope import POPE_SPLITS, image_name, pope_questions, write_pope
from .render import render
from .scenes import (BACKGROUND, COLORS, COMPANION, PAIRS, SHAPE_COLORS, SHAPES, Scene, SceneObject, World,
                     companion_rate, object_counts, shape_set_distribution)
from .text import CAPTION_QUESTION, caption, format_prompt, qa_examples, yes_no_question

__all__ = [
    "World", "Scene", "SceneObject", "render", "caption", "qa_examples", "format_prompt", "yes_no_question",
    "CAPTION_QUESTION", "pope_questions", "write_pope", "image_name", "POPE_SPLITS", "PAIRS", "SHAPES",
    "COMPANION", "COLORS", "SHAPE_COLORS", "BACKGROUND", "object_counts", "companion_rate", "shape_set_distribution",
]
