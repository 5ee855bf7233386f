"""A tiny base/reward(/ref) trio of causal LMs over the tiny tokenizer, built in code, for the vLLM
tests and benchmark (no download).

Every attention head is 32 or 64 wide (vLLM's CPU attention needs head size >= 32), and the towers
differ the way real pairs do: the reward model is another architecture (Qwen2: biased q/k/v)
with another KV layout (1 KV head of 64 vs the base's 2 of 32), fewer layers and a narrower
padded vocabulary (448 vs 512 logits).
"""

from __future__ import annotations

import pathlib

import torch

from ..tiny_models import BOS_ID, EOS_ID, PAD_ID, _build, tiny_llama, tiny_tokenizer

# Wider than tiny_models' default 0.02: clear gaps between the top logits, so greedy tokens do
# not hinge on float rounding that differs between vLLM's kernels and transformers'.
INIT_STD = 0.1


def tiny_qwen2(*, hidden_size: int = 128, layers: int = 1, heads: int = 2, kv_heads: int = 1,
               vocab_width: int = 448, seed: int = 1, init_std: float = INIT_STD) -> torch.nn.Module:
    """A `Qwen2ForCausalLM` over the tiny tokenizer (head size hidden_size // heads)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab_width, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=1024, initializer_range=init_std, bos_token_id=BOS_ID,
                         eos_token_id=EOS_ID, pad_token_id=PAD_ID, tie_word_embeddings=False)
    return _build(lambda: Qwen2ForCausalLM(config), seed)


def tiny_trio(hidden_size: int = 128) -> dict[str, torch.nn.Module]:
    """{"base": Llama (2 layers, 4 heads / 2 KV heads of hidden_size // 4, 512 logits),
    "reward": Qwen2 (1 layer, 2 heads / 1 KV head of hidden_size // 2, 448 logits),
    "ref": Llama (1 layer, 480 logits)}, float32, eval mode."""
    return {"base": tiny_llama(hidden_size=hidden_size, layers=2, seed=0, init_std=INIT_STD),
            "reward": tiny_qwen2(hidden_size=hidden_size, seed=1),
            "ref": tiny_llama(hidden_size=hidden_size, layers=1, vocab_width=480, seed=2, init_std=INIT_STD)}


def save_trio(root: str | pathlib.Path, models: dict[str, torch.nn.Module]) -> dict[str, pathlib.Path]:
    """Save each model with the tiny tokenizer to root/<role>; returns role -> folder."""
    tokenizer = tiny_tokenizer()
    folders = {}
    for role, model in models.items():
        folder = pathlib.Path(root) / role
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[role] = folder
    return folders
