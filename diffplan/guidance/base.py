"""Guides: differentiable objectives that steer denoising (classifier guidance).

A guide looks at the current normalized sample x (B, H, D) together with its per-token noise
levels (B, H), normalized to [0, 1] like the denoiser's input, and returns the gradient of
its objective with respect to x (same shape) and the objective per sample (B,) for ranking
candidates. :class:`Guidance` bundles a guide with its strength and schedule over the
denoising steps; :meth:`diffplan.diffusion.sampler.Sampler.sample` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, Protocol

import torch
from torch import Tensor


class GuideTarget(StrEnum):
    """What the guide's gradient moves at each denoising step.

    - ``x_t``: the noisy sample, evaluated at its noise level (Diffuser).
    - ``x0``: the denoiser's x0 estimate, evaluated at level 0; the reverse update then uses
      the moved estimate.
    """

    x_t = "x_t"
    x0 = "x0"


class GuideOutput(NamedTuple):
    """Gradient (B, H, D) of the objective with respect to the sample, and the objective (B,)."""

    gradient: Tensor
    value: Tensor


class Guide(Protocol):
    """An objective to maximise over normalized trajectories."""

    def gradient(self, x: Tensor, levels: Tensor) -> GuideOutput:
        """Gradient of the objective at x (B, H, D) with levels (B, H) in [0, 1], and the objective (B,)."""
        ...

    def objective(self, x: Tensor, levels: Tensor) -> Tensor:
        """The objective (B,) alone (no gradient), e.g. to rank finished candidates at level 0."""
        ...


class ConstantGuide:
    """A guide with no preference: zero gradient and zero objective for every sample.

    For planners that take a guide but should neither steer nor rank (unguided sampling,
    one candidate, no value function); ranking ties pick the first candidate.
    """

    def gradient(self, x: Tensor, levels: Tensor) -> GuideOutput:
        return GuideOutput(torch.zeros_like(x), x.new_zeros(x.shape[0]))

    def objective(self, x: Tensor, levels: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0])


@dataclass(frozen=True)
class Guidance:
    """A guide and how the sampler applies it (Diffuser's ``n_guided_steps`` loop).

    At every row of the scheduling matrix, ``n_guide_steps`` times: take the guide's gradient,
    multiply it by the posterior variance of the step if ``scale_grad_by_std``, zero it for
    inpainted entries, for tokens whose level does not change in this row and for tokens at
    level ``<= t_stopgrad`` (the last ``t_stopgrad`` levels run unguided), and add
    ``scale`` times it to the guided tensor (``apply_to``).

    Args:
        guide: the objective.
        scale: step size of each gradient step (0 reproduces unguided sampling exactly).
        n_guide_steps: gradient steps per denoising row (>= 1).
        t_stopgrad: no guidance for tokens whose level is at most this (>= 0).
        scale_grad_by_std: multiply the gradient by the step's posterior variance.
        apply_to: guide the noisy sample or the x0 estimate.
    """

    guide: Guide
    scale: float = 0.1
    n_guide_steps: int = 2
    t_stopgrad: int = 2
    scale_grad_by_std: bool = True
    apply_to: GuideTarget = GuideTarget.x_t

    def __post_init__(self) -> None:
        if self.n_guide_steps < 1:
            raise ValueError(f"guidance.n_guide_steps must be >= 1, got {self.n_guide_steps}")
        if self.t_stopgrad < 0:
            raise ValueError(f"guidance.t_stopgrad must be >= 0, got {self.t_stopgrad}")
        object.__setattr__(self, "apply_to", GuideTarget(self.apply_to))
