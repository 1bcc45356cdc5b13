"""Raw-MuJoCo twins of :class:`~diffplan_envs.maze.MazeBatch` and
:class:`~diffplan_envs.locomotion.LocomotionBatch` (the evaluator's ``physics="mujoco"``, and
``physics="mjx"`` with MJX stepping the same rules).

The N environments of a batch are N simulations of one model in a :class:`mujoco.batch.Batch`
(MuJoCo >= 4): one C call steps them all, and the task around the physics (observations, rewards,
terminations, time limits, reset noise, PointMaze's goals) is vectorized numpy over the batch
instead of N Gymnasium environments stepped one at a time in Python. The semantics are copied
from the Gymnasium sources, which stay the reference: ``gymnasium/envs/mujoco/{hopper,walker2d,
half_cheetah}_v5.py`` and gymnasium-robotics' ``envs/maze/{point_maze,maze_v4,point}.py``
(``PointMaze_*-v3``, sparse reward). Each reset seed seeds a generator exactly as
``gymnasium.Env.reset(seed=...)`` does, so the same seeds give the same initial states, and the
physics calls are the ones those envs make (``mj_resetData``, the state, ``mj_forward``, then
``mj_step`` with the frame skip), so the states agree bit for bit; tests/test_physics_backends.py
checks observations, rewards, terminations and truncations against Gymnasium step by step.

Each batch builds one Gymnasium environment to read the model and the task's constants from it.

The physics is the one part a backend supplies: a :class:`Simulations` (N simulations of one model,
their state as (N, ...) arrays, a reset and a step of ``nstep`` substeps). ``physics="mujoco"`` is
:class:`_Simulations` here; ``physics="mjx"`` is :class:`diffplan_envs.mjx_batch.MjxSimulations`
(MuJoCo's JAX backend), under the same task rules.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import mujoco
import numpy as np
from gymnasium.utils.seeding import np_random

from diffplan_envs.locomotion import LocomotionBatch, LocomotionTask, get_locomotion_task, make_locomotion_env
from diffplan_envs.maze import (
    GOAL_RADIUS,
    MazeBatch,
    MazeTask,
    StepResult,
    geometry_from_env,
    get_maze_task,
    make_maze_env,
)

#: The physics backends of the evaluator's batches: Gymnasium envs (the reference), raw MuJoCo, MJX
#: (MuJoCo's JAX backend, the ``mjx`` extra: diffplan_envs.mjx_batch) or MuJoCo Warp (the ``warp``
#: extra: diffplan_envs.warp_batch).
PHYSICS_BACKENDS: tuple[str, ...] = ("gymnasium", "mujoco", "mjx", "warp")


def check_physics(physics: str) -> str:
    """``physics`` if it names a backend, else a ValueError naming the choices."""
    if physics not in PHYSICS_BACKENDS:
        raise ValueError(f"unknown physics backend {physics!r}; set eval.physics to one of {list(PHYSICS_BACKENDS)}")
    return physics


def require_mujoco_batch() -> ModuleType:
    """:mod:`mujoco.batch` (MuJoCo >= 4), or a ValueError saying how to get it or do without."""
    try:
        return importlib.import_module("mujoco.batch")
    except ImportError as error:
        raise ValueError(
            f"eval.physics=mujoco needs mujoco>=4.0 (mujoco.batch), found mujoco {mujoco.__version__}; "
            "upgrade with pip install -U 'mujoco>=4' or set eval.physics=gymnasium"
        ) from error


class Simulations(Protocol):
    """N simulations of one model stepped together: all a batch or a replay below needs of a physics
    backend. ``qpos`` (N, nq), ``qvel`` (N, nv) and ``ctrl`` (N, nu) float64 hold the state and
    controls the next :meth:`step` starts from (writing a row sets them) and, after it, its result."""

    n: int
    qpos: np.ndarray
    qvel: np.ndarray
    ctrl: np.ndarray

    def reset(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """Gymnasium's reset of every simulation: ``mj_resetData``, then the state (qpos, qvel)."""

    def reset_rows(self, active: np.ndarray) -> None:
        """``mj_resetData`` of the ``active`` (N,) simulations: the state every replayed transition
        starts from before its observation is written (qacc_warmstart zero, time zero)."""

    def step(self, active: np.ndarray, nstep: int) -> tuple[np.ndarray, np.ndarray]:
        """``nstep`` mj_steps of the ``active`` (N,) simulations.

        Returns:
            errors: (N,) str, empty but where the simulation failed (it keeps the state it had
                before the call; the others run to completion).
            stepped: (N,) bool, the active simulations that ran.
        """
        ...


