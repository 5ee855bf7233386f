"""guided_generate's checks of its decoding arguments and of the models' vocabularies, made once
per call before any model runs; each error says what was wrong and what to do.

(setup_checks.py checks the models and their inputs' structure; _validate.py the op's own
parameters. These are the engine's: alpha's useful range, do_sample, streamers, token ids that a
model or tokenizer cannot read, special tokens the models disagree on.)
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping

import torch

# alpha above this no longer weighs the base against the reward: the base's log-probs vanish in
# fp32 beside alpha * (log p_reward - log p_ref), and the op's scores overflow near 1e37.
ALPHA_MAX = 10.0


def check_alpha(alpha: object) -> None:
    """alpha (a number, a per-row list, or a per-row tensor) must lie in [0, ALPHA_MAX]. Types and
    finiteness are the op's checks (_validate.param); this is the guidance weight's useful range."""
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() == 0 or not alpha.is_floating_point() and alpha.dtype != torch.int64:
            return  # the op's check names the dtype/shape problem
        values = [float(alpha.min()), float(alpha.max())]  # one host read per call, before decoding
    elif isinstance(alpha, (list, tuple)):
        values = [a for a in alpha if isinstance(a, (int, float)) and not isinstance(a, bool)]
    elif isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        values = [alpha]
    else:
        return
    for value in values:
        if math.isfinite(value) and not 0.0 <= value <= ALPHA_MAX:
            raise ValueError(f"alpha={value:g} is outside [0, {ALPHA_MAX:g}]: alpha weighs the reward model against "
                             "the base (0 the base alone, 1 the reward alone, a little above 1 extrapolates); a "
                             "negative alpha steers away from the reward and a huge one drowns the base out. Use a "
                             "value such as 0.3-1.0")


def alpha_is_zero(alpha: object) -> bool:
    """Whether every row's alpha is exactly 0 (a number or a list; a tensor counts as not): then
    the reward (and ref) models take no part in the call."""
    if isinstance(alpha, (list, tuple)):
        return len(alpha) > 0 and all(isinstance(a, (int, float)) and a == 0 for a in alpha)
    return isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha == 0


def check_do_sample(do_sample: object) -> None:
    """do_sample must be None (the generation config's) or a bool."""
    if do_sample is not None and not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be True, False or None (the generation config's), got {do_sample!r}")


def warn_unused_sampling(sampling: bool, **given: object) -> None:
    """Greedy decoding ignores the sampling parameters that were passed: a warning, as
    transformers' generate gives (it logs that they "are not valid and may be ignored")."""
    named = [name for name, value in given.items() if value is not None]
    if not sampling and named:
        warnings.warn(f"greedy decoding (do_sample is off): {', '.join(named)} {'is' if len(named) == 1 else 'are'} "
                      "ignored, as in transformers' generate; pass do_sample=True to sample", UserWarning,
                      stacklevel=4)


def _is_streamer(obj: object) -> bool:
    return callable(getattr(obj, "put", None)) and callable(getattr(obj, "end", None))


def check_streamer(streamer: object, batch: int) -> None:
    """None, one streamer (put/end, like transformers' TextStreamer: gets the whole batch), or a
    list of `batch` streamers, one per row."""
    if streamer is None:
        return
    if _is_streamer(streamer):
        if batch > 1 and type(streamer).__module__.startswith("transformers."):
            raise ValueError(f"{type(streamer).__name__} streams one row but the batch has {batch}: pass a list of "
                             f"{batch} streamers (one per row, e.g. [TextStreamer(tokenizer) for _ in range({batch})])")
        return
    if isinstance(streamer, (list, tuple)):
        bad = [i for i, s in enumerate(streamer) if not _is_streamer(s)]
        if len(streamer) != batch or bad:
            raise TypeError(f"streamer as a list must hold one streamer (an object with put() and end()) per row: "
                            f"{batch} rows, got {len(streamer)} entries" +
                            (f", entry {bad[0]} is a {type(streamer[bad[0]]).__name__}" if bad else ""))
        return
    raise TypeError(f"streamer must be a transformers streamer (an object with put() and end(), e.g. "
                    f"TextStreamer(tokenizer)) or a list of one per row, got {type(streamer).__name__}"
                    f"{' ' + repr(streamer) if callable(streamer) else ''}")


def _embedding_rows(model: torch.nn.Module) -> int | None:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) else None


def check_ids_fit(role: str, model: torch.nn.Module, inputs: Mapping[str, object]) -> None:
    """Every prompt id must index the model's input embeddings (a narrower model, or another
    tokenizer's ids, otherwise fails deep inside torch with an IndexError)."""
    rows = _embedding_rows(model)
    ids = inputs["input_ids"]
    if rows is None or ids.numel() == 0:
        return
    top = int(ids.max())
    if top >= rows or int(ids.min()) < 0:
        bad = top if top >= rows else int(ids.min())
        raise ValueError(f"{role}_inputs holds token id {bad} but {role}_model ({type(model).__name__}) reads ids "
                         f"0..{rows - 1}: the inputs come from another tokenizer, or the {role} model uses a "
                         f"different vocabulary. Pass {role}_inputs= made by the {role} model's own processor, "
                         "and give tokenizer= and reward_tokenizer= to check that the models share a vocabulary")


def check_tokenizer_fits(tokenizer_size: int, inputs: Mapping[str, object]) -> None:
    """tokenizer= must be the one that made the base inputs: no id at or beyond its size."""
    ids = inputs["input_ids"]
    if ids.numel() and int(ids.max()) >= tokenizer_size:
        raise ValueError(f"base_inputs holds token id {int(ids.max())} but tokenizer= has only {tokenizer_size} "
                         "tokens: pass the tokenizer or processor that made the inputs (the base model's)")


def _special_ids(model: torch.nn.Module, name: str) -> frozenset[int]:
    config = model.config
    try:
        config = config.get_text_config()
    except (AttributeError, TypeError):
        pass
    value = getattr(config, name, None)
    if value is None:
        value = getattr(getattr(model, "generation_config", None), name, None)
    if isinstance(value, int) and not isinstance(value, bool):
        return frozenset((value,))
    if isinstance(value, (list, tuple)):
        return frozenset(v for v in value if isinstance(v, int))
    return frozenset()


def check_special_tokens(models: Mapping[str, torch.nn.Module]) -> None:
    """Without reward_tokenizer= the models' configs are the only evidence that they share a
    tokenizer: their BOS ids must agree and their EOS ids overlap."""
    base = models["base"]
    for role, model in models.items():
        if role == "base":
            continue
        for name in ("bos_token_id", "eos_token_id"):
            mine, theirs = _special_ids(base, name), _special_ids(model, name)
            differ = mine != theirs if name == "bos_token_id" else not (mine & theirs)
            if mine and theirs and differ:
                raise ValueError(f"base_model and {role}_model have different {name}s ({sorted(mine)} vs "
                                 f"{sorted(theirs)}): they likely use different tokenizers, and guidance adds their "
                                 f"scores id by id. Use a {role} model that shares the base's tokenizer, or pass "
                                 f"tokenizer= and {role}_tokenizer= to have the tokenizers compared id by id")
