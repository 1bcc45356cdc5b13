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

from diffplan.data.layout import TrajectoryLayout, position_channels
from diffplan.data.normalizer import Normalizer
from diffplan.diffusion.guide import GuideOutput


class GoalTargets:
    """The per-environment goals (N, G) of a goal-conditioned guide, raw units.

    :meth:`set_goals` takes one goal per environment; :meth:`goals_for` lays them out for a batch
    of ``B = N * K`` samples (K contiguous candidates per environment).
    """

    goal_size: int
    goals: Tensor | None = None

    def set_goals(self, goals: Tensor) -> None:
        """The goals (N, G) of the next plans, raw units."""
        if goals.ndim != 2 or goals.shape[1] != self.goal_size:
            raise ValueError(f"goals must be (N, {self.goal_size}), got {tuple(goals.shape)}")
        self.goals = goals.detach().float()

    def goals_for(self, batch: int, device: torch.device) -> Tensor:
        """(B, G) the goal of every sample of a batch of ``batch``, raw units."""
        if self.goals is None:
            raise RuntimeError(f"{type(self).__name__}.set_goals must be called before planning")
        n = self.goals.shape[0]
        if batch % n:
            raise ValueError(f"a batch of {batch} samples is not a whole multiple of the {n} goals set")
        return self.goals.to(device).repeat_interleave(batch // n, dim=0)


class GoalGuide(GoalTargets):
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
        self.goal_size = len(self.channels)
        self.goals = None

    def distance(self, x: Tensor) -> Tensor:
        """(B, H) distance of each token's position to its sample's goal, raw units."""
        raw = self.normalizer.unnormalize(x)[..., self.channels]
        goals = self.goals_for(x.shape[0], x.device)
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
