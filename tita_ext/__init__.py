"""tita_ext: token-level inference-time alignment (TITA) with fused guided-sampling kernels.

    s_i = log p_base(i) + alpha * (log p_reward(i) - log p_ref(i))

See `guided_generate` (decoding Hugging Face models), `GuidedGenerator` (the same with static
KV caches and CUDA graphs, reused across calls), `guided_sample` and `guided_logprobs`
(the fused ops), and DESIGN.md.
"""

import importlib
from typing import TYPE_CHECKING

# Where each public name lives. They are imported on first use (PEP 562), so `import tita_ext`
# and `tita-ext --help` load neither torch nor transformers.
_EXPORTS = {
    "STATUS_BAD_PARAM": "contract", "STATUS_NO_FINITE": "contract", "STATUS_OK": "contract",
    "STATUS_OVERFLOW": "contract",
    "GuidedSampleOutput": "contract",
    "GuidedOutput": "generate", "Timings": "generate", "guided_generate": "generate",
    "GuidedGenerator": "generator", "clear_generator_cache": "generator",
    "TITALogitsProcessor": "logits_processor",
    "compiled_available": "ops", "guided_logprobs": "ops", "guided_sample": "ops", "triton_available": "ops",
    "check_tokenizers": "setup_checks",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .contract import STATUS_BAD_PARAM, STATUS_NO_FINITE, STATUS_OK, STATUS_OVERFLOW, GuidedSampleOutput
    from .generate import GuidedOutput, Timings, guided_generate
    from .generator import GuidedGenerator, clear_generator_cache
    from .logits_processor import TITALogitsProcessor
    from .ops import compiled_available, guided_logprobs, guided_sample, triton_available
    from .setup_checks import check_tokenizers


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tita_ext' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = [
    "guided_generate",
    "GuidedGenerator",
    "clear_generator_cache",
    "GuidedOutput",
    "Timings",
    "TITALogitsProcessor",
    "check_tokenizers",
    "guided_sample",
    "guided_logprobs",
    "GuidedSampleOutput",
    "compiled_available",
    "triton_available",
    "STATUS_OK",
    "STATUS_NO_FINITE",
    "STATUS_BAD_PARAM",
    "STATUS_OVERFLOW",
]
__version__ = "0.1.0"
