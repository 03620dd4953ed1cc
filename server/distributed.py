"""Several processes (GPUs or CPU sockets, one or many hosts) distilling one coreset together.

Launch any ``edgekws distill`` with ``torchrun``; every rank reads the same data and holds the same coreset::

    torchrun --nproc_per_node 4 -m edgekws.cli distill --dataset gsc --data-dir D --out runs/gsc

How the work is split (see :func:`edgekws.server.rfad.distill`): rank ``r`` owns the pool nets ``j`` with
``j % world == r``, computes and keeps the real-side features of those nets only, and per step pushes the coreset
through the sampled nets it owns. The partial kernels ``K_CC`` and ``K_BC`` are summed across ranks
(all-reduce), every rank solves the same small KRR system, and the coreset gradient contributions of the ranks'
nets are summed (all-reduce) before the identical Adam step on every rank. Each net's share is computed on its own
and the shares are summed in the order the nets were sampled, whichever rank computed them (the all-reduce only adds
zeros to each share), so the result equals the single-process run on the same seed bit for bit on the same machine
and thread count.

Backends: NCCL when CUDA is present (each rank takes ``cuda:LOCAL_RANK``), gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Comm", "TorchComm", "current_comm", "init_from_env"]


@dataclass
class Comm:
    """Single process: every collective is the identity."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks, in place; returns ``t``."""
        return t

    def owns(self, net_index: int) -> bool:
        """Whether this rank computes the pool net ``net_index``."""
        return net_index % self.world == self.rank


class TorchComm(Comm):
    """Collectives of the default ``torch.distributed`` process group."""

    def __init__(self) -> None:
        super().__init__(rank=dist.get_rank(), world=dist.get_world_size())

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def current_comm() -> Comm:
    """The communicator of the initialised process group, or a single-process one."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchComm()
    return Comm()


def init_from_env(backend: str | None = None) -> Comm:
    """Join the process group ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1), else stay alone.

    Picks NCCL with CUDA (and pins ``cuda:LOCAL_RANK``), gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return Comm()
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return current_comm()
