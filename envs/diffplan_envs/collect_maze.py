"""Collect a PointMaze dataset the D4RL maze2d / Minari pointmaze way, resumably, into HDF5.

Recipe: one env reset once (continuing_task=True, reset_target=True: each time the ball
gets within 0.45 of the goal, the env draws a new random goal), driven by the noisy
Q-iteration waypoint controller for ``n_steps`` steps as one long stream.

gymnasium-robotics computes the step's reward and the returned ``obs["desired_goal"]``
against the old goal and only then draws the new one (``update_goal``), so the new goal is
read from ``env.unwrapped.goal``. Step t records the observation before the step and the
goal in force during it; ``timeouts[t]`` is True when the goal changes after step t, and on
the last step, so episodes are the goal segments.

The file is written to ``<path>.partial`` chunk by chunk; after each chunk the exact state
needed to continue (physics state, goal, env and noise generator states, controller state)
is stored in its attributes. Calling again with the same arguments continues where it
stopped and yields the same arrays as an uninterrupted run. Reference scores are computed
at the end, then the file is renamed to ``path``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import h5py
import mujoco
import numpy as np
from tqdm.auto import tqdm

from diffplan_envs.controller import WaypointController
from diffplan_envs.maze import GOAL_RADIUS, MazeTask, geometry_from_env, get_maze_task, make_maze_env
from diffplan_envs.reference_scores import compute_maze_reference_scores

logger = logging.getLogger(__name__)

FORMAT = "diffplan-d4rl"
FORMAT_VERSION = 1
_STATE_ATTR = "collection_state"
_ARGS_ATTR = "collection_args"
_PHYSICS_STATE = mujoco.mjtState.mjSTATE_INTEGRATION

# (key, per-step shape, dtype) of every dataset in the file, D4RL layout.
DATASET_KEYS: tuple[tuple[str, tuple[int, ...], type], ...] = (
    ("observations", (4,), np.float32),
    ("actions", (2,), np.float32),
    ("rewards", (), np.float32),
    ("terminals", (), np.bool_),
    ("timeouts", (), np.bool_),
    ("infos/goal", (2,), np.float32),
    ("infos/qpos", (2,), np.float32),
    ("infos/qvel", (2,), np.float32),
)


@dataclass(frozen=True)
class MazeRecipe:
    """The data controller settings (D4RL maze2d / Minari defaults)."""

    controller: str = "qiteration-pd"
    p_gain: float = 10.0
    d_gain: float = -1.0
    waypoint_threshold: float = 0.1
    action_noise_std: float = 0.5
    goal_radius: float = GOAL_RADIUS

    def make_controller(self, env: Any) -> WaypointController:
        """The controller for ``env``'s maze."""
        return WaypointController(
            geometry_from_env(env),
            p_gain=self.p_gain,
            d_gain=self.d_gain,
            waypoint_threshold=self.waypoint_threshold,
            action_noise_std=self.action_noise_std,
        )


def _package_version(name: str) -> str:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


