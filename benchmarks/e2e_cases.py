"""Models, inputs and the timed decode variants of the end-to-end benchmark (run_e2e.py).

Every variant decodes exactly `new_tokens` tokens per row, so they all do the same amount of work:

- guided: `tita_ext.guided_generate(base, reward, ...)` with alpha 0.6. Its EOS is an id past
  every vocabulary (NEVER_ID), so the decode loop keeps its per-step EOS check but never stops.
- base_only: the same engine without the reward model: guided_generate's loop over one
  `ModelRunner` (the base model's prefill and `step`) and the same fused op at alpha 0 with the
  base logits in the reward slot (the base model's own distribution through the same filters),
  with the same per-step bookkeeping (pad finished rows, EOS check, one host read per step).
  guided / base_only is therefore the cost of the reward model's forwards (and its second
  log-softmax read inside the op: the op reads the base row twice here).
- generate: `base_model.generate(**inputs, ...)` with min_new_tokens = max_new_tokens.
- forwards: only the two models' decode forwards, called exactly as `ModelRunner.step` calls them
  (`runner.model(input_ids, attention_mask, past_key_values, use_cache, position_ids)`), fed the
  tokens of a guided run, on caches that grow as in that run. The step arguments are prepared
  before the timer starts, so the runner's own bookkeeping counts as guidance overhead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

import tita_ext
from tita_ext import tiny_models as tiny
from tita_ext.adapters import ModelRunner
from tita_ext.ops import advance_impl
from tita_ext.step_sampler import StepSampler

ALPHA = 0.6
MODES = {
    "greedy": dict(do_sample=False),
    "sample": dict(do_sample=True, temperature=0.7, top_k=50, top_p=0.9),
}
NEVER_ID = 2**31 - 1  # an EOS id that no vocabulary reaches: the EOS check runs, no row ever stops
TINY_PROMPT = "USER: <image>\nWhat is in the picture? ASSISTANT:"
COLORS = ("red", "green", "blue", "yellow", "white", "black")


@dataclass
class Pair:
    """A base and a reward model on one device, and how to make their inputs for B rows."""

    name: str
    base: torch.nn.Module
    reward: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    pad_token_id: int
    eos_token_id: int  # the models' own EOS (what generate suppresses with min_new_tokens)
    make_inputs: object  # batch -> dict of tensors on `device`
    describe: dict = field(default_factory=dict)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _text_shape(model: torch.nn.Module) -> dict:
    text = model.config.get_text_config()
    return dict(params=_params(model), hidden_size=text.hidden_size, layers=text.num_hidden_layers,
                heads=text.num_attention_heads, kv_heads=text.num_key_value_heads,
                logit_width=model.get_output_embeddings().weight.shape[0], dtype=str(model.dtype).split(".")[-1],
                architecture=type(model).__name__)


def tiny_pair() -> Pair:
    """The tests' tiny LLaVA pair on the CPU, fp32: base 64-wide x 2 layers, reward 32-wide x 1
    layer with a narrower (448) logit row; 32x32 images -> 16 image tokens."""
    base = tiny.tiny_llava(seed=0)
    reward = tiny.tiny_llava(seed=1, hidden_size=32, layers=1, vocab_width=448)
    processor = tiny.tiny_llava_processor(tiny.tiny_tokenizer())

    def make_inputs(batch: int) -> dict:
        images = [tiny.demo_image(COLORS[i % len(COLORS)]) for i in range(batch)]
        return dict(processor(text=[TINY_PROMPT] * batch, images=images, return_tensors="pt", padding=True))

    describe = dict(base=_text_shape(base), reward=_text_shape(reward), prompt=TINY_PROMPT,
                    image=f"{tiny.IMAGE_SIZE}x{tiny.IMAGE_SIZE}, {tiny.PATCH_SIZE}-pixel patches",
                    tokenizer_size=tiny.tokenizer_size())
    return Pair("tiny", base, reward, torch.device("cpu"), torch.float32, tiny.PAD_ID, tiny.EOS_ID,
                make_inputs, describe)


# A LLaVA-1.5-style pair with random weights (timing does not depend on weight values): 336-pixel
# images in 14-pixel patches -> 576 image tokens, vocabulary 32064 (LLaVA's padded 32000).
REAL_IMAGE, REAL_PATCH, REAL_VOCAB, REAL_IMAGE_ID = 336, 14, 32064, 32000
REAL_BASE = dict(text=dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=16, num_attention_heads=16,
                           num_key_value_heads=16),
                 vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12))
REAL_REWARD = dict(text=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=8,
                             num_key_value_heads=8),
                   vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=6, num_attention_heads=12))
REAL_TEXT_TOKENS = (24, 16)  # random text ids before and after the image


def llava_from_sizes(sizes: dict, device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """A LlavaForConditionalGeneration with random weights from `sizes` (text / vision config
    dicts): CLIP at 336 px with 14-pixel patches, 32064-wide Llama logits."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(image_size=REAL_IMAGE, patch_size=REAL_PATCH, projection_dim=768, **sizes["vision"])
    text = LlamaConfig(vocab_size=REAL_VOCAB, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                       pad_token_id=0, tie_word_embeddings=False, **sizes["text"])
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=REAL_IMAGE_ID,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id, gen.do_sample = 1, 2, 0, False
    return model.eval()


