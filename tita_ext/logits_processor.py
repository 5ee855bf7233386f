"""TITALogitsProcessor: TITA guidance inside `base_model.generate(..., logits_processor=[...])`.

`generate` runs the base model; this processor runs the reward (and reference) model beside it,
each with its own KV cache, feeding them the tokens `generate` chose, and turns the base scores
into the guided log-distribution. It works with greedy decoding, sampling (generate's own
temperature / top-k / top-p warpers apply after it) and beam search (its caches follow the beams).
"""

from __future__ import annotations

from typing import Mapping

import torch
from transformers import LogitsProcessor

from . import _validate as check
from .adapters import ModelRunner
from .ops import Backend
from .setup_checks import check_inputs, check_model, check_same_device, inputs_for, text_tokenizer
from .step_sampler import StepSampler


def _per_row(name: str, value: check.Param, batch: int, repeats: int) -> check.Param:
    """A per-prompt parameter (B values) repeated for generate's B * repeats rows; numbers as they are."""
    if isinstance(value, (list, tuple)):
        if len(value) != batch:
            raise ValueError(f"{name} has {len(value)} per-row values but reward_inputs has {batch} prompts")
        return [v for v in value for _ in range(repeats)]
    if isinstance(value, torch.Tensor) and value.dim() == 1:
        if value.shape[0] != batch:
            raise ValueError(f"{name} has {value.shape[0]} per-row values but reward_inputs has {batch} prompts")
        return value.repeat_interleave(repeats)
    return value