class _Stream:
    """The collection stream: env + controller + noise generator, with exact save/restore."""

    def __init__(self, task: MazeTask, recipe: MazeRecipe, seed: int, n_steps: int) -> None:
        # One stream that never truncates: the time limit lies past the last step.
        self.env = make_maze_env(task, continuing_task=True, reset_target=True, max_episode_steps=n_steps + 1)
        self.env.reset(seed=seed)
        self.sim: Any = self.env.unwrapped
        self.controller = recipe.make_controller(self.env)
        self.controller.reset(1)
        # gymnasium seeds the env with default_rng(seed); a different seed keeps the noise independent.
        self.noise_rng = np.random.default_rng([seed, 1])

    def get_state(self) -> dict[str, Any]:
        physics = np.empty(mujoco.mj_stateSize(self.sim.model, _PHYSICS_STATE))
        mujoco.mj_getState(self.sim.model, self.sim.data, physics, _PHYSICS_STATE)
        return {
            "physics": physics.tolist(),
            "goal": self.sim.goal.tolist(),
            "env_rng": self.sim.np_random.bit_generator.state,
            "noise_rng": self.noise_rng.bit_generator.state,
            "controller": self.controller.get_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        physics = np.asarray(state["physics"], dtype=np.float64)
        mujoco.mj_setState(self.sim.model, self.sim.data, physics, _PHYSICS_STATE)
        mujoco.mj_forward(self.sim.model, self.sim.data)
        self.sim.goal = np.asarray(state["goal"], dtype=np.float64)
        self.sim.update_target_site_pos()
        self.sim.np_random.bit_generator.state = state["env_rng"]
        self.noise_rng.bit_generator.state = state["noise_rng"]
        self.controller.set_state(state["controller"])

    def run(self, buffers: dict[str, np.ndarray], n: int) -> None:
        """Take ``n`` steps, writing rows [0, n) of ``buffers`` (timeouts only for goal changes)."""
        for t in range(n):
            qpos = self.sim.data.qpos.copy()
            qvel = self.sim.data.qvel.copy()
            obs = np.concatenate([qpos, qvel])  # == the env's obs["observation"]
            goal = self.sim.goal.copy()
            action = self.controller.noisy_act(obs[None], goal[None], self.noise_rng)[0]
            _, reward, _, _, _ = self.env.step(action)
            buffers["observations"][t] = obs
            buffers["actions"][t] = action
            buffers["rewards"][t] = reward
            buffers["timeouts"][t] = not np.array_equal(self.sim.goal, goal)
            buffers["infos/goal"][t] = goal
            buffers["infos/qpos"][t] = qpos
            buffers["infos/qvel"][t] = qvel


def _collection_args(task: MazeTask, n_steps: int, seed: int, recipe: MazeRecipe) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "task": task.name,
        "env_id": task.env_id,
        "n_steps": n_steps,
        "seed": seed,
        "recipe": asdict(recipe),
    }


def _open_partial(partial: Path, args: dict[str, Any], chunk_steps: int) -> tuple[h5py.File, int]:
    """Open (or create) the partial file; returns it and the number of steps already stored."""
    if not partial.exists():
        file = h5py.File(partial, "w")
        file.attrs[_ARGS_ATTR] = json.dumps(args, sort_keys=True)
        for key, shape, dtype in DATASET_KEYS:
            file.create_dataset(
                key,
                shape=(0, *shape),
                maxshape=(None, *shape),
                dtype=dtype,
                chunks=(min(chunk_steps, 8192), *shape),
            )
        return file, 0
    try:
        file = h5py.File(partial, "a")
    except OSError as e:
        raise ValueError(f"Cannot open the partial dataset {partial} ({e}); delete it to start over.") from e
    stored = json.loads(file.attrs.get(_ARGS_ATTR, "{}"))
    if stored != args:
        file.close()
        raise ValueError(
            f"The partial dataset {partial} was made with different arguments ({stored}) than this "
            f"call ({args}); delete {partial} to start over, or call again with its arguments."
        )
    step = int(json.loads(file.attrs[_STATE_ATTR])["step"]) if _STATE_ATTR in file.attrs else 0
    for key, *_ in DATASET_KEYS:
        file[key].resize(step, axis=0)  # drops rows written after the last saved state
    return file, step


def _check_complete(path: Path, args: dict[str, Any]) -> None:
    """Raise if the finished file at ``path`` was made with other arguments."""
    with h5py.File(path, "r") as file:
        meta = json.loads(file.attrs.get("metadata", "{}"))
    made_with = {key: meta.get(key) for key in ("task", "n_steps", "seed", "recipe")}
    wanted = {key: args[key] for key in made_with}
    if made_with != wanted:
        raise ValueError(
            f"{path} already exists but was made with {made_with}, not {wanted}; "
            "delete it or choose another path."
        )


