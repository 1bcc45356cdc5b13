"""Value guidance: the gradient of a learned value function (Janner et al. 2022, sec. 3.3).

:class:`ValueGuide` guides with a value network of the trajectory alone (locomotion returns);
:class:`GoalValueGuide` with a goal-conditioned one (mazes: the predicted discounted number of
plan tokens within the goal radius, :mod:`diffplan.training.value_targets`), which reads each
sample's goal from the plan's :class:`~diffplan.diffusion.guide.GuideContext` like
:class:`~diffplan.guidance.goal.GoalGuide`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from diffplan.data.layout import TrajectoryLayout, position_channels
from diffplan.data.normalizer import Normalizer
from diffplan.diffusion.guide import GuideContext, GuideOutput
from diffplan.training.value_trainer import load_value_model

if TYPE_CHECKING:
    from diffplan.config import GuidanceConfig
    from diffplan.training.checkpoint import TrainedModel


class ValueGuide:
    """Guide towards trajectories of high predicted value.

    Args:
        value_net: maps (x (B, H, D), levels (B, H) in [0, 1]) to values (B,), e.g. a
            :class:`diffplan.models.value.ValueNet`. Only x receives gradients; the network's
            parameters are left untouched.
    """

    def __init__(self, value_net: nn.Module) -> None:
        self.value_net = value_net

    def _value(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        return self.value_net(x, context.normalized(levels))

    @torch.no_grad()
    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        """Predicted values (B,)."""
        return self._value(x, levels, context)

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
        """d value / d x (B, H, D) and the values (B,); works inside ``torch.no_grad()``."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            value = self._value(x, levels, context)
            (grad,) = torch.autograd.grad(value.sum(), x)
        return GuideOutput(grad.detach(), value.detach())


class GoalValueGuide(ValueGuide):
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

    def _value(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        raw = context.goals_for(x, len(self.channels), "goal-conditioned value guidance")
        goals = self.normalizer.normalize_channels(raw.float(), self.channels)
        return self.value_net(x, context.normalized(levels), goals)


def load_value_guide(
    model: TrainedModel,
    guidance: GuidanceConfig,
    device: torch.device | str = "cpu",
    goal_dims: list[int] | None = None,
) -> ValueGuide:
    """The value guide of ``guidance.value_checkpoint``, checked against ``model`` (see
    :func:`diffplan.training.value_trainer.load_value_model`).

    Args:
        goal_dims: the goal's observation entries when planning towards goals (mazes): the
            checkpoint must then be goal-conditioned and a :class:`GoalValueGuide` is returned;
            None (locomotion): it must not be.

    Raises:
        ValueError: the checkpoint's goal conditioning does not fit the planner.
    """
    path = Path(guidance.value_checkpoint)
    net = load_value_model(path, model, device)
    if goal_dims is None and net.goal_dim:
        raise ValueError(
            f"value checkpoint {path} is goal-conditioned (value.goal_conditioned=true): it guides the maze goal "
            "planner (pointmaze-* tasks), which sets each episode's goal; use a value function trained with "
            "value.goal_conditioned=false here"
        )
    if goal_dims is not None:
        if not net.goal_dim:
            raise ValueError(
                f"value checkpoint {path} was trained without goals, but a maze's reward depends on its goal; "
                f"train a goal-conditioned one (diffplan-train-value value.goal_conditioned=true "
                f"value.diffusion_checkpoint={model.path}) and set guidance.value_checkpoint to it"
            )
        if list(goal_dims) != net.goal_dims:
            raise ValueError(
                f"value checkpoint {path} reads the goal from observation entries {net.goal_dims} "
                f"(task.goal_obs_dims of its training), but the planner gives entries {list(goal_dims)}; "
                f"set task.goal_obs_dims={net.goal_dims} or train a value function for these entries"
            )
        return GoalValueGuide(net, model.layout, model.normalizer, goal_dims)
    return ValueGuide(net)
