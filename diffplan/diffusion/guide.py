"""The interface between guidance and the sampler: guides (differentiable objectives that steer
denoising, classifier guidance), their settings, and the rules that apply a gradient.

A guide looks at the current normalized sample x (B, H, D) together with its per-token integer
noise levels (B, H) (the levels the denoiser sees) and the :class:`GuideContext` of the plan (each
sample's goal, the number of levels T; ``context.normalized(levels)`` is the denoiser's [0, 1]
input), and returns the gradient of its objective with respect to x (same shape) and the objective
per sample (B,) for ranking candidates. Nothing is set on a guide between plans: what differs from
one plan to the next travels in the context. :class:`Guidance` bundles a guide with its strength and schedule over the
denoising steps (:class:`GuidanceSchedule`, :func:`schedule_coefficient`);
:meth:`diffplan.diffusion.sampler.Sampler.sample` applies it with the rule named by
:attr:`Guidance.apply_to`: ``x_t`` (Diffuser: move the noisy sample) or ``x0`` (move the
denoiser's clean estimate), and any rule added with :func:`register_guidance_rule`, so a new
way of applying a gradient needs no change to the sampler. The guides themselves (value,
policy, goal, composites) live in :mod:`diffplan.guidance`, a layer above.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from diffplan.enums import GuidanceSchedule, GuideTarget
from diffplan.utils import Registry

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


@dataclass(frozen=True)
class GuideContext:
    """What a guide knows of the batch being sampled besides the sample and its levels.

    The planner builds one per plan (its goals, one row per sample: K candidates of an environment
    share the environment's goal) and hands it to the sampler inside the :class:`Guidance`
    (:meth:`Guidance.with_context`); the sampler fills in ``n_timesteps`` when no context was given.

    Attributes:
        n_timesteps: T, the number of noise levels: ``levels / T`` is the denoiser's input.
        goals: (B, G) each sample's goal in raw units, or None (no goals: locomotion, generation).
        extras: anything else a plugin's planner and guide agree on, by name.
    """

    n_timesteps: int
    goals: Tensor | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)

    def normalized(self, levels: Tensor) -> Tensor:
        """Integer levels (B, H) as the denoiser's [0, 1] input (as the sampler computes it)."""
        return levels.float() / self.n_timesteps

    def goals_for(self, x: Tensor, size: int, who: str) -> Tensor:
        """(B, ``size``) the goals of the B samples of ``x``, on x's device.

        Raises:
            ValueError: the context holds no goals, or goals of another shape (``who`` names the guide).
        """
        if self.goals is None:
            raise ValueError(f"{who} steers towards goals, but the plan's guidance context holds none; plan with "
                             "goals (a goal-reaching planner passes each environment's goal)")
        if self.goals.shape != (x.shape[0], size):
            raise ValueError(f"{who} needs one goal of {size} entries per sample ({x.shape[0]}, {size}), got goals "
                             f"of shape {tuple(self.goals.shape)}")
        return self.goals.to(x.device)


class Guide(Protocol):
    """An objective to maximise over normalized trajectories."""

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
        """Gradient of the objective at x (B, H, D) with integer levels (B, H), and the objective (B,)."""
        ...

    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        """The objective (B,) alone (no gradient), e.g. to rank finished candidates at level 0."""
        ...


class ConstantGuide:
    """A guide with no preference: zero gradient and zero objective for every sample.

    For planners that take a guide but should neither steer nor rank (unguided sampling,
    one candidate, no value function); ranking ties pick the first candidate.
    """

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
        return GuideOutput(torch.zeros_like(x), x.new_zeros(x.shape[0]))

    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
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
        apply_to: the rule that applies the gradient, a name of :func:`guidance_rules`: ``x_t``
            (the noisy sample), ``x0`` (the x0 estimate) or a registered one.
        schedule: how the step size varies over the denoising steps (``constant`` is the
            unscheduled sampler, bit for bit).
        context: what the guide knows of this plan (goals); None: the sampler's default (no goals).
    """

    guide: Guide
    scale: float | Tensor = 0.1
    n_guide_steps: int = 2
    t_stopgrad: int = 2
    scale_grad_by_std: bool = True
    apply_to: str = GuideTarget.x_t
    schedule: GuidanceSchedule = GuidanceSchedule.constant
    context: GuideContext | None = None

    def __post_init__(self) -> None:
        if self.n_guide_steps < 1:
            raise ValueError(f"guidance.n_guide_steps must be >= 1, got {self.n_guide_steps}")
        if self.t_stopgrad < 0:
            raise ValueError(f"guidance.t_stopgrad must be >= 0, got {self.t_stopgrad}")
        object.__setattr__(self, "apply_to", str(self.apply_to))
        if self.apply_to not in _RULES:
            raise ValueError(
                f"guidance.apply_to={self.apply_to!r} is not a guidance rule; use one of {guidance_rules()} "
                "(add one with diffplan.diffusion.guide.register_guidance_rule)"
            )
        object.__setattr__(self, "schedule", parse_schedule(self.schedule))
        if isinstance(self.scale, Tensor) and (self.scale.dim() != 1 or not self.scale.is_floating_point()):
            raise ValueError(
                f"a per-sample guidance scale must be a float tensor of shape (B,), got {self.scale.dtype} "
                f"{tuple(self.scale.shape)}"
            )

    def with_context(self, context: GuideContext) -> Guidance:
        """This guidance for one plan: the same guide and settings with the plan's ``context``."""
        return replace(self, context=context)

    def context_for(self, n_timesteps: int) -> GuideContext:
        """The context the guide sees in a sampler of ``n_timesteps`` levels.

        Raises:
            ValueError: the context was made for another number of levels.
        """
        if self.context is None:
            return GuideContext(n_timesteps)
        if self.context.n_timesteps != n_timesteps:
            raise ValueError(f"the guidance context is for {self.context.n_timesteps} noise levels but the sampler "
                             f"has {n_timesteps}; build the context from the model's schedule")
        return self.context

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


# ----------------------------------------------------------------------------- application rules


class SamplerOps(Protocol):
    """What a guidance rule may call on the sampler (:class:`diffplan.diffusion.sampler.Sampler`)."""

    clip_denoised: float | None

    def step(self, x_t: Tensor, output: Tensor, level_from: Tensor, level_to: Tensor,
             generator: torch.Generator | None) -> tuple[Tensor, Tensor]: ...

    def estimate_x0(self, x_t: Tensor, output: Tensor, level: Tensor) -> Tensor: ...

    def update(self, x_t: Tensor, x0: Tensor, level_from: Tensor, level_to: Tensor,
               generator: torch.Generator | None) -> tuple[Tensor, Tensor]: ...


class Constraints(Protocol):
    """Inpainted entries (:class:`diffplan.diffusion.conditioning.Constraints`)."""

    mask: Tensor

    def apply(self, x: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class GuidedRow:
    """One row of guided sampling, as the sampler hands it to a rule.

    Attributes:
        denoiser: the network call ``(x, normalized levels) -> output``.
        x: (B, H, D) the sample before the row.
        level_from, level_to: (B, H) integer levels before and after the row.
        model_level: (B, H) the integer levels the denoiser sees (``level_from``, with inpainted
            tokens at 0 for models trained with clean condition tokens).
        normalized: (B, H) the same in [0, 1], the denoiser's input.
        free: (B, H, D) bool, where the gradient may move the sample (not inpainted, level changing,
            above ``t_stopgrad``, non-zero schedule coefficient and scale).
        guided: whether any entry is free (False: the rule must take the unguided step).
        variance: (B, H, 1) multiplier of the gradient (posterior variance and/or the schedule's
            coefficient), or None.
        sample_scale: (B,) per-sample step sizes, or None for the float ``guidance.scale``.
        constraints: the inpainted entries, or None.
        generator: the sampling randomness.
        context: the guide's context (:meth:`Guidance.context_for`).
    """

    denoiser: Callable[[Tensor, Tensor], Tensor]
    x: Tensor
    level_from: Tensor
    level_to: Tensor
    model_level: Tensor
    normalized: Tensor
    free: Tensor
    guided: bool
    variance: Tensor | None
    sample_scale: Tensor | None
    constraints: Constraints | None
    generator: torch.Generator | None
    context: GuideContext


#: A rule: (sampler, guidance, row) -> the sample after the row.
GuidanceRule = Callable[[SamplerOps, "Guidance", GuidedRow], Tensor]

_RULES: Registry[GuidanceRule] = Registry("guidance rule", "guidance.apply_to",
                                          "diffplan.diffusion.guide.register_guidance_rule")


def register_guidance_rule(name: str, rule: GuidanceRule, *, replace: bool = False) -> None:
    """Make ``Guidance(apply_to=name)`` (``guidance.apply_to=<name>``) apply gradients with ``rule``.

    Raises:
        ValueError: ``name`` is registered already and not ``replace``.
    """
    _RULES.add(name, rule, replace=replace)


def guidance_rules() -> list[str]:
    """The registered rule names."""
    return _RULES.names()


def guidance_rule(name: str) -> GuidanceRule:
    """The rule registered as ``name`` (checked when the :class:`Guidance` was built)."""
    return _RULES.get(name)


def follow_gradient(guidance: Guidance, x: Tensor, levels: Tensor, row: GuidedRow) -> Tensor:
    """``guidance.n_guide_steps`` steps of ``x += scale * g`` with g the guide's gradient at
    (x, integer levels (B, H), ``row.context``), times ``row.variance`` if given, zero where not ``row.free``.
    ``row.sample_scale`` (B,) replaces the float ``guidance.scale`` by one step size per sample
    (broadcast as (B, 1, 1)); the arithmetic per sample is the float's, so a sample's update is
    bit-identical to a run with its scale as a float."""
    scale: float | Tensor = guidance.scale if row.sample_scale is None else row.sample_scale.view(-1, 1, 1)
    for _ in range(guidance.n_guide_steps):
        grad = guidance.guide.gradient(x, levels, row.context).gradient
        if row.variance is not None:
            grad = grad * row.variance
        x = x + scale * torch.where(row.free, grad, torch.zeros_like(grad))
    return x


def guide_noisy_sample(sampler: SamplerOps, guidance: Guidance, row: GuidedRow) -> Tensor:
    """``x_t`` (Diffuser): the guide sees the noisy sample at the denoiser's levels; the denoiser
    then runs on the moved sample."""
    x = follow_gradient(guidance, row.x, row.model_level, row) if row.guided else row.x
    x, _ = sampler.step(x, row.denoiser(x, row.normalized), row.level_from, row.level_to, row.generator)
    return x


def guide_clean_estimate(sampler: SamplerOps, guidance: Guidance, row: GuidedRow) -> Tensor:
    """``x0``: the guide sees the denoiser's x0 estimate (inpainted entries written in) at level 0;
    the reverse update uses the moved estimate (clipped again if ``clip_denoised``)."""
    x0 = sampler.estimate_x0(row.x, row.denoiser(row.x, row.normalized), row.level_from)
    if row.guided:
        if row.constraints is not None:
            x0 = row.constraints.apply(x0)
        x0 = follow_gradient(guidance, x0, torch.zeros_like(row.model_level), row)
        if sampler.clip_denoised is not None:
            x0 = x0.clamp(-sampler.clip_denoised, sampler.clip_denoised)
    x, _ = sampler.update(row.x, x0, row.level_from, row.level_to, row.generator)
    return x


register_guidance_rule(GuideTarget.x_t.value, guide_noisy_sample)
register_guidance_rule(GuideTarget.x0.value, guide_clean_estimate)
