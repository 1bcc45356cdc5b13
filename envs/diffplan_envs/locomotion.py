"""Gymnasium MuJoCo locomotion tasks (Hopper, Walker2d, HalfCheetah v5) in the D4RL naming.

A task name is ``<robot>-<level>``, e.g. ``hopper-medium``: the robot fixes the environment
and D4RL's reference returns; the level names the dataset recipe (see
:mod:`diffplan_envs.collect_locomotion`). :class:`LocomotionBatch` steps N environments in
lockstep for the evaluator and isolates a failing environment to its own episode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np

from diffplan_envs.maze import StepResult
from diffplan_envs.reference_scores import D4RL_REF_SCORES, RefScores

#: Dataset levels of D4RL's locomotion suite, in the order one agent produces them.
LEVELS: tuple[str, ...] = ("random", "medium", "medium-replay", "expert", "medium-expert")


@dataclass(frozen=True)
class Robot:
    """One locomotion robot.

    Attributes:
        name: D4RL's environment name (``hopper``, ``walker2d``, ``halfcheetah``).
        env_id: the Gymnasium id.
        obs_dim / act_dim: observation and action sizes.
        qpos_dim / qvel_dim: MuJoCo state sizes (qpos includes the root x that the
            observation omits).
        episode_steps: the time limit (1000 for all three).
        terminates: whether the env ends episodes on falling (Hopper, Walker2d).
    """

    name: str
    env_id: str
    obs_dim: int
    act_dim: int
    qpos_dim: int
    qvel_dim: int
    episode_steps: int = 1000
    terminates: bool = True

    @property
    def ref_scores(self) -> RefScores:
        """D4RL's reference returns for this robot (the same for every level)."""
        return D4RL_REF_SCORES[self.name]


ROBOTS: dict[str, Robot] = {
    "hopper": Robot("hopper", "Hopper-v5", obs_dim=11, act_dim=3, qpos_dim=6, qvel_dim=6),
    "walker2d": Robot("walker2d", "Walker2d-v5", obs_dim=17, act_dim=6, qpos_dim=9, qvel_dim=9),
    "halfcheetah": Robot(
        "halfcheetah", "HalfCheetah-v5", obs_dim=17, act_dim=6, qpos_dim=9, qvel_dim=9, terminates=False
    ),
}


@dataclass(frozen=True)
class LocomotionTask:
    """A robot and a dataset level, e.g. ``hopper-medium``."""

    robot: Robot
    level: str

    @property
    def name(self) -> str:
        return f"{self.robot.name}-{self.level}"

    @property
    def env_id(self) -> str:
        return self.robot.env_id

    @property
    def obs_dim(self) -> int:
        return self.robot.obs_dim

    @property
    def act_dim(self) -> int:
        return self.robot.act_dim

    @property
    def episode_steps(self) -> int:
        return self.robot.episode_steps


def is_locomotion_task(name: str) -> bool:
    """True for names of the form ``<robot>-<level>`` with a known robot and level."""
    robot, _, level = name.partition("-")
    return robot in ROBOTS and level in LEVELS


def get_locomotion_task(name: str) -> LocomotionTask:
    """Parse ``<robot>-<level>``; raises ValueError naming the known robots and levels."""
    robot, _, level = name.partition("-")
    if robot not in ROBOTS or level not in LEVELS:
        raise ValueError(
            f"unknown locomotion task {name!r}: use <robot>-<level> with robot in {sorted(ROBOTS)} "
            f"and level in {list(LEVELS)}"
        )
    return LocomotionTask(ROBOTS[robot], level)


def make_locomotion_env(robot: Robot | str, **kwargs: Any) -> gymnasium.Env:
    """The robot's Gymnasium env with its standard time limit (v5 defaults otherwise)."""
    spec = ROBOTS[robot] if isinstance(robot, str) else robot
    return gymnasium.make(spec.env_id, max_episode_steps=spec.episode_steps, **kwargs)


def mujoco_state(env: gymnasium.Env) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the env's current (qpos, qvel)."""
    data = env.unwrapped.data  # type: ignore[attr-defined]
    return data.qpos.copy(), data.qvel.copy()


class LocomotionBatch:
    """N locomotion environments stepped in lockstep (the evaluator's ``BatchEnv``).

    ``reset`` returns (observations (N, obs_dim), goals (N, 0)): locomotion has no goal.
    ``step`` returns a :class:`~diffplan_envs.maze.StepResult`; ``success`` is always False
    (locomotion is scored by return). An env whose step raises is reported in ``errors``
    and left alone afterwards; the others go on.
    """

    def __init__(self, task: LocomotionTask | str, n_envs: int) -> None:
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        self.task = get_locomotion_task(task) if isinstance(task, str) else task
        self.envs = [make_locomotion_env(self.task.robot) for _ in range(n_envs)]
        self._obs = np.zeros((n_envs, self.task.obs_dim))

    @property
    def n_envs(self) -> int:
        return len(self.envs)

    def reset(self, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        if len(seeds) != self.n_envs:
            raise ValueError(f"reset needs one seed per env ({self.n_envs}), got {len(seeds)}")
        for i, (env, seed) in enumerate(zip(self.envs, seeds, strict=True)):
            self._obs[i] = env.reset(seed=int(seed))[0]
        return self._obs.copy(), np.zeros((self.n_envs, 0))

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> StepResult:
        n = self.n_envs
        active = np.ones(n, dtype=bool) if active is None else np.asarray(active, dtype=bool)
        reward = np.zeros(n)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        errors = np.full(n, "", dtype=object)
        for i in np.flatnonzero(active):
            try:
                obs, r, term, trunc, _ = self.envs[i].step(np.asarray(actions[i], dtype=np.float64))
            except Exception as error:  # noqa: BLE001 - recorded per env, never raised
                errors[i] = f"{type(error).__name__}: {error}"
                terminated[i] = True
                continue
            self._obs[i], reward[i], terminated[i], truncated[i] = obs, r, term, trunc
        return StepResult(
            obs=self._obs.copy(),
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            success=np.zeros(n, dtype=bool),
            errors=errors,
        )

    def close(self) -> None:
        for env in self.envs:
            env.close()
