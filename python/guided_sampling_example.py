"""Guided sampling with tita_ext, the way a decode loop uses it.

Two "models" score a toy vocabulary; at every step the next token of each request is drawn from
log p_base + alpha * (log p_reward - log p_base), with per-request sampling parameters, a seed per
request and a step counter (the offset) kept in tensors, and the token reward reported.

    python3 python/guided_sampling_example.py [--steps N]
"""

from __future__ import annotations

import argparse

import torch

import tita_ext

VOCAB = 1271


def toy_logits(model_seed: int, history: torch.Tensor) -> torch.Tensor:
    """Next-token logits [B, VOCAB] of a toy model: a fixed random bigram table looked up by the last token."""
    table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(model_seed)) * 3
    return table[history[:, -1]]


def main(steps: int) -> None:
    prompts = torch.tensor([[1], [2], [3]])  # three requests, one prompt token each
    seeds = torch.tensor([11, 22, 33])       # a seed per request: draws do not depend on batch position
    offset = torch.zeros(3, dtype=torch.int64)
    temperature = torch.tensor([0.0, 0.7, 1.0])  # greedy, and two sampled requests
    top_p = torch.tensor([1.0, 0.9, 0.8])

    history, rewards = prompts, []
    for _ in range(steps):
        out = tita_ext.guided_sample(toy_logits(0, history), toy_logits(1, history), alpha=0.6,
                                     temperature=temperature, top_k=50, top_p=top_p, seed=seeds, offset=offset)
        history = torch.cat([history, out.tokens[:, None]], dim=1)
        rewards.append(out.token_reward)
        offset += 1  # the step counter: new noise for the next token (in a CUDA graph, advanced on device)

    rewards = torch.stack(rewards, dim=1)
    for row in range(history.shape[0]):
        print(f"request {row}: tokens {history[row, 1:].tolist()}")
        print(f"           mean token reward {rewards[row].mean():+.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    main(parser.parse_args().steps)
