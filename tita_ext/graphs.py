"""The dual-model decode step on static buffers, and its capture as one CUDA graph per batch bucket.

`DecodeStep` owns every tensor a decode step reads or writes: the token fed to the models, the
finished flags, the all-finished flag, the noise offset and step counter, the per-row sampling
parameters, the seed, the stop ids, and the per-step history (tokens, log-probs, token rewards,
status, finished-before) for `max_batch` rows. One step is

    forwards of every model on `feed`     (StaticRunner.step: static KV caches, positions += 1)
    guided_sample on their logits         (seed and offset read from device tensors)
    decode_advance                        (pad stopped rows, EOS, the tokens to feed next)
    history[:, step] = this step's values (index_copy_ at a device step counter)
    offset += 1, step += 1                (in place)

with no host value anywhere, so the same Python code runs eagerly (CPU, or CUDA without graphs)
and under CUDA stream capture; a replay of the captured graph does exactly the eager step's
work, and the two give identical tokens.

Buckets: a batch of B rows runs in the smallest bucket >= B; rows [B, bucket) are padding rows,
finished from the start (fed pad, never read). One graph per (bucket, capture settings), all in
one memory pool (`torch.cuda.graph_pool_handle()`): graphs are replayed one at a time, so their
scratch memory can be shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from . import reference
from .adapters.static_cache import StaticRunner
from .base_processing import BaseProcessing, guided_logits
from .step_sampler import DEFAULTS

# Per-row parameter buffers: name -> (dtype, value of padding rows: greedy, every filter off).
PARAM_BUFFERS = {"alpha": (torch.float32, 0.0), "temperature": (torch.float32, 0.0), "top_k": (torch.int64, 0),
                 "top_p": (torch.float32, 1.0), "min_p": (torch.float32, 0.0),
                 "plausibility": (torch.float32, 0.0)}
WARMUP_STEPS = 2  # eager steps on a side stream before a capture (lazy initialisations), then undone


def decode_advance_broadcast(sampled: torch.Tensor, finished: torch.Tensor, stop_ids: torch.Tensor,
                             pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """reference.decode_advance with the stop-id test as a broadcast compare instead of
    torch.isin, which on CUDA takes a sorting path (torch.unique: a host sync, fatal inside a
    capture) once there are about 10 stop ids per row. Same results."""
    record = sampled.masked_fill(finished, pad_id)
    after = finished | (record < 0) | (record.unsqueeze(1) == stop_ids.unsqueeze(0)).any(dim=1)
    feed = record.masked_fill(record < 0, pad_id).reshape(-1, 1)
    return record, feed, after, after.all()


@dataclass(frozen=True)
class GraphKey:
    """What a captured step bakes in besides buffer addresses."""

    rows: int  # the bucket
    per_row_seed: bool  # seed buffer [rows] (each row its own seed) or [1] (one seed, row-addressed noise)
    pad_token_id: int
    vocab: int
    overlap: bool
    # Which of temperature (sampling), top_k, top_p, min_p, plausibility some row turns on: those
    # are read from their per-row buffers; the others are passed off (as scalars), so a greedy
    # unfiltered call costs no more than it does eagerly. alpha is always per row.
    active: tuple[bool, bool, bool, bool, bool] = (True, True, True, True, True)
    roles: int = 0  # how many runners (base first) the step runs: 1 for an alpha-0 call; 0: all
    penalty: bool = False  # repetition_penalty on the base logits (base_processing.py)
    min_new: bool = False  # EOS held back while fewer than min_new_tokens


# Parameters that can be off for a whole call, and their "off" test.
OPTIONAL = ("temperature", "top_k", "top_p", "min_p", "plausibility")
_IS_ON = {"temperature": lambda v: v != 0, "top_k": lambda v: v > 0, "top_p": lambda v: v < 1,
          "min_p": lambda v: v > 0, "plausibility": lambda v: v > 0}


def active_filters(values: dict[str, object]) -> tuple[bool, ...]:
    """For a call's parameters (Python number, or a per-row tensor): which optional ones are on
    for some row (a per-row tensor counts as on)."""
    return tuple(isinstance(values[name], torch.Tensor) or bool(_IS_ON[name](values[name])) for name in OPTIONAL)


class DecodeStep:
    """Static state and the decode step over `runners` (base first, then reward, then ref; the
    base alone samples from its own logits).

    Args:
        runners: the models' StaticRunners (same max_batch).
        sample: the fused op's implementation (ops.sample_impl(backend)): positional arguments.
        advance: decode_advance's implementation (ops.advance_impl).
        history: steps the history buffers hold (>= any call's max_new_tokens).
        stop_slots: how many stop ids the stop buffer holds (unused slots are -1, never matched).
    """

    def __init__(self, runners: Sequence[StaticRunner], sample, advance, history: int, stop_slots: int = 8):
        self.runners = list(runners)
        self.sample_op = sample
        self.advance_op = decode_advance_broadcast if advance is reference.decode_advance else advance
        self.max_batch = self.runners[0].max_batch
        device = self.device = self.runners[0].device
        rows, i64 = self.max_batch, torch.int64
        self.feed = torch.zeros(rows, 1, dtype=i64, device=device)
        self.finished = torch.ones(rows, dtype=torch.bool, device=device)
        self.done = torch.zeros((), dtype=torch.bool, device=device)
        self.offset = torch.zeros(1, dtype=i64, device=device)
        self.step_index = torch.zeros(1, dtype=i64, device=device)
        self.seed_one = torch.zeros(1, dtype=i64, device=device)
        self.seed_rows = torch.zeros(rows, dtype=i64, device=device)
        self.stop_ids = torch.full((stop_slots,), -1, dtype=i64, device=device)
        self.params = {name: torch.full((rows,), fill, dtype=dtype, device=device)
                       for name, (dtype, fill) in PARAM_BUFFERS.items()}
        self.history = history
        self.tokens = torch.zeros(rows, history, dtype=i64, device=device)
        self.logprobs = torch.zeros(rows, history, dtype=torch.float32, device=device)
        self.rewards = torch.zeros(rows, history, dtype=torch.float32, device=device)
        self.status = torch.zeros(rows, history, dtype=torch.int32, device=device)
        self.before = torch.ones(rows, history, dtype=torch.bool, device=device)
        self.processing: BaseProcessing | None = None  # made at the first call that needs its width
        self.graphs: dict[GraphKey, object] = {}  # key -> replay function
        self._captured: list = []  # the CUDAGraph objects (kept alive with their pool)
        self._pool = None
        self._side_stream = None

    # ---- per call -------------------------------------------------------------------------

    def load(self, batch: int, params: dict[str, object], seed: torch.Tensor, stop_ids: Sequence[int]) -> bool:
        """Set the call's state for `batch` real rows: parameters (a number, or a float32/int64
        [batch] tensor each), seed (int64 [1] or [batch]), stop ids. Returns whether the seed is
        per row."""
        if len(stop_ids) > self.stop_ids.numel():  # more EOS ids than slots: grow (recapture)
            self.stop_ids = torch.full((len(stop_ids),), -1, dtype=torch.int64, device=self.device)
            self.drop_graphs()
        self.stop_ids.fill_(-1)
        if stop_ids:
            self.stop_ids[:len(stop_ids)] = torch.tensor(list(stop_ids), dtype=torch.int64)
        for name, buffer in self.params.items():
            buffer.fill_(PARAM_BUFFERS[name][1])
            buffer[:batch] = params[name]
        per_row = seed.numel() == batch and batch != 1
        if per_row:
            self.seed_rows.zero_()
            self.seed_rows[:batch] = seed
        else:
            self.seed_one.copy_(seed.reshape(1))
        self.finished.fill_(True)
        self.finished[:batch] = False
        self.done.fill_(False)
        self.feed.zero_()
        self.offset.zero_()
        self.step_index.zero_()
        self.before[:batch].fill_(True)
        return per_row

    def load_processing(self, prompt: torch.Tensor, mask: torch.Tensor | None, width: int,
                        settings) -> BaseProcessing:
        """Set repetition_penalty / min_new_tokens for the call (DecodeSettings) on base logits
        `width` wide; prompt int64 [B, L], its attention mask or None. A new width makes new
        buffers (and drops the graphs, which hold the old ones' addresses)."""
        if self.processing is None or self.processing.width != width:
            self.processing = BaseProcessing(self.max_batch, width, self.device)
            self.drop_graphs()
        self.processing.load(prompt, mask, settings.repetition_penalty, settings.min_new_tokens,
                             settings.eos_token_ids)
        return self.processing

    # ---- the step ---------------------------------------------------------------------------

    def sample_and_advance(self, logits: Sequence[torch.Tensor], rows: int, key: GraphKey) -> None:
        """The fused op on the step's logits ([rows, V] each), the bookkeeping, the history."""
        seed = self.seed_rows[:rows] if key.per_row_seed else self.seed_one
        args = [DEFAULTS["alpha"], self.params["alpha"][:rows]]
        for name, on in zip(OPTIONAL, key.active):
            args += [DEFAULTS[name], self.params[name][:rows]] if on else [PARAM_BUFFERS[name][1], None]
        processing = self.processing if key.penalty or key.min_new else None
        base, other, ref = guided_logits(logits, processing, self.step_index)
        tokens, logprob, reward, status = self.sample_op(base, other, ref, *args, seed, self.offset, key.vocab)
        finished = self.finished[:rows]
        record, feed, after, done = self.advance_op(tokens, finished, self.stop_ids, key.pad_token_id)
        if processing is not None:
            processing.record(feed)
        index = self.step_index
        self.before[:rows].index_copy_(1, index, finished.unsqueeze(1))
        self.tokens[:rows].index_copy_(1, index, record.unsqueeze(1))
        self.logprobs[:rows].index_copy_(1, index, logprob.unsqueeze(1))
        self.rewards[:rows].index_copy_(1, index, reward.unsqueeze(1))
        self.status[:rows].index_copy_(1, index, status.unsqueeze(1))
        finished.copy_(after)
        self.feed[:rows].copy_(feed)
        self.done.copy_(done)
        self.offset.add_(1)
        self.step_index.add_(1)

    def forwards(self, rows: int, overlap: bool, roles: int = 0) -> list[torch.Tensor]:
        """The forward of the first `roles` models (0: all) on the fed tokens. With overlap
        (CUDA), the models after the base run on a second stream, forked from and joined back into
        the current one."""
        feed = self.feed[:rows]
        runners = self.runners[:roles] if roles else self.runners
        if not (overlap and self.device.type == "cuda" and len(runners) > 1):
            return [runner.step(feed) for runner in runners]
        main = torch.cuda.current_stream(self.device)
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(self.device)
        side = self._side_stream
        side.wait_stream(main)
        with torch.cuda.stream(side):
            others = [runner.step(feed) for runner in runners[1:]]
        base = runners[0].step(feed)
        main.wait_stream(side)
        return [base, *others]

    def step(self, key: GraphKey) -> None:
        """One decode step, eagerly (the captured graph's body)."""
        self.sample_and_advance(self.forwards(key.rows, key.overlap, key.roles), key.rows, key)

    # ---- CUDA graphs ------------------------------------------------------------------------

    def _snapshot(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(tensor, copy) of all state a step advances, to undo warm-up steps."""
        state = [self.feed, self.finished, self.done, self.offset, self.step_index]
        for runner in self.runners:
            state.extend(layer.cumulative_length for layer in runner.cache.layers)
            if runner.positions is not None:
                state.append(runner.positions)
        if self.processing is not None:
            state.append(self.processing.presence)
        return [(t, t.clone()) for t in state]

    def graph(self, key: GraphKey):
        """The replay function of the captured step for `key`, capturing it now if needed: a
        warm-up of WARMUP_STEPS eager steps (lazy initialisations, cuBLAS workspaces) whose effects
        are then undone, and the capture, which runs nothing, so the graph starts from the
        current state."""
        found = self.graphs.get(key)
        if found is not None:
            return found
        saved = self._snapshot()
        self._warm_up(lambda: self.step(key))
        for tensor, copy in saved:
            tensor.copy_(copy)
        try:
            replay = self._capture(lambda: self.step(key))
        except Exception as err:
            raise RuntimeError(
                f"capturing the decode step as a CUDA graph failed ({type(err).__name__}: {err}). Something in the "
                "step needs the host (a .item(), a data-dependent shape, a CPU tensor) in the models or the fused op "
                "backend; pass use_cuda_graph=False to decode eagerly on the static caches") from err
        self.graphs[key] = replay
        return replay

    def _warm_up(self, step) -> None:
        """Run `step` WARMUP_STEPS times on a side stream (as torch.cuda.graphs recommends)."""
        warm = torch.cuda.Stream(self.device)
        warm.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(warm):
            for _ in range(WARMUP_STEPS):
                step()
        torch.cuda.current_stream(self.device).wait_stream(warm)

    def _capture(self, step):
        """Capture `step` into a CUDA graph in the shared pool; returns its replay."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            step()
        self._captured.append(graph)
        return graph.replay

    def drop_graphs(self) -> None:
        """Forget every captured graph (their buffers' addresses changed)."""
        self.graphs.clear()
        self._captured.clear()
