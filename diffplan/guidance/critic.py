"""Critic ranking: score plans by an offline RL agent's Q value of their first state and action.

A plan executed in closed loop runs its first action and replans; its worth to the agent is
``Q(s_0, a_0)``, the clipped double-Q estimate (``min(Q1, Q2)``) of a TD3+BC or IQL critic
trained on the same data (``diffplan-train-offline``). Ranking the K candidates of a
locomotion planner by it (``planner.critic``) is the selection step of "sample from the
behaviour model, pick by Q" methods (SfBC, IDQL), with the diffusion planner's candidates as
the samples: the executed action is one the planner finds likely and the critic finds best,
where the value function ranks whole imagined trajectories instead. With ``planner.agent_candidate``
the agent's own action joins the candidates (:meth:`CriticGuide.propose`) and runs where the critic
rates it above every planned one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diffplan.agents.common import OfflineAgent
from diffplan.agents.trainer import load_offline_agent
from diffplan.diffusion.guide import GuideContext, GuideOutput
from diffplan.guidance.policy import check_agent_layout, raw_states_actions

if TYPE_CHECKING:
    from diffplan.data.layout import TrajectoryLayout
    from diffplan.data.normalizer import Normalizer
    from diffplan.training.checkpoint import TrainedModel


class CriticGuide:
    """The objective ``min(Q1, Q2)(s_0, a_0)`` (B,) of each normalized plan x (B, H, D).

    Token 0 is the plan's current state and the action executed next, as in the locomotion
    planner (start state inpainted at token 0, no history). Its state and action are
    un-normalized with the diffusion model's normalizer; the action is clipped to the agent's
    action box, as the environment clips it. The gradient (for guiding with it) flows into the
    first token's action channels only, and is zero for an action entry outside the box.

    Args:
        agent: the offline agent whose critic scores (its parameters are left untouched).
        layout: where states and actions sit in a token (needs ``act_dim >= 1``).
        normalizer: the diffusion model's normalizer.
    """

    def __init__(self, agent: OfflineAgent, layout: TrajectoryLayout, normalizer: Normalizer) -> None:
        check_agent_layout("critic", agent.obs_dim, agent.act_dim, layout, normalizer)
        self.agent = agent
        self.layout = layout
        self.normalizer = normalizer

    def _q(self, first: Tensor, actions: Tensor | None = None) -> Tensor:
        states, raw_actions = raw_states_actions(first, self.layout, self.normalizer, actions)
        limit = self.agent.max_action
        return self.agent.q_value(states, raw_actions.clamp(-limit, limit))

    @torch.no_grad()
    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        """The critic's value (B,) of each plan's first state and action."""
        return self._q(x[:, 0])

    @torch.no_grad()
    def propose(self, x: Tensor) -> Tensor:
        """The candidates x (N, K, H, D), normalized, followed by the agent's own (N, K + 1, H, D): each
        environment's first finite candidate (the first one where none is finite) with its first token's
        action channels replaced by the agent's deterministic action from that token's state, the inpainted
        start (``planner.agent_candidate``: the policy candidate of TD-MPC's planner). Only that action is
        executed (the agent's candidate needs replanning every step); the later tokens are the copied
        candidate's."""
        n = x.shape[0]
        finite = torch.isfinite(x).all(dim=(2, 3))  # (N, K)
        source = finite.float().argmax(dim=1)  # the first finite one; 0 where none is
        proposal = x[torch.arange(n, device=x.device), source].clone()  # (N, H, D)
        raw = self.normalizer.unnormalize(proposal[:, 0])
        raw[:, self.layout.act] = self.agent(raw[:, self.layout.obs]).to(raw.dtype)
        proposal[:, 0, self.layout.act] = self.normalizer.normalize(raw)[:, self.layout.act]
        return torch.cat([x, proposal[:, None]], dim=1)

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
        """d Q / d x (B, H, D), non-zero on the first token's action channels only, and Q (B,)."""
        x = x.detach()
        with torch.enable_grad():
            actions = x[:, 0, self.layout.act].clone().requires_grad_(True)
            value = self._q(x[:, 0], actions)
            (grad,) = torch.autograd.grad(value.sum(), actions)
        full = torch.zeros_like(x)
        full[:, 0, self.layout.act] = grad
        return GuideOutput(full, value.detach())


def load_critic_guide(path: str | Path, model: TrainedModel, device: torch.device | str = "cpu") -> CriticGuide:
    """The :class:`CriticGuide` of the ``diffplan-train-offline`` checkpoint at ``path`` on ``model``'s
    layout and normalizer (``planner.critic``); the agent must have been trained for the model's task.

    Raises:
        CheckpointError: a missing or unreadable file, not an offline agent checkpoint, or an agent
            trained for another task or other observation or action sizes (each naming ``planner.critic``).
    """
    task = model.config.task
    loaded = load_offline_agent(path, device=device, key="planner.critic", expected_task=task.name,
                                expected_obs_dim=model.layout.obs_dim, expected_act_dim=model.layout.act_dim)
    for p in loaded.agent.parameters():
        p.requires_grad_(False)
    return CriticGuide(loaded.agent, model.layout, model.normalizer)
