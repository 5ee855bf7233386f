"""Scale-out of the evaluation: split the questions over the processes of a launcher and gather
the answers back, so that the metrics are computed once, over every question, in the file's order.

Run any evaluation under an existing launcher; nothing else changes:

    torchrun --nproc_per_node 4 -m tita_ext eval-pope --base B --reward R --data D --device auto
    accelerate launch --multi_gpu --num_processes 4 -m tita_ext eval-pope --base B --reward R --data D --device auto

Both launchers set RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR / MASTER_PORT) in each
process's environment; `detect_shard` reads them into a `Shard` (rank 0 of 1 without a launcher).
`shard_questions` gives each rank its share of a split (every question exactly once over the
ranks, with its index in the split), `gather_answers` brings the per-rank answers onto every rank
(or rank 0) in the original order with `torch.distributed.all_gather_object` (the process group is
started with the gloo backend, on CPU, when WORLD_SIZE > 1 and none exists yet; an existing NCCL
group gets a gloo side group for the Python objects). Each rank's models go to `Shard.device`:
cuda:LOCAL_RANK when CUDA is available, else the CPU.

A base model too big for one GPU is sharded over the visible GPUs by Hugging Face's device_map
(`tita-ext eval-pope --device-map auto`): see `tita_ext.eval.cli_pope`. Under a launcher with
several processes each rank then takes its own contiguous group of the visible GPUs
(`rank_gpus`), so 8 GPUs with 2 processes give each process a model sharded over 4 GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence, TypeVar

import torch

T = TypeVar("T")

__all__ = ["Shard", "detect_shard", "shard_indices", "shard_questions", "gather_answers", "ensure_process_group",
           "close_process_group", "rank_gpus"]


@dataclass(frozen=True)
class Shard:
    """This process's place among the launcher's processes: `rank` of `world_size` (global), and
    `local_rank` on its machine (which GPU it drives)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be at least 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        if self.local_rank < 0:
            raise ValueError(f"local_rank must be at least 0, got {self.local_rank}")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints, draws progress bars and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self) -> torch.device:
        """cuda:LOCAL_RANK when CUDA is available, else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % max(torch.cuda.device_count(), 1))
        return torch.device("cpu")


def detect_shard(environ: Mapping[str, str] | None = None) -> Shard:
    """The `Shard` that torchrun / accelerate launch describe in the environment (RANK,
    WORLD_SIZE, LOCAL_RANK; LOCAL_RANK defaults to RANK); rank 0 of 1 without them."""
    env = os.environ if environ is None else environ
    try:
        world_size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as error:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {error}") from None
    return Shard(rank=rank, world_size=world_size, local_rank=local_rank)


Mode = Literal["strided", "contiguous"]


def shard_indices(count: int, shard: Shard, mode: Mode = "strided") -> list[int]:
    """The indices in range(count) that `shard` answers. "strided": rank, rank + W, rank + 2W, ...
    (like torch's DistributedSampler without padding); "contiguous": one block per rank, the
    first count % W ranks one longer. Either way the ranks' lists are disjoint, cover every index
    once and differ in length by at most one; a rank may get none (count < W)."""
    if count < 0:
        raise ValueError(f"count must be at least 0, got {count}")
    if mode == "strided":
        return list(range(shard.rank, count, shard.world_size))
    if mode == "contiguous":
        size, extra = divmod(count, shard.world_size)
        start = shard.rank * size + min(shard.rank, extra)
        return list(range(start, start + size + (1 if shard.rank < extra else 0)))
    raise ValueError(f"mode must be 'strided' or 'contiguous', got {mode!r}")


def shard_questions(questions: Sequence[T], shard: Shard, mode: Mode = "strided") -> list[tuple[int, T]]:
    """This rank's questions as (index in `questions`, question) pairs, in order (see `shard_indices`)."""
    return [(index, questions[index]) for index in shard_indices(len(questions), shard, mode)]


# --------------------------------------------------------------------------- process group

_GLOO_GROUP: Any = None
_STARTED_HERE = False


def ensure_process_group(shard: Shard) -> Any:
    """The process group to gather Python objects over (None when not distributed). Starts the
    default group with the gloo backend (env:// rendezvous: MASTER_ADDR, MASTER_PORT from the
    launcher) when WORLD_SIZE > 1 and none is initialised; a group the caller started with
    another backend (NCCL) gets a gloo side group, made once."""
    global _GLOO_GROUP, _STARTED_HERE
    if not shard.distributed:
        return None
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", rank=shard.rank, world_size=shard.world_size)
        _STARTED_HERE = True
    if dist.get_world_size() != shard.world_size or dist.get_rank() != shard.rank:
        raise RuntimeError(f"the process group is rank {dist.get_rank()} of {dist.get_world_size()} but the shard "
                           f"is rank {shard.rank} of {shard.world_size}")
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    if _GLOO_GROUP is None:
        _GLOO_GROUP = dist.new_group(backend="gloo")
    return _GLOO_GROUP


def close_process_group() -> None:
    """Destroy the process group if `ensure_process_group` started it (a caller's own is left)."""
    global _GLOO_GROUP, _STARTED_HERE
    if _STARTED_HERE:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        _STARTED_HERE = False
        _GLOO_GROUP = None


def gather_answers(local: Sequence[tuple[int, T]], shard: Shard, count: int, *,
                   to: Literal["all", "main"] = "all") -> list[T] | None:
    """Every rank's (index, answer) pairs put back in order: a list of `count` answers, the one of
    index i at position i. With `to="all"` every rank gets it (all_gather_object); with
    `to="main"` rank 0 does and the others get None (gather_object). Raises if an index is
    missing, repeated or out of range. Without a launcher it only orders `local`.
    Every rank must call it (it is a collective)."""
    if shard.distributed:
        import torch.distributed as dist

        group = ensure_process_group(shard)
        if to == "all":
            parts: list[Any] = [None] * shard.world_size
            dist.all_gather_object(parts, list(local), group=group)
        elif to == "main":
            parts = [None] * shard.world_size if shard.is_main else None
            dist.gather_object(list(local), parts, dst=0, group=group)
            if not shard.is_main:
                return None
        else:
            raise ValueError(f"to must be 'all' or 'main', got {to!r}")
        pairs = [pair for part in parts for pair in part]
    else:
        pairs = list(local)
    ordered: list[Any] = [None] * count
    seen = [False] * count
    for index, answer in pairs:
        if not 0 <= index < count:
            raise ValueError(f"answer index {index} is outside [0, {count})")
        if seen[index]:
            raise ValueError(f"question {index} was answered twice")
        seen[index], ordered[index] = True, answer
    missing = [i for i, done in enumerate(seen) if not done]
    if missing:
        raise ValueError(f"{len(missing)} question(s) have no answer, the first {missing[:5]}")
    return ordered


# --------------------------------------------------------------------------- model sharding

def rank_gpus(shard: Shard, gpu_count: int | None = None, local_world_size: int | None = None) -> list[int]:
    """The visible GPUs this rank may shard its model over with device_map: all of them in one
    process; with W processes on a machine, the LOCAL_RANK-th of W contiguous groups of
    gpu_count // W GPUs (an error with fewer GPUs than processes). The local process count is
    `local_world_size`, else LOCAL_WORLD_SIZE (set by torchrun and accelerate), else WORLD_SIZE."""
    count = torch.cuda.device_count() if gpu_count is None else gpu_count
    local_world = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", shard.world_size))
    if local_world <= 1:
        return list(range(count))
    per_rank = count // local_world
    if per_rank < 1:
        raise ValueError(f"{count} visible GPU(s) cannot be split over {local_world} processes per machine; "
                         "run fewer processes, or no device_map (one GPU per process)")
    return list(range(shard.local_rank * per_rank, (shard.local_rank + 1) * per_rank))
