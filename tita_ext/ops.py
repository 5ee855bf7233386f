"""Typed wrappers over the registered ops torch.ops.tita.*, their fake kernels, and backend choice.

    guided_sample(base_logits, reward_logits, ref_logits=None, *, alpha, temperature, top_k,
                  top_p, min_p, plausibility, seed, offset) -> GuidedSampleOutput
    guided_logprobs(base_logits, reward_logits, ref_logits=None, *, alpha, temperature, top_k,
                    top_p, min_p, plausibility) -> float32 [B, V_base]

Backends: "compiled" (the compiled kernel of the logits' device: the C++ CPU kernel, or the
CUDA kernel when tita_ext._C was built with CUDA), "cuda" (the same, for CUDA tensors only: an
error otherwise), "triton" (tita_ext.triton_ops: CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1) and "reference" (tita_ext.reference, pure PyTorch). By default the compiled
op is used when it is built for the logits' device, else the reference; all give the same tokens.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Literal, Optional, Union

import torch

from . import _validate as check
from . import logprobs_grad, reference
from .contract import STATUS_MEANING, STATUS_OK, GuidedSampleOutput

try:
    from . import _C  # noqa: F401  (loading it registers torch.ops.tita.*)

    _COMPILED = True
except ModuleNotFoundError:  # not built: the reference serves every call
    _COMPILED = False
except ImportError as error:  # built, but it cannot load (e.g. built against another torch)
    warnings.warn(f"tita_ext._C is built but cannot be loaded ({error}); using the pure-PyTorch reference. "
                  "Rebuild with `pip install --no-build-isolation -e .` against the installed torch.", stacklevel=2)
    _COMPILED = False

Backend = Optional[Literal["compiled", "cuda", "triton", "reference"]]
BACKENDS = ("compiled", "cuda", "triton", "reference")
Seed = Union[int, torch.Tensor, torch.Generator, None]

_SEED_HIGH = 2**62


def compiled_available(device: torch.device | str = "cpu") -> bool:
    """True when the compiled kernels are built for this device type."""
    device = torch.device(device)
    if not _COMPILED:
        return False
    if device.type == "cpu":
        return True
    return device.type == "cuda" and _compiled_cuda()


if _COMPILED:

    @torch.library.register_fake("tita::guided_sample")
    def _guided_sample_fake(base_logits, reward_logits, ref_logits, alpha, alpha_rows, temperature,
                            temperature_rows, top_k, top_k_rows, top_p, top_p_rows, min_p, min_p_rows,
                            plausibility, plausibility_rows, seed, offset, vocab_size):
        batch = base_logits.shape[0]
        new = base_logits.new_empty
        return (new((batch,), dtype=torch.int64), new((batch,), dtype=torch.float32),
                new((batch,), dtype=torch.float32), new((batch,), dtype=torch.int32))

    @torch.library.register_fake("tita::guided_logprobs")
    def _guided_logprobs_fake(base_logits, reward_logits, ref_logits, alpha, alpha_rows, temperature,
                              temperature_rows, top_k, top_k_rows, top_p, top_p_rows, min_p, min_p_rows,
                              plausibility, plausibility_rows, vocab_size):
        return base_logits.new_empty(base_logits.shape, dtype=torch.float32)


    logprobs_grad.register("tita::guided_logprobs")

    @torch.library.register_fake("tita::decode_advance")
    def _decode_advance_fake(sampled, finished, stop_ids, pad_id):
        batch = sampled.shape[0]
        return (sampled.new_empty((batch,)), sampled.new_empty((batch, 1)), finished.new_empty((batch,)),
                finished.new_empty(()))


def triton_available(device: torch.device | str = "cuda") -> bool:
    """True when the Triton twin can run on this device type: the triton package is installed
    and the device is CUDA, or the CPU with TRITON_INTERPRET=1 (Triton's interpreter)."""
    device = torch.device(device)
    if not (device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")):
        return False
    try:
        from . import triton_ops  # noqa: F401  (registers torch.ops.tita.*_triton)
    except ImportError:
        return False
    return True


def _resolve_backend(backend: Backend, device: torch.device) -> str:
    """The implementation a call uses: "compiled", "triton" or "reference" ("cuda" resolves to
    "compiled" for CUDA tensors). Raises ValueError for an unknown or unavailable backend."""
    device = torch.device(device)
    if backend is None:
        return "compiled" if compiled_available(device) else "reference"
    if backend == "reference":
        return backend
    if backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f"backend='cuda' needs CUDA tensors, got {device.type} tensors; use backend='compiled' "
                             "(the CPU kernel) or None")
        if not compiled_available(device):
            why = ("tita_ext._C is not built" if not _COMPILED else
                   "tita_ext._C was built without CUDA (rebuild with a CUDA torch and nvcc: "
                   "pip install --no-build-isolation -e .)")
            raise ValueError(f"backend='cuda' is not available: {why}; use backend='triton' or 'reference'")
        return "compiled"
    if backend == "triton":
        if not triton_available(device):
            raise ValueError(f"backend='triton' is not available for {device.type} tensors: it needs the triton "
                             "package (pip install triton) and CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors")
        return backend
    if backend == "compiled":
        if not compiled_available(device):
            detail = ("tita_ext._C is not built" if not _COMPILED else
                      "tita_ext._C was built without CUDA" if device.type == "cuda" else
                      f"no compiled kernel for {device.type}")
            raise ValueError(f"backend='compiled' is not available for {device.type} tensors ({detail}); "
                             "use backend='triton', backend='reference' or None")
        return backend
    raise ValueError(f"backend must be None, 'compiled', 'cuda', 'triton' or 'reference', got {backend!r}")


def sample_impl(resolved: str):
    """guided_sample's implementation for a resolved backend ("compiled", "triton", "reference"):
    a callable taking the op's positional arguments (schema order)."""
    if resolved == "compiled":
        return torch.ops.tita.guided_sample
    if resolved == "triton":
        return torch.ops.tita.guided_sample_triton
    return reference.guided_sample


def logprobs_impl(resolved: str):
    """guided_logprobs' implementation for a resolved backend (see sample_impl)."""
    if resolved == "compiled":
        return torch.ops.tita.guided_logprobs
    if resolved == "triton":
        return torch.ops.tita.guided_logprobs_triton
    return reference.guided_logprobs


def as_int64(value: int) -> int:
    """A Python int as the int64 with the same low 64 bits (seeds may be any 64-bit value)."""
    return (value + 2**63) % 2**64 - 2**63


def _op_args(base_logits, reward_logits, ref_logits, alpha, temperature, top_k, top_p, min_p, plausibility):
    """Checked positional arguments shared by both ops (logits, then scalar/per-row pairs)."""
    check.check_logits("base_logits", base_logits)
    check.check_logits("reward_logits", reward_logits, base_logits)
    if ref_logits is not None:
        check.check_logits("ref_logits", ref_logits, base_logits)
    args = [base_logits, reward_logits, ref_logits]
    for name, value in (("alpha", alpha), ("temperature", temperature), ("top_k", top_k), ("top_p", top_p),
                        ("min_p", min_p), ("plausibility", plausibility)):
        args.extend(check.param(name, value, base_logits))
    return args


@functools.lru_cache(maxsize=256)
def _constant(value: int, device: torch.device) -> torch.Tensor:
    """An int64 [1] tensor for a Python int seed/offset, made once per (value, device): the ops
    never write to it, and a CUDA copy per call would cost a host-device transfer."""
    return torch.tensor([value], dtype=torch.int64, device=device)


def _seed_offset(seed: Seed, offset: int | torch.Tensor, base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    device = base.device
    if seed is None or isinstance(seed, torch.Generator):
        # A fresh seed from torch's generator (the given one, or the device's default): no host sync.
        gen_device = seed.device if isinstance(seed, torch.Generator) else device
        seed_t = torch.randint(0, _SEED_HIGH, (1,), generator=seed, device=gen_device, dtype=torch.int64).to(device)
    elif isinstance(seed, torch.Tensor):
        seed_t = check.seed_tensor("seed", seed, base)
    elif isinstance(seed, int) and not isinstance(seed, bool):
        seed_t = _constant(as_int64(seed), device)  # the same 64 bits as int64
    else:
        raise TypeError(f"seed must be an int, an int64 tensor, a torch.Generator or None, got {type(seed).__name__}")
    if isinstance(offset, torch.Tensor):
        offset_t = check.seed_tensor("offset", offset, base)
    elif isinstance(offset, int) and not isinstance(offset, bool):
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        offset_t = _constant(offset, device)
    else:
        raise TypeError(f"offset must be an int or an int64 tensor, got {type(offset).__name__}")
    return seed_t, offset_t


def _may_sync() -> bool:
    """Eager status checks read a device value; never inside torch.compile or a CUDA graph capture."""
    if torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def _raise_on_bad_rows(op: str, status: torch.Tensor) -> None:
    bad = torch.nonzero(status != STATUS_OK).flatten().tolist()
    if not bad:
        return
    codes = status[bad].tolist()
    shown = ", ".join(f"row {r}: {STATUS_MEANING.get(c, c)}" for r, c in list(zip(bad, codes))[:8])
    more = f" (and {len(bad) - 8} more)" if len(bad) > 8 else ""
    raise ValueError(f"{op}: {len(bad)} row(s) cannot be sampled: {shown}{more}. Check those rows' logits "
                     "for NaN/-inf and their per-row parameters, or pass check_status=False to get "
                     "status codes (token -1) instead of this error")


def guided_sample(
    base_logits: torch.Tensor,
    reward_logits: torch.Tensor,
    ref_logits: torch.Tensor | None = None,
    *,
    alpha: check.Param = 0.6,
    temperature: check.Param = 1.0,
    top_k: check.Param = 0,
    top_p: check.Param = 1.0,
    min_p: check.Param = 0.0,
    plausibility: check.Param = 0.0,
    seed: Seed = None,
    offset: int | torch.Tensor = 0,
    vocab_size: int | None = None,
    backend: Backend = None,
    check_status: bool = True,
) -> GuidedSampleOutput:
    """Draw one token per row from the guided distribution, in one pass over the logits.

    Scores: s = log p_base + alpha * (log p_reward - log p_ref) (p_ref = p_base without
    ref_logits), then plausibility floor -> temperature -> top-k -> top-p -> min-p -> choose
    (greedy argmax when temperature is 0; else the Gumbel-max race over counter-based noise).

    Args:
        base_logits, reward_logits, ref_logits: [B, V] float32/float16/bfloat16, any strides,
            one device. Widths may differ: only ids below the narrowest width (and vocab_size)
            can be chosen.
        alpha, temperature, top_k, top_p, min_p, plausibility: a Python number for every row,
            or a per-row tensor/list of length B. temperature 0 means greedy; top_k 0, top_p 1,
            min_p 0 and plausibility 0 turn those filters off.
        seed: int, int64 tensor (1 value, or one per row), torch.Generator, or None (a seed
            drawn from torch's generator). Tensors keep the call graph-safe.
        offset: int or int64 tensor; the step counter of the noise (advance it per token).
        vocab_size: the tokenizer's true size, if smaller than the logits.
        backend: None (best available), "compiled", "cuda", "triton" or "reference".
        check_status: raise ValueError for rows that cannot be sampled (reads the status,
            a device sync; skipped automatically under torch.compile and CUDA graph capture).

    Returns:
        GuidedSampleOutput(tokens int64 [B], logprob float32 [B], token_reward float32 [B],
        status int32 [B]).
    """
    args = _op_args(base_logits, reward_logits, ref_logits, alpha, temperature, top_k, top_p, min_p, plausibility)
    seed_t, offset_t = _seed_offset(seed, offset, base_logits)
    vocab = check.vocab_size(vocab_size)
    out = sample_impl(_resolve_backend(backend, base_logits.device))(*args, seed_t, offset_t, vocab)
    result = GuidedSampleOutput(*out)
    if check_status and _may_sync():
        _raise_on_bad_rows("guided_sample", result.status)
    return result


def guided_logprobs(
    base_logits: torch.Tensor,
    reward_logits: torch.Tensor,
    ref_logits: torch.Tensor | None = None,
    *,
    alpha: check.Param = 0.6,
    temperature: check.Param = 1.0,
    top_k: check.Param = 0,
    top_p: check.Param = 1.0,
    min_p: check.Param = 0.0,
    plausibility: check.Param = 0.0,
    vocab_size: int | None = None,
    backend: Backend = None,
) -> torch.Tensor:
    """The filtered guided log-distribution, for logits processors and beam search.

    Same arguments and semantics as `guided_sample` (temperature 0 means the distribution at
    temperature 1). Returns float32 [B, V_base]: log-probabilities that sum to one over the
    allowed set, -inf elsewhere (and beyond the shared id range); a row that has no allowed
    token, a bad per-row parameter or an overflowing score (guided_sample's status 1, 2, 3) is
    all NaN. Differentiable on every backend with respect to the logits (the filters select the
    allowed set and carry no gradient; see tita_ext.logprobs_grad).
    """
    args = _op_args(base_logits, reward_logits, ref_logits, alpha, temperature, top_k, top_p, min_p, plausibility)
    vocab = check.vocab_size(vocab_size)
    return logprobs_impl(_resolve_backend(backend, base_logits.device))(*args, vocab)


def decode_advance(sampled: torch.Tensor, finished: torch.Tensor, stop_ids: torch.Tensor, pad_id: int,
                   *, backend: Backend = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A decode step's bookkeeping after `guided_sample`, in one op (see reference.decode_advance).

    Args:
        sampled: int64 [B], the step's tokens (-1 for rows that could not be sampled).
        finished: bool [B], rows that had stopped before this step.
        stop_ids: int64 [S], the ids that stop a row (EOS); may be empty.
        pad_id: the token of stopped rows, >= 0.

    Returns:
        (record int64 [B], feed int64 [B, 1], finished_after bool [B], all_finished bool []).
    """
    check.advance_args(sampled, finished, stop_ids, pad_id)
    return advance_impl(backend, sampled.device)(sampled, finished, stop_ids, pad_id)


def advance_impl(backend: Backend, device: torch.device):
    """The decode_advance implementation for a backend: the compiled op when the module has a
    kernel for this device type (CPU; CUDA when built with CUDA), else the reference (also for
    "triton": a few [B]-sized ops need no Triton twin)."""
    device = torch.device(device)
    if backend in ("compiled", "cuda"):
        _resolve_backend(backend, device)  # raises when nothing is compiled for this device
    if backend in (None, "compiled", "cuda") and compiled_available(device):
        return torch.ops.tita.decode_advance
    return reference.decode_advance


@functools.lru_cache(maxsize=1)
def _compiled_cuda() -> bool:
    """Whether tita_ext._C was built with its CUDA sources (then CUDA tensors use its kernels)."""
    if not _COMPILED:
        return False
    from . import _C

    return bool(_C.build_info().get("cuda"))
