"""Timing for the benchmarks: the median of interleaved runs, synchronised on CUDA.

Interleaving (a, b, a, b, ... rather than a, a, ..., b, b, ...) makes slow spells of a shared machine hit
every contender alike, so their ratio stays meaningful even when the absolute times drift.
"""

from __future__ import annotations

import statistics
import time

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA kernels: a CUDA call returns before its work is done, so a clock read right
    after it would time only the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_times(fns: list, repeats: int, device: torch.device, warmup: int = 1) -> list[float]:
    """Median seconds of each function over ``repeats`` runs, interleaving them run by run.

    Each function first runs ``warmup`` times untimed (caches, lookup tables, CUDA kernels' first launch).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]
