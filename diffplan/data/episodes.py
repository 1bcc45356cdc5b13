"""One offline dataset as validated, concatenated arrays with episode boundaries.

Every loader (D4RL HDF5, Minari, the project's own files) ends in :meth:`Episodes.from_arrays`,
which validates the arrays with :func:`validate_arrays`; nothing downstream knows the source.
Shapes: T transitions in the whole dataset, E episodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from diffplan.data.errors import DatasetError
from diffplan.data.layout import TrajectoryLayout

#: Keys that must be present for :func:`validate_arrays`, in the order they are checked.
REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


class Episode(NamedTuple):
    """Views into one episode of an :class:`Episodes` (length L); no copies."""

    observations: np.ndarray  # (L, obs_dim)
    actions: np.ndarray  # (L, act_dim)
    rewards: np.ndarray  # (L,)
    terminals: np.ndarray  # (L,)
    timeouts: np.ndarray  # (L,)
    goals: np.ndarray | None  # (L, goal_dim)
    qpos: np.ndarray | None  # (L, nq)
    qvel: np.ndarray | None  # (L, nv)


def _first_bad_row(array: np.ndarray) -> int | None:
    """Index of the first row holding NaN or inf, or None when all entries are finite."""
    finite = np.isfinite(array).reshape(len(array), -1).all(axis=1)
    if finite.all():
        return None
    return int(np.argmin(finite))


def validate_arrays(
    arrays: Mapping[str, np.ndarray | None],
    *,
    source: str,
    expected_obs_dim: int | None = None,
    expected_act_dim: int | None = None,
    key_names: Mapping[str, str] | None = None,
) -> None:
    """Check raw dataset arrays before they become :class:`Episodes`.

    Args:
        arrays: key -> array with T rows (None entries are skipped). Must hold the
            :data:`REQUIRED_KEYS`; others (goals, qpos, qvel, infos/...) are checked too.
        source: file or dataset id, named in every message.
        expected_obs_dim: observation size the task needs (None: not checked).
        expected_act_dim: action size the task needs (None: not checked).
        key_names: how keys are spelled in the source (e.g. ``{"goals": "infos/goal"}``), so
            messages name the key the user can find in the file.

    Raises:
        DatasetError: missing key, empty dataset, wrong rank, length mismatch between keys,
            NaN/inf (naming the key and the first bad index) or a dimension mismatch.
    """
    names = dict(key_names or {})
    present = {names.get(key, key): value for key, value in arrays.items() if value is not None}
    obs_key, act_key = names.get("observations", "observations"), names.get("actions", "actions")
    required = [names.get(key, key) for key in REQUIRED_KEYS]
    missing = [key for key in required if key not in present]
    if missing:
        raise DatasetError(
            f"{source}: missing key(s) {missing}; present keys: {sorted(present)}. "
            f"A dataset needs {required}."
        )
    n_rows = len(present[obs_key])
    if n_rows == 0:
        raise DatasetError(f"{source}: the dataset is empty (key '{obs_key}' has 0 rows); "
                           "collect or point to a file with at least one transition.")
    for key in (obs_key, act_key):
        if present[key].ndim != 2:
            raise DatasetError(
                f"{source}: key '{key}' must be 2-D (T, dim), got shape {present[key].shape}; "
                "reshape it to (T, dim) before loading."
            )
    for key, value in present.items():
        if len(value) != n_rows:
            raise DatasetError(
                f"{source}: length mismatch: key '{key}' has {len(value)} rows but '{obs_key}' "
                f"has {n_rows}; every key must have one row per transition (truncate or re-export "
                "the file)."
            )
    for key, value in present.items():
        if not np.issubdtype(value.dtype, np.floating):
            continue
        bad = _first_bad_row(value)
        if bad is not None:
            raise DatasetError(
                f"{source}: key '{key}' holds NaN or inf, first at index {bad} "
                f"(value {value[bad]!r}); clean or drop those transitions before loading."
            )
    dims = ((obs_key, expected_obs_dim, "expected_obs_dim"),
            (act_key, expected_act_dim, "expected_act_dim"))
    for key, expected, name in dims:
        actual = present[key].shape[1]
        if expected is not None and actual != expected:
            raise DatasetError(
                f"{source}: key '{key}' has dimension {actual} but the task expects "
                f"{name}={expected}; use the dataset recorded for this task (or fix the task's "
                "dimensions)."
            )


def _optional_float32(array: np.ndarray | None) -> np.ndarray | None:
    return None if array is None else np.ascontiguousarray(array, dtype=np.float32)


@dataclass(frozen=True)
class Episodes:
    """All transitions of one dataset, concatenated, with episode boundaries.

    Invariants (built by :meth:`from_arrays`): episodes are contiguous and cover all T rows
    in order; inside an episode both flags are False except at its last step, where
    ``terminals`` (true termination) or ``timeouts`` (cut off, future unknown) is True.

    Attributes:
        observations: (T, obs_dim) float32.
        actions: (T, act_dim) float32.
        rewards: (T,) float32.
        terminals: (T,) bool.
        timeouts: (T,) bool.
        starts: (E,) int64, first row of each episode.
        lengths: (E,) int64, rows per episode.
        goals: (T, goal_dim) float32 or None.
        qpos: (T, nq) float32 or None.
        qvel: (T, nv) float32 or None.
        source: file path or dataset id the data came from.
        metadata: free-form provenance (e.g. the file's metadata, the loader's layout kind).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    goals: np.ndarray | None = None
    qpos: np.ndarray | None = None
    qvel: np.ndarray | None = None
    source: str = "<arrays>"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n_rows = len(self.observations)
        if len(self.starts) != len(self.lengths) or len(self.starts) == 0:
            raise DatasetError(
                f"{self.source}: starts ({len(self.starts)}) and lengths ({len(self.lengths)}) "
                "must have the same, non-zero length; build Episodes with Episodes.from_arrays."
            )
        expected_starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        if not np.array_equal(self.starts, expected_starts) or int(self.lengths.sum()) != n_rows:
            raise DatasetError(
                f"{self.source}: episodes must be contiguous and cover all {n_rows} rows "
                f"(starts {self.starts[:5]}..., lengths {self.lengths[:5]}...); "
                "build Episodes with Episodes.from_arrays."
            )

    @classmethod
    def from_arrays(
        cls,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminals: np.ndarray,
        timeouts: np.ndarray,
        *,
        ends: np.ndarray | None = None,
        goals: np.ndarray | None = None,
        qpos: np.ndarray | None = None,
        qvel: np.ndarray | None = None,
        source: str = "<arrays>",
        metadata: Mapping[str, Any] | None = None,
        expected_obs_dim: int | None = None,
        expected_act_dim: int | None = None,
        key_names: Mapping[str, str] | None = None,
    ) -> Episodes:
        """Validate raw (T, ...) arrays and split them into episodes.

        Args:
            observations, actions, rewards, terminals, timeouts: raw arrays with T rows.
            ends: (T,) bool boundary mask, True at the last step of each episode. Defaults to
                ``terminals | timeouts``. A trailing segment without an end is kept as an
                episode ending by timeout. Flags at steps that are not ends are cleared (D4RL
                maze2d flags are unreliable); an end with neither flag becomes a timeout.
            goals, qpos, qvel: optional (T, ...) arrays.
            source: file or dataset id for messages and provenance.
            metadata: provenance stored on the result.
            expected_obs_dim, expected_act_dim: dimensions the task needs (None: unchecked).
            key_names: source spelling of keys for messages (see :func:`validate_arrays`).

        Raises:
            DatasetError: see :func:`validate_arrays`; also a malformed ``ends`` mask.
        """
        observations, actions = np.asarray(observations), np.asarray(actions)
        optional = {"goals": goals, "qpos": qpos, "qvel": qvel, "ends": ends}
        arrays = {"observations": observations, "actions": actions, "rewards": np.asarray(rewards),
                  "terminals": np.asarray(terminals), "timeouts": np.asarray(timeouts),
                  **{key: None if value is None else np.asarray(value) for key, value in optional.items()}}
        validate_arrays(arrays, source=source, expected_obs_dim=expected_obs_dim,
                        expected_act_dim=expected_act_dim, key_names=key_names)
        terminal_flags = np.asarray(terminals).astype(bool).reshape(-1)
        timeout_flags = np.asarray(timeouts).astype(bool).reshape(-1)
        n_rows = len(observations)
        if len(terminal_flags) != n_rows or len(timeout_flags) != n_rows:
            raise DatasetError(f"{source}: terminals and timeouts must be 1-D with {n_rows} entries, "
                               f"got shapes {np.shape(terminals)} and {np.shape(timeouts)}.")
        end_mask = (terminal_flags | timeout_flags) if ends is None else np.asarray(ends, dtype=bool)
        end_mask = end_mask.copy()
        end_mask[-1] = True  # a trailing unfinished segment is an episode cut off by timeout
        terminal_flags = terminal_flags & end_mask
        timeout_flags = (timeout_flags & end_mask) | (end_mask & ~terminal_flags)
        stops = np.flatnonzero(end_mask).astype(np.int64) + 1  # exclusive episode ends
        starts = np.concatenate([[0], stops[:-1]]).astype(np.int64)
        return cls(
            observations=np.ascontiguousarray(observations, dtype=np.float32),
            actions=np.ascontiguousarray(actions, dtype=np.float32),
            rewards=np.ascontiguousarray(np.asarray(rewards).reshape(-1), dtype=np.float32),
            terminals=terminal_flags,
            timeouts=timeout_flags,
            starts=starts,
            lengths=stops - starts,
            goals=_optional_float32(goals),
            qpos=_optional_float32(qpos),
            qvel=_optional_float32(qvel),
            source=source,
            metadata=dict(metadata or {}),
        )

    def joined(self) -> Episodes:
        """The same data with boundaries only after true terminals (and at the end).

        For datasets recorded as one uninterrupted stream (the maze2d recipe never resets
        the env; episodes only mark goal changes), consecutive episodes are physically
        continuous, so training windows may cross those boundaries.
        """
        return Episodes.from_arrays(
            self.observations, self.actions, self.rewards, self.terminals, self.timeouts,
            ends=self.terminals, goals=self.goals, qpos=self.qpos, qvel=self.qvel,
            source=self.source, metadata=self.metadata,
        )

    @property
    def n_episodes(self) -> int:
        """E, the number of episodes."""
        return len(self.starts)

    @property
    def n_transitions(self) -> int:
        """T, the number of transitions over all episodes."""
        return len(self.observations)

    @property
    def obs_dim(self) -> int:
        """Size of one observation."""
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        """Size of one action."""
        return int(self.actions.shape[1])

    @property
    def ended_by_terminal(self) -> np.ndarray:
        """(E,) bool: True where an episode ended in a true terminal (absorbing state)."""
        return self.terminals[self.starts + self.lengths - 1]

    def episode(self, index: int) -> Episode:
        """Views into episode ``index`` (negative indices count from the end)."""
        if not -self.n_episodes <= index < self.n_episodes:
            raise IndexError(f"episode index {index} out of range for {self.n_episodes} episodes")
        start = int(self.starts[index])
        rows = slice(start, start + int(self.lengths[index]))

        def cut(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else array[rows]

        return Episode(self.observations[rows], self.actions[rows], self.rewards[rows],
                       self.terminals[rows], self.timeouts[rows], cut(self.goals),
                       cut(self.qpos), cut(self.qvel))

    def transitions(self, layout: TrajectoryLayout) -> np.ndarray:
        """All transitions as one (T, D) float32 array in ``layout``'s channel order.

        Observations, then actions (omitted when ``layout.act_dim == 0``), then the reward and
        the terminal flag (0/1) when the layout models them.

        Raises:
            DatasetError: the layout's dimensions do not match this dataset's.
        """
        if layout.obs_dim != self.obs_dim or layout.act_dim not in (0, self.act_dim):
            raise DatasetError(
                f"{self.source}: layout has obs_dim={layout.obs_dim}, act_dim={layout.act_dim} but "
                f"the dataset has obs_dim={self.obs_dim}, act_dim={self.act_dim}; build the "
                "layout from the dataset's dimensions (act_dim=0 for state-only models)."
            )
        out = np.empty((self.n_transitions, layout.transition_dim), dtype=np.float32)
        out[:, layout.obs] = self.observations
        out[:, layout.act] = self.actions[:, : layout.act_dim]
        out[:, layout.rew] = self.rewards[:, None][:, : int(layout.reward)]
        out[:, layout.term] = self.terminals[:, None][:, : int(layout.terminal)]
        return out