def collect_maze_dataset(
    task: str | MazeTask,
    *,
    n_steps: int | None = None,
    seed: int,
    path: str | os.PathLike[str],
    chunk_steps: int = 50_000,
    ref_episodes: int = 100,
    progress: bool = True,
    recipe: MazeRecipe | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> Path:
    """Collect (or finish collecting) a PointMaze dataset into an HDF5 file in D4RL layout.

    Args:
        task: maze task name or ``MazeTask``.
        n_steps: stream length; None = ``task.default_dataset_steps`` (1M / 2M / 4M).
        seed: seeds the env (start, goals) and the action noise.
        path: final file; the work in progress lives in ``<path>.partial``.
        chunk_steps: steps between flushes of data and resume state.
        ref_episodes: episodes per policy for the Minari-style reference scores.
        progress: show a tqdm bar (steps, rate, ETA).
        recipe: controller settings (default: the D4RL/Minari recipe).
        on_chunk: called with the number of stored steps after each chunk is flushed; an
            exception raised there stops collection with a resumable partial file.

    Returns:
        ``Path(path)``. Datasets (N = n_steps): observations (N, 4), actions (N, 2), rewards (N,),
        infos/goal, infos/qpos, infos/qvel (N, 2), all float32; terminals (N,) bool (all
        False), timeouts (N,) bool. Root attrs: metadata (JSON), ref_min_score, ref_max_score.
    """
    task = get_maze_task(task)
    recipe = recipe or MazeRecipe()
    n_steps = task.default_dataset_steps if n_steps is None else n_steps
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}.")
    if chunk_steps < 1:
        raise ValueError(f"chunk_steps must be >= 1, got {chunk_steps}.")
    if ref_episodes < 1:
        raise ValueError(f"ref_episodes must be >= 1, got {ref_episodes}.")
    path = Path(path)
    args = _collection_args(task, n_steps, seed, recipe)
    if path.exists():
        _check_complete(path, args)
        logger.info("%s already holds the finished dataset; not collecting again.", path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")

    file, step = _open_partial(partial, args, chunk_steps)
    stream = _Stream(task, recipe, seed, n_steps)
    try:
        if step > 0:
            stream.set_state(json.loads(file.attrs[_STATE_ATTR]))
            logger.info("Resuming %s at step %d of %d.", partial, step, n_steps)
        with tqdm(total=n_steps, initial=step, unit="step", desc=task.name, disable=not progress) as bar:
            while step < n_steps:
                n = min(chunk_steps, n_steps - step)
                buffers: dict[str, np.ndarray] = {
                    key: np.zeros((n, *shape), dtype=dtype) for key, shape, dtype in DATASET_KEYS
                }
                stream.run(buffers, n)
                if step + n == n_steps:
                    buffers["timeouts"][-1] = True
                for key, _, _ in DATASET_KEYS:
                    file[key].resize(step + n, axis=0)
                    file[key][step:] = buffers[key]
                step += n
                file.attrs[_STATE_ATTR] = json.dumps({"step": step, **stream.get_state()})
                file.flush()
                bar.update(n)
                if on_chunk is not None:
                    on_chunk(step)
        ref_scores = compute_maze_reference_scores(task, n_episodes=ref_episodes, seed=seed)
        _write_metadata(file, args, ref_scores)
        del file.attrs[_STATE_ATTR]
        del file.attrs[_ARGS_ATTR]
    finally:
        stream.env.close()
        file.close()
    os.replace(partial, path)
    logger.info("Wrote %s (%d steps).", path, n_steps)
    return path


def _write_metadata(file: h5py.File, args: dict[str, Any], ref_scores: dict[str, Any]) -> None:
    import diffplan

    meta = {
        "format": FORMAT,
        **args,
        "diffplan_version": diffplan.__version__,
        "gymnasium": _package_version("gymnasium"),
        "gymnasium_robotics": _package_version("gymnasium-robotics"),
        "mujoco": _package_version("mujoco"),
        "ref_scores": ref_scores,
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(),
    }
    file.attrs["metadata"] = json.dumps(meta)
    file.attrs["ref_min_score"] = float(ref_scores["min"])
    file.attrs["ref_max_score"] = float(ref_scores["max"])
