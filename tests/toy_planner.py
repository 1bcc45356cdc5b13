"""A planner mode defined outside the package, as a user would add one: ``plugins=[toy_planner]
planner.mode=toy-straight`` evaluates a controller that heads straight for the goal (no sampling),
with no edit to the package."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from diffplan.config import Config
from diffplan.controllers import PlanRecord
from diffplan.guidance.per_env import EnvStrengths
from diffplan.planning.modes import BuiltController, PlannerSpec, register_planner
from diffplan.training.checkpoint import TrainedModel


@dataclass
class StraightController:
    """Action = gain x (goal - position), clipped by the evaluator to the action box."""

    position_dims: list[int]
    gain: float = 5.0
    records: list[PlanRecord] = field(default_factory=list)

    def reset(self, n_envs: int) -> None:
        self.records = []

    def act(self, step: int, observations: np.ndarray, goals: np.ndarray, active: np.ndarray,
            generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        actions = self.gain * (goals - observations[:, self.position_dims])
        return actions, np.zeros(len(observations), dtype=bool)


def build_straight(cfg: Config, model: TrainedModel, device: torch.device,
                   strengths: EnvStrengths | None) -> BuiltController:
    return BuiltController(StraightController(list(cfg.task.goal_obs_dims)))


register_planner(PlannerSpec("toy-straight", {"maze": build_straight}, batchable=False,
                             description="head straight for the goal"), replace=True)
