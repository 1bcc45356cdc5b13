"""Turn plans into actions for N environments stepped in lockstep.

Two execution modes:

- ``tracker``: a PD controller follows the planned states. With ``tracking = time``
  (Diffuser's maze protocol) the target ``t`` steps after planning is plan state ``t + 1``
  and, past the plan's end, its last position with zero velocity. With ``tracking =
  pursuit`` the target is the plan position ``lookahead`` tokens past the closest point
  of the plan ahead of the env's progress, with zero target velocity: the env follows
  the plan's path at the tracker's own pace instead of the plan's timing.
- ``actions``: the plan's own actions are executed (receding horizon).

``replan_every = 0`` plans once per episode (open loop); ``k > 0`` replans every k steps. With an
:class:`~diffplan.planning.history.ExecutedHistory`, every plan also gets the executed transitions
as clean history (Diffusion Forcing's MPC); such plans start at the current token and are shorter
than the window by the history's length.

:class:`RecedingHorizonController` holds the per-environment bookkeeping (plans, ages, who is
due, records) shared with :class:`diffplan.planning.value_planner.ValueController`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from diffplan.config import PlannerConfig
from diffplan.controllers import PlanRecord
from diffplan.enums import ExecutionMode, Tracking
from diffplan.guidance.per_env import EnvStrengths
from diffplan.planning.history import ExecutedHistory
from diffplan.planning.planner import Plan, Planner


def check_strengths(strengths: EnvStrengths | None, n_envs: int) -> None:
    """Per-environment strengths must cover exactly the batch's environments.

    Raises:
        ValueError: they cover another number of environments (e.g. eval.n_envs smaller than the
            batch the strengths were made for).
    """
    if strengths is not None and len(strengths) != n_envs:
        raise ValueError(
            f"per-environment guidance strengths cover {len(strengths)} environments but the batch has {n_envs}; "
            "a batched sweep evaluates every episode of its cells in one batch per seed"
        )


class RecedingHorizonController:
    """Per-environment plan bookkeeping shared by the batched policies.

    Keeps each environment's current plan (states and actions, padded with their last token to the
    longest plan; ``_last`` is each plan's own last token) and its age (environment steps since it
    was made; -1 before the first plan). :meth:`act` replans the active
    environments that are due (no plan yet, or ``cfg.replan_every > 0`` steps old), stores
    the plans, records the call, asks the subclass for actions and ages the active
    environments by one step. Subclasses define :meth:`_plan` (one or more planner calls
    for the due environments) and :meth:`_actions_from_plans`, and may extend
    :meth:`_needs_plan`, :meth:`reset` and :meth:`_store`.
    """

    cfg: PlannerConfig
    records: list[PlanRecord]
    _states: np.ndarray | None
    _actions: np.ndarray | None
    _age: np.ndarray | None
    _last: np.ndarray | None

    def _check_replan_every(self) -> None:
        if self.cfg.replan_every < 0:
            raise ValueError(f"planner.replan_every must be >= 0 (0 = plan once), got {self.cfg.replan_every}")

    def reset(self, n_envs: int) -> None:
        """Forget plans; the next :meth:`act` plans for every environment."""
        self._states = None
        self._actions = None
        self._age = np.full(n_envs, -1, dtype=np.int64)
        self._last = np.zeros(n_envs, dtype=np.int64)
        self.records = []

    def _needs_plan(self, active: np.ndarray) -> np.ndarray:
        assert self._age is not None
        fresh = self._age < 0
        if self.cfg.replan_every > 0:
            fresh |= self._age >= self.cfg.replan_every
        return fresh & active

    def _plan(
        self, index: np.ndarray, observations: np.ndarray, goals: np.ndarray, generator: torch.Generator
    ) -> list[tuple[np.ndarray, Plan]]:
        """Plans for the environments ``index``: (environments, plan) per planner call."""
        raise NotImplementedError

    def _actions_from_plans(self, observations: np.ndarray) -> np.ndarray:
        """Actions (N, act_dim) of every environment from its stored plan and age."""
        raise NotImplementedError

    def act(
        self, step: int, observations: np.ndarray, goals: np.ndarray, active: np.ndarray, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Actions (N, act_dim) for the active environments, and a (N,) bool of envs whose
        plan came out non-finite (the evaluator records them as failed)."""
        if self._age is None:
            self.reset(len(observations))
        assert self._age is not None
        bad = np.zeros(len(observations), dtype=bool)
        replan = self._needs_plan(active)
        if replan.any():
            for index, plan in self._plan(np.flatnonzero(replan), observations, goals, generator):
                self._store(index, plan)
                self._age[index] = 0
                bad[index] = ~plan.finite.numpy()
                self.records.append(PlanRecord(step, index, plan.observations.numpy(), plan.plan_time_s,
                                               None if plan.proposed is None else plan.proposed.numpy()))
        actions = self._actions_from_plans(observations)
        self._age[active] += 1
        return actions, bad

    def _store(self, index: np.ndarray, plan: Plan) -> None:
        states, acts = plan.observations.numpy(), plan.actions.numpy()
        n = len(self._age) if self._age is not None else len(index)
        if self._last is None or len(self._last) != n:
            self._last = np.zeros(n, dtype=np.int64)
        length = states.shape[1]
        if self._states is None or self._actions is None:
            self._states = np.zeros((n, length, states.shape[2]), dtype=np.float64)
            self._actions = np.zeros((n, length, acts.shape[2]), dtype=np.float64)
        elif length > self._states.shape[1]:
            grow = length - self._states.shape[1]
            self._states = np.pad(self._states, ((0, 0), (0, grow), (0, 0)), mode="edge")
            self._actions = np.pad(self._actions, ((0, 0), (0, grow), (0, 0)), mode="edge")
        pad = ((0, 0), (0, self._states.shape[1] - length), (0, 0))
        self._states[index] = np.pad(states, pad, mode="edge")
        self._actions[index] = np.pad(acts, pad, mode="edge")
        self._last[index] = length - 1

    def _planned_actions(self) -> np.ndarray:
        """(N, act_dim) the stored plans' actions at each env's age (the last one past the end)."""
        assert self._actions is not None and self._age is not None and self._last is not None
        rows = np.arange(len(self._age))
        return self._actions[rows, np.minimum(np.clip(self._age, 0, None), self._last)]


