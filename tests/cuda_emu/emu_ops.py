"""The fused CUDA kernels on the CPU emulation (emu.h + harness.cpp), callable like the ops.

`build()` compiles harness.cpp with the host compiler into a shared library (cached under the
temp directory by a hash of every source it includes); `guided_sample(...)` and
`guided_logprobs(...)` take the registered ops' positional arguments (schema order) plus
`sm_count`, the multiprocessor count the launch plan assumes (132: an H100; 1: forces the
large-work plan of 3-chunk slices).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
from typing import NamedTuple

import torch

from tita_ext import reference

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
THREADS = 64  # emulated threads per block by default (the GPU runs 256): cheaper, and more slices per row
# -fno-gnu-unique: the 64- and 256-thread builds are loaded into one process, and GCC would
# otherwise bind their inline statics (the block barrier, blockIdx) process-wide as
# STB_GNU_UNIQUE symbols, so the second build would run on the first one's 64-thread barrier.
FLAGS = ["-O2", "-std=c++20", "-pthread", "-ffp-contract=off", "-fPIC", "-shared", "-fno-gnu-unique"]
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _sources() -> list[str]:
    return sorted(glob.glob(os.path.join(HERE, "*.h")) + [os.path.join(HERE, "harness.cpp")]
                  + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cuh")) + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.h"))
                  + glob.glob(os.path.join(ROOT, "csrc", "common", "*.h")))


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


@functools.lru_cache(maxsize=2)
def build(threads: int = THREADS) -> ctypes.CDLL:
    """The emulation with `threads` threads per block (256: the GPU's block size)."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++ or $CXX) to build the CUDA emulation")
    flags = FLAGS + [f"-DTITA_CUDA_EMU_THREADS={threads}"]
    digest = hashlib.sha256(" ".join(flags).encode())
    for path in _sources():
        with open(path, "rb") as f:
            digest.update(path.encode() + f.read())
    lib_path = os.path.join(tempfile.gettempdir(), f"tita_cuda_emu_{digest.hexdigest()[:16]}.so")
    if not os.path.exists(lib_path):
        tmp = f"{lib_path}.{os.getpid()}.tmp"
        cmd = [cxx, *flags, f"-I{HERE}", os.path.join(HERE, "harness.cpp"), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"building the CUDA emulation failed:\n{' '.join(cmd)}\n{done.stderr[-4000:]}")
        os.replace(tmp, lib_path)
    lib = ctypes.CDLL(lib_path)
    lib.emu_guided.restype = ctypes.c_int
    lib.emu_counters.restype = None
    lib.emu_scratch_bytes.restype = ctypes.c_int64
    for name in ("emu_reach_violations", "emu_reach_passing"):
        getattr(lib, name).restype = ctypes.c_int64
        getattr(lib, name).argtypes = [ctypes.c_float]
    return lib


# RowPath codes (csrc/cuda/guided_common.cuh) and the reads of its row each path makes.
PATHS = {1: "dense", 2: "candidates", 3: "threshold", 4: "histogram", 5: "general", 6: "status", 7: "bins",
         8: "bins_refined"}
READS = {"dense": 1, "candidates": 1, "threshold": 2, "histogram": 3, "status": 1, "bins": 1,
         "bins_refined": 1}  # general: unbounded


class Cost(NamedTuple):
    """What the last emulated call cost: global-memory bytes loaded and stored, the path of each
    row (int32 [B], PATHS codes), the plan's chunks per thread, the bytes loaded per load width and
    the launch's scratch bytes."""

    loaded: int
    stored: int
    paths: torch.Tensor
    chunks: int
    widths: tuple[int, ...]  # bytes loaded by 2-, 4-, 8-, 16-byte loads and others
    scratch: int

    def loaded_by_width(self, width: int) -> int:
        return self.widths[{2: 0, 4: 1, 8: 2, 16: 3}[width]]

    def path_names(self) -> list[str]:
        return [PATHS.get(int(p), "none") for p in self.paths]


last_cost: Cost | None = None


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else None)


def _run(choose: bool, args: tuple, seed, offset, vocab_size: int, sm_count: int, out_width: int, threads: int):
    (base, reward, ref, alpha, alpha_rows, temperature, temperature_rows, top_k, top_k_rows, top_p, top_p_rows,
     min_p, min_p_rows, plausibility, plausibility_rows) = args
    batch = base.shape[0]
    vocab = reference.shared_vocab(base, reward, ref, vocab_size)
    inputs = (base, reward, ref)
    logits = (ctypes.c_void_p * 3)(*[_ptr(t) for t in inputs])
    dtypes = (ctypes.c_int * 3)(*[DTYPE_CODE[t.dtype] if t is not None else 0 for t in inputs])
    geometry = (ctypes.c_int64 * 9)(*[v for t in inputs for v in ((t.stride(0), t.stride(1), t.shape[1])
                                                                   if t is not None else (0, 1, 0))])
    scalars = (ctypes.c_double * 5)(alpha, temperature, top_p, min_p, plausibility)
    row_tensors = (alpha_rows, temperature_rows, top_k_rows, top_p_rows, min_p_rows, plausibility_rows)
    rows = (ctypes.c_void_p * 6)(*[_ptr(t) for t in row_tensors])
    if seed is None:
        seed = offset = torch.zeros(1, dtype=torch.int64)
    seed_per_row = int(seed.numel() == batch and batch != 1)
    tokens = torch.full((batch,), -7, dtype=torch.int64)
    logprob = torch.full((batch,), 7.0)
    token_reward = torch.full((batch,), 7.0)
    status = torch.full((batch,), 7, dtype=torch.int32)
    out = torch.full((batch, max(out_width, 1)), 7.0)
    chunks = build(threads).emu_guided(
        ctypes.c_int(int(choose)), ctypes.c_int(sm_count), logits, dtypes, geometry, ctypes.c_int64(batch),
        ctypes.c_int64(vocab), scalars, ctypes.c_int64(top_k), rows, _ptr(seed), ctypes.c_int64(seed.numel()),
        _ptr(offset), ctypes.c_int64(offset.numel()), ctypes.c_int(seed_per_row), _ptr(tokens), _ptr(logprob),
        _ptr(token_reward), _ptr(status), _ptr(out), ctypes.c_int64(out_width))
    if chunks < 0:
        raise ValueError("the emulated launcher refused its arguments")
    loaded, stored = ctypes.c_int64(), ctypes.c_int64()
    paths = torch.zeros(batch, dtype=torch.int32)
    build(threads).emu_counters(ctypes.byref(loaded), ctypes.byref(stored), _ptr(paths), ctypes.c_int64(batch))
    widths = (ctypes.c_int64 * 5)()
    build(threads).emu_load_widths(widths)
    global last_cost
    last_cost = Cost(loaded.value, stored.value, paths, chunks, tuple(widths), build(threads).emu_scratch_bytes())
    return (tokens, logprob, token_reward, status), out


def guided_sample(*args, sm_count: int = 132, threads: int = THREADS):
    """torch.ops.tita.guided_sample's positional arguments (CPU tensors), run on the emulation."""
    *op_args, seed, offset, vocab_size = args
    outputs, _ = _run(True, tuple(op_args), seed.contiguous(), offset.contiguous(), vocab_size, sm_count, 0, threads)
    return outputs


def guided_logprobs(*args, sm_count: int = 132, threads: int = THREADS):
    """torch.ops.tita.guided_logprobs' positional arguments (CPU tensors), run on the emulation."""
    *op_args, vocab_size = args
    _, out = _run(False, tuple(op_args), None, None, vocab_size, sm_count, args[0].shape[1], threads)
    return out
