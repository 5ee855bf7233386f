"""The exported folder's layout: what `tita-ext export-vllm` writes and `TitaForCausalLM` reads.

No vLLM import here: the exporter runs without vLLM installed.

config.json is the base model's config (its model_type, so transformers parses it, and its
vocab_size: the composite's logits have the base's width) with
    architectures = ["TitaForCausalLM"]
    max_position_embeddings = the smallest of the towers' (every tower must hold every position)
    tita = {"format": 1, "alpha": default guidance weight, "vocab_limit": ids >= this are never
            chosen, "towers": {"base": config dict, "reward": config dict[, "ref": config dict]}}
The weights are the towers' own checkpoints with every name prefixed by its role ("base.",
"reward.", "ref."), and the tokenizer is the base's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

ARCHITECTURE = "TitaForCausalLM"
CONFIG_KEY = "tita"
FORMAT_VERSION = 1
ROLES = ("base", "reward", "ref")
ALPHA_KEY = "tita_alpha"  # SamplingParams.extra_args key (vllm_xargs over the OpenAI server)
ALPHA_PROCESSOR = "tita_ext.vllm.alpha:TitaAlphaProcessor"  # the logits processor that reads it


def check_alpha(value: object, name: str = ALPHA_KEY) -> float:
    """A guidance weight as a float, or a ValueError saying what is allowed."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number (0: the base model alone, 1: the reward model alone, "
                         f"0.6: the paper's default), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class TitaSpec:
    """The `tita` section of an exported config.

    alpha: default guidance weight (a request's extra_args["tita_alpha"] overrides it).
    vocab_limit: the shared id range [0, vocab_limit): the narrowest logit width and the tokenizer's size.
    towers: role -> that model's Hugging Face config as a dict (roles: base, reward[, ref])."""

    alpha: float
    vocab_limit: int
    towers: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "alpha": self.alpha, "vocab_limit": self.vocab_limit,
                "towers": self.towers}

    @classmethod
    def from_config(cls, config: object) -> "TitaSpec":
        """Read the section from a parsed config (transformers keeps unknown keys as attributes)
        or a config dict; a ValueError says what is wrong with the folder."""
        section = config.get(CONFIG_KEY) if isinstance(config, Mapping) else getattr(config, CONFIG_KEY, None)
        hint = "export the models with `tita-ext export-vllm --base DIR --reward DIR --out DIR` and load that folder"
        if not isinstance(section, Mapping):
            raise ValueError(f"the config has no '{CONFIG_KEY}' section, so it is not a TITA export: {hint}")
        if section.get("format") != FORMAT_VERSION:
            raise ValueError(f"the config's '{CONFIG_KEY}' section has format {section.get('format')!r}; this "
                             f"tita_ext reads format {FORMAT_VERSION}: {hint}")
        towers = section.get("towers")
        if not isinstance(towers, Mapping) or not {"base", "reward"} <= set(towers) or not set(towers) <= set(ROLES):
            found = sorted(towers) if isinstance(towers, Mapping) else towers
            raise ValueError(f"the config's '{CONFIG_KEY}.towers' must hold the configs of base, reward and "
                             f"optionally ref, found {found!r}: {hint}")
        limit = section.get("vocab_limit")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"the config's '{CONFIG_KEY}.vocab_limit' must be a positive int, got {limit!r}: {hint}")
        alpha = check_alpha(section.get("alpha"), f"the config's '{CONFIG_KEY}.alpha'")
        return cls(alpha=alpha, vocab_limit=limit, towers={role: dict(towers[role]) for role in ROLES
                                                            if role in towers})
