"""Load Minari datasets (optional dependency: ``pip install -e ".[minari]"``).

Minari stores one more observation than actions per episode (L+1 vs L: the final
observation after the last step); it is dropped so that row t holds (o_t, a_t, r_t).
Dict observations of goal-conditioned tasks (PointMaze, AntMaze: ``observation``,
``achieved_goal``, ``desired_goal``) become ``observations = observation`` and
``goals = desired_goal``. ``terminations`` / ``truncations`` become terminals / timeouts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from diffplan.data.episodes import Episodes
from diffplan.data.errors import DatasetError, DatasetNotFoundError
from diffplan.extras import require

#: Name of the JSON file that marks a Minari data folder (``<dataset>/data/metadata.json``).
_MINARI_METADATA = "metadata.json"


def minari_data_dir(path: str | os.PathLike[str]) -> Path | None:
    """The Minari data folder for a dataset folder or a data folder, or None if neither.

    A Minari dataset folder ``<root>/<id>/`` holds ``data/metadata.json``; the data folder is
    ``<root>/<id>/data``.
    """
    folder = Path(path)
    if (folder / "data" / _MINARI_METADATA).is_file():
        return folder / "data"
    if (folder / _MINARI_METADATA).is_file():
        return folder
    return None


def _as_2d(array: np.ndarray) -> np.ndarray:
    """(L,) -> (L, 1) for scalar spaces (Discrete); (L, ...) -> (L, prod(...))."""
    array = np.asarray(array)
    return array.reshape(len(array), -1)


def _split_observations(observations: Any, source: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Observation and goal arrays (each L+1 rows) from one Minari episode's observations."""
    if isinstance(observations, dict):
        if "observation" not in observations:
            raise DatasetError(
                f"{source}: dict observations need an 'observation' entry, found keys "
                f"{sorted(observations)}; flatten the observation space before recording."
            )
        goal = observations.get("desired_goal")
        return _as_2d(observations["observation"]), None if goal is None else _as_2d(goal)
    if isinstance(observations, np.ndarray):
        return _as_2d(observations), None
    raise DatasetError(
        f"{source}: observations of type {type(observations).__name__} are not supported; "
        "record Box or Dict(observation, desired_goal, ...) observations."
    )


def _info_array(infos: dict[str, Any], key: str, length: int) -> np.ndarray | None:
    """``infos[key]`` cut to the episode's L rows (Minari records L+1: reset info first)."""
    value = infos.get(key)
    if not isinstance(value, np.ndarray) or len(value) < length:
        return None
    return _as_2d(value[:length])


def _open_dataset(minari: Any, dataset_id_or_path: str | os.PathLike[str]) -> tuple[Any, str]:
    data_dir = minari_data_dir(dataset_id_or_path)
    if data_dir is not None:
        return minari.MinariDataset(data_dir), str(dataset_id_or_path)
    dataset_id = str(dataset_id_or_path)
    if os.sep in dataset_id and Path(dataset_id).exists():
        raise DatasetError(
            f"{dataset_id}: not a Minari dataset folder (no data/{_MINARI_METADATA}); pass the "
            "folder that minari created, or a dataset id."
        )
    try:
        return minari.load_dataset(dataset_id), f"minari:{dataset_id}"
    except FileNotFoundError as error:
        root = os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")
        raise DatasetNotFoundError(
            f"minari:{dataset_id}: dataset not found under MINARI_DATASETS_PATH={root}; download "
            f"it with `minari download {dataset_id}`, set MINARI_DATASETS_PATH, or pass the "
            "dataset folder's path."
        ) from error


def load_minari(
    dataset_id_or_path: str | os.PathLike[str],
    *,
    expected_obs_dim: int | None = None,
    expected_act_dim: int | None = None,
) -> Episodes:
    """Load a local Minari dataset into validated :class:`Episodes`.

    Args:
        dataset_id_or_path: a Minari dataset id (looked up under ``MINARI_DATASETS_PATH``,
            default ``~/.minari/datasets``; never downloaded), or the path of a dataset folder
            (``<root>/<id>``) or of its ``data`` folder.
        expected_obs_dim: observation size the task needs (None: unchecked).
        expected_act_dim: action size the task needs (None: unchecked).

    Raises:
        ImportError: minari is not installed.
        DatasetNotFoundError: no such local dataset.
        DatasetError: unsupported spaces, empty dataset, length mismatch, NaN/inf, dimension
            mismatch.
    """
    minari = require("minari", "loading a Minari dataset")
    dataset, source = _open_dataset(minari, dataset_id_or_path)
    columns: dict[str, list[np.ndarray]] = {key: [] for key in
                                            ("obs", "act", "rew", "term", "trunc", "goal", "qpos", "qvel")}
    for episode in dataset.iterate_episodes():
        length = len(episode)
        if length == 0:
            continue
        observations, goals = _split_observations(episode.observations, source)
        columns["obs"].append(observations[:length])
        columns["act"].append(_as_2d(episode.actions))
        columns["rew"].append(np.asarray(episode.rewards).reshape(-1))
        columns["term"].append(np.asarray(episode.terminations, dtype=bool).reshape(-1))
        columns["trunc"].append(np.asarray(episode.truncations, dtype=bool).reshape(-1))
        if goals is not None:
            columns["goal"].append(goals[:length])
        for key in ("qpos", "qvel"):
            value = _info_array(episode.infos, key, length)
            if value is not None:
                columns[key].append(value)
    if not columns["obs"]:
        raise DatasetError(f"{source}: the dataset is empty (no episode has a step); record at "
                           "least one step per episode.")
    n_episodes = len(columns["obs"])
    lengths = np.array([len(rewards) for rewards in columns["rew"]])
    ends = np.zeros(int(lengths.sum()), dtype=bool)
    ends[np.cumsum(lengths) - 1] = True

    def joined(key: str) -> np.ndarray | None:
        # Optional columns are kept only when every episode has them.
        parts = columns[key]
        return np.concatenate(parts) if len(parts) == n_episodes else None

    env_spec = dataset.env_spec
    metadata = {"layout_kind": "minari", "dataset_id": dataset.id,
                "minari_version": str(dataset.minari_version),
                "env_id": None if env_spec is None else env_spec.id}
    # Reference returns for score normalization, when the dataset was created with them.
    stored = dataset.storage.metadata
    metadata.update({key: float(stored[key]) for key in ("ref_min_score", "ref_max_score")
                     if stored.get(key) is not None})
    return Episodes.from_arrays(
        np.concatenate(columns["obs"]), np.concatenate(columns["act"]),
        np.concatenate(columns["rew"]), np.concatenate(columns["term"]),
        np.concatenate(columns["trunc"]),
        ends=ends, goals=joined("goal"), qpos=joined("qpos"), qvel=joined("qvel"),
        source=source, metadata=metadata,
        expected_obs_dim=expected_obs_dim, expected_act_dim=expected_act_dim,
        key_names={"terminals": "terminations", "timeouts": "truncations"},
    )
