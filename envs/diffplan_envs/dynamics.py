"""How physically consistent generated transitions are: replay them in MuJoCo.

Hopper, Walker2d and HalfCheetah observations are ``qpos[1:]`` (everything but the root x
position, which the dynamics do not depend on) followed by ``qvel`` (Hopper and Walker2d clip
it to [-10, 10] in the observation). :func:`set_state_from_observation` puts the simulator in
the state an observation describes, with the root at x = 0; :func:`replay_transitions` then
applies each generated action for one environment step and returns what the simulator says
the next observation and reward are. :func:`dynamics_error` compares those with the generated
ones, per dimension normalized by a reference variance (the dataset's), so that 0 means the
generated transition is exactly what the simulator does.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import gymnasium
import mujoco
import numpy as np

from diffplan_envs.locomotion import get_locomotion_task, make_locomotion_env


def set_state_from_observation(env: gymnasium.Env, observation: np.ndarray) -> None:
    """Set ``env``'s MuJoCo state to the one ``observation`` describes (root x = 0).

    Raises:
        ValueError: the observation's size is not nq - 1 + nv for this env.
    """
    unwrapped = env.unwrapped
    nq, nv = unwrapped.model.nq, unwrapped.model.nv  # type: ignore[attr-defined]
    observation = np.asarray(observation, dtype=np.float64)
    if observation.shape != (nq - 1 + nv,):
        raise ValueError(
            f"observation of shape {observation.shape} does not describe {env.spec.id if env.spec else env}: "
            f"it needs nq - 1 + nv = {nq - 1 + nv} entries (qpos without the root x, then qvel)"
        )
    qpos = np.concatenate([[0.0], observation[: nq - 1]])
    qvel = observation[nq - 1:]
    unwrapped.set_state(qpos, qvel)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Replay:
    """What the simulator did from each generated (observation, action).

    Attributes:
        next_observations: (T, obs_dim) the simulator's next observations.
        rewards: (T,) the simulator's rewards.
        terminated: (T,) whether the simulator's termination condition fired (falls).
    """

    next_observations: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray


def default_physics() -> str:
    """The replay backend :func:`replay_transitions` uses by default: ``mujoco`` where
    ``mujoco.batch`` (MuJoCo >= 4) is installed, since it gives the Gymnasium replay bit for bit,
    else ``gymnasium``."""
    try:
        importlib.import_module("mujoco.batch")
    except ImportError:
        return "gymnasium"
    return "mujoco"


def replay_transitions(
    task: str, observations: np.ndarray, actions: np.ndarray, *, physics: str | None = None, chunk: int = 256,
    threads: int = 0,
) -> Replay:
    """Step the simulator once from each of ``observations`` (T, obs_dim) with ``actions`` (T, act_dim).

    ``task`` names a locomotion task (e.g. ``hopper-medium``) or a maze (``pointmaze-*``:
    the point mass's state is the observation itself, position then velocity, and the
    maze's own step applies the action and its velocity clip; rewards are 0, since the
    maze's reward needs a goal); actions are clipped to the action box as the environment
    itself does.

    Every transition starts from ``mj_resetData`` and then the state its observation describes, so
    its replay does not depend on the other transitions (MuJoCo's solver warm start, the last
    accelerations, would otherwise carry over from the one before, which moves contact-rich next
    observations by up to ~1e-13).

    Args:
        physics: ``gymnasium`` (one Gymnasium env stepped once per transition, the reference) or
            ``mujoco`` (:func:`diffplan_envs.mujoco_batch.replay_locomotion` / ``replay_maze``:
            ``chunk`` transitions per :class:`mujoco.batch.Batch` call on ``threads`` threads, 0: every
            CPU; the same results bit for bit, tests/test_dynamics_replay.py) or ``mjx`` (the same
            replays on MJX, ``chunk`` transitions per jitted call; within the tolerances of
            tests/test_mjx_backend.py). None: :func:`default_physics`.
    """
    from diffplan_envs.locomotion import is_locomotion_task
    from diffplan_envs.mujoco_batch import check_physics

    physics = check_physics(default_physics() if physics is None else physics)
    if physics == "gymnasium":
        return _replay_gymnasium(task, observations, actions)
    from diffplan_envs.mujoco_batch import replay_locomotion, replay_maze

    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    n = len(observations)
    if is_locomotion_task(task):
        next_obs, rewards, terminated, failed = replay_locomotion(task, observations, actions, chunk=chunk,
                                                                  threads=threads, physics=physics)
    else:
        next_obs, failed = replay_maze(task, observations, actions, chunk=chunk, threads=threads, physics=physics)
        rewards, terminated = np.zeros(n), np.zeros(n, dtype=bool)
    if failed.any():  # the simulation failed where Gymnasium's mj_step warns and resets: take Gymnasium's answer
        rows = np.flatnonzero(failed)
        again = _replay_gymnasium(task, np.asarray(observations)[rows], np.asarray(actions)[rows])
        next_obs[rows], rewards[rows], terminated[rows] = again.next_observations, again.rewards, again.terminated
    return Replay(next_obs, rewards, terminated)


def _replay_gymnasium(task: str, observations: np.ndarray, actions: np.ndarray) -> Replay:
    """:func:`replay_transitions` on one Gymnasium env, one transition at a time."""
    from diffplan_envs.locomotion import is_locomotion_task

    if not is_locomotion_task(task):
        return _replay_maze(task, observations, actions)
    robot = get_locomotion_task(task).robot
    env = make_locomotion_env(robot)
    try:
        env.reset(seed=0)
        unwrapped = env.unwrapped
        model, data = unwrapped.model, unwrapped.data  # type: ignore[attr-defined]
        low, high = env.action_space.low, env.action_space.high  # type: ignore[attr-defined]
        n = observations.shape[0]
        next_obs = np.empty((n, observations.shape[1]), dtype=np.float64)
        rewards = np.empty(n, dtype=np.float64)
        terminated = np.zeros(n, dtype=bool)
        for i in range(n):
            mujoco.mj_resetData(model, data)
            set_state_from_observation(env, observations[i])
            obs, reward, term, _, _ = unwrapped.step(np.clip(actions[i], low, high))  # type: ignore[attr-defined]
            next_obs[i], rewards[i], terminated[i] = obs, reward, term
    finally:
        env.close()
    return Replay(next_obs, rewards, terminated)


def _replay_maze(task: str, observations: np.ndarray, actions: np.ndarray) -> Replay:
    """:func:`replay_transitions` for a PointMaze task (observation = qpos (x, y), qvel)."""
    from diffplan_envs.maze import get_maze_task, make_maze_env

    maze = get_maze_task(task)
    env = make_maze_env(maze)
    try:
        env.reset(seed=0)
        point = env.unwrapped.point_env  # type: ignore[attr-defined]
        low, high = env.action_space.low, env.action_space.high  # type: ignore[attr-defined]
        if observations.ndim != 2 or observations.shape[1] != maze.obs_dim:
            raise ValueError(
                f"{task} observations must be (T, {maze.obs_dim}) (x, y, vx, vy), got {observations.shape}"
            )
        n = observations.shape[0]
        next_obs = np.empty((n, maze.obs_dim), dtype=np.float64)
        for i in range(n):
            mujoco.mj_resetData(point.model, point.data)
            point.set_state(observations[i, :2].astype(np.float64), observations[i, 2:4].astype(np.float64))
            next_obs[i] = point.step(np.clip(actions[i], low, high))[0]
    finally:
        env.close()
    return Replay(next_obs, np.zeros(n), np.zeros(n, dtype=bool))


@dataclass(frozen=True)
class DynamicsError:
    """Mean squared errors of generated transitions against the simulator.

    Attributes:
        next_obs_mse: mean over transitions and dimensions of (generated - simulated)^2 / var_d.
        next_obs_mse_per_dim: (obs_dim,) the same per dimension.
        reward_mse: mean of (generated - simulated reward)^2 / var_r (None without rewards).
        n_transitions: how many transitions were replayed.
    """

    next_obs_mse: float
    next_obs_mse_per_dim: np.ndarray
    reward_mse: float | None
    n_transitions: int

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary."""
        return {"next_obs_mse": self.next_obs_mse, "next_obs_mse_per_dim": self.next_obs_mse_per_dim.tolist(),
                "reward_mse": self.reward_mse, "n_transitions": self.n_transitions}


def dynamics_error(
    task: str,
    observations: np.ndarray,
    actions: np.ndarray,
    next_observations: np.ndarray,
    *,
    obs_variance: np.ndarray,
    rewards: np.ndarray | None = None,
    reward_variance: float | None = None,
    physics: str | None = None,
) -> DynamicsError:
    """Normalized squared error of generated transitions against one simulator step each.

    Args:
        task: a locomotion or maze task name (its simulator replays the transitions).
        observations, actions, next_observations: (T, ...) the generated transitions.
        obs_variance: (obs_dim,) per-dimension reference variance (e.g. the dataset's
            observation variance); dimensions with zero variance count with variance 1.
        rewards, reward_variance: the generated rewards and their reference variance, to
            score the reward channel too.
        physics: the replay backend (:func:`replay_transitions`; None: :func:`default_physics`).

    Raises:
        ValueError: shapes disagree.
    """
    if not (observations.shape == next_observations.shape and len(actions) == len(observations)):
        raise ValueError(
            f"observations {observations.shape}, actions {actions.shape} and next_observations "
            f"{next_observations.shape} must describe the same transitions"
        )
    replay = replay_transitions(task, observations, actions, physics=physics)
    variance = np.where(np.asarray(obs_variance) > 0, obs_variance, 1.0)
    per_dim = ((next_observations - replay.next_observations) ** 2 / variance).mean(axis=0)
    reward_mse = None
    if rewards is not None:
        scale = reward_variance if reward_variance else 1.0
        reward_mse = float(((rewards - replay.rewards) ** 2).mean() / scale)
    return DynamicsError(float(per_dim.mean()), per_dim, reward_mse, len(observations))


def random_transitions(env_id: str, n: int, seed: int, action_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` real (observation, action) pairs of the Gymnasium env ``env_id`` stepped with uniform actions
    in ``[-action_scale, action_scale]`` (above 1 exercises the env's clip), reset on falls and time
    limits; the same seed gives the same pairs. For replay tests and benchmarks."""
    env = gymnasium.make(env_id)
    try:
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        observations, actions = [], []
        for i in range(n):
            action = rng.uniform(-action_scale, action_scale, env.action_space.shape)
            observations.append(obs)
            actions.append(action)
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                obs, _ = env.reset(seed=seed + i + 1)
    finally:
        env.close()
    return np.array(observations), np.array(actions)

