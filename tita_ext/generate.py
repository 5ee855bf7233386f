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
from . import engine_checks as engine
from .adapters import ModelRunner
from .base_processing import BaseProcessing, guided_logits
from .decode_failure import raise_on_failed_rows
from .expand import check_copies, check_seed_rows, expand_inputs
from .ops import Backend, advance_impl, as_int64
from .row_streams import RowStreams
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
    text: per row the new text (special tokens skipped) when a tokenizer was given, else None.
    """

    sequences: torch.Tensor
    new_tokens: torch.Tensor
    logprobs: torch.Tensor
    token_rewards: torch.Tensor
    lengths: torch.Tensor
    finish_reason: list[str]
    timings: Timings
    text: list[str] | None = None


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
    min_new_tokens: int | None = None,
    repetition_penalty: float | None = None,
    num_return_sequences: int = 1,
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
        alpha: guidance weight in [0, 10] (0 base only, 1 reward only); number or per-row
            list/tensor. alpha=0 for every row (a number or a list of zeros): the reward and ref
            models are not run at all (the base alone decides, token_rewards are 0, and a broken
            reward model cannot fail the call). A per-row alpha of 0 beside other values still
            meets the reward's logits in the op, where 0 * NaN is NaN: that row fails.
        do_sample, temperature, top_k, top_p, min_p, max_new_tokens, eos_token_id,
            pad_token_id: as in `generate`; unset ones come from base_model.generation_config.
            Sampling parameters may be per-row lists or tensors. With do_sample=False the
            sampling parameters passed are ignored with a warning, as generate does.
        min_new_tokens, repetition_penalty: as in `generate` (one value for the batch), applied
            to the base logits before guidance (see base_processing.py): at alpha 0 the tokens
            are generate's; token rewards are not changed by them.
        num_return_sequences: sequences per prompt (needs sampling): the output has B * n rows,
            each prompt's copies consecutive, as generate lays them out. Per-row lists given per
            prompt are repeated per copy; a per-row seed list needs one seed per returned row.
        plausibility: keep only tokens with p_base >= plausibility * max p_base (0: off).
        stop_strings: a row stops once its new text contains one (needs `tokenizer`).
        tokenizer: the base tokenizer or processor: caps ids at its true size, decodes stop
            strings and fills GuidedOutput.text.
        reward_tokenizer, ref_tokenizer: when given, checked against `tokenizer` id by id
            (without them, the models' BOS/EOS ids must agree).
        seed: int, per-row list of ints, or int64 tensor; or generator: draws the seed.
            The same seed gives the same tokens on every backend.
        streamer: a transformers streamer (put/end; gets the prompt, then each step's tokens for
            the whole batch, as in generate), or a list of one streamer per row (each gets its
            own row: see row_streams.py).
        backend: the fused op's backend (None: the compiled kernel when built, else reference).
        use_cuda_graph: None (default): decode through a cached `GuidedGenerator` (static KV caches,
            one CUDA graph per batch bucket, reused by later calls with the same models) when the
            models are on CUDA and support static caches (a capture that fails falls back to eager
            decoding with a warning; the environment variable TITA_EXT_CUDA_GRAPHS=0 turns this
            off); otherwise this eager loop on dynamic caches. True: require the graphed generator
            (an error says why it cannot be used). False: always this eager loop.
            Safe to call from several threads: the eager loop shares nothing between calls and
            the cached generator serialises its calls.

    Returns:
        GuidedOutput (sequences, new_tokens, logprobs, token_rewards, lengths, finish_reason,
        timings, text).
    """
    if use_cuda_graph is not None and not isinstance(use_cuda_graph, bool):
        raise ValueError(f"use_cuda_graph must be None, True or False, got {use_cuda_graph!r}")
    kwargs = dict(reward_inputs=reward_inputs, ref_inputs=ref_inputs, alpha=alpha, do_sample=do_sample,
                  temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, plausibility=plausibility,
                  max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, repetition_penalty=repetition_penalty,
                  num_return_sequences=num_return_sequences, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
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
        runners = {role: ModelRunner(models[role], call.inputs[role], call.settings.max_new_tokens)
                   for role in call.inputs}
        return _decode(runners, call)


@dataclass
class Call:
    """A guided_generate call's checked arguments: the inputs of each role that takes part (base
    alone when alpha is 0), the batch size (returned rows), the resolved settings, the
    tokenizer's size (or None), the checked sampler, the seed tensor, stop strings, streams,
    the base tokenizer (or None) for the output's text."""

    inputs: dict[str, Mapping[str, object]]
    batch: int
    device: torch.device
    settings: DecodeSettings
    vocab: int | None
    sampler: StepSampler
    seed: torch.Tensor
    stops: StopStrings | None
    streams: RowStreams
    tokenizer: object = None


def prepare_call(models: Mapping[str, torch.nn.Module], inputs: Mapping[str, object], *,
                 reward_inputs: Mapping[str, object] | None = None, ref_inputs: Mapping[str, object] | None = None,
                 alpha: check.Param = 0.6, do_sample: bool | None = None, temperature: check.Param | None = None,
                 top_k: check.Param | None = None, top_p: check.Param | None = None, min_p: check.Param | None = None,
                 plausibility: check.Param = 0.0, max_new_tokens: int | None = None,
                 min_new_tokens: int | None = None, repetition_penalty: float | None = None,
                 num_return_sequences: int = 1, eos_token_id: IdList = None,
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
    engine.check_do_sample(do_sample)
    engine.check_alpha(alpha)
    batch = check_inputs("base", base_model, inputs, None)
    for role, model in models.items():
        if role == "base":
            continue
        given_inputs[role] = inputs_for(role, model, given_inputs[role], "base", base_model, inputs)
        check_inputs(role, model, given_inputs[role], batch)
    role_tokenizers = {"reward": reward_tokenizer, "ref": ref_tokenizer}
    for role, other in role_tokenizers.items():
        if other is not None:
            if tokenizer is None:
                raise ValueError(f"{role}_tokenizer was given without tokenizer= (the base tokenizer) to check it against")
            check_tokenizers(tokenizer, other, role)
    unchecked = {role: model for role, model in models.items() if role == "base" or role_tokenizers[role] is None}
    engine.check_special_tokens(unchecked)
    for role, model in models.items():
        engine.check_ids_fit(role, model, given_inputs[role])
    vocab_size = len(text_tokenizer(tokenizer)) if tokenizer is not None else None
    if vocab_size is not None:
        engine.check_tokenizer_fits(vocab_size, inputs)

    settings = resolve_settings(
        base_model.generation_config, inputs["input_ids"].shape[1], alpha=alpha, do_sample=do_sample,
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, plausibility=plausibility,
        max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        stop_strings=stop_strings, repetition_penalty=repetition_penalty, min_new_tokens=min_new_tokens)
    engine.warn_unused_sampling(settings.do_sample, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    if settings.stop_strings and tokenizer is None:
        raise ValueError("stop_strings need tokenizer= (the base model's tokenizer or processor) to read the text")
    copies = check_copies(num_return_sequences, settings.do_sample)
    check_seed_rows(seed, batch, copies)
    if copies > 1:
        given_inputs = {role: expand_inputs(model, given_inputs[role], copies) for role, model in models.items()}
        settings = settings.expanded(batch, copies)
        batch *= copies
    engine.check_streamer(streamer, batch)
    roles = ["base"] if engine.alpha_is_zero(settings.alpha) else list(models)
    sampler = StepSampler(batch, device, vocab_size=vocab_size, backend=backend, **settings.sampling_params())
    seed_t = _seed_tensor(seed, generator, batch, device)
    stops = StopStrings(text_tokenizer(tokenizer), settings.stop_strings, batch) if settings.stop_strings else None
    return Call(inputs={role: given_inputs[role] for role in roles}, batch=batch, device=device, settings=settings,
                vocab=vocab_size, sampler=sampler, seed=seed_t, stops=stops, streams=RowStreams(streamer, batch),
                tokenizer=tokenizer)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_output(prompt: torch.Tensor, new_tokens: torch.Tensor, before: torch.Tensor, logprobs: torch.Tensor,
                rewards: torch.Tensor, status: torch.Tensor, stop_rows: set[int], call: Call,
                models: Mapping[str, torch.nn.Module], prefill_s: float, decode_s: float) -> GuidedOutput:
    """The GuidedOutput of a finished loop ([B, N] tensors; before: the row had stopped), or the
    error of a row the op could not sample."""
    raise_on_failed_rows(status, before, new_tokens, models, call.inputs)
    running = ~before
    lengths = running.sum(dim=1)
    eos = torch.tensor(call.settings.eos_token_ids, dtype=torch.int64, device=new_tokens.device)
    timings = Timings(prefill_s=prefill_s, decode_s=decode_s, steps=new_tokens.shape[1],
                      new_tokens=int(lengths.sum()))
    text = None
    if call.tokenizer is not None:
        tok = text_tokenizer(call.tokenizer)
        text = [tok.decode(row[:n], skip_special_tokens=True) for row, n in zip(new_tokens.tolist(), lengths.tolist())]
    return GuidedOutput(
        sequences=torch.cat([prompt, new_tokens], dim=1), new_tokens=new_tokens,
        logprobs=logprobs.masked_fill(before, 0.0), token_rewards=rewards.masked_fill(before, 0.0), lengths=lengths,
        finish_reason=_finish_reasons(new_tokens, before, eos, stop_rows), timings=timings, text=text)


def _decode(runners: dict[str, ModelRunner], call: Call) -> GuidedOutput:
    """The decode loop. Per step: forwards, one fused op, [B]-sized bookkeeping, one host read."""
    sampler, settings, seed, stops, streams, device = (call.sampler, call.settings, call.seed, call.stops,
                                                       call.streams, call.device)
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
    need_host_tokens = stops is not None or streams.active
    streams.start(prompt, base.inputs.get("attention_mask"))
    models = list(runners.values())

    start = time.perf_counter()
    logits = [runner.prefill() for runner in models]
    _sync(device)
    prefill_s = time.perf_counter() - start
    processing = None
    if settings.processes_base:
        processing = BaseProcessing(batch, logits[0].shape[-1], device)
        processing.load(prompt, base.inputs.get("attention_mask"), settings.repetition_penalty,
                        settings.min_new_tokens, settings.eos_token_ids)
    start = time.perf_counter()
    while True:
        offset = offsets[len(samples)]
        chosen = guided_logits(logits, processing, offset)
        out = sampler.sample(*chosen, seed, offset)
        # Pad rows that had stopped, stop rows at EOS (or at -1: a row the op could not sample,
        # reported after the loop), and the [B, 1] tokens to feed next: one op.
        tokens, feed, after, done = advance(out.tokens, finished, eos, pad)
        samples.append(out)
        records.append(tokens)
        befores.append(finished)
        finished = after
        if processing is not None:
            processing.record(feed)
        if need_host_tokens:  # feed: the tokens, with pad for a row that failed (-1; raised after the loop)
            host_tokens = feed.view(-1).cpu()
            running = (~befores[-1]).tolist()
            streams.put(host_tokens, running)
            if stops is not None:
                hit = stops.update(host_tokens.tolist(), running)
                if hit:
                    stop_rows.update(hit)
                    finished[hit] = True
                    done = finished.all()
        if len(samples) == settings.max_new_tokens or bool(done):
            break
        logits = [runner.step(feed) for runner in models]
    decode_s = time.perf_counter() - start
    streams.end()

    return make_output(prompt, torch.stack(records, dim=1), torch.stack(befores, dim=1),
                       torch.stack([o.logprob for o in samples], dim=1),
                       torch.stack([o.token_reward for o in samples], dim=1),
                       torch.stack([o.status for o in samples], dim=1), stop_rows, call,
                       {role: runner.model for role, runner in runners.items()}, prefill_s, decode_s)
