"""Build the sampler's :class:`Guidance` from the ``guidance`` config group.

Step sizes: the value gradient always moves by ``guidance.scale`` and the policy gradient
by ``guidance.policy_scale``. ``kind = value`` and ``kind = policy`` are a single guide with
that scale; ``kind = value_policy`` is a :class:`CompositeGuide` with weights
(``scale``, ``policy_scale``) under a Guidance of scale 1. Every other setting
(``n_guide_steps``, ``t_stopgrad``, ``scale_grad_by_std``, ``apply_to``, ``schedule``) is
shared; ``normalize_grad`` applies to the policy gradient only.

Config types are imported for type checking only: :mod:`diffplan.config` imports
:mod:`diffplan.diffusion.guide`, so this package must not import it at module level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from diffplan.diffusion.guide import Guidance, Guide
from diffplan.guidance.policy import PolicyGuide

if TYPE_CHECKING:
    from diffplan.config import GuidanceConfig
    from diffplan.models.policy import TargetPolicy
    from diffplan.training.checkpoint import TrainedModel


def policy_guide(
    cfg: GuidanceConfig, model: TrainedModel, device: torch.device | str = "cpu", policy: TargetPolicy | None = None
) -> PolicyGuide:
    """The :class:`PolicyGuide` of ``guidance.policy`` (loaded with ``policy_std``,
    ``policy_vecnormalize`` and ``trust_pickle``) on ``model``'s layout and normalizer, moved to ``device``; a given
    ``policy`` (e.g. the offline agent being trained, Policy-Guided Diffusion's loop) replaces
    the loaded one.

    Raises:
        ValueError: ``guidance.policy`` is unset, or the policy cannot be loaded or does not fit
            the model's observation and action sizes.
    """
    from diffplan.policies.loading import load_target_policy, policy_kinds

    if policy is not None:
        return PolicyGuide(policy, model.layout, model.normalizer, normalize_grad=cfg.normalize_grad)
    if not cfg.policy:
        raise ValueError(
            f"guidance.kind={cfg.kind} needs guidance.policy='<kind>:<path>' (kinds: {', '.join(policy_kinds())}), "
            "e.g. guidance.policy=sb3-sac:data/agents/hopper/medium.zip"
        )
    policy = load_target_policy(cfg.policy, std=cfg.policy_std, vecnormalize=cfg.policy_vecnormalize,
                                trust_pickle=cfg.trust_pickle)
    if isinstance(policy, nn.Module):
        policy.to(device)
    return PolicyGuide(policy, model.layout, model.normalizer, normalize_grad=cfg.normalize_grad)


def build_guidance(
    cfg: GuidanceConfig,
    model: TrainedModel,
    device: torch.device | str = "cpu",
    *,
    value_guide: Guide | None = None,
    policy: TargetPolicy | None = None,
    goal_guide: Guide | None = None,
    clip_denoised: float | None = None,
    goal_dims: list[int] | None = None,
) -> Guidance | None:
    """The guidance of kind ``cfg.kind`` (:mod:`diffplan.guidance.kinds`), or None for ``none``
    (unguided sampling). Goals are not part of it: each plan's reach the guide in the
    :class:`~diffplan.diffusion.guide.GuideContext` the planner attaches (:meth:`Guidance.with_context`).

    Args:
        cfg: the ``guidance`` settings.
        model: the diffusion model (its layout and normalizer feed the policy guide).
        device: where the policy runs.
        value_guide: the value guide (e.g. :func:`diffplan.planning.value_planner.value_guide`),
            required by kinds that need a value function (``value``, ``value_policy``).
        policy: the target policy of ``policy`` and ``value_policy`` (None: load ``guidance.policy``).
        goal_guide: a goal guide made by the caller, used by ``goal`` (else it builds one on
            ``goal_dims``).
        clip_denoised: the sampler's x0 clipping (``diffusion.clip_denoised``), applied to the x0
            estimates of ``through_denoiser`` and Monte Carlo guidance.
        goal_dims: the goal position's observation entries (``task.goal_obs_dims``).

    Raises:
        ValueError: an unknown kind, a value kind without ``value_guide``, or a policy kind without
            a usable ``guidance.policy``.
    """
    from diffplan.guidance.kinds import BuildContext, guidance_kind

    spec = guidance_kind(cfg.kind)
    if spec is None:
        return None
    settings: dict[str, Any] = dict(
        n_guide_steps=cfg.n_guide_steps,
        t_stopgrad=cfg.t_stopgrad,
        scale_grad_by_std=cfg.scale_grad_by_std,
        apply_to=cfg.apply_to,
        schedule=cfg.schedule,
    )
    if cfg.mc_samples < 1:
        raise ValueError(f"guidance.mc_samples must be >= 1 (1: plain guidance), got {cfg.mc_samples}")
    context = BuildContext(cfg, model, device, value_guide=value_guide, goal_guide=goal_guide,
                           goal_dims=list(goal_dims or []), policy=policy)
    guide, scale = spec.build(context)
    if cfg.through_denoiser:
        from diffplan.guidance.denoised import DenoisedGuide

        guide = DenoisedGuide(guide, model.denoiser, model.schedule, clip_denoised=clip_denoised)
    return _monte_carlo(cfg, model, Guidance(guide, scale=scale, **settings), clip_denoised)


def _monte_carlo(
    cfg: GuidanceConfig, model: TrainedModel, guidance: Guidance, clip_denoised: float | None = None
) -> Guidance:
    """``guidance`` averaged over ``guidance.mc_samples`` re-noised futures (Diffusion Forcing's
    Monte Carlo guidance, :mod:`diffplan.guidance.monte_carlo`); unchanged for 1 sample."""
    if cfg.mc_samples == 1:
        return guidance
    from diffplan.guidance.monte_carlo import wrap_monte_carlo  # imports the sampler: not at module level

    return wrap_monte_carlo(
        guidance, cfg.mc_samples, denoiser=model.denoiser, schedule=model.schedule, clip_denoised=clip_denoised
    )
