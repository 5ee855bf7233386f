"""num_return_sequences: several sequences per prompt, rows expanded as transformers' generate
expands them (each prompt's copies consecutive: prompt 0 copy 0, prompt 0 copy 1, ..., prompt 1 ...).

Inputs are expanded by the model's own `_expand_inputs_for_generation` (so a family whose image
inputs are not one row per prompt, such as Qwen2-VL's flattened patches, expands as it does in
`generate`); per-row parameters given per prompt are repeated per copy. Seeds are per output row:
one int seed gives every row its own noise (the op addresses noise by row); a per-row seed list
must have one seed per returned sequence.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ._validate import int_at_least


def check_copies(num_return_sequences: object, do_sample: bool) -> int:
    """num_return_sequences as an int >= 1; more than 1 needs sampling, as in generate."""
    n = num_return_sequences
    int_at_least("num_return_sequences", n, 1)
    if n > 1 and not do_sample:
        raise ValueError(f"num_return_sequences={n} with greedy decoding would return {n} identical copies (generate "
                         "refuses it too): pass do_sample=True")
    return n


def expand_inputs(model: torch.nn.Module, inputs: Mapping[str, object], copies: int) -> Mapping[str, object]:
    """A processor output with each prompt's row repeated `copies` times, as generate does."""
    if copies == 1:
        return inputs
    kwargs = {key: value for key, value in inputs.items() if key != "input_ids"}
    ids, kwargs = model._expand_inputs_for_generation(expand_size=copies, is_encoder_decoder=False,
                                                      input_ids=inputs["input_ids"], **kwargs)
    return {"input_ids": ids, **kwargs}


def expand_rows(values: object, batch: int, copies: int) -> object:
    """A per-prompt list or 1-D tensor of `batch` values, each repeated `copies` times; a number,
    or values already given per returned sequence, unchanged."""
    if copies == 1:
        return values
    if isinstance(values, (list, tuple)) and len(values) == batch:
        return [v for v in values for _ in range(copies)]
    if isinstance(values, torch.Tensor) and values.dim() == 1 and values.numel() == batch:
        return values.repeat_interleave(copies)
    return values


def check_seed_rows(seed: object, batch: int, copies: int) -> None:
    """With copies, a per-row seed list must give each returned sequence its own seed."""
    if copies > 1 and isinstance(seed, (list, tuple)) and len(seed) != batch * copies:
        raise ValueError(f"with num_return_sequences={copies}, a per-row seed list needs one seed per returned "
                         f"sequence ({batch} prompts x {copies} = {batch * copies}, each prompt's copies "
                         f"consecutive), got {len(seed)}; or pass one int seed (every row draws its own noise)")
