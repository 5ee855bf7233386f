"""TITA on vLLM: the composite model `TitaForCausalLM` (base + reward[, ref] towers) as an
out-of-tree model plugin, and `tita-ext export-vllm` to write the folder vLLM loads.

Nothing in this package imports vLLM at import time: `register` (the `vllm.general_plugins`
entry point, which vLLM calls in every process it starts) imports it, and `model`/`alpha` are
only imported by vLLM itself.
"""

from .layout import ALPHA_KEY, ARCHITECTURE


def register() -> None:
    """Register TitaForCausalLM with vLLM's model registry (lazily: the model module is imported
    when vLLM first builds the model)."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "tita_ext.vllm.model:TitaForCausalLM")


__all__ = ["ALPHA_KEY", "ARCHITECTURE", "register"]
