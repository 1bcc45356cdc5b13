"""Critic ranking: score plans by an offline RL agent's Q value of their first state and action.

A plan executed in closed loop runs its first action and replans; its worth to the agent is
``Q(s_0, a_0)``, the clipped double-Q estimate (``min(Q1, Q2)``) of a TD3+BC or IQL critic
trained on the same data (``diffplan-train-offline``). Ranking the K candidates of a
locomotion planner by it (``planner.critic``) is the selection step of "sample from the
behaviour model, pick by Q" methods (SfBC, IDQL), with the diffusion planner's candidates as
the samples: the executed action is one the planner finds likely and the critic finds best,
where the value function ranks whole imagined trajectories instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diffplan.agents.common import OfflineAgent
from diffplan.agents.trainer import load_offline_agent
from diffplan.diffusion.guide import GuideContext, GuideOutput

if TYPE_CHECKING:
    from diffplan.data.layout import TrajectoryLayout
    from diffplan.data.normalizer import Normalizer
    from diffplan.training.checkpoint import TrainedModel


class CriticGuide:
    """The objective ``min(Q1, Q2)(s_0, a_0)`` (B,) of each normalized plan x (B, H, D).

    States and actions are read from the layout's channels of the first token and un-normalized
    with the diffusion model's normalizer; actions are clipped to the agent's action box, as the
    environment would clip them. The gradient (for guiding with it) flows into the first token's
    action channels only.

    Args:
        agent: the offline agent whose critic scores (its parameters are left untouched).
        layout: where states and actions sit in a token (needs ``act_dim >= 1``).
        normalizer: the diffusion model's normalizer.
    """

    def __init__(self, agent: OfflineAgent, layout: TrajectoryLayout, normalizer: Normalizer) -> None:
        if layout.act_dim < 1:
            raise ValueError("critic ranking needs action channels; the layout has act_dim=0 (state-only diffusion)")
        if (agent.obs_dim, agent.act_dim) != (layout.obs_dim, layout.act_dim):
            raise ValueError(
                f"the critic takes obs_dim={agent.obs_dim}, act_dim={agent.act_dim} but the diffusion model's layout "
                f"has obs_dim={layout.obs_dim}, act_dim={layout.act_dim}; use an agent trained on this task"
            )
        self.agent = agent
        self.layout = layout
        self.normalizer = normalizer

    def _q(self, x: Tensor) -> Tensor:
        raw = self.normalizer.unnormalize(x[:, 0])
        limit = self.agent.max_action
        actions = raw[..., self.layout.act].clamp(-limit, limit)
        return self.agent.q_value(raw[..., self.layout.obs].detach(), actions)

    @torch.no_grad()
    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        """The critic's value (B,) of each plan's first state and action."""
        return self._q(x)

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
        """d Q / d x (B, H, D), non-zero on the first token's action channels only, and Q (B,)."""
        with torch.enable_grad():
            actions = x[:, :1, self.layout.act].detach().requires_grad_(True)
            act = self.layout.act
            first = torch.cat([x[:, :1, : act.start].detach(), actions, x[:, :1, act.stop :].detach()], dim=-1)
            value = self._q(first)
            (grad,) = torch.autograd.grad(value.sum(), actions)
        full = torch.zeros_like(x)
        full[:, :1, act] = grad.detach()
        return GuideOutput(full, value.detach())


def load_critic_guide(path: str | Path, model: TrainedModel, device: torch.device | str = "cpu") -> CriticGuide:
    """The :class:`CriticGuide` of the ``diffplan-train-offline`` checkpoint at ``path`` on ``model``'s
    layout and normalizer (``planner.critic``).

    Raises:
        CheckpointError: a missing or unreadable file, or not an offline agent checkpoint.
        ValueError: the agent was trained for other observation or action sizes.
    """
    loaded = load_offline_agent(path, device=device, key="planner.critic")
    for p in loaded.agent.parameters():
        p.requires_grad_(False)
    return CriticGuide(loaded.agent, model.layout, model.normalizer)