class _Simulations:
    """N simulations of one model (the :class:`Simulations` of ``physics="mujoco"``): a
    :class:`mujoco.batch.Batch` and live (N, ...) views of its state rows (writing one is the
    simulation's state at its next call).

    It runs on ``threads`` threads (0: every CPU), but at most one per ``per_thread`` simulations:
    waking a thread costs about what a few PointMaze steps do. The results do not depend on the
    count; a busy machine does slow the threads down (docs/COMMANDS.md, "Physics backends")."""

    def __init__(self, model: mujoco.MjModel, n: int, threads: int, per_thread: int) -> None:
        batch = require_mujoco_batch()
        if threads < 0:
            raise ValueError(f"threads must be >= 0 (0: every CPU), got {threads}")
        threads = min(threads or os.cpu_count() or 1, max(1, n // per_thread))
        self._error_type = batch.SimulationError
        self.batch = batch.Batch(model, nsim=n, nthread=threads)
        self.n = n
        self.qpos: np.ndarray = self.batch.bind("qpos")  # (N, nq)
        self.qvel: np.ndarray = self.batch.bind("qvel")  # (N, nv)
        self.ctrl: np.ndarray = self.batch.bind("ctrl")  # (N, nu)

    def reset(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """Gymnasium's reset of every simulation: ``mj_resetData``, ``set_state(qpos, qvel)``,
        which ends with ``mj_forward``."""
        self.batch.reset(stage=mujoco.mjtStage.mjSTAGE_NONE)
        self.qpos[:] = qpos
        self.qvel[:] = qvel
        self.batch.forward()

    def reset_rows(self, active: np.ndarray) -> None:
        """``mj_resetData`` of the active simulations (:meth:`Simulations.reset_rows`)."""
        self.batch.reset(None if active.all() else np.flatnonzero(active), stage=mujoco.mjtStage.mjSTAGE_NONE)

    def step(self, active: np.ndarray, nstep: int) -> tuple[np.ndarray, np.ndarray]:
        """``nstep`` mj_steps of the ``active`` simulations (:meth:`Simulations.step`; the errors are
        those MuJoCo raised)."""
        errors = np.full(self.n, "", dtype=object)
        try:
            self.batch.step(None if active.all() else np.flatnonzero(active), nstep=nstep)
        except self._error_type as error:
            for i in error.ids:
                errors[i] = f"mujoco: {self.batch.error(int(i))}"
            return errors, active & (errors == "")
        return errors, active


def simulations(physics: str, model: mujoco.MjModel, n: int, threads: int, per_thread: int) -> Simulations:
    """``n`` simulations of ``model`` on the ``physics`` backend (``mujoco``, ``mjx`` or ``warp``);
    ``threads`` and ``per_thread`` for ``mujoco`` (MJX runs on its JAX device, MuJoCo Warp on Warp's)."""
    if check_physics(physics) == "mjx":
        from diffplan_envs.mjx_batch import MjxSimulations

        return MjxSimulations(model, n)
    if physics == "warp":
        from diffplan_envs.warp_batch import WarpSimulations

        return WarpSimulations(model, n)
    if physics != "mujoco":
        raise ValueError(f"physics={physics!r} steps Gymnasium envs, not simulations; use 'mujoco', 'mjx' or 'warp'")
    return _Simulations(model, n, threads, per_thread)


def _actions(actions: np.ndarray, n: int, act_dim: int) -> np.ndarray:
    actions = np.asarray(actions, dtype=np.float64)
    if actions.shape != (n, act_dim):
        raise ValueError(f"actions must have shape {(n, act_dim)}, got {actions.shape}.")
    return actions


def _active(active: np.ndarray | None, n: int) -> np.ndarray:
    mask = np.ones(n, dtype=bool) if active is None else np.asarray(active, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"active must have shape ({n},), got {mask.shape}.")
    return mask


class MujocoMazeBatch:
    """N PointMaze envs as N simulations of one MuJoCo model: :class:`MazeBatch`'s interface and
    results (``PointMaze_*-v3``, sparse reward) without N Gymnasium envs, on the ``physics`` backend
    (``mujoco``: :mod:`mujoco.batch` on ``threads`` threads, 0: every CPU; ``mjx``: MJX).

    Per step, as ``PointMazeEnv.step``: the action is clipped to [-1, 1], the ball's velocity to
    [-5, 5], one ``mj_step``; reward 1 when the ball ends within 0.45 of the goal; terminated on
    reaching the goal only without ``continuing_task``; with ``reset_target`` a reached goal is
    redrawn from the env's generator; truncated at the time limit.
    """

    def __init__(
        self,
        task: str | MazeTask,
        n_envs: int,
        *,
        continuing_task: bool = True,
        reset_target: bool = False,
        max_episode_steps: int | None = None,
        threads: int = 0,
        physics: str = "mujoco",
    ) -> None:
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}.")
        self.task = get_maze_task(task)
        env = make_maze_env(self.task, continuing_task=continuing_task, reset_target=reset_target,
                            max_episode_steps=max_episode_steps)
        try:
            maze_env: Any = env.unwrapped
            self.geometry = geometry_from_env(env)
            self._goal_cells = [np.asarray(xy, dtype=np.float64) for xy in maze_env.maze.unique_goal_locations]
            self._reset_cells = [np.asarray(xy, dtype=np.float64) for xy in maze_env.maze.unique_reset_locations]
            self._scaling = float(maze_env.maze.maze_size_scaling)
            self._noise_range = float(maze_env.position_noise_range)
            # the TimeLimit wrapper's limit: max_episode_steps, or the registered one
            self._max_steps: int | None = env.spec.max_episode_steps if env.spec is not None else None
            model = maze_env.point_env.model
            self._init_qvel = np.zeros(model.nv)
        finally:
            env.close()
        self._continuing = continuing_task
        self._reset_target = reset_target
        self._sims = simulations(physics, model, n_envs, threads, per_thread=8)
        self._rngs: list[np.random.Generator] = []
        self._goals = np.zeros((n_envs, 2))
        self._elapsed = np.zeros(n_envs, dtype=np.int64)
        self._obs = np.zeros((n_envs, self.task.obs_dim))
        self._terminated = np.zeros(n_envs, dtype=bool)
        self._truncated = np.zeros(n_envs, dtype=bool)
        self._success = np.zeros(n_envs, dtype=bool)

    @property
    def n_envs(self) -> int:
        return self._sims.n

    @property
    def goals(self) -> np.ndarray:
        """(N, 2) float64 current goal of each env."""
        return self._goals.copy()

    @property
    def qpos(self) -> np.ndarray:
        """(N, 2) float64 ball positions."""
        return np.array(self._sims.qpos, dtype=np.float64)

    @property
    def qvel(self) -> np.ndarray:
        """(N, 2) float64 ball velocities."""
        return np.array(self._sims.qvel, dtype=np.float64)

    def _position_noise(self, rng: np.random.Generator, xy: np.ndarray) -> np.ndarray:
        """``MazeEnv.add_xy_position_noise``: x then y, each uniform in +-0.25 cells."""
        noise_x = rng.uniform(low=-self._noise_range, high=self._noise_range) * self._scaling
        noise_y = rng.uniform(low=-self._noise_range, high=self._noise_range) * self._scaling
        xy[0] += noise_x
        xy[1] += noise_y
        return xy

    def _draw_goal(self, rng: np.random.Generator) -> np.ndarray:
        """``MazeEnv.generate_target_goal`` with its position noise."""
        goal = self._goal_cells[int(rng.integers(low=0, high=len(self._goal_cells)))].copy()
        return self._position_noise(rng, goal)

    def _draw_start(self, rng: np.random.Generator, goal: np.ndarray) -> np.ndarray:
        """``MazeEnv.generate_reset_pos`` (a cell more than half a cell from the goal) with its noise."""
        start = goal.copy()
        while np.linalg.norm(start - goal) <= 0.5 * self._scaling:
            start = self._reset_cells[int(rng.integers(low=0, high=len(self._reset_cells)))].copy()
        return self._position_noise(rng, start)

    def reset(self, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Reset env i with ``seeds[i]``; returns obs (N, 4) float64 and goal (N, 2) float64."""
        if len(seeds) != self.n_envs:
            raise ValueError(f"Need one seed per env: got {len(seeds)} seeds for {self.n_envs} envs.")
        self._rngs = [np_random(int(seed))[0] for seed in seeds]
        starts = np.zeros((self.n_envs, 2))
        for i, rng in enumerate(self._rngs):
            self._goals[i] = self._draw_goal(rng)
            starts[i] = self._draw_start(rng, self._goals[i])
        self._sims.reset(starts, self._init_qvel)
        self._obs[:, :2] = self._sims.qpos
        self._obs[:, 2:] = self._sims.qvel
        self._success[:] = np.linalg.norm(self._obs[:, :2] - self._goals, axis=-1) <= GOAL_RADIUS
        self._elapsed[:] = 0
        self._terminated[:] = False
        self._truncated[:] = False
        return self._obs.copy(), self.goals

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> StepResult:
        """Step the active envs (as :meth:`MazeBatch.step`).

        Args:
            actions: (N, 2) actions (clipped to [-1, 1] as the env does).
            active: (N,) bool mask; inactive envs are not stepped, their obs/terminated/
                truncated/success repeat the last values and their reward is 0. None = all.
        """
        n, sims = self.n_envs, self._sims
        actions = np.clip(_actions(actions, n, self.task.act_dim), -1.0, 1.0)
        mask = _active(active, n)
        if not self._rngs:
            raise ValueError("step() before reset(): reset the batch with one seed per env first.")
        # PointEnv._clip_velocity writes the clipped velocity through set_state, whose mj_forward
        # leaves the state (qpos, qvel, warm start) as it was: mj_step starts with its own.
        np.clip(sims.qvel, -5.0, 5.0, out=sims.qvel, where=mask[:, None])
        sims.ctrl[:] = actions
        errors, stepped = sims.step(mask, 1)
        self._elapsed += stepped
        # the state of an env that did not step is that of its last observation
        self._obs[:, :2] = sims.qpos
        self._obs[:, 2:] = sims.qvel
        reached = np.linalg.norm(self._obs[:, :2] - self._goals, axis=-1) <= GOAL_RADIUS
        reward = np.where(stepped & reached, 1.0, 0.0)
        np.copyto(self._success, reached, where=stepped)
        if not self._continuing:
            np.copyto(self._terminated, reached, where=stepped)
        if self._max_steps is not None:
            np.copyto(self._truncated, self._elapsed >= self._max_steps, where=stepped)
        if self._continuing and self._reset_target and len(self._goal_cells) > 1:
            for i in np.flatnonzero(stepped & reached):  # MazeEnv.update_goal
                while np.linalg.norm(self._obs[i, :2] - self._goals[i]) <= GOAL_RADIUS:
                    self._goals[i] = self._draw_goal(self._rngs[i])
        return StepResult(
            obs=self._obs.copy(),
            reward=reward,
            terminated=self._terminated.copy(),
            truncated=self._truncated.copy(),
            success=self._success.copy(),
            errors=errors,
        )

    def close(self) -> None:
        """Nothing to release (the batch's memory goes with it); for the BatchEnv interface."""


@dataclass(frozen=True)
class _LocomotionRules:
    """What a v5 locomotion env computes around the physics, read from one env of the robot.

    Attributes:
        frame_skip: mj_steps per env step.
        dt: ``timestep * frame_skip`` (the forward velocity's denominator).
        forward_weight / ctrl_weight: the reward's weights.
        healthy_reward: paid per step while healthy (0 for HalfCheetah, which has no health).
        healthy_z / healthy_angle: open ranges of qpos[1] and qpos[2]; None: no such condition.
        healthy_state: open range of every entry of (qpos, qvel)[2:] (Hopper); None: none.
        terminate: whether an unhealthy state ends the episode.
        velocity_clip: the observation's qvel is clipped to +-this (Hopper, Walker2d); None: not.
        skip_x: the observation leaves out qpos[0].
        noise_scale: reset noise: uniform in +-this on qpos; on qvel too, or this times a standard
            normal with ``normal_velocity_noise`` (HalfCheetah).
    """

    frame_skip: int
    dt: float
    forward_weight: float
    ctrl_weight: float
    healthy_reward: float
    healthy_z: tuple[float, float] | None
    healthy_angle: tuple[float, float] | None
    healthy_state: tuple[float, float] | None
    terminate: bool
    velocity_clip: float | None
    skip_x: bool
    noise_scale: float
    normal_velocity_noise: bool


def _rules(robot: str, env: Any) -> _LocomotionRules:
    """The rules of ``robot``'s v5 env (its constructor defaults, read from the built env)."""
    terminates = robot in ("hopper", "walker2d")
    return _LocomotionRules(
        frame_skip=int(env.frame_skip),
        dt=float(env.dt),
        forward_weight=float(env._forward_reward_weight),
        ctrl_weight=float(env._ctrl_cost_weight),
        healthy_reward=float(env._healthy_reward) if terminates else 0.0,
        healthy_z=tuple(env._healthy_z_range) if terminates else None,
        healthy_angle=tuple(env._healthy_angle_range) if terminates else None,
        healthy_state=tuple(env._healthy_state_range) if robot == "hopper" else None,
        terminate=terminates and bool(env._terminate_when_unhealthy),
        velocity_clip=10.0 if terminates else None,
        skip_x=bool(env._exclude_current_positions_from_observation),
        noise_scale=float(env._reset_noise_scale),
        normal_velocity_noise=robot == "halfcheetah",
    )


def _locomotion_observations(rules: _LocomotionRules, qpos: np.ndarray, qvel: np.ndarray, out: np.ndarray) -> None:
    """The v5 envs' ``_get_obs`` of (N, nq) ``qpos`` and (N, nv) ``qvel`` into ``out`` (N, obs_dim):
    qpos without the root x, then qvel (clipped for Hopper and Walker2d)."""
    n_pos = qpos.shape[1] - rules.skip_x
    out[:, :n_pos] = qpos[:, 1:] if rules.skip_x else qpos
    if rules.velocity_clip is None:
        out[:, n_pos:] = qvel
    else:
        np.clip(qvel, -rules.velocity_clip, rules.velocity_clip, out=out[:, n_pos:])


def _locomotion_healthy(rules: _LocomotionRules, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
    """(N,) bool: the v5 envs' ``is_healthy`` (all True without health conditions)."""
    healthy = np.ones(qpos.shape[0], dtype=bool)
    if rules.healthy_z is not None:
        z = qpos[:, 1]
        healthy &= (rules.healthy_z[0] < z) & (z < rules.healthy_z[1])
    if rules.healthy_angle is not None:
        angle = qpos[:, 2]
        healthy &= (rules.healthy_angle[0] < angle) & (angle < rules.healthy_angle[1])
    if rules.healthy_state is not None:  # every entry of state_vector()[2:]
        low, high = rules.healthy_state
        for part in (qpos[:, 2:], qvel):
            healthy &= ((low < part) & (part < high)).all(axis=1)
    return healthy


class MujocoLocomotionBatch:
    """N locomotion envs (Hopper, Walker2d, HalfCheetah v5) as N simulations of one MuJoCo model:
    :class:`LocomotionBatch`'s interface and results without N Gymnasium envs, on the ``physics``
    backend (as :class:`MujocoMazeBatch`).

    Per step, as the v5 envs: ``frame_skip`` mj_steps with the action as control; reward =
    forward weight * x velocity + healthy reward - control weight * sum(action**2); terminated
    when unhealthy (Hopper, Walker2d); truncated after 1000 steps. An env MuJoCo raises in is
    reported in ``errors`` and terminated, as in :class:`LocomotionBatch`.
    """

    def __init__(self, task: LocomotionTask | str, n_envs: int, *, threads: int = 0, physics: str = "mujoco") -> None:
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        self.task = get_locomotion_task(task) if isinstance(task, str) else task
        env = make_locomotion_env(self.task.robot)
        try:
            inner: Any = env.unwrapped
            self._rules = _rules(self.task.robot.name, inner)
            self._init_qpos = inner.init_qpos.copy()
            self._init_qvel = inner.init_qvel.copy()
            model = inner.model
        finally:
            env.close()
        self._max_steps = self.task.episode_steps
        self._sims = simulations(physics, model, n_envs, threads, per_thread=1)
        self._elapsed = np.zeros(n_envs, dtype=np.int64)
        self._obs = np.zeros((n_envs, self.task.obs_dim))

    @property
    def n_envs(self) -> int:
        return self._sims.n

    def _observe(self) -> None:
        """``_get_obs`` of every simulation into ``self._obs``: (qpos[1:], clipped qvel)."""
        _locomotion_observations(self._rules, self._sims.qpos, self._sims.qvel, self._obs)

    def _healthy(self) -> np.ndarray:
        """(N,) bool: ``is_healthy`` of every simulation (all True without health conditions)."""
        return _locomotion_healthy(self._rules, self._sims.qpos, self._sims.qvel)

    def reset(self, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Reset env i with ``seeds[i]``; returns (observations (N, obs_dim), goals (N, 0))."""
        if len(seeds) != self.n_envs:
            raise ValueError(f"reset needs one seed per env ({self.n_envs}), got {len(seeds)}")
        scale = self._rules.noise_scale
        nq, nv = self._init_qpos.size, self._init_qvel.size
        qpos = np.zeros((self.n_envs, nq))
        qvel = np.zeros((self.n_envs, nv))
        for i, seed in enumerate(seeds):  # reset_model's draws, in its order
            rng = np_random(int(seed))[0]
            qpos[i] = self._init_qpos + rng.uniform(low=-scale, high=scale, size=nq)
            if self._rules.normal_velocity_noise:
                qvel[i] = self._init_qvel + scale * rng.standard_normal(nv)
            else:
                qvel[i] = self._init_qvel + rng.uniform(low=-scale, high=scale, size=nv)
        self._sims.reset(qpos, qvel)
        self._elapsed[:] = 0
        self._observe()
        return self._obs.copy(), np.zeros((self.n_envs, 0))

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> StepResult:
        """Step the active envs (as :meth:`LocomotionBatch.step`): inactive ones keep their
        observation and report reward 0, not terminated, not truncated."""
        n, rules, sims = self.n_envs, self._rules, self._sims
        actions = _actions(actions, n, self.task.act_dim)
        mask = _active(active, n)
        x_before = sims.qpos[:, 0].copy()
        sims.ctrl[:] = actions
        errors, stepped = sims.step(mask, rules.frame_skip)
        self._elapsed += stepped
        self._observe()  # the state of an env that did not step is that of its last observation
        x_velocity = (sims.qpos[:, 0] - x_before) / rules.dt
        healthy = self._healthy()
        # the v5 envs' (forward_reward + healthy_reward) - ctrl_cost, term by term
        forward_reward = rules.forward_weight * x_velocity
        ctrl_cost = rules.ctrl_weight * np.sum(np.square(actions), axis=1)
        reward = np.where(stepped, forward_reward + healthy * rules.healthy_reward - ctrl_cost, 0.0)
        terminated = stepped & ~healthy if rules.terminate else np.zeros(n, dtype=bool)
        terminated |= mask & ~stepped  # MuJoCo raised: the env's episode ends, as in LocomotionBatch
        return StepResult(
            obs=self._obs.copy(),
            reward=reward,
            terminated=terminated,
            truncated=stepped & (self._elapsed >= self._max_steps),
            success=np.zeros(n, dtype=bool),
            errors=errors,
        )

    def close(self) -> None:
        """Nothing to release (the batch's memory goes with it); for the BatchEnv interface."""


def maze_batch(
    task: str | MazeTask, n_envs: int, *, physics: str = "gymnasium", threads: int = 0, **kwargs: Any
) -> MazeBatch | MujocoMazeBatch:
    """A batch of ``n_envs`` PointMaze envs on the ``physics`` backend (see :data:`PHYSICS_BACKENDS`);
    ``threads`` for the mujoco backend (0: every CPU); ``kwargs`` go to the batch
    (``continuing_task``, ``reset_target``, ``max_episode_steps``)."""
    if check_physics(physics) == "gymnasium":
        return MazeBatch(task, n_envs, **kwargs)
    return MujocoMazeBatch(task, n_envs, threads=threads, physics=physics, **kwargs)


def locomotion_batch(
    task: LocomotionTask | str, n_envs: int, *, physics: str = "gymnasium", threads: int = 0
) -> LocomotionBatch | MujocoLocomotionBatch:
    """A batch of ``n_envs`` locomotion envs on the ``physics`` backend (see :data:`PHYSICS_BACKENDS`);
    ``threads`` for the mujoco backend (0: every CPU)."""
    if check_physics(physics) == "gymnasium":
        return LocomotionBatch(task, n_envs)
    return MujocoLocomotionBatch(task, n_envs, threads=threads, physics=physics)


#: Transitions :func:`replay_locomotion` and :func:`replay_maze` replay per batch call.
REPLAY_CHUNK = 256


def _replay_inputs(observations: np.ndarray, actions: np.ndarray, obs_dim: int, act_dim: int,
                   what: str) -> tuple[np.ndarray, np.ndarray]:
    """``observations`` (T, obs_dim) and ``actions`` (T, act_dim) as arrays, or a ValueError."""
    observations, actions = np.asarray(observations), np.asarray(actions)
    if observations.ndim != 2 or observations.shape[1] != obs_dim:
        raise ValueError(f"{what} observations must be (T, {obs_dim}), got {observations.shape}")
    if actions.shape != (len(observations), act_dim):
        raise ValueError(f"{what} actions must be ({len(observations)}, {act_dim}), got {actions.shape}")
    return observations, actions


def _chunks(sims: Simulations, n: int) -> list[tuple[int, int, np.ndarray]]:
    """(start, stop, active mask over the batch) of each chunk of ``n`` transitions."""
    return [(start, min(start + sims.n, n), np.arange(sims.n) < min(sims.n, n - start))
            for start in range(0, n, sims.n)]


def replay_locomotion(
    task: LocomotionTask | str, observations: np.ndarray, actions: np.ndarray, *, chunk: int = REPLAY_CHUNK,
    threads: int = 0, physics: str = "mujoco",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One v5 env step from each of ``observations`` (T, obs_dim) with ``actions`` (T, act_dim), ``chunk``
    transitions per batch call on the ``physics`` backend (``mujoco`` or ``mjx``):
    :func:`diffplan_envs.dynamics.replay_transitions`'s Gymnasium replay (``mj_resetData``, the
    observation's state with root x = 0, the action clipped to the action box, ``frame_skip``
    mj_steps, the env's observation, reward and termination) for many at once.

    Returns:
        next_observations (T, obs_dim), rewards (T,), terminated (T,) and failed (T,) bool: the
        simulation failed on that transition (its other values are meaningless; Gymnasium's own step
        resets such a simulation with a warning instead).
    """
    task = get_locomotion_task(task) if isinstance(task, str) else task
    env = make_locomotion_env(task.robot)
    try:
        inner: Any = env.unwrapped
        rules = _rules(task.robot.name, inner)
        model = inner.model
        low, high = env.action_space.low, env.action_space.high  # type: ignore[attr-defined]
    finally:
        env.close()
    nq, nv = model.nq, model.nv
    observations, actions = _replay_inputs(observations, actions, nq - 1 + nv, low.size, task.name)
    actions = np.clip(actions, low, high)  # in the actions' dtype, as the replay's clip before env.step
    n = len(observations)
    next_obs, rewards = np.empty((n, nq - 1 + nv)), np.empty(n)
    terminated, failed = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    if n == 0:
        return next_obs, rewards, terminated, failed
    sims = simulations(physics, model, min(chunk, n), threads, per_thread=1)
    for start, stop, active in _chunks(sims, n):
        m = stop - start
        sims.reset_rows(active)
        sims.qpos[:m, 0] = 0.0
        sims.qpos[:m, 1:] = observations[start:stop, : nq - 1]
        sims.qvel[:m] = observations[start:stop, nq - 1:]
        sims.ctrl[:m] = actions[start:stop]
        # set_state's mj_forward is left out: mj_step starts with its own from the same state
        errors, _ = sims.step(active, rules.frame_skip)
        failed[start:stop] = errors[:m] != ""
        qpos, qvel = sims.qpos[:m], sims.qvel[:m]
        _locomotion_observations(rules, qpos, qvel, next_obs[start:stop])
        # the v5 envs' step and _get_rew, term by term, from x_position_before = 0
        forward_reward = rules.forward_weight * ((qpos[:, 0] - 0.0) / rules.dt)
        ctrl_cost = rules.ctrl_weight * np.sum(np.square(actions[start:stop]), axis=1)
        healthy = _locomotion_healthy(rules, qpos, qvel)
        if rules.healthy_z is None:  # HalfCheetah: forward_reward - ctrl_cost
            rewards[start:stop] = forward_reward - ctrl_cost
        else:
            rewards[start:stop] = (forward_reward + healthy * rules.healthy_reward) - ctrl_cost
        terminated[start:stop] = ~healthy if rules.terminate else False
    return next_obs, rewards, terminated, failed


def replay_maze(
    task: str | MazeTask, observations: np.ndarray, actions: np.ndarray, *, chunk: int = REPLAY_CHUNK,
    threads: int = 0, physics: str = "mujoco",
) -> tuple[np.ndarray, np.ndarray]:
    """One PointMaze step from each of ``observations`` (T, 4) (x, y, vx, vy) with ``actions`` (T, 2),
    ``chunk`` transitions per batch call on the ``physics`` backend (``mujoco`` or ``mjx``): the
    Gymnasium replay's ``mj_resetData``, ``set_state``, then ``PointEnv.step`` (action clipped to the
    box and [-1, 1], velocity to [-5, 5], its mj_steps).

    Returns:
        next_observations (T, 4) and failed (T,) bool: the simulation failed on that transition.
    """
    maze = get_maze_task(task)
    env = make_maze_env(maze)
    try:
        point: Any = env.unwrapped.point_env  # type: ignore[attr-defined]
        model, frame_skip = point.model, int(point.frame_skip)
        low, high = env.action_space.low, env.action_space.high  # type: ignore[attr-defined]
    finally:
        env.close()
    observations, actions = _replay_inputs(observations, actions, maze.obs_dim, maze.act_dim, maze.name)
    actions = np.clip(np.clip(actions, low, high), -1.0, 1.0)
    n = len(observations)
    next_obs, failed = np.empty((n, maze.obs_dim)), np.zeros(n, dtype=bool)
    if n == 0:
        return next_obs, failed
    sims = simulations(physics, model, min(chunk, n), threads, per_thread=8)
    for start, stop, active in _chunks(sims, n):
        m = stop - start
        sims.reset_rows(active)
        sims.qpos[:m] = observations[start:stop, :2]
        sims.qvel[:m] = np.clip(np.asarray(observations[start:stop, 2:4], dtype=np.float64), -5.0, 5.0)
        sims.ctrl[:m] = actions[start:stop]
        errors, _ = sims.step(active, frame_skip)
        failed[start:stop] = errors[:m] != ""
        next_obs[start:stop, :2] = sims.qpos[:m]
        next_obs[start:stop, 2:] = sims.qvel[:m]
    return next_obs, failed
