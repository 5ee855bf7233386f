"""TitaForCausalLM: vLLM's native base and reward (and optional reference) models as towers of one
model, so vLLM's scheduler, paged KV cache, sampler and server drive TITA guided decoding.

Imported by vLLM only (registered lazily by `tita_ext.vllm.register`).

Each tower is built with `init_vllm_registered_model` under its own prefix ("base", "reward",
"ref"): every attention layer gets its own paged KV cache, whatever each tower's KV head count and
head size. `forward` runs all towers on the same tokens and positions and returns their hidden
states side by side; `compute_logits` splits them and returns, over the shared id range,

    s = log_softmax(base) + a0 * (log_softmax(reward) - log_softmax(ref))     (ref = base by default)

with -inf outside it; vLLM's sampler then applies greedy / temperature / top-k / top-p / min-p and
per-request seeds to s. A request's own alpha a is applied by `alpha.TitaAlphaProcessor`, which
adds (a - a0) * (log_softmax(reward) - log_softmax(ref)), the term left in `guidance.Guidance`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import nn
from transformers import AutoConfig
from vllm.config import VllmConfig
from vllm.logger import init_logger
from vllm.model_executor.models.utils import init_vllm_registered_model, maybe_prefix

from .guidance import guidance_for
from .layout import ALPHA_KEY, ALPHA_PROCESSOR, TitaSpec

logger = init_logger(__name__)


def _tower_config(role: str, config: dict):
    """A tower's transformers config from its exported dict."""
    config = dict(config)
    model_type = config.pop("model_type", None)
    if not model_type:
        raise ValueError(f"the exported {role} config has no model_type: re-export the models with tita-ext export-vllm")
    return AutoConfig.for_model(model_type, **config)


def _check_parallelism(vllm_config: VllmConfig) -> None:
    parallel = vllm_config.parallel_config
    if parallel.pipeline_parallel_size != 1:
        raise ValueError("TitaForCausalLM does not support pipeline parallelism (pipeline_parallel_size "
                         f"{parallel.pipeline_parallel_size}): use tensor_parallel_size to spread it over GPUs")
    if vllm_config.speculative_config is not None:
        raise ValueError("TitaForCausalLM does not support speculative decoding: the draft tokens would skip the "
                         "reward model's guidance; start the engine without speculative_config")


class TitaForCausalLM(nn.Module):
    """The TITA composite: towers `base`, `reward` and optionally `ref`, each a vLLM model."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        spec = TitaSpec.from_config(vllm_config.model_config.hf_config)
        _check_parallelism(vllm_config)
        self.roles = list(spec.towers)
        self.hidden_sizes = []
        for role in self.roles:
            config = _tower_config(role, spec.towers[role])
            try:
                tower = init_vllm_registered_model(vllm_config, hf_config=config, prefix=maybe_prefix(prefix, role))
            except ValueError as error:
                raise ValueError(f"vLLM cannot build the {role} tower ({', '.join(config.architectures or [])}): "
                                 f"{error}") from error
            self.add_module(role, tower)
            self.hidden_sizes.append(config.hidden_size)
        self.vocab_limit = spec.vocab_limit
        self.vocab_size = vllm_config.model_config.hf_config.vocab_size  # the base's width: the logits' width
        self.guidance = guidance_for(vllm_config, spec.alpha)
        if not self.guidance.processor_attached:
            logger.warning("TitaForCausalLM: no per-request alpha processor in this engine, so every request uses "
                           "alpha %g and a request's extra_args[%r] is ignored; start the engine with "
                           "logits_processors=[%r] (server: --logits-processors %s)", spec.alpha, ALPHA_KEY,
                           ALPHA_PROCESSOR, ALPHA_PROCESSOR)

    def _towers(self) -> list[nn.Module]:
        return [self.get_submodule(role) for role in self.roles]

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Every tower's embeddings side by side: [tokens, sum of hidden sizes]."""
        return torch.cat([tower.embed_input_ids(input_ids) for tower in self._towers()], dim=-1)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Every tower on the same tokens and positions: hidden states [tokens, sum of hidden sizes]."""
        embeds = (inputs_embeds.split(self.hidden_sizes, dim=-1) if inputs_embeds is not None
                  else [None] * len(self.roles))
        return torch.cat([tower(input_ids, positions, None, embed)
                          for tower, embed in zip(self._towers(), embeds)], dim=-1)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """The TITA score at the default alpha, float32 [rows, base vocab width]; -inf outside the
        shared id range. Leaves log p_reward - log p_ref (0 outside the range) for the alpha processor."""
        logits = [tower.compute_logits(h)
                  for tower, h in zip(self._towers(), hidden_states.split(self.hidden_sizes, dim=-1))]
        if any(part is None for part in logits):  # a tensor-parallel rank that does not gather the logits
            return None
        logp = [torch.log_softmax(part[:, :self.vocab_limit].float(), dim=-1) for part in logits]
        term = logp[1] - (logp[2] if len(logp) > 2 else logp[0])
        rows = hidden_states.shape[0]
        score = torch.full((rows, self.vocab_size), float("-inf"), dtype=torch.float32, device=hidden_states.device)
        score[:, :self.vocab_limit] = logp[0] + self.guidance.default_alpha * term
        if self.guidance.term_wanted:
            full_term = torch.zeros_like(score)
            full_term[:, :self.vocab_limit] = term
            self.guidance.term = full_term
        return score

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Route `base.` / `reward.` / `ref.` prefixed checkpoint names to each tower (streamed: the
        exported files hold one tower after another). Returns the loaded names, prefixed."""
        loaded: set[str] = set()
        for role, group in itertools.groupby(weights, key=lambda item: item[0].split(".", 1)[0]):
            if role not in self.roles:
                raise ValueError(f"the checkpoint has weight names starting with {role!r}, but the towers are "
                                 f"{', '.join(self.roles)}: load a folder written by tita-ext export-vllm")
            names = ((name.split(".", 1)[1], tensor) for name, tensor in group)
            loaded |= {f"{role}.{name}" for name in self.get_submodule(role).load_weights(names)}
        return loaded
