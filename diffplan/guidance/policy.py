"""Policy guidance (policy-guided diffusion, Jackson et al. 2024): move the actions of a
sampled trajectory towards what a target policy would do in its states.

The objective of a normalized sample x (B, H, D) is ``sum_t log pi(a_t | s_t)`` with states
and actions read from the layout's channels and un-normalized by the diffusion model's
normalizer; its gradient is taken with respect to the action channels only (the states enter
detached, so the guide never moves them, and reward or terminal channels get zero).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diffplan.diffusion.guide import GuideContext, GuideOutput
from diffplan.models.policy import TargetPolicy

if TYPE_CHECKING:  # runtime imports would tie diffplan.guidance to diffplan.data
    from diffplan.data.layout import TrajectoryLayout
    from diffplan.data.normalizer import Normalizer


def check_agent_layout(what: str, obs_dim: int, act_dim: int, layout: TrajectoryLayout, normalizer: Normalizer) -> None:
    """Refuse an agent (``what``: ``"target policy"``, ``"critic"``) whose sizes are not the layout's, or
    a normalizer of another width.

    Raises:
        ValueError: the layout has no action channels, or the sizes differ (naming both).
    """
    if layout.act_dim < 1:
        raise ValueError(f"the {what} needs action channels; the layout has act_dim=0 (state-only diffusion)")
    if (obs_dim, act_dim) != (layout.obs_dim, layout.act_dim):
        raise ValueError(
            f"the {what} takes obs_dim={obs_dim}, act_dim={act_dim} but the diffusion model's layout has "
            f"obs_dim={layout.obs_dim}, act_dim={layout.act_dim}; use one of this task"
        )
    if normalizer.dim != layout.transition_dim:
        raise ValueError(f"normalizer has {normalizer.dim} channels but the layout has {layout.transition_dim}")


def raw_states_actions(
    x: Tensor, layout: TrajectoryLayout, normalizer: Normalizer, actions: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The raw states (detached) and actions of the normalized sample x (..., D), un-normalized by the
    diffusion model's ``normalizer``; ``actions`` (normalized, e.g. a tensor that requires grad)
    replaces x's action channels, so gradients reach the actions alone."""
    act = layout.act
    if actions is None:
        actions = x[..., act]
    full = torch.cat([x[..., : act.start], actions, x[..., act.stop :]], dim=-1)
    raw = normalizer.unnormalize(full)
    return raw[..., layout.obs].detach(), raw[..., act]


class PolicyGuide:
    """Guide towards trajectories whose actions the target policy finds likely.

    Every token counts: the objective sums the log-likelihood over all H tokens (inpainted
    ones too; the sampler never moves inpainted entries). The guide ignores the noise levels:
    with ``apply_to = x_t`` the policy sees the noisy sample, as in PGD, and with ``x0`` the
    denoiser's estimate.

    Args:
        policy: the target policy (raw units); its parameters are left untouched.
        layout: where states and actions sit in a token (needs ``act_dim >= 1``).
        normalizer: the diffusion model's normalizer (normalized -> raw by ``unnormalize``).
        normalize_grad: rescale each sample's action gradient to root-mean-square 1 per action
            entry, ``g * sqrt(H * act_dim) / ||g||``, so that the step size is a distance per
            entry in normalized units, whatever the horizon, action size or policy sharpness.
            (The official PGD code rescales to unit norm over the whole sample instead, i.e.
            this divided by ``sqrt(H * act_dim)``.) A zero gradient stays zero.
    """

    def __init__(
        self, policy: TargetPolicy, layout: TrajectoryLayout, normalizer: Normalizer, *, normalize_grad: bool = False
    ) -> None:
        check_agent_layout("target policy", policy.obs_dim, policy.act_dim, layout, normalizer)
        self.policy = policy
        self.layout = layout
        self.normalizer = normalizer
        self.normalize_grad = normalize_grad

    def log_likelihood(self, x: Tensor, actions: Tensor | None = None) -> Tensor:
        """``sum_t log pi(a_t | s_t)`` (B,) of the normalized sample x (B, H, D).

        ``actions`` (B, H, act_dim) replaces x's normalized action channels (pass a tensor that
        requires grad to differentiate); the states are detached after un-normalizing.
        """
        states, raw_actions = raw_states_actions(x, self.layout, self.normalizer, actions)
        return self.policy.log_prob(states, raw_actions).sum(dim=-1)

    @torch.no_grad()
    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        """The log-likelihood (B,) of each sample's actions."""
        return self.log_likelihood(x)

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
        """d objective / d x (B, H, D), nonzero on action channels only, and the objective (B,);
        works inside ``torch.no_grad()``."""
        x = x.detach()
        with torch.enable_grad():
            actions = x[..., self.layout.act].clone().requires_grad_(True)
            value = self.log_likelihood(x, actions)
            (grad_actions,) = torch.autograd.grad(value.sum(), actions)
        if self.normalize_grad:
            grad_actions = rms_normalize(grad_actions)
        grad = torch.zeros_like(x)
        grad[..., self.layout.act] = grad_actions
        return GuideOutput(grad, value.detach())


def rms_normalize(grad: Tensor, eps: float = 1e-12) -> Tensor:
    """Each sample of ``grad`` (B, ...) rescaled to root-mean-square 1 over its entries (zero stays zero)."""
    n = grad[0].numel()
    norm = grad.flatten(1).norm(dim=1).clamp_min(eps)
    return grad * (math.sqrt(n) / norm).view(-1, *([1] * (grad.dim() - 1)))
