"""Data-parallel plumbing on Paddle's own launcher (``python -m paddle.distributed.launch``).

The launcher starts one process per device (``--nproc_per_node N``; ``--nnodes``/``--master`` for several
machines) and tells each its rank through ``PADDLE_TRAINER_ID`` / ``PADDLE_TRAINERS_NUM``. Nothing here starts
processes: :func:`init_distributed` only joins the group the launcher set up (gloo on CPU, NCCL on GPUs), so the
same training script runs alone or under the launcher unchanged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, List

import numpy as np
import paddle

__all__ = ["DistributedContext", "init_distributed", "all_gather_rows", "barrier", "broadcast_object"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job.

    Attributes:
        rank: global rank, 0 for a single process.
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs, writes checkpoints and exports."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when there is more than one process."""
        return self.world_size > 1


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def init_distributed() -> DistributedContext:
    """Join the process group the launcher prepared (idempotent); a plain ``python`` run gets rank 0 of 1."""
    world = _env_int("PADDLE_TRAINERS_NUM", "WORLD_SIZE", default=1)
    if world <= 1:
        return DistributedContext()
    if not paddle.distributed.is_initialized():
        paddle.distributed.init_parallel_env()
    ctx = DistributedContext(rank=paddle.distributed.get_rank(), world_size=paddle.distributed.get_world_size(),
                             local_rank=_env_int("PADDLE_LOCAL_RANK", "LOCAL_RANK", default=0))
    logger.debug("joined the process group: rank %d of %d", ctx.rank, ctx.world_size)
    return ctx


def all_gather_rows(array: np.ndarray, ctx: DistributedContext) -> np.ndarray:
    """Concatenate every rank's ``[n, ...]`` array in rank order (all ranks must pass the same shape).

    Returns:
        ``[world_size * n, ...]`` on every rank; the input itself when not distributed.
    """
    if not ctx.enabled:
        return array
    tensors: List[paddle.Tensor] = []
    paddle.distributed.all_gather(tensors, paddle.to_tensor(np.ascontiguousarray(array)))
    return np.concatenate([t.numpy() for t in tensors], axis=0)


def broadcast_object(obj: Any, ctx: DistributedContext, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; use for small things such as metrics)."""
    if not ctx.enabled:
        return obj
    holder = [obj]
    paddle.distributed.broadcast_object_list(holder, src=src)
    return holder[0]


def barrier(ctx: DistributedContext) -> None:
    """Wait for every rank (no-op for a single process)."""
    if ctx.enabled:
        paddle.distributed.barrier()
