"""Goal guidance: steer planned positions towards each environment's goal.

The objective of a normalized trajectory x (B, H, D) is minus the mean Euclidean distance,
in raw units, between its planned positions (observation channels ``goal_dims``) and the
goal of its environment. Diffusion Forcing's maze planner (Chen et al. 2024) guides with the
same quantity summed over the plan; the mean keeps step sizes independent of the horizon.
Each sample's goal comes with the plan, in the :class:`~diffplan.diffusion.guide.GuideContext`
the planner builds (K candidates of an environment share its goal); the guide holds no state
between plans.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffplan.data.layout import TrajectoryLayout, position_channels
from diffplan.data.normalizer import Normalizer
from diffplan.diffusion.guide import GuideContext, GuideOutput


class GoalGuide:
    """Minus the mean distance of planned positions to the goal (raw units).

    Args:
        layout: channel layout of the model's trajectories.
        normalizer: the model's normalizer (positions are compared in raw units).
        goal_dims: observation channels holding the position (``task.goal_obs_dims``).
        weights: optional (H,) per-token weights of the distance (None: uniform mean).
    """

    def __init__(
        self,
        layout: TrajectoryLayout,
        normalizer: Normalizer,
        goal_dims: list[int],
        weights: Tensor | None = None,
    ) -> None:
        self.layout = layout
        self.normalizer = normalizer
        self.channels = position_channels(layout, goal_dims, "goal guidance")
        self.weights = weights

    def distance(self, x: Tensor, context: GuideContext) -> Tensor:
        """(B, H) distance of each token's position to its sample's goal (``context.goals``), raw units."""
        raw = self.normalizer.unnormalize(x)[..., self.channels]
        goals = context.goals_for(x, len(self.channels), "goal guidance").to(raw.dtype)
        return torch.linalg.vector_norm(raw - goals[:, None, :], dim=-1)

    def _value(self, x: Tensor, context: GuideContext) -> Tensor:
        distance = self.distance(x, context)
        if self.weights is None:
            return -distance.mean(dim=1)
        weights = self.weights.to(x.device, x.dtype)
        return -(distance * weights).sum(dim=1) / weights.sum()

    @torch.no_grad()
    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        """Minus the mean distance to the goal (B,)."""
        return self._value(x, context)

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
        """d objective / d x (B, H, D) and the objective (B,); works inside ``torch.no_grad()``."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            value = self._value(x, context)
            (grad,) = torch.autograd.grad(value.sum(), x)
        return GuideOutput(grad.detach(), value.detach())
