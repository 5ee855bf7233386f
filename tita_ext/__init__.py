"""tita_ext: token-level inference-time alignment (TITA) with fused guided-sampling kernels.

    s_i = log p_base(i) + alpha * (log p_reward(i) - log p_ref(i))

See `guided_generate` (decoding Hugging Face models), `GuidedGenerator` (the same with static
KV caches and CUDA graphs, reused across calls), `guided_sample` and `guided_logprobs`
(the fused ops), and DESIGN.md.
"""

from .contract import STATUS_BAD_PARAM, STATUS_NO_FINITE, STATUS_OK, GuidedSampleOutput
from .generate import GuidedOutput, Timings, guided_generate
from .generator import GuidedGenerator, clear_generator_cache
from .logits_processor import TITALogitsProcessor
from .ops import compiled_available, guided_logprobs, guided_sample, triton_available
from .setup_checks import check_tokenizers

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
]
__version__ = "0.1.0"