@dataclass
class PlanController(RecedingHorizonController):
    """Batched closed-loop policy around a goal-reaching :class:`~diffplan.planning.planner.Planner`.

    Args:
        planner: the batched planner.
        cfg: execution mode, replanning interval and tracker gains.
        position_dims / velocity_dims: observation channels the tracker uses.
        stride: environment steps between plan tokens (the model's ``task.stride``).
        strengths: per-environment guidance strengths of a batched guidance sweep (one row per
            environment of the batch), handed to the planner for the environments it plans
            for; None plans with the planner's own guidance.
        history: record the executed steps and hand each plan its clean history (a planner that
            conditions on history, :class:`~diffplan.planning.forcing.ForcingPlanner`); None: none.
            With ``cfg.forcing.hold_arrival`` a replan also gets each environment's arrival: the
            tokens its previous plan still had to go to the goal past the environment's progress
            along it (pursuit: the tracker's progress; otherwise the plan's age in tokens).
    """

    planner: Planner
    cfg: PlannerConfig
    position_dims: list[int]
    velocity_dims: list[int]
    stride: int = 1
    records: list[PlanRecord] = field(default_factory=list)
    strengths: EnvStrengths | None = None
    history: ExecutedHistory | None = None

    def __post_init__(self) -> None:
        if self.cfg.tracker.replan_on_stall < 0:
            raise ValueError(f"planner.tracker.replan_on_stall must be >= 0 (0 = off), got "
                f"{self.cfg.tracker.replan_on_stall}")
        if self.cfg.tracker.lookahead < 0:
            raise ValueError(f"planner.tracker.lookahead must be >= 0, got {self.cfg.tracker.lookahead}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.stride > 1 and ExecutionMode(self.cfg.mode) is ExecutionMode.actions:
            raise ValueError(
                f"planner.mode=actions needs a model trained with task.stride=1 (got {self.stride}): strided "
                "plans do not hold the actions between tokens; use planner.mode=tracker"
            )
        self._check_replan_every()
        if ExecutionMode(self.cfg.mode) is ExecutionMode.tracker and len(self.position_dims) != len(
            self.velocity_dims
        ):
            raise ValueError("the tracker needs as many velocity dims as position dims (task.velocity_obs_dims)")
        self._states: np.ndarray | None = None
        self._actions: np.ndarray | None = None
        self._age: np.ndarray | None = None
        self._progress: np.ndarray | None = None
        self._stalled: np.ndarray | None = None
        self._arrival: np.ndarray | None = None
        self._settled: np.ndarray | None = None

    def reset(self, n_envs: int) -> None:
        """Forget plans; the next :meth:`act` plans for every environment."""
        check_strengths(self.strengths, n_envs)
        super().reset(n_envs)
        self._progress = np.zeros(n_envs, dtype=np.int64)
        self._stalled = np.zeros(n_envs, dtype=np.int64)
        self._arrival = np.zeros(n_envs, dtype=np.int64)
        self._settled = None
        if self.history is not None:
            self.history.reset()

    def act(
        self, step: int, observations: np.ndarray, goals: np.ndarray, active: np.ndarray, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`RecedingHorizonController.act`, then the step is recorded in the history (if any)."""
        if self.history is not None and step != self.history.steps:
            raise RuntimeError(f"act called for step {step} after {self.history.steps} steps; reset first")
        actions, bad = super().act(step, observations, goals, active, generator)
        if self.history is not None:
            self.history.record(step, observations, actions)
        return actions, bad

    def _needs_plan(self, active: np.ndarray) -> np.ndarray:
        fresh = super()._needs_plan(active)
        if self.cfg.tracker.replan_on_stall > 0 and self._stalled is not None:
            fresh |= (self._stalled >= self.cfg.tracker.replan_on_stall) & active
        return fresh

    def _plan(
        self, index: np.ndarray, observations: np.ndarray, goals: np.ndarray, generator: torch.Generator
    ) -> list[tuple[np.ndarray, Plan]]:
        obs, goal = torch.as_tensor(observations[index]), torch.as_tensor(goals[index])
        extra: dict[str, Any] = {}
        if self.history is not None:
            # Lockstep: every due environment is at the same step, so their histories are equally long.
            extra["history"] = self.history.tokens(index, self.planner.model.layout)
            if self.cfg.forcing.hold_arrival:
                extra["arrival"] = torch.as_tensor(self._remaining(index))
        if self.strengths is not None:
            extra["strengths"] = self.strengths.select(index)
        plan = self.planner.plan(obs, generator, goals=goal, **extra)
        if "arrival" in extra and self._arrival is not None:
            chosen = extra["arrival"] if plan.arrival is None else plan.arrival
            self._arrival[index] = np.clip(chosen.numpy(), 1, max(plan.observations.shape[1] - 1, 1))
        return [(index, plan)]

    def _store(self, index: np.ndarray, plan: Plan) -> None:
        super()._store(index, plan)
        assert self._states is not None and self._last is not None
        n = len(self._last)
        if self._settled is None or len(self._settled) != n:
            self._settled = np.zeros(n, dtype=np.int64)
        self._settled[index] = settled_token(self._states[index][:, :, self.position_dims], self._last[index])

    def _remaining(self, index: np.ndarray) -> np.ndarray:
        """(len(index),) tokens each environment's plan still had to go to its arrival token past the
        environment's progress along it; a large number (the window's last token) before a first plan."""
        assert self._age is not None and self._arrival is not None
        first = np.iinfo(np.int32).max
        if self._states is None:
            return np.full(len(index), first, dtype=np.int64)
        if Tracking(self.cfg.tracker.tracking) is Tracking.pursuit and ExecutionMode(self.cfg.mode) is \
                ExecutionMode.tracker and self._progress is not None:
            progress = self._progress[index]
        else:
            progress = np.clip(self._age[index], 0, None) // self.stride
        remaining = np.maximum(self._arrival[index] - progress, 0)
        return np.where(self._age[index] < 0, first, remaining)

    def _pursuit_index(self, positions: np.ndarray) -> np.ndarray:
        """(N,) plan index to steer to: ``lookahead`` tokens past the closest plan point
        not behind the env's progress along its plan (progress never moves backwards)."""
        assert self._states is not None and self._progress is not None and self._age is not None
        assert self._last is not None
        plan_pos = self._states[:, :, self.position_dims]  # (N, H, P)
        distance = np.linalg.norm(plan_pos - positions[:, None, :], axis=-1)  # (N, H)
        token = np.arange(self._states.shape[1])
        fresh = self._age == 0
        self._progress[fresh] = 0
        distance[(token[None, :] < self._progress[:, None]) | (token[None, :] > self._last[:, None])] = np.inf
        progress = distance.argmin(axis=1)
        if self._stalled is not None:
            # Stalled: no progress while the plan's end is still ahead of the lookahead target, and the
            # environment has not reached the token from which its plan holds still (a goal held after
            # arrival): one waiting there is done, not stuck.
            stuck = (progress <= self._progress) & (progress + self.cfg.tracker.lookahead < self._last) & ~fresh
            if self._settled is not None:
                stuck &= progress < self._settled
            self._stalled = np.where(stuck, self._stalled + 1, 0)
        self._progress = progress
        return np.minimum(self._progress + self.cfg.tracker.lookahead, self._last)

    def _actions_from_plans(self, observations: np.ndarray) -> np.ndarray:
        assert self._states is not None and self._actions is not None and self._age is not None
        assert self._last is not None
        rows = np.arange(len(observations))
        age = np.clip(self._age, 0, None)
        if ExecutionMode(self.cfg.mode) is ExecutionMode.actions:
            return self._planned_actions()
        pos, vel = self.position_dims, self.velocity_dims
        if Tracking(self.cfg.tracker.tracking) is Tracking.pursuit:
            index = self._pursuit_index(observations[:, pos])
            target = self._states[rows, index].copy()
            target[:, vel] = 0.0
        else:
            token = age // self.stride + 1
            target = self._states[rows, np.minimum(token, self._last)].copy()
            past_end = token > self._last
            target[np.ix_(past_end, vel)] = 0.0
        return self.cfg.tracker.p_gain * (target[:, pos] - observations[:, pos]) + self.cfg.tracker.d_gain * (
            target[:, vel] - observations[:, vel]
        )


def settled_token(positions: np.ndarray, last: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """(N,) the first token from which each plan's positions (N, H, P) stay where its token ``last``
    is (within ``tol`` per entry, relative to the position's size): the start of a held goal, or
    ``last`` for a plan that moves to its end."""
    rows = np.arange(len(positions))
    final = positions[rows, last][:, None, :]
    token = np.arange(positions.shape[1])
    still = (np.abs(positions - final) <= tol * (1.0 + np.abs(final))).all(axis=-1) | (token[None, :] > last[:, None])
    # The first token of the run of still tokens that ends the plan: one past the last moving token.
    moving = ~still
    last_moving = np.where(moving.any(axis=1), positions.shape[1] - 1 - np.argmax(moving[:, ::-1], axis=1), -1)
    return np.minimum(last_moving + 1, last).astype(np.int64)
