"""Several processes training one adapter: data parallel (DDP) under ``torchrun`` or ``accelerate launch``.

Both launchers start N copies of the same command and tell each one who it is through environment
variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); the transformers
``Trainer`` reads them, wraps the model in PyTorch's ``DistributedDataParallel``, gives each process its
shard of every batch and averages the gradients. What is left to the job is what only one process should
do: evaluate, print, write the adapter and the report (rank 0), while the others wait.

``--batch-size`` stays the *global* batch, whatever the number of processes: each process takes
``batch_size / world_size`` examples a step, so a run on 2 processes sees the same examples per optimizer
step as a run on 1, and its losses agree with it up to float rounding.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def world_size() -> int:
    """How many processes train together: ``WORLD_SIZE`` as torchrun and accelerate launch set it, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's number among them, 0 to world_size - 1 (``RANK``); 0 when launched alone."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True for the one process that evaluates and writes files (rank 0)."""
    return rank() == 0


class BatchSplitError(ValueError):
    """The global batch does not split evenly over the processes; the message names ``--batch-size``."""


def per_process_batch(global_batch: int, processes: int | None = None) -> int:
    """The examples each process takes a step so that together they make ``global_batch``.

    Raises BatchSplitError naming ``--batch-size`` when ``global_batch`` does not split evenly: rounding
    it would silently change the batch, and with it the learning dynamics, from the one-process run.
    """
    processes = world_size() if processes is None else processes
    if global_batch % processes:
        raise BatchSplitError(
            f"--batch-size {global_batch} is the global batch and must split evenly over the {processes} "
            f"processes; choose a multiple of {processes}"
        )
    return global_batch // processes


def ddp_backend(device_type: str) -> str | None:
    """The collective-communication library: gloo on CPUs (NCCL needs CUDA), the launcher's default on GPUs."""
    return "gloo" if device_type == "cpu" and world_size() > 1 else None


def start(device_type: str) -> None:
    """Join the other processes (a no-op when launched alone), so that rank 0 can make them wait.

    On GPUs each process takes the GPU of its ``LOCAL_RANK`` first, so that a model loaded on "cuda"
    lands on that process's own GPU. The time-out is long because the others wait while rank 0 evaluates.
    """
    if world_size() == 1 or dist.is_initialized():
        return
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=ddp_backend(device_type) or "nccl", timeout=timedelta(hours=2))


def wait_for_everyone() -> None:
    """Block until every process gets here (a no-op when launched alone)."""
    if dist.is_initialized():
        dist.barrier()


def finish() -> None:
    """Leave the process group cleanly, so that PyTorch does not warn of a leaked one at exit."""
    if dist.is_initialized():
        dist.destroy_process_group()
