"""The controllers the evaluator drives: the :class:`Controller` protocol (reset, act on a batch of
environments) and :class:`PlanRecord`, the record of one planning call.

Kept below the planners, agents and the evaluator so each of them can depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


@dataclass
class PlanRecord:
    """One planning call, kept for reports: which envs, when, and what was planned."""

    step: int
    env_index: np.ndarray
    observations: np.ndarray  # (n, H, obs_dim)
    time_s: float
    proposed: np.ndarray | None = None  # (n,) bool: the plan kept was a proposer's candidate (None: no proposer)


class Controller(Protocol):
    """A batched closed-loop controller, what the evaluator drives: a planner with its tracker or
    receding-horizon rule (:class:`~diffplan.planning.controllers.PlanController`), or an agent acting
    directly (the BC baseline's :class:`~diffplan.baselines.bc.AgentController`)."""

    records: list[PlanRecord]

    def reset(self, n_envs: int) -> None: ...

    def act(
        self, step: int, observations: np.ndarray, goals: np.ndarray, active: np.ndarray, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray]: ...
