"""Reference figures the benchmark compares with, and the speed targets.

Measured with the reference Diffuser code (Janner et al. 2022, its own scripts and configs at
the shapes of the ``reference-hopper`` and ``reference-umaze`` presets), median of runs on a
quiet machine: on a 2-core x86 CPU of the
kind this project runs on (torch's 2 threads), and on one NVIDIA H200.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReferenceFigure:
    """One figure of the reference implementation: ``value`` in ``unit`` for a metric."""

    value: float
    unit: str
    what: str


#: Reference figures by hardware kind, preset and metric (reference Diffuser code, median of
#: runs, quiet machine).
REFERENCE_FIGURES: dict[str, dict[str, dict[str, ReferenceFigure]]] = {
    # A 2-core x86 CPU, torch's 2 threads.
    "cpu-2core": {
        "reference-hopper": {
            "plan_guided": ReferenceFigure(2.20, "s", "value-guided plan, 64 candidates, DDPM 20, 2 guide steps"),
            "plan_unguided": ReferenceFigure(0.65, "s", "unguided plan, 64 candidates, DDPM 20"),
            "train_step": ReferenceFigure(83.0, "ms", "training step at batch 32"),
        },
        "reference-umaze": {
            "train_step": ReferenceFigure(179.0, "ms", "training step at batch 32"),
            "plan": ReferenceFigure(2.1, "s", "goal-inpainted plan for 16 environments, DDPM 64"),
        },
    },
    # One NVIDIA H200.
    "h200": {
        "reference-hopper": {
            "plan_guided": ReferenceFigure(0.55, "s", "value-guided plan, 64 candidates, DDPM 20, 2 guide steps"),
            "plan_unguided": ReferenceFigure(0.12, "s", "unguided plan, 64 candidates, DDPM 20"),
            "train_step": ReferenceFigure(22.0, "ms", "training step at batch 32"),
        },
    },
}


@dataclass(frozen=True)
class Target:
    """A speed target: the median of ``metric`` of ``preset`` at most ``limit`` ``unit``, on ``hardware``."""

    preset: str
    metric: str
    limit: float
    unit: str
    hardware: str


#: The headline targets (2 CPU cores): twice as fast as the reference Diffuser code.
TARGETS: tuple[Target, ...] = (
    Target("reference-hopper", "plan_guided", 1.1, "s", "cpu-2core"),
    Target("reference-hopper", "train_step", 40.0, "ms", "cpu-2core"),
)


def reference_kind(device_type: str) -> str:
    """Which figures a run on ``device_type`` is compared with: the CPU's on a CPU, the H200's on CUDA."""
    return "h200" if device_type == "cuda" else "cpu-2core"
