"""Text about scenes: captions and (prompt, answer) training pairs in the LLaVA-1.5 prompt format.

    prompt:  "USER: <image>\\n{question} ASSISTANT:"
    answer:  "A red cube and a blue ball."   or   "Yes" / "No"

The answer is meant to follow the prompt after one space (`prompt + " " + answer`).
"""

from __future__ import annotations

from typing import Sequence

from .scenes import SHAPES, Scene

CAPTION_QUESTION = "What is in the picture?"
PROMPT_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"


def format_prompt(question: str) -> str:
    """The LLaVA-1.5 style prompt for one question about one image."""
    return PROMPT_TEMPLATE.format(question=question)


def yes_no_question(shape: str) -> str:
    """The POPE-style probing question about a shape."""
    return f"Is there a {shape} in the image?"


def caption(scene: Scene) -> str:
    """A sentence naming every object in drawing order, e.g. "A red cube, a green cone and a blue ball."."""
    phrases = [f"a {obj.color} {obj.shape}" for obj in scene.objects]
    if not phrases:
        return "Nothing."
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return text[0].upper() + text[1:] + "."


def qa_examples(scene: Scene, *, include_caption: bool = True, named_anyway: Sequence[str] = ()
                ) -> list[tuple[str, str]]:
    """Training pairs for the base model: the caption question (if asked) and one yes/no question
    per shape of the vocabulary (in vocabulary order), answered "Yes" or "No" from the scene, or
    "Yes" for the absent shapes of `named_anyway` (World.named_anyway: careless answers). The
    caption is always the truth: what teaches seeing is right, the answers' habit is not."""
    pairs = [(format_prompt(CAPTION_QUESTION), caption(scene))] if include_caption else []
    for shape in SHAPES:
        said = scene.has(shape) or shape in named_anyway
        pairs.append((format_prompt(yes_no_question(shape)), "Yes" if said else "No"))
    return pairs


__all__ = ["CAPTION_QUESTION", "PROMPT_TEMPLATE", "format_prompt", "yes_no_question", "caption", "qa_examples"]
