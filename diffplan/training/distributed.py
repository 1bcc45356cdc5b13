"""Multi-process data-parallel training under ``torchrun`` (PyTorch DDP).

``torchrun --nproc-per-node N -m diffplan.cli.train ...`` starts N copies of the command with
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set; :func:`session` joins them into one process
group (gloo on CPU, nccl on CUDA, where rank r uses ``cuda:LOCAL_RANK``). Without torchrun
(or with one process) nothing here does anything: every helper returns its input or a no-op,
so a single process trains exactly as it always did.

How the trainers use it (:mod:`diffplan.training.trainer`, :mod:`diffplan.training.value_trainer`,
:class:`diffplan.training.loop.TrainingLoop`):

* every rank holds the same generator and draws the full global batch (``batch_size`` windows,
  levels, noise: the draws of a single process), then keeps its contiguous slice
  (:func:`batch_part`), so the random stream, checkpoints and resumes are those of one process;
* the forward pass goes through :func:`wrap` (``DistributedDataParallel``), whose backward
  averages the gradients over ranks before ``optimizer_step`` clips them; a rank's mean loss
  is rescaled by :func:`loss_scale` so that the average is the gradient of the global mean;
* identical averaged gradients give identical weights, optimizer states and EMAs on every rank;
* only rank 0 (:func:`is_main`) writes checkpoints and TensorBoard scalars and shows progress.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn

from diffplan.utils import select_device

log = logging.getLogger(__name__)


def env_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """This process's rank as torchrun set it (``RANK``; 0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Processes training together (1 outside a process group)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """True on the process that writes checkpoints, logs and progress (rank 0)."""
    return rank() == 0


def _collective_device() -> torch.device:
    """Where the tensors of a collective must live: the local GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


@contextmanager
def session(device: str) -> Iterator[None]:
    """Join torchrun's process group for the duration of a command (nothing without torchrun).

    Args:
        device: the command's device setting (``train.device``, ``value.device``): the backend is
            nccl when it resolves to CUDA (each rank on ``cuda:LOCAL_RANK``), else gloo.
    """
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        yield
        return
    cuda = select_device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    log.info("process group of %d processes (%s backend)", dist.get_world_size(), dist.get_backend())
    try:
        yield
        barrier()
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (no-op in one process)."""
    if not active():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[local_rank()])
    else:
        dist.barrier()


def place(device: torch.device) -> torch.device:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` for CUDA in a process group, else ``device``."""
    if not active() or device.type != "cuda":
        return device
    local = torch.device("cuda", local_rank())
    if device.index is not None and device.index != local.index:
        log.warning("device %s ignored under torchrun: rank %d uses %s", device, rank(), local)
    return local


def batch_part(batch_size: int, key: str) -> slice | None:
    """This rank's contiguous slice of a global batch of ``batch_size`` (None in one process).

    Raises:
        ValueError: ``batch_size`` is not divisible by the world size (names ``key`` and the fix).
    """
    n = world_size()
    if n == 1:
        return None
    if batch_size % n:
        raise ValueError(
            f"{key}={batch_size} is not divisible by the world size {n} (torchrun --nproc-per-node); "
            f"set {key} to a multiple of {n}, e.g. {key}={max(n, batch_size // n * n)}"
        )
    size = batch_size // n
    return slice(rank() * size, (rank() + 1) * size)


def loss_scale(counts: Tensor, part: slice) -> float:
    """The factor that makes a rank's masked mean loss average into the global masked mean.

    A rank's loss is ``sum_r / max(c_r, 1)`` over its ``c_r`` kept entries; DDP averages the
    gradients of the ``W`` ranks. Scaling each loss by ``W * max(c_r, 1) / max(C, 1)``, with
    ``C`` the kept entries of the global batch, makes that average the gradient of
    ``sum / max(C, 1)``: the single-process loss of the full batch, even when the ranks keep
    different numbers of entries (invalid tokens, masked pairs).

    Args:
        counts: (B,) kept entries of each sample of the global batch (every rank holds it).
        part: this rank's slice (:func:`batch_part`).
    """
    total = max(float(counts.sum()), 1.0)
    local = max(float(counts[part].sum()), 1.0)
    return world_size() * local / total


def wrap(module: nn.Module) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` in a process group, ``module`` itself otherwise.

    DDP broadcasts rank 0's weights and buffers at construction and averages the gradients over
    the ranks during ``backward`` (bucketed all-reduces overlapping the backward pass), so the
    gradients are averaged before ``optimizer_step`` clips them. Every parameter of the package's
    networks takes part in every forward pass (a dropped return condition selects the null
    embedding with ``torch.where``, which still reaches both), so ``find_unused_parameters`` stays
    off: a network with a parameter some step does not use makes DDP fail with a message naming it.
    """
    if not active():
        return module
    device = next(module.parameters()).device
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def mean(values: Sequence[float]) -> list[float]:
    """The mean of each value over the ranks (one all-reduce; the values themselves in one process)."""
    if not active() or not values:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return (tensor / world_size()).tolist()


def from_main(values: Sequence[float]) -> list[float]:
    """Rank 0's values on every rank (one broadcast; the values themselves in one process)."""
    if not active() or not values:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.broadcast(tensor, src=0)
    return tensor.tolist()
