"""Wall-clock timing: warm-up runs, then the median (and spread) of timed runs.

``time.perf_counter`` around each run; on CUDA the device is synchronized before the clock
is read at both ends, so queued kernels are counted where they belong. Warm-up runs (first
calls allocate, pick kernels, compile) are not timed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class Measurement:
    """One metric: per-run values (``unit`` per run, e.g. ms per training step) and their summary.

    Attributes:
        unit: ``s``, ``ms`` or a rate such as ``samples/s``.
        values: one value per timed run.
        calls_per_run: calls averaged inside each timed run (a run of 10 training steps gives
            the mean step of those 10).
        n_envs: environments planned for (plan metrics), else None.
        batch: the network's batch (denoiser forwards, training), else None.
        note: what was timed, in words.
    """

    unit: str
    values: list[float]
    calls_per_run: int = 1
    n_envs: int | None = None
    batch: int | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        extra = out.pop("extra")
        out.update(median=self.median, min=self.min, max=self.max, repeats=len(self.values))
        out.update(extra)
        return out


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA); a no-op elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(
    run: Callable[[], Any], *, repeats: int, warmup: int, device: torch.device, calls: int = 1
) -> list[float]:
    """Seconds per call of ``run``: ``warmup`` untimed calls, then ``repeats`` timed runs of
    ``calls`` calls each (a run's value is its time divided by ``calls``)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        run()
    synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            run()
        synchronize(device)
        times.append((time.perf_counter() - start) / calls)
    return times


def time_alternating(
    runs: dict[str, Callable[[], Any]], *, repeats: int, warmup: int, device: torch.device, scale: float = 1.0
) -> dict[str, dict[str, float]]:
    """Median, min and max (seconds x ``scale``) of each of ``runs``, timed in turns: every
    repeat calls each run once, so a drift of the machine's speed during the measurement
    falls on all of them alike (compare variants this way, not in separate runs)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(scale * (time.perf_counter() - start))
    return {name: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
            for name, v in times.items()}