def llava_inputs(device: torch.device, dtype: torch.dtype):
    """make_inputs(batch) for `llava_from_sizes` models: BOS, random text ids, the image tokens,
    more random ids (REAL_TEXT_TOKENS), every other row left-padded by 4, random pixels; seeded by
    the batch size."""
    image_tokens = (REAL_IMAGE // REAL_PATCH) ** 2
    before, after = REAL_TEXT_TOKENS

    def make_inputs(batch: int) -> dict:
        g = torch.Generator().manual_seed(batch)
        ids = torch.cat([torch.full((batch, 1), 1), torch.randint(3, 32000, (batch, before), generator=g),
                         torch.full((batch, image_tokens), REAL_IMAGE_ID),
                         torch.randint(3, 32000, (batch, after), generator=g)], dim=1)
        mask = torch.ones_like(ids)
        if batch > 1:  # left-pad every other row by 4 tokens, as a processor would for shorter prompts
            mask[1::2, :4] = 0
            ids[1::2, :4] = 0
        pixels = torch.randn(batch, 3, REAL_IMAGE, REAL_IMAGE, generator=g)
        return dict(input_ids=ids.to(device), attention_mask=mask.to(device), pixel_values=pixels.to(device, dtype))

    return make_inputs


def real_pair(device: torch.device, dtype: torch.dtype = torch.bfloat16, base_sizes: dict = REAL_BASE,
              reward_sizes: dict = REAL_REWARD) -> Pair:
    """LLaVA-1.5-style architectures from configs (no download), random weights: a 1.03B base
    (Llama 2048 x 16 layers, CLIP ViT-B/14 at 336 px) and a 0.21B reward (Llama 1024 x 8 layers,
    6-layer ViT-B/14), both with 32064-wide logits."""
    base = llava_from_sizes(base_sizes, device, dtype, seed=0)
    reward = llava_from_sizes(reward_sizes, device, dtype, seed=1)
    image_tokens = (REAL_IMAGE // REAL_PATCH) ** 2
    before, after = REAL_TEXT_TOKENS
    make_inputs = llava_inputs(device, dtype)
    describe = dict(base=_text_shape(base), reward=_text_shape(reward),
                    prompt=f"BOS + {before} random ids + {image_tokens} image tokens + {after} random ids",
                    image=f"{REAL_IMAGE}x{REAL_IMAGE}, {REAL_PATCH}-pixel patches")
    return Pair("real", base, reward, device, dtype, 0, 2, make_inputs, describe)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Run:
    """One timed call: call_s (whole call, prefill included), decode_s (the decode loop alone,
    when the variant can tell), tokens (new tokens [B, N], for checking the length)."""

    call_s: float
    decode_s: float | None
    tokens: torch.Tensor


def run_guided(pair: Pair, inputs: dict, mode: str, new_tokens: int, seed: int) -> Run:
    sync(pair.device)
    start = time.perf_counter()
    out = tita_ext.guided_generate(pair.base, pair.reward, inputs, alpha=ALPHA, max_new_tokens=new_tokens,
                                   eos_token_id=[NEVER_ID], pad_token_id=pair.pad_token_id, seed=seed,
                                   **MODES[mode])
    sync(pair.device)
    return Run(time.perf_counter() - start, out.timings.decode_s, out.new_tokens)


@dataclass
class Split:
    """One guided call with its models' forwards timed from inside (CPU only): decode_s (the
    decode loop), forwards_s (the decode-step forwards of both models, prefill excluded)."""

    decode_s: float
    forwards_s: float


def run_guided_split(pair: Pair, inputs: dict, mode: str, new_tokens: int, seed: int) -> Split:
    """guided_generate with a timer around each model's forward (an instance attribute that
    shadows `forward`, so Module.__call__ keeps its fast path), so a step's time splits into the
    forwards and everything else, measured on the same steps. The __call__ dispatch around each
    forward counts as overhead (a slight overstatement)."""
    calls: list[float] = []

    def timed(forward):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = forward(*args, **kwargs)
            calls.append(time.perf_counter() - start)
            return result
        return wrapper

    for model in (pair.base, pair.reward):
        model.forward = timed(model.forward)
    try:
        out = tita_ext.guided_generate(pair.base, pair.reward, inputs, alpha=ALPHA, max_new_tokens=new_tokens,
                                       eos_token_id=[NEVER_ID], pad_token_id=pair.pad_token_id, seed=seed,
                                       **MODES[mode])
    finally:
        for model in (pair.base, pair.reward):
            del model.forward  # back to the class's forward
    return Split(out.timings.decode_s, sum(calls[2:]))  # calls[:2]: the two prefills


def base_only_decode(model: torch.nn.Module, inputs: dict, mode: str, new_tokens: int, seed: int,
                     eos_token_ids: tuple[int, ...] = (NEVER_ID,), pad_token_id: int = 0) -> Run:
    """guided_generate's decode loop with the base model alone: one ModelRunner, and the same
    fused op (StepSampler) at alpha 0 with the base logits in the reward slot, which samples from
    the base model's own distribution through the same filters. Per-step bookkeeping as in the
    engine's loop (keep the step outputs, pad finished rows, EOS check, one host read)."""
    device = model.get_input_embeddings().weight.device
    params = MODES[mode]
    sampling = dict(temperature=params.get("temperature", 1.0), top_k=params.get("top_k", 0),
                    top_p=params.get("top_p", 1.0)) if params["do_sample"] else dict(temperature=0.0)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        runner = ModelRunner(model, inputs, new_tokens)
        sampler = StepSampler(runner.batch_size, device, alpha=0.0, **sampling)
        seed_t = torch.tensor([seed], dtype=torch.int64, device=device)
        eos = torch.tensor(eos_token_ids, dtype=torch.int64, device=device)
        finished = torch.zeros(runner.batch_size, dtype=torch.bool, device=device)
        steps: list[tuple] = []
        logits = runner.prefill()
        sync(device)
        decode_start = time.perf_counter()
        advance = advance_impl(sampler.backend, device)
        offsets = torch.arange(new_tokens, dtype=torch.int64, device=device).view(-1, 1).unbind(0)
        while True:
            out = sampler.sample(logits, logits, None, seed_t, offsets[len(steps)])
            tokens, feed, finished_after, done = advance(out.tokens, finished, eos, pad_token_id)
            steps.append((tokens, out.logprob, out.token_reward, out.status, finished))
            finished = finished_after
            if len(steps) == new_tokens or bool(done):
                break
            logits = runner.step(feed)
        end = time.perf_counter()
    return Run(end - start, end - decode_start, torch.stack([step[0] for step in steps], dim=1))


def run_base_only(pair: Pair, inputs: dict, mode: str, new_tokens: int, seed: int) -> Run:
    return base_only_decode(pair.base, inputs, mode, new_tokens, seed, pad_token_id=pair.pad_token_id)


def run_generate(pair: Pair, inputs: dict, mode: str, new_tokens: int, seed: int) -> Run:
    torch.manual_seed(seed)
    sync(pair.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = pair.base.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 eos_token_id=pair.eos_token_id, pad_token_id=pair.pad_token_id, **MODES[mode])
    sync(pair.device)
    return Run(time.perf_counter() - start, None, out[:, inputs["input_ids"].shape[1]:])


def run_forwards(pair: Pair, inputs: dict, tokens: torch.Tensor) -> Run:
    """Time only the decode forwards of both models for `tokens` [B, N] (as a guided run
    produced them): N-1 steps (the first token comes from the prefill), base then reward each
    step, as guided_generate's loop orders them. Prefill and argument preparation are untimed;
    call_s = decode_s = the forwards alone (one sync at the end, none per step)."""
    steps = tokens.shape[1] - 1
    columns = [tokens[:, k:k + 1].contiguous() for k in range(steps)]
    with torch.inference_mode():
        calls = []
        for model in (pair.base, pair.reward):
            runner = ModelRunner(model, inputs, tokens.shape[1])
            runner.prefill()
            per_step = []
            for k in range(steps):  # exactly the arguments ModelRunner.step passes
                kwargs = dict(input_ids=columns[k], attention_mask=runner.mask[:, :runner.length + k + 1],
                              past_key_values=runner.cache, use_cache=True)
                if runner.takes_positions:
                    kwargs["position_ids"] = runner.next_positions + k
                per_step.append(kwargs)
            calls.append((runner.model, per_step))
        (base, base_steps), (reward, reward_steps) = calls
        sync(pair.device)
        start = time.perf_counter()
        for k in range(steps):
            base(**base_steps[k])
            reward(**reward_steps[k])
        sync(pair.device)
        elapsed = time.perf_counter() - start
    return Run(elapsed, elapsed, tokens)


VARIANTS = {"guided": run_guided, "base_only": run_base_only, "generate": run_generate}
