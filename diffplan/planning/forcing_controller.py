"""Closed-loop Diffusion Forcing MPC for N environments stepped in lockstep.

Every ``execute`` environment steps the policy plans one window per active environment with
:class:`~diffplan.planning.forcing.ForcingPlanner`: the last ``min(n_history, steps so far)``
*real* transitions (the observed states and the actions executed in them) are the window's
clean history, the current observation is inpainted after them, and the planner diffuses
the rest along its scheduling matrix (guided, e.g. towards each environment's goal). The
next ``execute`` planned actions are run as they are (or, with a :class:`PDTracker`, a PD
controller steers towards the next planned states instead); then the policy replans. All
environments start together, so they share the history length and plan in one batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from diffplan.controllers import PlanRecord
from diffplan.planning.forcing import ForcingPlanner
from diffplan.planning.planner import Planner


@dataclass(frozen=True)
class PDTracker:
    """Follow planned states instead of running planned actions (``planner.forcing.track_states``):
    the action ``k`` steps after a plan is ``p_gain (pos_{k+1} - pos) + d_gain (vel_{k+1} - vel)``
    towards planned state k + 1 (Diffuser's maze tracker, time-indexed)."""

    position_dims: list[int]
    velocity_dims: list[int]
    p_gain: float = 1.0
    d_gain: float = 1.0

    def actions(self, targets: np.ndarray, observations: np.ndarray) -> np.ndarray:
        """(N, act_dim) from target states (N, obs_dim) and observations (N, obs_dim)."""
        pos, vel = self.position_dims, self.velocity_dims
        return self.p_gain * (targets[:, pos] - observations[:, pos]) + self.d_gain * (
            targets[:, vel] - observations[:, vel]
        )


@dataclass
class ForcingController:
    """Batched controller around a planner that conditions on history (``planner.mode=forcing``).

    Args:
        planner: the planner (a :class:`ForcingPlanner`); it gets the active environments' goals
            and their last ``n_history`` real transitions with each plan.
        execute: environment steps run per plan.
        n_history: the most real transitions given as history.
        action_low / action_high: the action box; history holds the executed (clipped) actions.
        tracker: follow the planned states with this PD tracker instead of running the planned
            actions (None: the plan's own actions, Diffusion Forcing's protocol).
    """

    planner: Planner
    execute: int
    n_history: int
    tracker: PDTracker | None = None
    action_low: float = -1.0
    action_high: float = 1.0
    records: list[PlanRecord] = field(default_factory=list)

    @classmethod
    def of(cls, planner: ForcingPlanner, *, tracker: PDTracker | None = None, action_low: float = -1.0,
           action_high: float = 1.0) -> ForcingController:
        """The controller of ``planner``, with its ``execute`` and ``n_history``."""
        return cls(planner, planner.execute, planner.n_history, tracker=tracker, action_low=action_low,
                   action_high=action_high)

    def __post_init__(self) -> None:
        if self.execute < 1 or self.n_history < 0:
            raise ValueError(f"execute must be >= 1 and n_history >= 0, got {self.execute} and {self.n_history}")
        self._observations: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._planned: np.ndarray | None = None
        self._targets: np.ndarray | None = None
        self._planned_at = -1

    def reset(self, n_envs: int) -> None:
        """Forget history and plans; the next :meth:`act` plans for every environment."""
        self._observations, self._actions = [], []
        self._planned, self._targets, self._planned_at = None, None, -1
        self.records = []

    def _history(self, index: np.ndarray, step: int) -> torch.Tensor:
        """(n, h, D) raw: the last h = min(n_history, step) real transitions of envs ``index``."""
        layout = self.planner.model.layout
        n_hist = min(self.n_history, step)
        history = torch.zeros(len(index), n_hist, layout.transition_dim)
        if n_hist:
            obs = np.stack(self._observations[step - n_hist:step], axis=1)[index]
            act = np.stack(self._actions[step - n_hist:step], axis=1)[index]
            history[..., layout.obs] = torch.as_tensor(obs, dtype=torch.float32)
            history[..., layout.act] = torch.as_tensor(act, dtype=torch.float32)
        return history

    def _plan(
        self, step: int, observations: np.ndarray, goals: np.ndarray, active: np.ndarray, generator: torch.Generator
    ) -> np.ndarray:
        """Plan for the active environments; returns the (N,) bool of non-finite plans."""
        layout, execute = self.planner.model.layout, self.execute
        n = len(observations)
        index = np.flatnonzero(active)
        history = self._history(index, step)
        start = time.perf_counter()
        plan = self.planner.plan(torch.as_tensor(observations[index], dtype=torch.float32), generator,
                                 goals=torch.as_tensor(goals[index], dtype=torch.float32), history=history)
        elapsed = time.perf_counter() - start
        if self._planned is None or self._targets is None:
            self._planned = np.zeros((n, execute, layout.act_dim))
            self._targets = np.zeros((n, execute, layout.obs_dim))
        self._planned[index] = plan.actions[:, :execute].double().numpy()
        self._targets[index] = plan.observations[:, 1:execute + 1].double().numpy()
        self._planned_at = step
        self.records.append(PlanRecord(step, index, plan.observations.numpy(), elapsed))
        bad = np.zeros(n, dtype=bool)
        bad[index] = ~plan.finite.numpy()
        return bad

    def act(
        self, step: int, observations: np.ndarray, goals: np.ndarray, active: np.ndarray, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Actions (N, act_dim) for step ``step`` and the (N,) bool of non-finite plans."""
        if step != len(self._actions):
            raise RuntimeError(
                f"ForcingController.act called for step {step} after {len(self._actions)} steps; reset first"
            )
        bad = np.zeros(len(observations), dtype=bool)
        if self._planned is None or step - self._planned_at >= self.execute:
            bad = self._plan(step, observations, goals, active, generator)
        assert self._planned is not None and self._targets is not None
        if self.tracker is not None:
            actions = self.tracker.actions(self._targets[:, step - self._planned_at], np.asarray(observations))
        else:
            actions = self._planned[:, step - self._planned_at]
        executed = np.clip(np.nan_to_num(actions), self.action_low, self.action_high)
        self._observations.append(np.asarray(observations, dtype=np.float64).copy())
        self._actions.append(executed)
        return actions, bad
