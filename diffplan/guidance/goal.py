"""Goal guidance: steer planned positions towards each environment's goal.

The objective of a normalized trajectory x (B, H, D) is minus the mean Euclidean distance,
in raw units, between its planned positions (observation channels ``goal_dims``) and the
goal of its environment. Diffusion Forcing's maze planner (Chen et al. 2024) guides with the
same quantity summed over the plan; the mean keeps step sizes independent of the horizon.
The planner sets the goals before each plan (:meth:`GoalGuide.set_goals`); a batch that is a
whole multiple of the goals (several candidates per environment) gives sample ``i`` the goal
``i // (B / n_goals)``: each environment's candidates are contiguous, as
:func:`torch.repeat_interleave` lays them out.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffplan.data.layout import TrajectoryLayout
from diffplan.data.normalizer import Normalizer
from diffplan.guidance.base import GuideOutput


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
        if not goal_dims:
            raise ValueError("goal guidance needs the position channels (task.goal_obs_dims), got an empty list")
        bad = [d for d in goal_dims if not 0 <= d < layout.obs_dim]
        if bad:
            raise ValueError(f"task.goal_obs_dims {bad} are outside the observation (obs_dim {layout.obs_dim})")
        self.layout = layout
        self.normalizer = normalizer
        self.channels = [layout.obs.start + d for d in goal_dims]
        self.weights = weights
        self.goals: Tensor | None = None

    def set_goals(self, goals: Tensor) -> None:
        """The goals (N, len(goal_dims)) of the next plans, raw units."""
        if goals.ndim != 2 or goals.shape[1] != len(self.channels):
            raise ValueError(f"goals must be (N, {len(self.channels)}), got {tuple(goals.shape)}")
        self.goals = goals.detach().float()

    def _goals_for(self, batch: int, device: torch.device) -> Tensor:
        if self.goals is None:
            raise RuntimeError("GoalGuide.set_goals must be called before planning")
        n = self.goals.shape[0]
        if batch % n:
            raise ValueError(f"a batch of {batch} samples is not a whole multiple of the {n} goals set")
        return self.goals.to(device).repeat_interleave(batch // n, dim=0)

    def distance(self, x: Tensor) -> Tensor:
        """(B, H) distance of each token's position to its sample's goal, raw units."""
        raw = self.normalizer.unnormalize(x)[..., self.channels]
        goals = self._goals_for(x.shape[0], x.device)
        return torch.linalg.vector_norm(raw - goals[:, None, :], dim=-1)

    def _value(self, x: Tensor) -> Tensor:
        distance = self.distance(x)
        if self.weights is None:
            return -distance.mean(dim=1)
        weights = self.weights.to(x.device, x.dtype)
        return -(distance * weights).sum(dim=1) / weights.sum()

    @torch.no_grad()
    def objective(self, x: Tensor, levels: Tensor) -> Tensor:
        """Minus the mean distance to the goal (B,)."""
        return self._value(x)

    def gradient(self, x: Tensor, levels: Tensor) -> GuideOutput:
        """d objective / d x (B, H, D) and the objective (B,); works inside ``torch.no_grad()``."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            value = self._value(x)
            (grad,) = torch.autograd.grad(value.sum(), x)
        return GuideOutput(grad.detach(), value.detach())
