"""Several processes (``torchrun --nproc_per_node=N -m competition train-all ...``).

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` joins the process
group (nccl on CUDA, gloo on CPU). Each rank draws its own shard of every epoch's crops
(:class:`~competition.train.dataset.EpochSampler`), DistributedDataParallel averages the
gradients, and only rank 0 validates and writes files; the others wait at a barrier.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world`` (``local_rank`` on its machine)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """Read torchrun's environment (single process when unset)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: torch.device, info: DistInfo | None = None, *, init_method: str | None = None
          ) -> tuple[DistInfo, torch.device]:
    """Join the process group when ``world > 1``; pick this rank's GPU; split CPU threads.

    Args:
        device: the resolved device (``cuda`` becomes ``cuda:<local_rank>``).
        info: defaults to :func:`from_env`.
        init_method: e.g. ``file:///tmp/x`` for tests; default ``env://`` (torchrun).

    Returns:
        (info, device for this rank).
    """
    info = info or from_env()
    if not info.enabled:
        return info, device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", info.world))
        torch.set_num_threads(max((os.cpu_count() or 1) // local_world, 1))
        backend = "gloo"
    if not dist.is_initialized():
        # Rank 0 validates alone while the others wait: allow long barriers.
        dist.init_process_group(backend, init_method=init_method or "env://", rank=info.rank,
                                world_size=info.world, timeout=datetime.timedelta(hours=3))
    log.info("rank %d of %d on %s (%s)", info.rank, info.world, device, backend)
    return info, device


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one process)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()


def all_true(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank only when ``flag`` is true on every rank."""
    if not (info.enabled and dist.is_initialized()):
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() == 0.0)


def mean_over_ranks(value: float, info: DistInfo, device: torch.device) -> float:
    """Average a float over ranks."""
    if not (info.enabled and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64 if device.type == "cpu" else torch.float32,
                     device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank."""
    if not (info.enabled and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device, *,
         find_unused: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when ``world > 1``.

    ``find_unused`` is needed when part of the network is frozen for some epochs.
    """
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def cleanup(info: DistInfo) -> None:
    """Leave the process group."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
