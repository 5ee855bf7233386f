"""guided_generate: dual-model (or three-model) guided decoding of Hugging Face models.

Per step: one forward of each model on the last token (each with its own KV cache), one fused
`guided_sample` call on their logits, and one host read to decide whether every row has
stopped. Everything else a step does is a handful of tensor ops on [B]-sized tensors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from . import _validate as check
from .adapters import ModelRunner
from .contract import STATUS_MEANING
from .ops import Backend, advance_impl, as_int64
from .settings import DecodeSettings, IdList, resolve_settings
from .setup_checks import (check_inputs, check_model, check_same_device, check_tokenizers, inputs_for,
                           text_tokenizer)
from .step_sampler import StepSampler
from .stopping import StopStrings

FINISH_EOS, FINISH_STOP_STRING, FINISH_LENGTH = "eos", "stop_string", "length"


@dataclass(frozen=True)
class Timings:
    """Wall-clock seconds of one call (device work included: the loop reads a flag per step).

    prefill_s: the prompt forwards of every model. decode_s: all decode steps after that.
    steps: tokens generated per row at most. new_tokens: tokens generated over all rows
    (padding after a row stopped not counted)."""

    prefill_s: float
    decode_s: float
    steps: int
    new_tokens: int

    @property
    def tokens_per_s(self) -> float:
        """New tokens over the whole call (prefill + decode)."""
        total = self.prefill_s + self.decode_s
        return self.new_tokens / total if total > 0 else 0.0


@dataclass(frozen=True)
class GuidedOutput:
    """The result of `guided_generate` for a batch of B prompts, N = timings.steps.

    sequences: int64 [B, L + N], laid out like `generate`'s output: the (left-padded) prompt,
        then the new tokens; rows that stopped early are filled with pad_token_id.
    new_tokens: int64 [B, N], the new part of `sequences`.
    logprobs: float32 [B, N], log-probability of each new token under the guided, filtered
        distribution it was drawn from (0 on padding).
    token_rewards: float32 [B, N], log p_reward(token) - log p_ref(token) (0 on padding).
    lengths: int64 [B], new tokens per row before padding (the stopping token included).
    finish_reason: per row "eos", "stop_string" or "length".
    """

    sequences: torch.Tensor
    new_tokens: torch.Tensor
    logprobs: torch.Tensor
    token_rewards: torch.Tensor
    lengths: torch.Tensor
    finish_reason: list[str]
    timings: Timings


def _seed_tensor(seed: int | Sequence[int] | torch.Tensor | None, generator: torch.Generator | None,
                 batch: int, device: torch.device) -> torch.Tensor:
    """int64 [1] (one seed for the batch) or [B] (one per row: a row's draws then do not depend
    on its batch neighbours)."""
    if seed is not None and generator is not None:
        raise ValueError("pass seed= or generator=, not both")
    if seed is None:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        seed = torch.randint(0, 2**62, (1,), generator=generator, device=gen_device, dtype=torch.int64)
    if isinstance(seed, int) and not isinstance(seed, bool):
        seed = torch.tensor([as_int64(seed)], dtype=torch.int64)
    elif isinstance(seed, (list, tuple)):
        if len(seed) != batch or not all(isinstance(s, int) and not isinstance(s, bool) for s in seed):
            raise ValueError(f"a per-row seed must be a list of {batch} ints, got {seed!r}")
        seed = torch.tensor([as_int64(s) for s in seed], dtype=torch.int64)
    if not isinstance(seed, torch.Tensor) or seed.dtype != torch.int64 or seed.numel() not in (1, batch):
        raise ValueError(f"seed must be an int, a list of {batch} ints, an int64 tensor of 1 or {batch} values, "
                         f"or None; got {seed!r}")
    return seed.reshape(-1).to(device)


def _finish_reasons(tokens: torch.Tensor, before: torch.Tensor, eos: torch.Tensor,
                    stop_rows: set[int]) -> list[str]:
    """Per row: stopped by an EOS token, by a stop string, or ran to max_new_tokens."""
    hit_eos = (torch.isin(tokens, eos) & ~before).any(dim=1).tolist() if eos.numel() else [False] * len(tokens)
    return [FINISH_STOP_STRING if row in stop_rows else FINISH_EOS if hit else FINISH_LENGTH
            for row, hit in enumerate(hit_eos)]


def _raise_on_failed_rows(status: torch.Tensor, before: torch.Tensor) -> None:
    """status int32 [B, N]; a row fails at its first non-zero status while it was still running."""
    failed = (status != 0) & ~before
    if not bool(failed.any()):
        return
    rows, steps = torch.nonzero(failed, as_tuple=True)
    row, step = int(rows[0]), int(steps[0])
    meaning = STATUS_MEANING.get(int(status[row, step]), "unknown status")
    raise ValueError(f"guided decoding failed for row {row} at new token {step}: {meaning}. Check the models' "
                     "logits for NaN/inf (e.g. float16 overflow: try bfloat16 or float32) and the per-row "
                     "sampling parameters")


def guided_generate(
    base_model: torch.nn.Module,
    reward_model: torch.nn.Module,
    inputs: Mapping[str, object],
    *,
    reward_inputs: Mapping[str, object] | None = None,
    ref_model: torch.nn.Module | None = None,
    ref_inputs: Mapping[str, object] | None = None,
    alpha: check.Param = 0.6,
    do_sample: bool | None = None,
    temperature: check.Param | None = None,
    top_k: check.Param | None = None,
    top_p: check.Param | None = None,
    min_p: check.Param | None = None,
    plausibility: check.Param = 0.0,
    max_new_tokens: int | None = None,
    eos_token_id: IdList = None,
    pad_token_id: int | None = None,
    stop_strings: str | Sequence[str] | None = None,
    tokenizer=None,
    seed: int | Sequence[int] | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    streamer=None,
    reward_tokenizer=None,
    ref_tokenizer=None,
    backend: Backend = None,
    use_cuda_graph: bool | None = None,
) -> GuidedOutput:
    """Decode with the base model guided token by token by a reward model (TITA).

    At each step the next token is drawn from
        s = log p_base + alpha * (log p_reward - log p_ref)        (p_ref = p_base without ref_model)
    through plausibility -> temperature -> top-k -> top-p -> min-p (greedy when do_sample is off).

    Args:
        base_model, reward_model, ref_model: transformers causal LMs or VLMs (LLaVA, Qwen2-VL,
            Qwen2.5-VL) that share a tokenizer (logit widths may differ), on one device.
        inputs: the base model's processor/tokenizer output for left-padded prompts (input_ids
            [B, L], attention_mask, and pixel_values / image_sizes / image_grid_thw ... for images).
        reward_inputs, ref_inputs: that model's own processor output when it differs (default:
            `inputs`); same prompts, same B.
        alpha: guidance weight (0 base only, 1 reward only); number or per-row list/tensor.
        do_sample, temperature, top_k, top_p, min_p, max_new_tokens, eos_token_id,
            pad_token_id: as in `generate`; unset ones come from base_model.generation_config.
            Sampling parameters may be per-row lists or tensors.
        plausibility: keep only tokens with p_base >= plausibility * max p_base (0: off).
        stop_strings: a row stops once its new text contains one (needs `tokenizer`).
        tokenizer: the base tokenizer or processor: caps ids at its true size, decodes stop strings.
        reward_tokenizer, ref_tokenizer: when given, checked against `tokenizer` id by id.
        seed: int, per-row list of ints, or int64 tensor; or generator: draws the seed.
            The same seed gives the same tokens on every backend.
        streamer: a transformers streamer (put/end): gets the prompt, then each step's tokens.
        backend: the fused op's backend (None: the compiled kernel when built, else reference).
        use_cuda_graph: None (default): decode through a cached `GuidedGenerator` (static KV caches,
            one CUDA graph per batch bucket, reused by later calls with the same models) when the
            models are on CUDA and support static caches (a capture that fails falls back to eager
            decoding with a warning; the environment variable TITA_EXT_CUDA_GRAPHS=0 turns this
            off); otherwise this eager loop on dynamic caches. True: require the graphed generator
            (an error says why it cannot be used). False: always this eager loop.

    Returns:
        GuidedOutput (sequences, new_tokens, logprobs, token_rewards, lengths, finish_reason, timings).
    """
    if use_cuda_graph is not None and not isinstance(use_cuda_graph, bool):
        raise ValueError(f"use_cuda_graph must be None, True or False, got {use_cuda_graph!r}")
    kwargs = dict(reward_inputs=reward_inputs, ref_inputs=ref_inputs, alpha=alpha, do_sample=do_sample,
                  temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, plausibility=plausibility,
                  max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                  stop_strings=stop_strings, tokenizer=tokenizer, seed=seed, generator=generator, streamer=streamer,
                  reward_tokenizer=reward_tokenizer, ref_tokenizer=ref_tokenizer)
    models = {"base": base_model, "reward": reward_model}
    if ref_model is not None:
        models["ref"] = ref_model
    call = prepare_call(models, inputs, backend=backend, **kwargs)
    if use_cuda_graph is not False:
        from .generator import cached_generator

        cached = cached_generator(models, call, backend, use_cuda_graph)
        if cached is not None:
            return cached.run(call)
    with torch.inference_mode():
        runners = {role: ModelRunner(model, call.inputs[role], call.settings.max_new_tokens)
                   for role, model in models.items()}
        return _decode(runners, call.sampler, call.settings, call.seed, call.stops, call.streamer, call.device)


@dataclass
class Call:
    """A guided_generate call's checked arguments: each role's inputs, the batch size, the
    resolved settings, the tokenizer's size (or None), the checked sampler, the seed tensor, stop
    strings, streamer."""

    inputs: dict[str, Mapping[str, object]]
    batch: int
    device: torch.device
    settings: DecodeSettings
    vocab: int | None
    sampler: StepSampler
    seed: torch.Tensor
    stops: StopStrings | None
    streamer: object


def prepare_call(models: Mapping[str, torch.nn.Module], inputs: Mapping[str, object], *,
                 reward_inputs: Mapping[str, object] | None = None, ref_inputs: Mapping[str, object] | None = None,
                 alpha: check.Param = 0.6, do_sample: bool | None = None, temperature: check.Param | None = None,
                 top_k: check.Param | None = None, top_p: check.Param | None = None, min_p: check.Param | None = None,
                 plausibility: check.Param = 0.0, max_new_tokens: int | None = None, eos_token_id: IdList = None,
                 pad_token_id: int | None = None, stop_strings: str | Sequence[str] | None = None, tokenizer=None,
                 seed: int | Sequence[int] | torch.Tensor | None = None, generator: torch.Generator | None = None,
                 streamer=None, reward_tokenizer=None, ref_tokenizer=None, backend: Backend = None) -> Call:
    """Check a call's models and arguments and resolve them (every error before any model runs).
    models: {"base": ..., "reward": ...[, "ref": ...]}."""
    base_model = models["base"]
    given_inputs = {"base": inputs, "reward": reward_inputs, "ref": ref_inputs}
    if "ref" not in models and ref_inputs is not None:
        raise ValueError("ref_inputs was given without ref_model")
    if "reward" not in models and reward_inputs is not None:
        raise ValueError("reward_inputs was given without a reward model")
    for role, model in models.items():
        check_model(role, model)
    device = check_same_device(models)
    batch = check_inputs("base", base_model, inputs, None)
    for role, model in models.items():
        if role == "base":
            continue
        given_inputs[role] = inputs_for(role, model, given_inputs[role], "base", base_model, inputs)
        check_inputs(role, model, given_inputs[role], batch)
    for role, other in (("reward", reward_tokenizer), ("ref", ref_tokenizer)):
        if other is not None:
            if tokenizer is None:
                raise ValueError(f"{role}_tokenizer was given without tokenizer= (the base tokenizer) to check it against")
            check_tokenizers(tokenizer, other, role)

    settings = resolve_settings(
        base_model.generation_config, inputs["input_ids"].shape[1], alpha=alpha, do_sample=do_sample,
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, plausibility=plausibility,
        max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        stop_strings=stop_strings)
    if settings.stop_strings and tokenizer is None:
        raise ValueError("stop_strings need tokenizer= (the base model's tokenizer or processor) to read the text")
    vocab_size = len(text_tokenizer(tokenizer)) if tokenizer is not None else None
    sampler = StepSampler(batch, device, vocab_size=vocab_size, backend=backend, **settings.sampling_params())
    seed_t = _seed_tensor(seed, generator, batch, device)
    stops = StopStrings(text_tokenizer(tokenizer), settings.stop_strings, batch) if settings.stop_strings else None
    return Call(inputs={role: given_inputs[role] for role in models}, batch=batch, device=device, settings=settings,
                vocab=vocab_size, sampler=sampler, seed=seed_t, stops=stops, streamer=streamer)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decode(runners: dict[str, ModelRunner], sampler: StepSampler, settings: DecodeSettings,
            seed: torch.Tensor, stops: StopStrings | None, streamer, device: torch.device) -> GuidedOutput:
    """The decode loop. Per step: forwards, one fused op, [B]-sized bookkeeping, one host read."""
    base = runners["base"]
    batch = base.batch_size
    prompt = base.inputs["input_ids"].to(torch.int64)
    pad = settings.pad_token_id
    eos = torch.tensor(settings.eos_token_ids, dtype=torch.int64, device=device)
    advance = advance_impl(sampler.backend, device)
    # The noise offset of step k (int64 [1] views of one tensor, made in one call): no per-step op.
    offsets = torch.arange(settings.max_new_tokens, dtype=torch.int64, device=device).view(-1, 1).unbind(0)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    samples: list = []  # GuidedSampleOutput per step
    records: list[torch.Tensor] = []  # the step's tokens, padded where the row had stopped
    befores: list[torch.Tensor] = []  # which rows had stopped before the step
    stop_rows: set[int] = set()
    need_host_tokens = stops is not None or streamer is not None
    if streamer is not None:
        streamer.put(prompt.cpu())
    models = list(runners.values())

    start = time.perf_counter()
    logits = [runner.prefill() for runner in models]
    _sync(device)
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    while True:
        out = sampler.sample(logits[0], logits[1], logits[2] if len(logits) > 2 else None, seed,
                             offsets[len(samples)])
        # Pad rows that had stopped, stop rows at EOS (or at -1: a row the op could not sample,
        # reported after the loop), and the [B, 1] tokens to feed next: one op.
        tokens, feed, after, done = advance(out.tokens, finished, eos, pad)
        samples.append(out)
        records.append(tokens)
        befores.append(finished)
        finished = after
        if need_host_tokens:  # feed: the tokens, with pad for a row that failed (-1; raised after the loop)
            host_tokens = feed.view(-1).cpu()
            if streamer is not None:
                streamer.put(host_tokens)
            if stops is not None:
                hit = stops.update(host_tokens.tolist(), (~befores[-1]).tolist())
                if hit:
                    stop_rows.update(hit)
                    finished[hit] = True
                    done = finished.all()
        if len(samples) == settings.max_new_tokens or bool(done):
            break
        logits = [runner.step(feed) for runner in models]
    decode_s = time.perf_counter() - start
    if streamer is not None:
        streamer.end()

    before = torch.stack(befores, dim=1)
    _raise_on_failed_rows(torch.stack([o.status for o in samples], dim=1), before)
    new_tokens = torch.stack(records, dim=1)
    running = ~before
    logprobs = torch.stack([o.logprob for o in samples], dim=1).masked_fill(before, 0.0)
    rewards = torch.stack([o.token_reward for o in samples], dim=1).masked_fill(before, 0.0)
    lengths = running.sum(dim=1)
    timings = Timings(prefill_s=prefill_s, decode_s=decode_s, steps=new_tokens.shape[1],
                      new_tokens=int(lengths.sum()))
    return GuidedOutput(
        sequences=torch.cat([prompt, new_tokens], dim=1), new_tokens=new_tokens, logprobs=logprobs,
        token_rewards=rewards, lengths=lengths, finish_reason=_finish_reasons(new_tokens, before, eos, stop_rows),
        timings=timings)
