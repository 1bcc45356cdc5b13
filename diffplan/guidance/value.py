"""Value guidance: the gradient of a learned value function (Janner et al. 2022, sec. 3.3).

:class:`ValueGuide` guides with a value network of the trajectory alone (locomotion returns);
:class:`GoalValueGuide` with a goal-conditioned one (mazes: the predicted discounted number of
plan tokens within the goal radius, :mod:`diffplan.training.value_targets`), given each
environment's goal before every plan like :class:`~diffplan.guidance.goal.GoalGuide`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffplan.data.layout import TrajectoryLayout, position_channels
from diffplan.data.normalizer import Normalizer
from diffplan.diffusion.guide import GuideOutput
from diffplan.guidance.goal import GoalTargets


class ValueGuide:
    """Guide towards trajectories of high predicted value.

    Args:
        value_net: maps (x (B, H, D), levels (B, H) in [0, 1]) to values (B,), e.g. a
            :class:`diffplan.models.value.ValueNet`. Only x receives gradients; the network's
            parameters are left untouched.
    """

    def __init__(self, value_net: nn.Module) -> None:
        self.value_net = value_net

    def _value(self, x: Tensor, levels: Tensor) -> Tensor:
        return self.value_net(x, levels)

    @torch.no_grad()
    def objective(self, x: Tensor, levels: Tensor) -> Tensor:
        """Predicted values (B,)."""
        return self._value(x, levels)

    def gradient(self, x: Tensor, levels: Tensor) -> GuideOutput:
        """d value / d x (B, H, D) and the values (B,); works inside ``torch.no_grad()``."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            value = self._value(x, levels)
            (grad,) = torch.autograd.grad(value.sum(), x)
        return GuideOutput(grad.detach(), value.detach())


class GoalValueGuide(GoalTargets, ValueGuide):
    """Value guidance with a goal-conditioned value network (``value.goal_conditioned``).

    Args:
        value_net: maps (x (B, H, D), levels (B, H), goals (B, G) normalized) to values (B,).
        layout: the diffusion model's channel layout.
        normalizer: its normalizer (goals are normalized like the position channels).
        goal_dims: observation entries of the goal (``task.goal_obs_dims``).
    """

    def __init__(
        self, value_net: nn.Module, layout: TrajectoryLayout, normalizer: Normalizer, goal_dims: list[int]
    ) -> None:
        super().__init__(value_net)
        self.channels = position_channels(layout, goal_dims, "goal-conditioned value guidance")
        self.normalizer = normalizer
        self.goal_size = len(self.channels)
        self.goals = None

    def _value(self, x: Tensor, levels: Tensor) -> Tensor:
        goals = self.normalizer.normalize_channels(self.goals_for(x.shape[0], x.device), self.channels)
        return self.value_net(x, levels, goals)
