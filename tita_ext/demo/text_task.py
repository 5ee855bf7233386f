"""The real-weights text demo's task: two-number addition with a checkable answer.

    problems(seed, n)          n distinct (a, b) pairs, 10 <= a, b <= 99, a function of the seed
    prompt_text(tokenizer, p)  the chat prompt "What is 37 + 48?", the answer begun: "37 + 48 ="
    is_correct(text, p)        the first integer in the answer equals a + b

SmolLM2-135M-Instruct asked "Answer with the number only." explains instead of answering; with
the equation begun in its turn it answers with a number, right for about one problem in five.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

Problem = tuple[int, int]
SYSTEM = "You are a calculator."  # short: the default system prompt would double every prompt's length
QUESTION = "What is {a} + {b}?"
ANSWER_START = "{a} + {b} ="
_INTEGER = re.compile(r"-?\d[\d,]*")


def problems(seed: int, n: int, *, exclude: Sequence[Problem] = (), low: int = 10, high: int = 99) -> list[Problem]:
    """n distinct (a, b) problems drawn with `seed`, none of them in `exclude`."""
    pool = (high - low + 1) ** 2 - len(set(exclude))
    if n > pool:
        raise ValueError(f"only {pool} distinct problems with operands in [{low}, {high}], asked for {n}")
    rng = random.Random(f"tita-text-task:{seed}")
    seen, out = set(exclude), []
    while len(out) < n:
        problem = (rng.randint(low, high), rng.randint(low, high))
        if problem not in seen:
            seen.add(problem)
            out.append(problem)
    return out


def prompt_text(tokenizer, problem: Problem) -> str:
    """The chat-formatted prompt for one problem (the model's own chat template, a short system
    message, the generation prompt and the begun equation)."""
    a, b = problem
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION.format(a=a, b=b)}]
    return (tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            + ANSWER_START.format(a=a, b=b))


def parse_integer(text: str) -> int | None:
    """The first integer in the text (thousands commas allowed), else None."""
    match = _INTEGER.search(text)
    return int(match.group().replace(",", "")) if match else None


def is_correct(text: str, problem: Problem) -> bool:
    """Whether the answer's first integer is the sum."""
    return parse_integer(text) == problem[0] + problem[1]
