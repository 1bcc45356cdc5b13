"""Reference returns for score normalization: the D4RL table and Minari-style maze references.

The two sources must never be mixed: D4RL maze2d references were measured on the
mujoco-py maze2d envs (reward radius 0.5), not on PointMaze v3.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from diffplan_envs.controller import WaypointController
from diffplan_envs.maze import MazeBatch, MazeTask, get_maze_task


class RefScores(NamedTuple):
    """Episode returns that map to normalized score 0 (ref_min) and 100 (ref_max)."""

    ref_min: float
    ref_max: float


D4RL_REF_SCORES: dict[str, RefScores] = {
    "hopper": RefScores(-20.272305, 3234.3),
    "halfcheetah": RefScores(-280.178953, 12135.0),
    "walker2d": RefScores(1.629008, 4592.3),
    "maze2d-umaze": RefScores(23.85, 161.86),
    "maze2d-medium": RefScores(13.13, 277.39),
    "maze2d-large": RefScores(6.7, 273.99),
}
"""D4RL reference returns (d4rl/infos.py), the same for every dataset of an environment."""


def normalized_score(returns: np.ndarray | float, ref_min: float, ref_max: float) -> np.ndarray:
    """Per-episode normalized score ``100 * (r - ref_min) / (ref_max - ref_min)``, same shape as returns."""
    if not ref_max > ref_min:
        raise ValueError(f"ref_max must exceed ref_min, got ref_min={ref_min}, ref_max={ref_max}.")
    return 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)


def _episode_returns(
    batch: MazeBatch,
    seeds: list[int],
    rng: np.random.Generator,
    controller: WaypointController | None,
) -> np.ndarray:
    """Returns (len(seeds),) of one round of episodes: random actions if controller is None."""
    obs, goal = batch.reset(seeds)
    if controller is not None:
        controller.reset(batch.n_envs)
    returns = np.zeros(batch.n_envs)
    active = np.ones(batch.n_envs, dtype=bool)
    while active.any():
        if controller is None:
            actions = rng.uniform(-1.0, 1.0, size=(batch.n_envs, batch.task.act_dim))
        else:
            actions = controller.noisy_act(obs, goal, rng)
        result = batch.step(actions, active)
        returns += result.reward
        active &= ~(result.terminated | result.truncated)
        obs = result.obs
    return returns[: len(seeds)]


def compute_maze_reference_scores(
    task: str | MazeTask,
    *,
    n_episodes: int = 100,
    seed: int,
    n_envs: int = 25,
    controller: WaypointController | None = None,
) -> dict[str, Any]:
    """Minari-style reference returns on the evaluation env.

    min = mean return of a uniform random policy, max = mean return of the noisy waypoint
    controller (the data policy), each over ``n_episodes`` episodes of the registered length
    (continuing_task=True, reset_target=False). Both policies see the same episode seeds
    ``seed, seed + 1, ...``; they are stepped ``n_envs`` at a time.

    Args:
        task: maze task name or ``MazeTask``.
        n_episodes: episodes per policy.
        seed: base seed of the episodes and of the action noise.
        n_envs: envs stepped in lockstep.
        controller: the data policy (default: ``WaypointController`` with default gains).

    Returns:
        dict with method "minari", min, max, their standard deviations, n_episodes,
        min_policy, max_policy and seed (JSON-serializable).
    """
    task = get_maze_task(task)
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}.")
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}.")
    batch = MazeBatch(task, min(n_envs, n_episodes))
    controller = controller or WaypointController(batch.geometry)
    rngs = [np.random.default_rng([seed, policy]) for policy in range(2)]
    returns: list[list[np.ndarray]] = [[], []]
    try:
        for start in range(0, n_episodes, batch.n_envs):
            seeds = [seed + i for i in range(start, start + batch.n_envs)]
            n_used = min(batch.n_envs, n_episodes - start)
            for policy, policy_controller in enumerate((None, controller)):
                round_returns = _episode_returns(batch, seeds, rngs[policy], policy_controller)
                returns[policy].append(round_returns[:n_used])
    finally:
        batch.close()
    random_returns, controller_returns = (np.concatenate(r) for r in returns)
    return {
        "method": "minari",
        "min": float(random_returns.mean()),
        "max": float(controller_returns.mean()),
        "min_std": float(random_returns.std()),
        "max_std": float(controller_returns.std()),
        "n_episodes": n_episodes,
        "min_policy": "uniform random",
        "max_policy": "noisy waypoint controller",
        "seed": seed,
    }
