"""Evaluation of guided decoding: POPE (object-hallucination yes/no questions).

`parse_answer` and `pope_metrics` score answers (`tita_ext.eval.pope`); `evaluate_pope` runs the
base model and TITA at a sweep of alphas over POPE splits and `write_results` saves the JSON and
the F1-against-alpha plot (`tita_ext.eval.run_pope`); `tita_ext.eval.cli_pope` is the
`tita-ext eval-pope` command. Under torchrun / accelerate launch the questions are split over the
processes and the answers gathered before scoring (`tita_ext.eval.sharding`: `Shard`,
`detect_shard`, `shard_questions`, `gather_answers`).
"""

from .pope import normalize_label, parse_answer, pope_metrics, reference_parse
from .sharding import Shard, detect_shard, gather_answers, shard_questions
from .run_pope import POPE_TEMPLATE, SPLITS, evaluate_pope, format_table, load_questions, write_results

__all__ = [
    "parse_answer",
    "reference_parse",
    "normalize_label",
    "pope_metrics",
    "evaluate_pope",
    "load_questions",
    "write_results",
    "format_table",
    "POPE_TEMPLATE",
    "SPLITS",
    "Shard",
    "detect_shard",
    "shard_questions",
    "gather_answers",
]
