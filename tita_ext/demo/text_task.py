"""The real-weights text demo's task: two-number addition with a checkable answer.

    problems(seed, n)          n distinct (a, b) pairs, LOW <= a, b <= HIGH, a function of the seed
    prompt_text(tokenizer, p)  the chat prompt "What is 17 + 28?", the answer begun: "17 + 28 ="
    is_correct(text, p)        the first integer in the answer equals a + b
    answer_part(text)          the answer up to the end of its first integer (what a pair contrasts)

SmolLM2-135M-Instruct asked "Answer with the number only." explains instead of answering; with
the equation begun in its turn it answers with a number. Measured greedy on 60 random problems
(1 thread, this file's prompt): operands 10..99 right 13-18%, 10..49 23%, 1..9 + 10..99 7%,
10..30 42%, 1..9 95%. The demo uses 10..30 (sums 20..60, 441 problems): often right, often
wrong, so its own samples give many right/wrong pairs.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

Problem = tuple[int, int]
LOW, HIGH = 10, 30
SYSTEM = "You are a calculator."  # short: the default system prompt would double every prompt's length
QUESTION = "What is {a} + {b}?"
ANSWER_START = "{a} + {b} ="
_INTEGER = re.compile(r"-?\d[\d,]*")


def problems(seed: int, n: int, *, exclude: Sequence[Problem] = (), low: int = LOW,
             high: int = HIGH) -> list[Problem]:
    """n distinct (a, b) problems drawn with `seed`, none of them in `exclude`."""
    pool = (high - low + 1) ** 2 - len({p for p in exclude if low <= min(p) and max(p) <= high})
    if n > pool:
        raise ValueError(f"only {pool} distinct problems with operands in [{low}, {high}] are left, asked for {n}")
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


def answer_part(text: str) -> str:
    """The text up to the end of its first integer, its leading space kept (" 45." -> " 45"): the
    tokens the checker judges, as the model produced them; the whole text when it has no integer."""
    match = _INTEGER.search(text)
    return text[:match.end()].rstrip(",") if match else text


def is_correct(text: str, problem: Problem) -> bool:
    """Whether the answer's first integer is the sum."""
    return parse_integer(text) == problem[0] + problem[1]
