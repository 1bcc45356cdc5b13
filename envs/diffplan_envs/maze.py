"""The PointMaze task suite: task table, env factory, lockstep env batch and maze geometry.

The envs are gymnasium-robotics ``PointMaze_*-v3``: a force-actuated ball (timestep 0.01,
velocity clipped to +-5) with a sparse reward of 1 for every step it ends within 0.45 of
the goal. Observations here are the env's ``obs["observation"]`` = (x, y, vx, vy).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import gymnasium
import numpy as np

GOAL_RADIUS = 0.45
"""Distance to the goal within which PointMaze v3 pays reward 1 and reports success."""


@dataclass(frozen=True)
class MazeTask:
    """One PointMaze task.

    Attributes:
        name: diffplan task name, e.g. "pointmaze-umaze".
        env_id: gymnasium id of the evaluation env.
        episode_steps: the registered ``max_episode_steps`` (the evaluation episode length).
        default_dataset_steps: size of the standard dataset (D4RL maze2d / Minari pointmaze).
        d4rl_ref_min: D4RL maze2d random-policy return (reference only; other env version).
        d4rl_ref_max: D4RL maze2d expert return (reference only; other env version).
        obs_dim: observation size (x, y, vx, vy).
        act_dim: action size (force in x, y).
        goal_dim: goal size (x, y).
    """

    name: str
    env_id: str
    episode_steps: int
    default_dataset_steps: int
    d4rl_ref_min: float
    d4rl_ref_max: float
    obs_dim: int = 4
    act_dim: int = 2
    goal_dim: int = 2


MAZE_TASKS: dict[str, MazeTask] = {
    "pointmaze-umaze": MazeTask("pointmaze-umaze", "PointMaze_UMaze-v3", 300, 1_000_000, 23.85, 161.86),
    "pointmaze-medium": MazeTask("pointmaze-medium", "PointMaze_Medium-v3", 600, 2_000_000, 13.13, 277.39),
    "pointmaze-large": MazeTask("pointmaze-large", "PointMaze_Large-v3", 800, 4_000_000, 6.7, 273.99),
}


def get_maze_task(name: str | MazeTask) -> MazeTask:
    """Look up a task by name (a ``MazeTask`` passes through unchanged)."""
    if isinstance(name, MazeTask):
        return name
    if name not in MAZE_TASKS:
        raise ValueError(f"Unknown maze task {name!r}; choose one of {sorted(MAZE_TASKS)}.")
    return MAZE_TASKS[name]


@functools.cache
def _register_envs() -> None:
    import gymnasium_robotics

    gymnasium.register_envs(gymnasium_robotics)


def make_maze_env(
    task: str | MazeTask,
    *,
    continuing_task: bool = True,
    reset_target: bool = False,
    max_episode_steps: int | None = None,
    render_mode: str | None = None,
) -> gymnasium.Env:
    """Make one PointMaze env.

    Args:
        task: task name or ``MazeTask``.
        continuing_task: if True, reaching the goal does not terminate the episode.
        reset_target: with ``continuing_task``, draw a new goal whenever the goal is reached
            (the data-collection setting); False keeps the goal (the evaluation setting).
        max_episode_steps: time limit; None uses the registered ``task.episode_steps``.
        render_mode: passed to gymnasium ("rgb_array", "human" or None).
    """
    task = get_maze_task(task)
    if max_episode_steps is not None and max_episode_steps < 1:
        raise ValueError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}.")
    _register_envs()
    return gymnasium.make(
        task.env_id,
        continuing_task=continuing_task,
        reset_target=reset_target,
        max_episode_steps=max_episode_steps,
        render_mode=render_mode,
    )


_FLIP_Y = np.array([1.0, -1.0])
_FLIP_ROW = np.array([-1.0, 1.0])


@dataclass(frozen=True, eq=False)
class MazeGeometry:
    """The maze grid and its map to MuJoCo coordinates (row i grows downward = -y).

    Attributes:
        maze_map: (R, C) int array, 1 = wall, 0 = free (goal/reset markers normalized to 0).
        scaling: cell side length.
        x_center: x offset of the map centre (C / 2 * scaling).
        y_center: y offset of the map centre (R / 2 * scaling).
    """

    maze_map: np.ndarray
    scaling: float

    @property
    def n_rows(self) -> int:
        return int(self.maze_map.shape[0])

    @property
    def n_cols(self) -> int:
        return int(self.maze_map.shape[1])

    @property
    def x_center(self) -> float:
        return self.n_cols / 2 * self.scaling

    @property
    def y_center(self) -> float:
        return self.n_rows / 2 * self.scaling

    def cell_to_xy(self, rowcol: np.ndarray) -> np.ndarray:
        """Cell (row, col) indices (..., 2) -> cell-centre (x, y) coordinates (..., 2) float64."""
        rowcol = np.asarray(rowcol)
        # x = (col + 0.5) * s - x_center, y = y_center - (row + 0.5) * s, in one vector op.
        return (rowcol[..., ::-1] + 0.5) * self.scaling * _FLIP_Y + np.array([-self.x_center, self.y_center])

    def xy_to_cell(self, xy: np.ndarray) -> np.ndarray:
        """Coordinates (..., 2) -> (row, col) indices (..., 2) int64 of the cell holding them."""
        xy = np.asarray(xy, dtype=np.float64)
        # row = floor((y_center - y) / s), col = floor((x + x_center) / s), in one vector op.
        shifted = xy[..., ::-1] * _FLIP_ROW + np.array([self.y_center, self.x_center])
        return np.floor(shifted / self.scaling).astype(np.int64)

    def is_free(self, rowcol: np.ndarray) -> np.ndarray:
        """(..., 2) cell indices -> (...) bool, True for in-bounds non-wall cells."""
        rowcol = np.asarray(rowcol, dtype=np.int64)
        row, col = rowcol[..., 0], rowcol[..., 1]
        inside = (row >= 0) & (row < self.n_rows) & (col >= 0) & (col < self.n_cols)
        free = np.zeros(row.shape, dtype=bool)
        free[inside] = self.maze_map[row[inside], col[inside]] == 0
        return free

    def crosses_walls(self, paths: np.ndarray, substeps: int = 8) -> np.ndarray:
        """(..., H, 2) planned positions -> (...) bool: the path leaves the free cells (a point in a
        wall cell or outside the map, on the straight segments between consecutive points sampled at
        ``substeps`` points each). A diagnostic of plans; it never selects one."""
        paths = np.asarray(paths, dtype=np.float64)
        if paths.shape[-1] != 2 or paths.shape[-2] < 1:
            raise ValueError(f"paths must be (..., H, 2) positions, got shape {paths.shape}")
        if paths.shape[-2] > 1:
            t = np.linspace(0.0, 1.0, substeps, endpoint=False)[:, None]
            start, step = paths[..., :-1, None, :], (paths[..., 1:, :] - paths[..., :-1, :])[..., None, :]
            points = (start + t * step).reshape(*paths.shape[:-2], -1, 2)
            points = np.concatenate([points, paths[..., -1:, :]], axis=-2)
        else:
            points = paths
        inside = self.is_free(self.xy_to_cell(points))
        return ~np.all(inside | ~np.isfinite(points).all(axis=-1), axis=-1)

    def free_cells(self) -> np.ndarray:
        """(F, 2) int64 (row, col) of all free cells in row-major order."""
        return np.argwhere(self.maze_map == 0).astype(np.int64)

    def wall_rectangles(self) -> list[tuple[float, float, float, float]]:
        """Walls as (x0, y0, width, height) lower-left rectangles, e.g. for matplotlib Rectangle."""
        walls = np.argwhere(self.maze_map == 1)
        centers = self.cell_to_xy(walls)
        half = self.scaling / 2
        return [(float(x - half), float(y - half), self.scaling, self.scaling) for x, y in centers]


def _normalize_map(maze_map: Sequence[Sequence[Any]]) -> np.ndarray:
    """gymnasium-robotics maps mix 1/0 with 'g', 'r', 'c' markers (all free cells) -> (R, C) int."""
    return np.array([[1 if cell == 1 else 0 for cell in row] for row in maze_map], dtype=np.int64)


def geometry_from_env(env: gymnasium.Env) -> MazeGeometry:
    """Read the ``MazeGeometry`` of a (possibly wrapped) PointMaze env."""
    maze = env.unwrapped.maze  # type: ignore[attr-defined]
    return MazeGeometry(maze_map=_normalize_map(maze.maze_map), scaling=float(maze.maze_size_scaling))


@functools.cache
def maze_geometry(task: str | MazeTask) -> MazeGeometry:
    """The ``MazeGeometry`` of a task (builds one env once, then cached)."""
    env = make_maze_env(task)
    try:
        return geometry_from_env(env)
    finally:
        env.close()


class StepResult(NamedTuple):
    """One lockstep step of ``MazeBatch`` (N envs).

    Attributes:
        obs: (N, 4) float64 (x, y, vx, vy) after the step.
        reward: (N,) float64; 0 for inactive envs.
        terminated: (N,) bool.
        truncated: (N,) bool (time limit reached).
        success: (N,) bool, ball within 0.45 of the goal after the step.
        errors: (N,) str, empty unless that env's step raised (the others still step).
    """

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    errors: np.ndarray


class MazeBatch:
    """N PointMaze envs stepped in lockstep (the evaluation setting by default).

    Episodes use the registered episode length with ``continuing_task=True`` and
    ``reset_target=False``: the goal stays put and the agent collects reward 1 for every
    step it ends within 0.45 of it.
    """

    def __init__(
        self,
        task: str | MazeTask,
        n_envs: int,
        *,
        continuing_task: bool = True,
        reset_target: bool = False,
        max_episode_steps: int | None = None,
    ) -> None:
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}.")
        self.task = get_maze_task(task)
        self.envs = [
            make_maze_env(
                self.task,
                continuing_task=continuing_task,
                reset_target=reset_target,
                max_episode_steps=max_episode_steps,
            )
            for _ in range(n_envs)
        ]
        self.geometry = geometry_from_env(self.envs[0])
        self._obs = np.zeros((n_envs, self.task.obs_dim))
        self._reward = np.zeros(n_envs)
        self._terminated = np.zeros(n_envs, dtype=bool)
        self._truncated = np.zeros(n_envs, dtype=bool)
        self._success = np.zeros(n_envs, dtype=bool)

    @property
    def n_envs(self) -> int:
        return len(self.envs)

    @property
    def goals(self) -> np.ndarray:
        """(N, 2) float64 current goal of each env."""
        return np.stack([env.unwrapped.goal for env in self.envs]).astype(np.float64)  # type: ignore[attr-defined]

    @property
    def qpos(self) -> np.ndarray:
        """(N, 2) float64 ball positions."""
        return np.stack([env.unwrapped.data.qpos for env in self.envs]).astype(np.float64)  # type: ignore[attr-defined]

    @property
    def qvel(self) -> np.ndarray:
        """(N, 2) float64 ball velocities."""
        return np.stack([env.unwrapped.data.qvel for env in self.envs]).astype(np.float64)  # type: ignore[attr-defined]

    def reset(self, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Reset env i with ``seeds[i]``; returns obs (N, 4) float64 and goal (N, 2) float64."""
        if len(seeds) != self.n_envs:
            raise ValueError(f"Need one seed per env: got {len(seeds)} seeds for {self.n_envs} envs.")
        for i, (env, seed) in enumerate(zip(self.envs, seeds, strict=True)):
            obs, info = env.reset(seed=int(seed))
            self._obs[i] = obs["observation"]
            self._success[i] = bool(info["success"])
        self._reward[:] = 0.0
        self._terminated[:] = False
        self._truncated[:] = False
        return self._obs.copy(), self.goals

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> StepResult:
        """Step the active envs.

        Args:
            actions: (N, 2) actions (clipped to [-1, 1] by the env).
            active: (N,) bool mask; inactive envs are not stepped, their obs/terminated/
                truncated/success repeat the last values and their reward is 0. None = all.
        """
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.n_envs, self.task.act_dim):
            expected = (self.n_envs, self.task.act_dim)
            raise ValueError(f"actions must have shape {expected}, got {actions.shape}.")
        mask = np.ones(self.n_envs, dtype=bool) if active is None else np.asarray(active, dtype=bool)
        if mask.shape != (self.n_envs,):
            raise ValueError(f"active must have shape ({self.n_envs},), got {mask.shape}.")
        self._reward[:] = 0.0
        errors = np.full(self.n_envs, "", dtype=object)
        for i in np.flatnonzero(mask):
            try:
                obs, reward, terminated, truncated, info = self.envs[i].step(actions[i])
            except Exception as e:  # one broken env must not stop the others
                errors[i] = f"{type(e).__name__}: {e}"
                continue
            self._obs[i] = obs["observation"]
            self._reward[i] = float(reward)
            self._terminated[i] = bool(terminated)
            self._truncated[i] = bool(truncated)
            self._success[i] = bool(info["success"])
        return StepResult(
            obs=self._obs.copy(),
            reward=self._reward.copy(),
            terminated=self._terminated.copy(),
            truncated=self._truncated.copy(),
            success=self._success.copy(),
            errors=errors,
        )

    def close(self) -> None:
        """Close all envs."""
        for env in self.envs:
            env.close()