class TITALogitsProcessor(LogitsProcessor):
    """Guide `base_model.generate` with a reward model, token by token (TITA):

        s = log p_base + alpha * (log p_reward - log p_ref)        (p_ref = p_base without ref_model)

    then the plausibility floor. Use it as `base_model.generate(**inputs, logits_processor=[proc])`.

    Args:
        reward_model, ref_model: transformers causal LMs or VLMs sharing the base's tokenizer (logit
            widths may differ), on the base model's device.
        reward_inputs: the reward model's processor/tokenizer output for the same left-padded
            prompts as generate's inputs, B rows (one per prompt; generate's expansion for
            num_beams / num_return_sequences is followed here). Images included.
        ref_inputs: the ref model's own inputs (default: reward_inputs, when both models are of
            one family).
        alpha, plausibility: as in `guided_generate` (a number, or a per-prompt list / tensor of B).
        tokenizer: the base tokenizer or processor: caps ids at its true size (optional).
        max_new_tokens: attention-mask steps reserved up front (the buffer grows when exceeded).
        backend: the fused op's backend (None: the compiled kernel when built, else reference).

    Call: `(input_ids int64 [rows, cur_len], scores float [rows, V_base]) -> float32 [rows, V_base]`,
    rows = B * expansion. Returns the guided log-probabilities: -inf outside the plausible set and
    beyond the shared id range; a row with no allowed token is all NaN. Temperature is left to
    generate's own warpers, which apply afterwards.

    A call whose input_ids do not extend the previous call's by one column starts a new generation
    (prefill again), so one processor serves consecutive `generate` calls; `reset()` forces it (a
    new generate whose prompt happens to be exactly one token longer than the previous call's
    sequences needs it) and frees the caches. Not for assisted / speculative generation.
    """

    def __init__(self, reward_model: torch.nn.Module, reward_inputs: Mapping[str, object], *,
                 alpha: check.Param = 0.6, ref_model: torch.nn.Module | None = None,
                 ref_inputs: Mapping[str, object] | None = None, plausibility: check.Param = 0.0,
                 tokenizer=None, max_new_tokens: int = 512, backend: Backend = None):
        self.models = {"reward": reward_model}
        self.inputs = {"reward": reward_inputs}
        if ref_model is not None:
            self.models["ref"] = ref_model
            ref_inputs = inputs_for("ref", ref_model, ref_inputs, "reward", reward_model, reward_inputs)
            self.inputs["ref"] = ref_inputs
        elif ref_inputs is not None:
            raise ValueError("ref_inputs was given without ref_model")
        for role, model in self.models.items():
            check_model(role, model)
        self.batch = check_inputs("reward", reward_model, reward_inputs, None)
        if ref_model is not None:
            check_inputs("ref", ref_model, ref_inputs, self.batch)
        self.device = check_same_device(self.models)
        check.int_at_least("max_new_tokens", max_new_tokens, 1)
        self.params = {"alpha": alpha, "plausibility": plausibility}
        self.vocab_size = len(text_tokenizer(tokenizer)) if tokenizer is not None else None
        self.max_new_tokens = max_new_tokens
        self.backend = backend
        StepSampler(self.batch, self.device, vocab_size=self.vocab_size, backend=backend, **self.params)  # check now
        self.reset()

    def reset(self) -> None:
        """Forget the current generation (its caches): the next call prefills again."""
        self.runners: dict[str, ModelRunner] | None = None
        self.sampler: StepSampler | None = None
        self.rows = self.repeats = self.length = self.prompt_length = 0
        self.previous_ids: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        with torch.no_grad():
            if self.runners is not None and input_ids.shape[0] == self.rows and input_ids.shape[1] == self.length + 1:
                logits = self._step(input_ids)
            else:
                logits = self._start(input_ids, scores)
            self.length = input_ids.shape[1]
            if self.repeats > 1:  # beam search may reorder rows: keep what the next call is matched against
                self.previous_ids = input_ids[:, self.prompt_length:].clone()
            return self.sampler.logprobs(scores, logits["reward"], logits.get("ref"))

    def _start(self, input_ids: torch.Tensor, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        """Prefill every model with its prompts and expand to generate's rows."""
        self.reset()
        rows = input_ids.shape[0]
        if scores.device != self.device:
            raise ValueError(f"generate's scores are on {scores.device} but reward_model is on {self.device}: "
                             f"put the models on one device")
        repeats = rows // self.batch if rows % self.batch == 0 else 0
        if repeats > 1 and input_ids.shape[1] > 0:  # expanded rows are copies of one prompt
            grouped = input_ids.reshape(self.batch, repeats, -1)
            repeats = repeats if bool((grouped == grouped[:, :1]).all()) else 0
        if repeats == 0:
            raise ValueError(f"reward_inputs has {self.batch} prompt(s), which does not match generate's batch "
                             f"({rows} rows, i.e. prompts x num_beams / num_return_sequences): pass the reward "
                             "model's inputs for the same prompts as generate, one row per prompt")
        self.runners = {role: ModelRunner(model, self.inputs[role], self.max_new_tokens)
                        for role, model in self.models.items()}
        logits = {role: runner.prefill() for role, runner in self.runners.items()}
        if repeats > 1:
            for runner in self.runners.values():
                runner.repeat_rows(repeats)
            logits = {role: x.repeat_interleave(repeats, dim=0) for role, x in logits.items()}
        params = {name: _per_row(name, value, self.batch, repeats) for name, value in self.params.items()}
        self.sampler = StepSampler(rows, self.device, vocab_size=self.vocab_size, backend=self.backend,
                                   temperature=1.0, **params)
        self.rows, self.repeats, self.prompt_length = rows, repeats, input_ids.shape[1]
        return logits

    def _step(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feed the token generate chose to every model, after following any reordering of rows."""
        if self.repeats > 1:
            parents = self._parents(input_ids)
            for runner in self.runners.values():
                runner.reorder(parents)
        tokens = input_ids[:, -1:]
        return {role: runner.step(tokens) for role, runner in self.runners.items()}

    def _parents(self, input_ids: torch.Tensor) -> torch.Tensor:
        """int64 [rows]: for each row, a row of the previous call whose sequence it extends, searched
        within its prompt's group (on the device, no host sync). Rows whose prefixes are equal
        have equal caches, so the first match serves."""
        batch, repeats = self.batch, self.repeats
        width = self.previous_ids.shape[1]  # tokens generated before this call's newest one
        new = input_ids[:, self.prompt_length:-1].reshape(batch, repeats, 1, width)
        old = self.previous_ids.reshape(batch, 1, repeats, width)
        match = (new == old).all(dim=-1)  # [batch, child, parent]
        first = match.to(torch.int32).argmax(dim=-1)  # the first maximum: the first matching parent
        offsets = torch.arange(0, batch * repeats, repeats, device=input_ids.device)
        return (first + offsets[:, None]).reshape(-1)
