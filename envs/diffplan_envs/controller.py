"""The D4RL / Minari maze data controller: Q-iteration waypoints followed by a PD law.

Q-iteration on the grid of free cells gives, for each goal cell, the next cell on a
greedy shortest path from every cell. The controller steers at the centre of that next
cell (at the goal itself once the next cell is the goal cell) with
``action = p_gain * (waypoint - pos) + d_gain * vel``, and advances to the following
waypoint once within ``waypoint_threshold`` of it. All of it is vectorized over N envs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffplan_envs.maze import MazeGeometry

# Grid moves as (d_row, d_col), in the order Minari's QIteration uses (argmax ties -> first).
GRID_MOVES = np.array([(0, 1), (0, -1), (1, 0), (-1, 0)], dtype=np.int64)


def q_iteration_next_cells(
    geometry: MazeGeometry, goal_cell: tuple[int, int], *, discount: float = 0.99
) -> np.ndarray:
    """Greedy next cell toward ``goal_cell`` from every cell.

    Reward 1 for a move that lands on the goal cell; moves into walls stay put.

    Returns:
        (R, C, 2) int64: the (row, col) the greedy policy moves to from each cell; the goal
        cell and wall cells map to themselves.
    """
    if not 0.0 < discount < 1.0:
        raise ValueError(f"discount must be in (0, 1), got {discount}.")
    n_rows, n_cols = geometry.n_rows, geometry.n_cols
    cells = np.stack(np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij"), axis=-1)  # (R, C, 2)
    targets = cells[:, :, None, :] + GRID_MOVES  # (R, C, 4, 2)
    targets = np.where(geometry.is_free(targets)[..., None], targets, cells[:, :, None, :])
    target_state = targets[..., 0] * n_cols + targets[..., 1]  # (R, C, 4)
    goal_state = goal_cell[0] * n_cols + goal_cell[1]
    reward = (target_state == goal_state).astype(np.float64)
    q_values = np.zeros_like(reward)
    # Value iteration converges on the path length once it has run more sweeps than cells.
    for _ in range(max(50, n_rows * n_cols)):
        state_value = q_values.max(axis=-1).reshape(-1)
        q_values = reward + discount * state_value[target_state]
    next_cells = np.take_along_axis(targets, q_values.argmax(axis=-1)[..., None, None], axis=2)[:, :, 0]
    next_cells[tuple(goal_cell)] = goal_cell
    walls = geometry.maze_map == 1
    next_cells[walls] = cells[walls]
    return next_cells


def noisy_action(rng: np.random.Generator, action: np.ndarray, std: float = 0.5) -> np.ndarray:
    """Add N(0, std^2) noise to ``action`` (..., A) and clip to the action box [-1, 1]."""
    if std < 0:
        raise ValueError(f"Noise std must be >= 0, got {std}.")
    return np.clip(action + std * rng.standard_normal(np.shape(action)), -1.0, 1.0)


class WaypointController:
    """Vectorized Q-iteration waypoint + PD controller (the maze2d / pointmaze data policy).

    State per env: the waypoint cell being steered to and the goal it was planned for; a
    changed goal triggers a replan. If noise pushes the ball off the planned route (its cell
    is neither the waypoint cell nor the one leading to it), the waypoint is replanned from
    the ball's cell so the ball is never steered through a wall.
    """

    def __init__(
        self,
        geometry: MazeGeometry,
        *,
        p_gain: float = 10.0,
        d_gain: float = -1.0,
        waypoint_threshold: float = 0.1,
        action_noise_std: float = 0.5,
        discount: float = 0.99,
    ) -> None:
        if waypoint_threshold <= 0:
            raise ValueError(f"waypoint_threshold must be > 0, got {waypoint_threshold}.")
        if action_noise_std < 0:
            raise ValueError(f"action_noise_std must be >= 0, got {action_noise_std}.")
        self.geometry = geometry
        self.p_gain = p_gain
        self.d_gain = d_gain
        self.waypoint_threshold = waypoint_threshold
        self.action_noise_std = action_noise_std
        self.discount = discount
        # (R, C, R, C, 2): next cell toward goal (gr, gc) from cell (r, c); wall goals stay put.
        grid = (geometry.n_rows, geometry.n_cols)
        self._table = np.zeros((*grid, *grid, 2), dtype=np.int64)
        for goal_row, goal_col in geometry.free_cells():
            self._table[goal_row, goal_col] = q_iteration_next_cells(
                geometry, (int(goal_row), int(goal_col)), discount=discount
            )
        self._free = geometry.maze_map == 0
        self._waypoint_cell = np.zeros((0, 2), dtype=np.int64)
        self._planned_goal = np.zeros((0, 2))

    def next_cells(self, goal_cell: tuple[int, int]) -> np.ndarray:
        """(R, C, 2) greedy next-cell table toward ``goal_cell``."""
        key = (int(goal_cell[0]), int(goal_cell[1]))
        if not self.geometry.is_free(np.array(key)):
            raise ValueError(f"Goal cell {key} is a wall or outside the maze.")
        return self._table[key]

    def greedy_path(self, start_cell: tuple[int, int], goal_cell: tuple[int, int]) -> list[tuple[int, int]]:
        """Cells from ``start_cell`` to ``goal_cell`` (both included) along the greedy policy."""
        table = self.next_cells(goal_cell)
        path = [(int(start_cell[0]), int(start_cell[1]))]
        for _ in range(table.shape[0] * table.shape[1]):
            if path[-1] == tuple(goal_cell):
                return path
            path.append(tuple(int(v) for v in table[path[-1]]))  # type: ignore[arg-type]
        raise ValueError(f"No path from {start_cell} to {goal_cell}: greedy walk did not reach the goal.")

    def reset(self, n_envs: int) -> None:
        """Forget all plans; the next ``act`` replans every env."""
        self._waypoint_cell = np.zeros((n_envs, 2), dtype=np.int64)
        self._planned_goal = np.full((n_envs, 2), np.nan)

    def get_state(self) -> dict[str, Any]:
        """Controller state as plain lists (JSON-serializable), for exact resumption."""
        return {"waypoint_cell": self._waypoint_cell.tolist(), "planned_goal": self._planned_goal.tolist()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state from ``get_state``."""
        self._waypoint_cell = np.asarray(state["waypoint_cell"], dtype=np.int64).reshape(-1, 2)
        self._planned_goal = np.asarray(state["planned_goal"], dtype=np.float64).reshape(-1, 2)

    def _lookup(self, goal_cells: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """Next cells (N, 2) from ``cells`` (N, 2) toward ``goal_cells`` (N, 2)."""
        return self._table[goal_cells[:, 0], goal_cells[:, 1], cells[:, 0], cells[:, 1]]

    def act(self, obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Noise-free actions.

        Args:
            obs: (N, 4) (x, y, vx, vy).
            goal: (N, 2) goal positions.

        Returns:
            (N, 2) float64 actions clipped to [-1, 1].
        """
        obs = np.asarray(obs, dtype=np.float64)
        goal = np.asarray(goal, dtype=np.float64)
        if obs.ndim != 2 or obs.shape[1] != 4 or goal.shape != (obs.shape[0], 2):
            raise ValueError(f"Expected obs (N, 4) and goal (N, 2), got {obs.shape} and {goal.shape}.")
        if self._waypoint_cell.shape[0] != obs.shape[0]:
            self.reset(obs.shape[0])
        pos, vel = obs[:, :2], obs[:, 2:]
        waypoint = self._waypoint_cell
        cell = self.geometry.xy_to_cell(pos)  # (N, 2)
        goal_cell = self.geometry.xy_to_cell(goal)
        from_cell = self._lookup(goal_cell, cell)

        goal_shift = goal - self._planned_goal
        new_goal = ~(np.sqrt((goal_shift * goal_shift).sum(-1)) <= 1e-3)  # NaN (no plan yet) -> replan
        on_route = (cell == waypoint).all(-1) | (from_cell == waypoint).all(-1)
        replan = new_goal | ~on_route
        if replan.any():
            waypoint[replan] = from_cell[replan]
            self._planned_goal[new_goal] = goal[new_goal]

        target = self._target(waypoint, goal_cell, goal)
        offset = target - pos
        at_goal_cell = (waypoint == goal_cell).all(-1)
        advance = (np.sqrt((offset * offset).sum(-1)) <= self.waypoint_threshold) & ~at_goal_cell
        if advance.any():
            waypoint[advance] = self._lookup(goal_cell[advance], waypoint[advance])
            offset = self._target(waypoint, goal_cell, goal) - pos

        action = self.p_gain * offset + self.d_gain * vel
        return np.clip(action, -1.0, 1.0)

    def _target(self, waypoint: np.ndarray, goal_cell: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """(N, 2) point to steer at: the waypoint cell's centre, or the goal in the goal cell."""
        at_goal_cell = (waypoint == goal_cell).all(-1, keepdims=True)
        return np.where(at_goal_cell, goal, self.geometry.cell_to_xy(waypoint))

    def noisy_act(self, obs: np.ndarray, goal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``act`` plus Gaussian noise of std ``action_noise_std``, clipped: (N, 2) float64."""
        return noisy_action(rng, self.act(obs, goal), self.action_noise_std)
