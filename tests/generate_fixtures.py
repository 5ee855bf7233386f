"""Tiny model pairs for the guided_generate tests: one per supported family, built once per session."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

import tita_ext
from tita_ext import generator as gen_module
from tita_ext import graphs
from tita_ext import tiny_models as tiny

PROMPTS = ("USER: <image>\nWhat is in the picture? ASSISTANT:",
           "USER: <image>\nIs there a red cube on a table? ASSISTANT:",
           "USER: <image>\nHi ASSISTANT:")
COLORS = ("red", "blue", "green")


@dataclass
class Pair:
    """A base model, a smaller reward model of the same family, and how to build their inputs."""

    family: str
    base: torch.nn.Module
    reward: torch.nn.Module
    make_inputs: Callable[[Sequence[str], Sequence[str]], dict]  # (prompts, colors) -> inputs

    def inputs(self, rows: Sequence[int] = (0, 1, 2)) -> dict:
        return self.make_inputs([PROMPTS[r] for r in rows], [COLORS[r] for r in rows])


@functools.lru_cache(maxsize=None)
def tokenizer():
    return tiny.tiny_tokenizer()


@functools.lru_cache(maxsize=None)
def pair(family: str) -> Pair:
    tok = tokenizer()
    # The reward model is smaller and its logits narrower (448 vs 512): a padded-width mismatch.
    small = dict(seed=1, hidden_size=32, layers=1, vocab_width=448)
    if family == "llava":
        processor = tiny.tiny_llava_processor(tok)

        def make(prompts, colors):
            return processor(images=[tiny.demo_image(c) for c in colors], text=list(prompts),
                             return_tensors="pt", padding=True)

        return Pair(family, tiny.tiny_llava(seed=0), tiny.tiny_llava(**small), make)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        version = "2" if family == "qwen2_vl" else "2.5"

        def make(prompts, colors):
            return tiny.qwen2_vl_inputs(tok, prompts, [tiny.demo_image(c) for c in colors])

        return Pair(family, tiny.tiny_qwen2_vl(version=version, seed=0),
                    tiny.tiny_qwen2_vl(version=version, **small), make)
    if family == "llama":
        def make(prompts, colors):
            return tok([p.replace("<image>", "") for p in prompts], return_tensors="pt", padding=True)

        return Pair(family, tiny.tiny_llama(seed=0), tiny.tiny_llama(**small), make)
    raise ValueError(family)


FAMILIES = ("llava", "qwen2_vl", "qwen2_5_vl", "llama")


def assert_same_output(got: tita_ext.GuidedOutput, want: tita_ext.GuidedOutput) -> None:
    """Tokens, lengths and finish reasons exactly; log-probs and rewards to fp32 rounding (the
    static cache attends over its whole length: masked positions change the summation order)."""
    assert torch.equal(got.sequences, want.sequences)
    assert torch.equal(got.new_tokens, want.new_tokens)
    assert torch.equal(got.lengths, want.lengths)
    assert got.finish_reason == want.finish_reason
    torch.testing.assert_close(got.logprobs, want.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.token_rewards, want.token_rewards, atol=1e-5, rtol=0)
    assert got.timings.steps == want.timings.steps and got.timings.new_tokens == want.timings.new_tokens


class FakeCapture:
    """Stands in for CUDA on the CPU: the warm-up runs the step (as on a side stream) and the
    "capture" returns the eager step as the replay, so the generator's graph bookkeeping, the
    warm-up's undo and the replay loop run for real."""

    def __init__(self, monkeypatch, fail: bool = False):
        self.warmups, self.captures = 0, 0

        def warm_up(state, step):
            for _ in range(graphs.WARMUP_STEPS):
                step()
            self.warmups += 1

        def capture(state, step):
            if fail:
                raise RuntimeError("operation not permitted when stream is capturing")
            self.captures += 1
            return step

        monkeypatch.setattr(graphs.DecodeStep, "_warm_up", warm_up)
        monkeypatch.setattr(graphs.DecodeStep, "_capture", capture)
        monkeypatch.setattr(gen_module, "graphs_possible", lambda device: (True, ""))
