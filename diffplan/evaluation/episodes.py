"""``episodes.npz``: every evaluation episode's executed observations (and maze plans).

Written next to results.json by ``diffplan-evaluate eval.save_episodes=true``; read by the
report (``diffplan-report``) to draw planned versus executed paths and render episodes.

Arrays (E episodes, in results.json's ``episodes`` order):

- ``observations``: (E, T + 1, obs_dim) float32, padded with NaN after each episode's end;
- ``lengths``: (E,) int64 steps taken (``observations[i, :lengths[i] + 1]`` is the episode);
- ``seed``, ``episode``, ``reset_seed``: (E,) int64, the keys of results.json's episodes;
- ``goals``: (E, goal_dim) float64 (goal_dim 0 for locomotion);
- ``plans``: (P, H, obs_dim) float32, every recorded plan (mazes only; P = 0 otherwise),
  ``plan_episode``: (P,) int64 the row of the episode each plan belongs to, in planning order;
- ``format``: () int64, :data:`EPISODES_FORMAT`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the evaluator imports torch; readers of episodes.npz (the renderer) do not need it
    from diffplan.evaluation.evaluator import EpisodeTrace

EPISODES_FORMAT = 1
EPISODES_FILE = "episodes.npz"


def save_episodes(path: str | Path, traces: list[EpisodeTrace], *, include_plans: bool = True) -> Path:
    """Write ``traces`` (one per episode) to ``path`` as described in the module docstring."""
    path = Path(path)
    n = len(traces)
    obs_dim = max((t.observations.shape[1] for t in traces if t.observations.ndim == 2), default=0)
    steps = max((t.observations.shape[0] for t in traces), default=1)
    observations = np.full((n, steps, obs_dim), np.nan, dtype=np.float32)
    lengths = np.zeros(n, dtype=np.int64)
    for i, trace in enumerate(traces):
        obs = np.asarray(trace.observations)
        if obs.ndim == 2 and obs.shape[1] == obs_dim:
            observations[i, : obs.shape[0]] = obs
            lengths[i] = obs.shape[0] - 1
    goal_dim = max((np.asarray(t.goal).size for t in traces), default=0)
    goals = np.full((n, goal_dim), np.nan)
    for i, trace in enumerate(traces):
        goal = np.asarray(trace.goal, dtype=np.float64).ravel()
        goals[i, : goal.size] = goal
    plan_list = [(i, np.asarray(p)) for i, t in enumerate(traces) for p in t.plans] if include_plans else []
    horizon = max((p.shape[0] for _, p in plan_list), default=0)
    plans = np.full((len(plan_list), horizon, obs_dim), np.nan, dtype=np.float32)
    for k, (_, plan) in enumerate(plan_list):
        plans[k, : plan.shape[0], : plan.shape[1]] = plan[:, :obs_dim]
    arrays = {
        "format": np.array(EPISODES_FORMAT),
        "observations": observations,
        "lengths": lengths,
        "seed": np.array([t.seed for t in traces], dtype=np.int64),
        "episode": np.array([t.episode for t in traces], dtype=np.int64),
        "reset_seed": np.array([getattr(t, "reset_seed", -1) for t in traces], dtype=np.int64),
        "goals": goals,
        "plans": plans,
        "plan_episode": np.array([i for i, _ in plan_list], dtype=np.int64),
    }
    from diffplan.utils import atomic_path  # imports torch: only writers pay for it

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]
    return path


@dataclass(frozen=True)
class SavedEpisodes:
    """The contents of an ``episodes.npz`` (see the module docstring for the arrays)."""

    path: Path
    observations: np.ndarray
    lengths: np.ndarray
    seed: np.ndarray
    episode: np.ndarray
    reset_seed: np.ndarray
    goals: np.ndarray
    plans: np.ndarray
    plan_episode: np.ndarray

    def __len__(self) -> int:
        return int(self.lengths.size)

    def index(self, seed: int, episode: int) -> int:
        """Row of the episode with this evaluation seed and episode index.

        Raises:
            KeyError: no such episode in the file.
        """
        hit = np.flatnonzero((self.seed == seed) & (self.episode == episode))
        if hit.size == 0:
            raise KeyError(f"{self.path}: no episode with seed {seed} and episode {episode}")
        return int(hit[0])

    def executed(self, row: int) -> np.ndarray:
        """(T + 1, obs_dim) float64 executed observations of episode ``row``."""
        return self.observations[row, : self.lengths[row] + 1].astype(np.float64)

    def trace(self, row: int) -> EpisodeTrace:
        """Episode ``row`` as an :class:`EpisodeTrace` (for :func:`plot_maze_paths`)."""
        from diffplan.evaluation.evaluator import EpisodeTrace

        plans = [self.plans[k].astype(np.float64) for k in np.flatnonzero(self.plan_episode == row)]
        plans = [p[~np.isnan(p).any(axis=1)] for p in plans]
        return EpisodeTrace(seed=int(self.seed[row]), episode=int(self.episode[row]), goal=self.goals[row],
                            observations=self.executed(row), plans=plans)


_REQUIRED = ("observations", "lengths", "seed", "episode", "reset_seed", "goals", "plans", "plan_episode")


def load_episodes(path: str | Path) -> SavedEpisodes:
    """Read an ``episodes.npz`` written by :func:`save_episodes`.

    Raises:
        ValueError: the file lacks one of the arrays (named, with the fix).
    """
    path = Path(path)
    with np.load(path) as data:
        missing = [k for k in _REQUIRED if k not in data.files]
        if missing:
            raise ValueError(f"{path}: missing array(s) {missing}; it is not an episodes.npz written by "
                             "diffplan-evaluate eval.save_episodes=true (rerun the evaluation with it)")
        arrays = {k: np.asarray(data[k]) for k in _REQUIRED}
    return SavedEpisodes(path=path, **arrays)
