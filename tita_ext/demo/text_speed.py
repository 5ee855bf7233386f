"""Tokens/s of guided decoding vs the base alone at SmolLM2's real size, measured side by side.

    interleaved_speed(base, reward, tokenizer, prompts)  -> {"batch_1": {...}, "batch_16": {...}, ...}

Each round times the base alone (transformers' `generate`, greedy) and then TITA
(`guided_generate`, greedy, the reward model a second full model), on the same prompts, both made
to decode exactly `new_tokens` tokens (min = max new tokens), so both rates count the same work.
Alternating the two in one process on the same thread(s) exposes them to the same machine load;
the load average before and after goes in the result, since on a shared machine the absolute
figures move with it (the ratio much less).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Sequence


def _rate(tokens: int, call, *args, **kwargs) -> float:
    """tokens / the wall seconds of call(*args, **kwargs)."""
    started = time.perf_counter()
    call(*args, **kwargs)
    return tokens / (time.perf_counter() - started)


def interleaved_speed(base, reward, tokenizer, prompts: Sequence[str], *, batches: Sequence[int] = (1, 16),
                      new_tokens: int = 16, rounds: int = 3, alpha: float = 0.5) -> dict[str, Any]:
    """Per batch size: tokens/s of the base alone and of TITA in every round, their medians and the
    median of the per-round ratios (TITA / base). `prompts` needs at least max(batches) entries."""
    import torch

    from ..generate import guided_generate

    if rounds < 1 or new_tokens < 1:
        raise ValueError(f"rounds and new_tokens must be >= 1, got {rounds} and {new_tokens}")
    if max(batches) > len(prompts):
        raise ValueError(f"a batch of {max(batches)} needs as many prompts, got {len(prompts)}")
    lengths = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    result: dict[str, Any] = {"new_tokens": new_tokens, "rounds": rounds, "alpha": alpha,
                              "threads": torch.get_num_threads(), "load_average_before": os.getloadavg()[0]}
    for size in batches:
        inputs = tokenizer(list(prompts[:size]), return_tensors="pt", padding=True)
        base_rates, tita_rates = [], []
        tokens = size * new_tokens
        with torch.inference_mode():
            for _ in range(rounds):
                base_rates.append(_rate(tokens, base.generate, **inputs, do_sample=False, top_k=None, top_p=None,
                                        temperature=None, pad_token_id=tokenizer.pad_token_id, **lengths))
                tita_rates.append(_rate(tokens, guided_generate, base, reward, inputs, alpha=alpha, do_sample=False,
                                        tokenizer=tokenizer, **lengths))
        result[f"batch_{size}"] = {
            "base_tokens_per_s": [round(r, 2) for r in base_rates],
            "tita_tokens_per_s": [round(r, 2) for r in tita_rates],
            "base_median": round(statistics.median(base_rates), 2),
            "tita_median": round(statistics.median(tita_rates), 2),
            "ratio_median": round(statistics.median(t / b for t, b in zip(tita_rates, base_rates)), 3)}
    result["load_average_after"] = os.getloadavg()[0]
    return result
