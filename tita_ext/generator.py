"""GuidedGenerator: guided decoding with static KV caches and captured CUDA graphs, reused across calls.

    gen = tita_ext.GuidedGenerator(base, reward, max_batch_size=8, max_length=1024)
    out = gen.generate(inputs, alpha=0.6, max_new_tokens=256)     # a GuidedOutput, as guided_generate

Per call: the prompts are prefilled eagerly (images included) into rows [0, B) of each model's
static cache, the first token is sampled from the prefill logits, and every later token is one
decode step (graphs.DecodeStep): replayed from a CUDA graph captured once per batch bucket on
CUDA, or run eagerly (same code, same tokens) on the CPU, with `use_cuda_graph=False`, or
while a graph cannot be captured. The host reads the all-finished flag every `sync_every` steps
only; steps after every row stopped produce pad and are trimmed, so the output equals stopping
at the exact step. Stop strings and streamers need each step's tokens on the host: with them
the flag (and the tokens) are read after every step.

A model that cannot decode on a static cache (sliding-window or linear-attention layers, ...)
makes the generator decode on dynamic caches with `guided_generate`'s loop instead
(`generator.static` is False then).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from typing import Mapping, Sequence

import torch

from . import _validate as check
from .adapters.static_cache import StaticCacheUnsupported, StaticRunner, check_static_cache_support
from .generate import Call, GuidedOutput, _sync, guided_generate, make_output, prepare_call
from .graphs import DecodeStep, GraphKey, active_filters
from .ops import Backend, _resolve_backend, advance_impl, sample_impl
from .weights_key import weights_key

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32)




def graphs_possible(device: torch.device) -> tuple[bool, str]:
    """(whether the decode step can be captured on this device, why not). Every fused-op
    backend is capture-safe (no host syncs: the reference decides its branches from Python
    arguments); a capture that fails anyway falls back to eager decoding (see GuidedGenerator)."""
    if device.type != "cuda":
        return False, f"the models are on {device.type}; CUDA graphs need CUDA"
    if not torch.cuda.is_available():  # pragma: no cover - a CUDA model implies it
        return False, "CUDA is not available"
    return True, ""


def bucket_sizes(buckets: Sequence[int], max_batch_size: int) -> tuple[int, ...]:
    """The buckets below max_batch_size, then the smallest one that holds max_batch_size
    (max_batch_size itself when none does)."""
    if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Sequence) or not buckets:
        raise ValueError(f"buckets must be a non-empty sequence of ints >= 1, got {buckets!r}")
    sizes = sorted({check.int_at_least("each bucket", b, 1) for b in buckets})
    top = min((b for b in sizes if b >= max_batch_size), default=max_batch_size)
    return tuple(b for b in sizes if b < max_batch_size) + (top,)


class GuidedGenerator:
    """Guided (TITA) decoding of a base model with a reward model (and optionally a reference
    model), owning one static KV cache per model and the captured decode-step graphs.

    Args:
        base_model, reward_model, ref_model: as for `guided_generate` (one device, shared tokenizer).
            reward_model=None decodes the base model alone on the same engine (no guidance: alpha
            has no effect, token rewards are 0), the baseline that prices guidance.
        max_batch_size: rows per call at most (the largest bucket used is the smallest >= it).
        max_length: positions per row at most: prompt + max_new_tokens (per model's own prompt).
        buckets: batch sizes with a graph of their own; a batch runs in the smallest bucket that
            holds it (the extra rows are padding). Buckets above the smallest one that holds
            max_batch_size are dropped; max_batch_size itself is added when above them all.
        use_cuda_graph: None (capture on CUDA; if a capture fails, warn and decode eagerly), True
            (require graphs: an error when impossible), False (always decode eagerly).
        sync_every: steps between host reads of the all-finished flag (>= 1). Larger values remove
            per-step host syncs; the output is the same (extra steps after every row stopped are
            trimmed), at the cost of up to sync_every - 1 wasted steps at the end.
        overlap: run the reward (and ref) forward on a second CUDA stream beside the base forward
            inside the captured step (CUDA graphs only).
        backend: the fused op's backend (None: the compiled kernel when built for the device,
            else the reference).
        vocab_size: the tokenizer's true size (ids past it are never chosen), or None; a call
            with tokenizer= uses that tokenizer's size instead.

    Threads: a generator may be shared; its calls run one at a time (one lock: they all write the
    same static caches and step buffers). For concurrent decoding give each thread its own.
    Weights: each call checks that the models' parameters still live where the caches and graphs
    were made for (weights_key); after model.to(...) or load_state_dict(assign=True) they are
    rebuilt (`rebuilds` counts it).
    """

    def __init__(self, base_model: torch.nn.Module, reward_model: torch.nn.Module,
                 ref_model: torch.nn.Module | None = None, *, max_batch_size: int, max_length: int,
                 buckets: Sequence[int] = DEFAULT_BUCKETS, use_cuda_graph: bool | None = None, sync_every: int = 8,
                 overlap: bool = False, backend: Backend = None, vocab_size: int | None = None):
        from .setup_checks import check_model

        check.int_at_least("max_batch_size", max_batch_size, 1)
        check.int_at_least("max_length", max_length, 2)
        self.sync_every = check.int_at_least("sync_every", sync_every, 1)
        if use_cuda_graph is not None and not isinstance(use_cuda_graph, bool):
            raise ValueError(f"use_cuda_graph must be None, True or False, got {use_cuda_graph!r}")
        self.buckets = bucket_sizes(buckets, max_batch_size)
        self.max_batch_size, self.max_length = max_batch_size, max_length
        self.models = {"base": base_model}
        if reward_model is not None:
            self.models["reward"] = reward_model
        elif ref_model is not None:
            raise ValueError("ref_model was given without reward_model")
        if ref_model is not None:
            self.models["ref"] = ref_model
        for role, model in self.models.items():
            check_model(role, model)
        self.vocab_size = None if vocab_size is None else check.vocab_size(vocab_size)
        self.overlap = bool(overlap)
        self._backend_arg, self._use_cuda_graph_arg = backend, use_cuda_graph
        # One call at a time: every call writes the same static caches and step buffers.
        self._lock = threading.RLock()
        self.calls = 0
        self.rebuilds = 0  # times the static state was rebuilt because the models' weights moved
        self.last_bucket: int | None = None
        self.capture_s: dict[GraphKey, float] = {}  # seconds each capture took (warm-up included)
        self._build()

    def _build(self) -> None:
        """(Re)make everything tied to the models' weights' storage: device, backend, static
        caches, step buffers; captured graphs are dropped with the old step."""
        from .setup_checks import check_same_device

        use_cuda_graph, reward_model = self._use_cuda_graph_arg, self.models.get("reward")
        self.device = check_same_device(self.models)
        self.backend = _resolve_backend(self._backend_arg, self.device)
        self.weights = weights_key(self.models)
        possible, why = graphs_possible(self.device)
        self.fallback_reason = static_cache_problem(self.models, self.max_length)
        self.static = not self.fallback_reason
        if not self.static:
            possible, why = False, f"no static cache ({self.fallback_reason})"
        if reward_model is None and not self.static:
            raise ValueError(f"reward_model=None (the base model alone) needs a static cache: {self.fallback_reason}")
        if use_cuda_graph and not possible:
            raise ValueError(f"use_cuda_graph=True but the decode step cannot be captured: {why}")
        self.use_cuda_graph = possible if use_cuda_graph is None else bool(use_cuda_graph)
        self.graphs_required = use_cuda_graph is True
        self.why_eager = "" if self.use_cuda_graph else (why or "use_cuda_graph=False")

        self.runners: dict[str, StaticRunner] = {}
        self.state: DecodeStep | None = None
        if self.static:
            rows = self.buckets[-1]
            with torch.inference_mode():
                self.runners = {role: StaticRunner(model, rows, self.max_length) for role, model in self.models.items()}
                self.state = DecodeStep(list(self.runners.values()), sample_impl(self.backend),
                                        advance_impl(self.backend, self.device), history=max(self.max_length, 4))

    def _rebuild_if_weights_moved(self) -> None:
        """After `model.to(...)` or `load_state_dict(assign=True)` the captured graphs and static
        caches address freed weights: rebuild them (checked per call, a pointer walk)."""
        if weights_key(self.models) != self.weights:
            self.runners, self.state = {}, None  # free the old caches before allocating new ones
            self.rebuilds += 1
            self._build()

    def __repr__(self) -> str:
        mode = ("cuda graphs" if self.use_cuda_graph else f"eager ({self.why_eager})") if self.static else \
            f"dynamic caches ({self.fallback_reason})"
        return (f"GuidedGenerator(models={list(self.models)}, device={self.device}, "
                f"max_batch_size={self.max_batch_size}, max_length={self.max_length}, buckets={self.buckets}, sync_every={self.sync_every}, "
                f"backend={self.backend!r}, {mode})")

    def bucket_for(self, batch: int) -> int:
        """The batch size the step runs at for `batch` rows."""
        if batch > self.max_batch_size:
            raise ValueError(f"batch of {batch} rows but this GuidedGenerator has max_batch_size="
                             f"{self.max_batch_size}: split the batch or make a generator with a larger max_batch_size")
        return next(b for b in self.buckets if b >= batch)

    @property
    def captured(self) -> list[GraphKey]:
        """The graphs captured so far."""
        return list(self.state.graphs) if self.state is not None else []

    def generate(self, inputs: Mapping[str, object], *, reward_inputs: Mapping[str, object] | None = None,
                 ref_inputs: Mapping[str, object] | None = None, alpha: check.Param = 0.6,
                 do_sample: bool | None = None, temperature: check.Param | None = None,
                 top_k: check.Param | None = None, top_p: check.Param | None = None, min_p: check.Param | None = None,
                 plausibility: check.Param = 0.0, max_new_tokens: int | None = None,
                 min_new_tokens: int | None = None, repetition_penalty: float | None = None,
                 num_return_sequences: int = 1, eos_token_id=None,
                 pad_token_id: int | None = None, stop_strings: str | Sequence[str] | None = None, tokenizer=None,
                 seed: int | Sequence[int] | torch.Tensor | None = None, generator: torch.Generator | None = None,
                 streamer=None, reward_tokenizer=None, ref_tokenizer=None) -> GuidedOutput:
        """Decode like `guided_generate(base, reward, inputs, ...)` (same arguments and output).
        Safe to call from several threads: calls on one generator run one at a time."""
        kwargs = dict(reward_inputs=reward_inputs, ref_inputs=ref_inputs, alpha=alpha, do_sample=do_sample,
                      temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, plausibility=plausibility,
                      max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                      repetition_penalty=repetition_penalty, num_return_sequences=num_return_sequences,
                      eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                      stop_strings=stop_strings, tokenizer=tokenizer, seed=seed, generator=generator, streamer=streamer,
                      reward_tokenizer=reward_tokenizer, ref_tokenizer=ref_tokenizer)
        if not self.static:
            return guided_generate(self.models["base"], self.models["reward"], inputs, ref_model=self.models.get("ref"),
                                   backend=self.backend, use_cuda_graph=False, **kwargs)
        return self.run(prepare_call(self.models, inputs, backend=self.backend, **kwargs))

    def run(self, call: Call) -> GuidedOutput:
        """Decode a checked call (generate.prepare_call for these models). Calls from several
        threads are serialised (one lock per generator)."""
        if not self.static:
            raise ValueError(f"this GuidedGenerator decodes on dynamic caches ({self.fallback_reason}); use generate()")
        with self._lock:
            self._rebuild_if_weights_moved()
            return self._run_locked(call)

    def _run_locked(self, call: Call) -> GuidedOutput:
        batch = call.batch
        rows = self.bucket_for(batch)
        for role, model_inputs in call.inputs.items():
            length = model_inputs["input_ids"].shape[1]
            if length + call.settings.max_new_tokens > self.max_length:
                need = length + call.settings.max_new_tokens
                raise ValueError(f"{role} prompt of {length} tokens + max_new_tokens={call.settings.max_new_tokens} "
                                 f"needs {need} positions but this GuidedGenerator has max_length={self.max_length}: "
                                 "lower max_new_tokens or make a generator with a larger max_length")
        vocab = call.vocab if call.vocab is not None else self.vocab_size
        with torch.inference_mode():
            return self._decode(call, batch, rows, -1 if vocab is None else vocab)

    def _param_rows(self, call, batch: int) -> dict[str, object]:
        probe = torch.empty(batch, 1, device=self.device)
        values = {}
        for name, value in call.settings.sampling_params().items():
            if isinstance(value, (list, tuple)):
                value = list(value)
                if len(value) != batch:
                    raise ValueError(f"{name} has {len(value)} per-row values but the batch has {batch} rows")
            scalar, rows = check.param(name, value, probe)
            values[name] = rows if rows is not None else scalar
        return values

    def _decode(self, call, batch: int, rows: int, vocab: int) -> GuidedOutput:
        state, settings = self.state, call.settings
        device = self.device
        pad, max_new = settings.pad_token_id, settings.max_new_tokens
        prompt = call.inputs["base"]["input_ids"].to(device=device, dtype=torch.int64)  # inputs may be on the CPU
        params = self._param_rows(call, batch)
        per_row = state.load(batch, params, call.seed, settings.eos_token_ids)
        stops, streams = call.stops, call.streams
        need_host = stops is not None or streams.active
        sync_every = 1 if need_host else self.sync_every
        runners = {role: self.runners[role] for role in call.inputs}  # the base alone at alpha 0
        streams.start(prompt, call.inputs["base"].get("attention_mask"))

        start = time.perf_counter()
        positions_before = [r.positions for r in runners.values()]
        logits = [runner.prefill(call.inputs[role], max_new) for role, runner in runners.items()]
        if any(r.positions is not p for r, p in zip(runners.values(), positions_before)):
            state.drop_graphs()  # a position buffer was (re)made: captured addresses are stale
        processing = state.load_processing(prompt, call.inputs["base"].get("attention_mask"), logits[0].shape[-1],
                                           settings)
        key = GraphKey(rows, per_row, pad, vocab, self.overlap, active_filters(params), len(runners),
                       processing.use_penalty, processing.use_min_new)
        _sync(device)
        prefill_s = time.perf_counter() - start
        # Capture now if this key is new (its warm-up is undone): counted in neither timing.
        replay = self._replay(key) if self.use_cuda_graph and max_new > 1 else None

        start = time.perf_counter()
        # The first token comes from the prefill logits ([B, V]): eagerly, at the real batch size.
        state.sample_and_advance(logits, batch, key)
        stop_rows: set[int] = set()
        steps, since_read = 1, 0
        while True:
            since_read += 1
            if need_host:
                host_tokens = state.feed[:batch].view(-1).cpu()
                running = (~state.before[:batch, steps - 1]).tolist()
                streams.put(host_tokens, running)
                if stops is not None:
                    hit = stops.update(host_tokens.tolist(), running)
                    if hit:
                        stop_rows.update(hit)
                        state.finished[hit] = True
                        state.done.copy_(state.finished[:rows].all())
            if steps == max_new:
                break
            if since_read >= sync_every:
                since_read = 0
                if bool(state.done):
                    break
            if replay is not None:
                replay()
            else:
                state.step(key)
            steps += 1
        _sync(device)
        decode_s = time.perf_counter() - start
        streams.end()
        self.calls += 1
        self.last_bucket = rows
        return self._output(prompt, batch, steps, stop_rows, call, prefill_s, decode_s)

    def _replay(self, key: GraphKey):
        """The captured step's replay for `key`; None (decode eagerly from here on) when the
        capture fails and graphs were not required (use_cuda_graph=None), with a warning."""
        try:
            if key in self.state.graphs:
                return self.state.graphs[key]
            start = time.perf_counter()
            replay = self.state.graph(key)
            _sync(self.device)
            self.capture_s[key] = time.perf_counter() - start
            return replay
        except RuntimeError as err:
            if self.graphs_required:
                raise
            self.use_cuda_graph, self.why_eager = False, f"capture failed: {err.__cause__ or err}"
            warnings.warn(f"GuidedGenerator: {err}; decoding eagerly on the static caches from now on", stacklevel=3)
            return None

    def _output(self, prompt: torch.Tensor, batch: int, steps: int, stop_rows: set[int], call: Call,
                prefill_s: float, decode_s: float) -> GuidedOutput:
        state = self.state
        before = state.before[:batch, :steps]
        n = int((~before).sum(dim=1).max())  # the step at which an exact loop would have stopped
        return make_output(prompt, state.tokens[:batch, :n].clone(), before[:, :n].clone(), state.logprobs[:batch, :n],
                           state.rewards[:batch, :n], state.status[:batch, :n], stop_rows, call,
                           {role: self.models[role] for role in call.inputs}, prefill_s, decode_s)


# ---- the generator guided_generate reuses -----------------------------------------------------

_LENGTH_STEP = 256  # a cached generator's max_length is rounded up to a multiple of this
_cache: dict[str, object] = {}  # "entry": (backend, GuidedGenerator); the generator holds its models


_cache_lock = threading.Lock()


def clear_generator_cache() -> None:
    """Drop the GuidedGenerator that guided_generate keeps (its static KV caches and graphs)."""
    with _cache_lock:
        _cache.clear()


def cached_generator(models: Mapping[str, torch.nn.Module], call: Call, backend: Backend,
                     use_cuda_graph: bool | None) -> GuidedGenerator | None:
    """The GuidedGenerator guided_generate decodes `call` with, or None for its eager loop.

    None (auto): a generator when the decode step can be captured (models on CUDA that support
    static caches), else None; the environment variable TITA_EXT_CUDA_GRAPHS=0 turns auto off.
    True: a generator, or a ValueError saying why not.
    One generator is kept (for the latest models): it is reused while the models, backend and
    sizes fit, and replaced (larger batch / length) otherwise. clear_generator_cache() drops it.
    """
    if use_cuda_graph is None and os.environ.get("TITA_EXT_CUDA_GRAPHS") == "0":
        return None  # the switch that keeps guided_generate on its eager loop everywhere
    resolved = _resolve_backend(backend, call.device)
    possible, why = graphs_possible(call.device)
    length = max(inputs["input_ids"].shape[1] for inputs in call.inputs.values()) + call.settings.max_new_tokens
    problem = static_cache_problem(models, length) if possible else ""
    if problem:
        possible, why = False, f"no static cache ({problem})"
    if not possible:
        if use_cuda_graph:
            raise ValueError(f"use_cuda_graph=True but the decode step cannot be captured: {why}")
        return None
    with _cache_lock:  # threads see one entry; each generator serialises its own calls
        entry = _cache.get("entry")
        batch = call.batch
        if entry is not None:
            entry_backend, gen = entry
            mine = list(gen.models.values())
            same = len(mine) == len(models) and all(a is b for a, b in zip(mine, models.values()))
            # Weights that moved (model.to, load_state_dict(assign=True)) need new caches and graphs.
            fits = same and entry_backend == resolved and gen.weights == weights_key(models)
            if fits and gen.max_batch_size >= call.batch and gen.max_length >= length:
                return gen
            if same:  # grow: keep what the earlier calls needed too
                batch, length = max(batch, gen.max_batch_size), max(length, gen.max_length)
            _cache.clear()  # free the old caches before allocating new ones (a running call keeps its own)
            del gen, entry, mine
        batch = next((b for b in DEFAULT_BUCKETS if b >= batch), batch)
        length = -(-length // _LENGTH_STEP) * _LENGTH_STEP
        gen = GuidedGenerator(models["base"], models["reward"], models.get("ref"), max_batch_size=batch,
                              max_length=length, use_cuda_graph=use_cuda_graph, backend=resolved)
        if not gen.static:  # the rounded-up length is past a sliding window: the eager loop decodes it
            return None
        _cache["entry"] = (resolved, gen)
        return gen


def static_cache_problem(models: Mapping[str, torch.nn.Module], max_length: int) -> str:
    """Why some model cannot decode on a static cache of `max_length` positions ("role_model: ..."),
    or "" when all can."""
    for role, model in models.items():
        try:
            check_static_cache_support(model, max_length)
        except StaticCacheUnsupported as err:
            return f"{role}_model: {err}"
    return ""
