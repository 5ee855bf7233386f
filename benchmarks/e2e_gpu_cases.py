"""Model pairs and timed decode paths of run_e2e_gpu.py (graphed vs eager guided decoding).

Pairs (random weights: timing does not depend on weight values; every path decodes exactly
`new_tokens` tokens per row, EOS ignored):

- "llava-7b-tinyllava-1.1b": a LLaVA-1.5-7B-shaped base (Llama-2-7B text: hidden 4096, 32 layers,
  32 heads, intermediate 11008, vocabulary 32064; CLIP ViT-L/14 at 336 px: 576 image tokens) and a
  TinyLLaVA-1.1B-shaped reward (TinyLlama text: hidden 2048, 22 layers, 32 heads, 4 KV heads,
  intermediate 5632; the same vision tower). bfloat16, CUDA.
- "small-0.5b-0.1b": a ~0.5B LLaVA-style base (Llama 1024 x 24 layers, ViT-B/14 at 336 px) and a
  ~0.1B reward (Llama 640 x 10 layers, ViT-S/14). bfloat16, CUDA.
- "tiny": the tests' tiny LLaVA pair (e2e_cases.tiny_pair), float32 on the CPU.

Paths (each a function (pair, inputs, new_tokens, mode, seed) -> Run):

- hf_generate_base: `base.generate(**inputs, min_new_tokens=max_new_tokens=N)`: what users run today
  (dynamic cache, eager).
- base_graphed / reward_graphed: one model alone on tita_ext's engine (GuidedGenerator(model,
  None)): static cache, the decode step captured as a CUDA graph (eager on the CPU).
- guided_eager: `guided_generate(..., use_cuda_graph=False)`: the eager loop on dynamic caches.
- guided_graphed: GuidedGenerator(base, reward): static caches, one CUDA graph per step.
- guided_graphed_overlap: the same with the reward forward on a second stream (CUDA only).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import torch

import e2e_cases as ec
import tita_ext

IMAGE, PATCH = ec.REAL_IMAGE, ec.REAL_PATCH  # LLaVA-1.5's CLIP input (e2e_cases.llava_from_sizes)
TEXT_TOKENS = ec.REAL_TEXT_TOKENS
SYNC_EVERY = 16

CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
PAIRS = {
    "llava-7b-tinyllava-1.1b": dict(
        base=dict(text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                            num_key_value_heads=32), vision=CLIP_L_336),
        reward=dict(text=dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                              num_key_value_heads=4), vision=CLIP_L_336)),
    "small-0.5b-0.1b": dict(
        base=dict(text=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                            num_key_value_heads=16),
                  vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)),
        reward=dict(text=dict(hidden_size=640, intermediate_size=1728, num_hidden_layers=10, num_attention_heads=10,
                              num_key_value_heads=10),
                    vision=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6))),
}
GPU_PAIRS = tuple(PAIRS)
PATHS = ("hf_generate_base", "base_graphed", "reward_graphed", "guided_eager", "guided_graphed",
         "guided_graphed_overlap")
CPU_PATHS = PATHS[:-1]  # no second stream on the CPU


def gpu_pair(name: str, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> ec.Pair:
    sizes = PAIRS[name]
    base = ec.llava_from_sizes(sizes["base"], device, dtype, seed=0)
    reward = ec.llava_from_sizes(sizes["reward"], device, dtype, seed=1)
    image_tokens = (IMAGE // PATCH) ** 2
    before, after = TEXT_TOKENS
    make_inputs = ec.llava_inputs(device, dtype)
    describe = dict(base=ec._text_shape(base), reward=ec._text_shape(reward),
                    base_vision=sizes["base"]["vision"], reward_vision=sizes["reward"]["vision"],
                    prompt=f"BOS + {before} random ids + {image_tokens} image tokens + {after} random ids",
                    image=f"{IMAGE}x{IMAGE}, {PATCH}-pixel patches")
    return ec.Pair(name, base, reward, device, dtype, 0, 2, make_inputs, describe)


def build_pair(name: str, device: torch.device) -> ec.Pair:
    return ec.tiny_pair() if name == "tiny" else gpu_pair(name, device)


@dataclass
class Run:
    """One call: call_s (whole call, prefill included), step_s (one decode step, or None when the
    path cannot tell), tokens [B, N] (to check the length), graphed (a CUDA graph was replayed)."""

    call_s: float
    step_s: float | None
    tokens: torch.Tensor
    graphed: bool = False


def _timed(device: torch.device, fn):
    ec.sync(device)
    start = time.perf_counter()
    out = fn()
    ec.sync(device)
    return time.perf_counter() - start, out


class Paths:
    """The paths of one pair, with the generators they keep (built on first use, for the largest
    batch and prompt, freed by close())."""

    def __init__(self, pair: ec.Pair, max_batch: int, max_length: int):
        self.pair, self.max_batch, self.max_length = pair, max_batch, max_length
        self.generators: dict[str, tita_ext.GuidedGenerator] = {}

    def generator(self, path: str) -> tita_ext.GuidedGenerator:
        if path not in self.generators:
            self.close(keep=())  # one generator at a time: their caches are the largest allocations
            pair, cuda = self.pair, self.pair.device.type == "cuda"
            models = {"base_graphed": (pair.base, None), "reward_graphed": (pair.reward, None),
                      "guided_graphed": (pair.base, pair.reward), "guided_graphed_overlap": (pair.base, pair.reward)}
            base, reward = models[path]
            self.generators[path] = tita_ext.GuidedGenerator(
                base, reward, max_batch_size=self.max_batch, max_length=self.max_length, use_cuda_graph=cuda,
                sync_every=SYNC_EVERY, overlap=path.endswith("overlap"))
        return self.generators[path]

    def close(self, keep=()) -> None:
        for path in [p for p in self.generators if p not in keep]:
            del self.generators[path]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def run(self, path: str, inputs: dict, new_tokens: int, mode: str, seed: int) -> Run:
        pair = self.pair
        sampling = ec.MODES[mode]
        if path == "hf_generate_base":
            def call(n):
                torch.manual_seed(seed)
                with torch.inference_mode():
                    return pair.base.generate(**inputs, max_new_tokens=n, min_new_tokens=n,
                                              eos_token_id=pair.eos_token_id, pad_token_id=pair.pad_token_id,
                                              **sampling)
            call_s, out = _timed(pair.device, lambda: call(new_tokens))
            return Run(call_s, None, out[:, inputs["input_ids"].shape[1]:])
        kwargs = dict(alpha=ec.ALPHA, max_new_tokens=new_tokens, eos_token_id=[ec.NEVER_ID],
                      pad_token_id=pair.pad_token_id, seed=seed, **sampling)
        if path == "guided_eager":
            call_s, out = _timed(pair.device, lambda: tita_ext.guided_generate(
                pair.base, pair.reward, inputs, use_cuda_graph=False, **kwargs))
            graphed = False
        else:
            gen = self.generator(path)
            call_s, out = _timed(pair.device, lambda: gen.generate(inputs, **kwargs))
            graphed = gen.use_cuda_graph
        steps = out.timings.steps
        step_s = out.timings.decode_s / (steps - 1) if steps > 1 else None  # the first token comes from the prefill
        return Run(call_s, step_s, out.new_tokens, graphed)

    def capture_s(self, path: str, batch: int) -> float | None:
        """Seconds the graph capture (warm-up included) of this path's bucket for `batch` took."""
        gen = self.generators.get(path)
        if gen is None or not gen.capture_s:
            return None
        bucket = gen.bucket_for(batch)
        return sum(s for key, s in gen.capture_s.items() if key.rows == bucket)

    def hf_first_token_s(self, inputs: dict) -> float:
        """generate with max_new_tokens=1: prefill + one sample, to split generate's step time."""
        pair = self.pair
        with torch.inference_mode():
            call_s, _ = _timed(pair.device, lambda: pair.base.generate(
                **inputs, max_new_tokens=1, min_new_tokens=1, eos_token_id=pair.eos_token_id,
                pad_token_id=pair.pad_token_id, do_sample=False))
        return call_s
