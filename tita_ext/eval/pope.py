"""POPE scoring: parse a model's free-text answer to yes / no, and the POPE metrics.

Parsing (`parse_answer`), in order:
  1. a leading yes / no, after any whitespace, punctuation or quotes and an optional
     "Answer:" prefix, in any case: "Yes.", " no,", "YES!", '"No"', "Yes, there is a cat";
  2. a fallback for answers that start with "There is/are ...": "There is no ...",
     "There are not ...", "There isn't ...", "There's nothing ..." read as no; "There is a
     dog", "There are two cats" read as yes;
  3. otherwise None (undecidable): "I cannot tell", "", "A red cube".

Undecidable answers. The reference POPE scorer (RUCAIBox/POPE evaluate.py, copied into
LLaVA's eval_pope.py) keeps the first sentence and reads it as "no" when it holds the word
"No", "no" or "not", and as "yes" otherwise, so an undecidable answer counts as *yes* there.
We count it as **no** by default (`unparsed="no"`): an answer that does not say yes is no claim
that the object is present, so garbage text is never scored as a hallucination, and the yes
ratio only counts real yeses. `unparsed="yes"` gives the reference convention, and
`reference_parse` is the reference rule itself, for numbers comparable with published tables.
Every metrics dict reports how many answers were undecidable ("unparsed").
"""

from __future__ import annotations

import re
from typing import Literal, Sequence

Answer = Literal["yes", "no"]

_PREFIX = r"^[\W_]*(?:answer\s*:\s*[\W_]*)?"
_LEADING = re.compile(_PREFIX + r"(yes|no)\b", re.IGNORECASE)
_THERE = r"there(?:\s+is|\s+are|'s|’s)\s+"
_THERE_NOT = re.compile(_PREFIX + r"(?:" + _THERE + r"(?:no|not|none|nothing)\b|there\s+(?:isn|aren)['’]t\b)",
                        re.IGNORECASE)
_THERE_IS = re.compile(_PREFIX + _THERE + r"\w", re.IGNORECASE)


def parse_answer(text: str) -> Answer | None:
    """Return "yes", "no", or None when the answer says neither (see the module docstring for the rules)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    lead = _LEADING.match(text)
    if lead:
        return lead.group(1).lower()  # type: ignore[return-value]
    if _THERE_NOT.match(text):
        return "no"
    if _THERE_IS.match(text):
        return "yes"
    return None


def reference_parse(text: str) -> Answer:
    """The reference POPE rule: the first sentence (up to the first "."), commas removed, split on
    spaces; "no" when it holds the word "No", "no" or "not", else "yes" (never undecidable)."""
    first = text.split(".")[0] if "." in text else text
    words = first.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def normalize_label(label: str) -> Answer:
    """A ground-truth label, "yes" or "no" in any case and surrounding whitespace."""
    value = str(label).strip().lower()
    if value not in ("yes", "no"):
        raise ValueError(f"a POPE label must be 'yes' or 'no', got {label!r}")
    return value  # type: ignore[return-value]


def pope_metrics(labels: Sequence[str], answers: Sequence[Answer | None], *,
                 unparsed: Answer = "no") -> dict[str, float | int]:
    """POPE metrics with "yes" as the positive class.

    Args:
        labels: ground truth, "yes"/"no" per question (any case).
        answers: parsed predictions, "yes"/"no"/None per question (None: undecidable).
        unparsed: what an undecidable answer counts as ("no" by default; "yes" is the reference).

    Returns:
        accuracy, precision, recall, f1, yes_ratio on a 0-100 scale (floats), and the ints n
        (questions), tp, fp, tn, fn and unparsed (undecidable answers). A ratio whose
        denominator is 0 is 0: precision with no predicted yes, recall with no "yes" label, F1
        when precision + recall is 0, everything when n is 0.
    """
    if len(labels) != len(answers):
        raise ValueError(f"{len(labels)} labels but {len(answers)} answers")
    if unparsed not in ("yes", "no"):
        raise ValueError(f"unparsed must be 'yes' or 'no', got {unparsed!r}")
    tp = fp = tn = fn = undecided = 0
    for label, answer in zip(labels, answers):
        truth = normalize_label(label)
        if answer is None:
            undecided += 1
            answer = unparsed
        elif answer not in ("yes", "no"):
            raise ValueError(f"an answer must be 'yes', 'no' or None (parse it first), got {answer!r}")
        if answer == "yes":
            tp, fp = (tp + 1, fp) if truth == "yes" else (tp, fp + 1)
        else:
            tn, fn = (tn + 1, fn) if truth == "no" else (tn, fn + 1)
    n = len(labels)

    def ratio(num: int, den: int) -> float:
        return num / den if den else 0.0

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": 100 * ratio(tp + tn, n), "precision": 100 * precision, "recall": 100 * recall,
            "f1": 100 * f1, "yes_ratio": 100 * ratio(tp + fp, n), "n": n,
            "tp": tp, "fp": fp, "tn": tn, "fn": fn, "unparsed": undecided}
