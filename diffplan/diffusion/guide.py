"""Guides: differentiable objectives that steer denoising (classifier guidance).

A guide looks at the current normalized sample x (B, H, D) together with its per-token noise
levels (B, H), normalized to [0, 1] like the denoiser's input, and returns the gradient of
its objective with respect to x (same shape) and the objective per sample (B,) for ranking
candidates. :class:`Guidance` bundles a guide with its strength and schedule over the
denoising steps (:class:`GuidanceSchedule`, :func:`schedule_coefficient`);
:meth:`diffplan.diffusion.sampler.Sampler.sample` applies it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from diffplan.enums import GuidanceSchedule, GuideTarget

#: Weight of the sine bump of the ``pgd`` schedule (the official code's ``policy_guidance_cosine_coeff``
#: default); 0 gives ``c = level_from / T`` with no guidance on the final step.
PGD_SINE_WEIGHT = 0.3


def parse_schedule(kind: GuidanceSchedule | str) -> GuidanceSchedule:
    """``kind`` as a :class:`GuidanceSchedule`.

    Raises:
        ValueError: ``kind`` names no schedule (the message lists the allowed ones).
    """
    try:
        return GuidanceSchedule(kind)
    except ValueError:
        allowed = [k.value for k in GuidanceSchedule]
        raise ValueError(f"guidance.schedule must be one of {allowed}, got {kind!r}") from None


def schedule_coefficient(
    kind: GuidanceSchedule | str, level_from: Tensor, level_to: Tensor, n_timesteps: int
) -> Tensor:
    """The schedule's multiplier c (float32, shape of ``level_from``, e.g. (B, H)) of the guidance
    step taken while each token goes from ``level_from`` to ``level_to`` (integer levels in
    [0, ``n_timesteps``]); see :class:`GuidanceSchedule`. Computed in float64."""
    kind = parse_schedule(kind)
    u = level_from.to(torch.float64) / n_timesteps
    if kind is GuidanceSchedule.constant:
        c = torch.ones_like(u)
    elif kind is GuidanceSchedule.linear:
        c = u
    elif kind is GuidanceSchedule.cosine:
        c = (1 - torch.cos(math.pi * u)) / 2
    else:
        v = level_to.to(torch.float64) / n_timesteps
        c = torch.where(level_to > 0, u + PGD_SINE_WEIGHT * torch.sin(math.pi * v), torch.zeros_like(u))
    return c.float()


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
    multiply it by the posterior variance of the step if ``scale_grad_by_std`` and by the
    schedule's per-token coefficient (:class:`GuidanceSchedule`), zero it for inpainted
    entries, for tokens whose level does not change in this row and for tokens at level
    ``<= t_stopgrad`` (the last ``t_stopgrad`` levels run unguided), and add ``scale`` times
    it to the guided tensor (``apply_to``).

    Args:
        guide: the objective.
        scale: step size of each gradient step (0 reproduces unguided sampling exactly); a
            float, or a per-sample tensor (B,) of a batch of B samples (broadcast as (B, 1, 1);
            guidance sweeps evaluate several strengths in one batch, see
            :class:`diffplan.guidance.per_env.EnvStrengths`). Samples whose scale is 0 are
            left exactly unguided (their gradient is not added at all).
        n_guide_steps: gradient steps per denoising row (>= 1).
        t_stopgrad: no guidance for tokens whose level is at most this (>= 0).
        scale_grad_by_std: multiply the gradient by the step's posterior variance.
        apply_to: guide the noisy sample or the x0 estimate.
        schedule: how the step size varies over the denoising steps (``constant`` is the
            unscheduled sampler, bit for bit).
    """

    guide: Guide
    scale: float | Tensor = 0.1
    n_guide_steps: int = 2
    t_stopgrad: int = 2
    scale_grad_by_std: bool = True
    apply_to: GuideTarget = GuideTarget.x_t
    schedule: GuidanceSchedule = GuidanceSchedule.constant

    def __post_init__(self) -> None:
        if self.n_guide_steps < 1:
            raise ValueError(f"guidance.n_guide_steps must be >= 1, got {self.n_guide_steps}")
        if self.t_stopgrad < 0:
            raise ValueError(f"guidance.t_stopgrad must be >= 0, got {self.t_stopgrad}")
        object.__setattr__(self, "apply_to", GuideTarget(self.apply_to))
        object.__setattr__(self, "schedule", parse_schedule(self.schedule))
        if isinstance(self.scale, Tensor) and (self.scale.dim() != 1 or not self.scale.is_floating_point()):
            raise ValueError(
                f"a per-sample guidance scale must be a float tensor of shape (B,), got {self.scale.dtype} "
                f"{tuple(self.scale.shape)}"
            )

    def sample_scale(self, x: Tensor) -> Tensor | None:
        """The per-sample scale (B,) on x's device and dtype for a batch x (B, ...), or None when
        ``scale`` is a float.

        Raises:
            ValueError: the per-sample scale has another length than the batch.
        """
        if not isinstance(self.scale, Tensor):
            return None
        if self.scale.shape[0] != x.shape[0]:
            raise ValueError(
                f"the per-sample guidance scale has {self.scale.shape[0]} entries but the batch has {x.shape[0]} "
                "samples; repeat per-environment scales like the environments (candidates: repeat_interleave)"
            )
        return self.scale.to(x.device, x.dtype)

    def coefficient(self, level_from: Tensor, level_to: Tensor, n_timesteps: int) -> Tensor | None:
        """The schedule's multiplier (B, H, 1) for a row from ``level_from`` to ``level_to`` (both
        (B, H)), or None for the ``constant`` schedule (nothing to multiply)."""
        if self.schedule is GuidanceSchedule.constant:
            return None
        return schedule_coefficient(self.schedule, level_from, level_to, n_timesteps).unsqueeze(-1)
