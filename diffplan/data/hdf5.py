"""Read and write D4RL-layout HDF5 files.

Three layouts share the D4RL key names (observations, actions, rewards, terminals, timeouts,
infos/goal, infos/qpos, infos/qvel) but differ in how episodes are delimited:

- ``diffplan``: the project's own files (root attribute ``metadata``, a JSON object with
  ``"format": "diffplan-d4rl"``); an episode ends after each step with ``timeouts | terminals``.
- ``maze2d``: D4RL maze2d files (``infos/goal``, no ``next_observations``). Their flags are
  unreliable, so an episode ends where ``infos/goal`` changes (and at the file end); every
  such episode ends by timeout.
- ``locomotion``: D4RL MuJoCo files; an episode ends after ``terminals | timeouts``, and a
  trailing unfinished segment is kept as an episode that ends by timeout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import h5py
import numpy as np

from diffplan.data.episodes import Episodes
from diffplan.data.errors import DatasetError, DatasetNotFoundError
from diffplan.utils import atomic_path

LayoutKind = Literal["auto", "diffplan", "maze2d", "locomotion"]
#: Value of ``format`` in the root ``metadata`` attribute of the project's own files.
DIFFPLAN_FORMAT = "diffplan-d4rl"
_OPTIONAL_KEYS = {"goals": "infos/goal", "qpos": "infos/qpos", "qvel": "infos/qvel"}
_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "diffplan": ("observations", "actions", "rewards", "terminals", "timeouts"),
    "maze2d": ("observations", "actions", "rewards", "infos/goal"),
    "locomotion": ("observations", "actions", "rewards", "terminals", "timeouts"),
}


def _dataset_keys(handle: h5py.File) -> list[str]:
    """Paths of every dataset in the file, e.g. ``['actions', 'infos/goal', ...]``."""
    keys: list[str] = []
    handle.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(keys)


def _check_hdf5_file(path: str | os.PathLike[str]) -> Path:
    """The path, if it names an existing HDF5 file; else a DatasetError that says so."""
    file_path = Path(path)
    if not file_path.is_file():
        raise DatasetNotFoundError(
            f"{file_path}: no such file; check the path (or collect the dataset first with diffplan-collect)."
        )
    if not h5py.is_hdf5(file_path):
        raise DatasetError(
            f"{file_path}: not an HDF5 file; pass a D4RL-layout .hdf5 file (or a Minari dataset "
            "as 'minari:<id>')."
        )
    try:
        with h5py.File(file_path, "r"):
            pass
    except OSError as error:
        raise DatasetError(
            f"{file_path}: cannot be opened as HDF5 ({' '.join(str(error).split())}); the file is damaged or "
            "was cut short: write it again (diffplan-collect) or copy it anew"
        ) from error
    return file_path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The root ``metadata`` attribute of an HDF5 dataset ({} when the file has none)."""
    file_path = _check_hdf5_file(path)
    with h5py.File(file_path, "r") as handle:
        return _read_file_metadata(handle, file_path) or {}


def reference_scores(path: str | Path) -> dict[str, Any]:
    """The reference scores {method, min, max, ...} a diffplan collector stored in the file.

    Raises:
        DatasetError: the file has none (D4RL files: normalize with D4RL's table instead).
    """
    ref = read_metadata(path).get("ref_scores")
    if not isinstance(ref, dict) or "min" not in ref or "max" not in ref:
        raise DatasetError(
            f"{path}: its metadata holds no ref_scores {{min, max}}; collect the dataset with diffplan-collect "
            "(which computes them) or recollect it"
        )
    return {**ref, "source": f"{Path(path).name} metadata"}


def _read_file_metadata(handle: h5py.File, path: Path) -> dict[str, Any] | None:
    """The root ``metadata`` attribute parsed as JSON, or None when absent."""
    raw = handle.attrs.get("metadata")
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        parsed = json.loads(str(raw))
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{path}: root attribute 'metadata' is not valid JSON ({error}); rewrite the file with "
            "diffplan.data.write_hdf5."
        ) from error
    if not isinstance(parsed, dict):
        raise DatasetError(f"{path}: root attribute 'metadata' must be a JSON object, got {parsed!r}.")
    return parsed


def _detect_kind(keys: list[str], file_metadata: dict[str, Any] | None) -> str:
    if file_metadata is not None and file_metadata.get("format") == DIFFPLAN_FORMAT:
        return "diffplan"
    if "infos/goal" in keys and "next_observations" not in keys:
        return "maze2d"
    return "locomotion"


def _goal_change_ends(goals: np.ndarray) -> np.ndarray:
    """(T,) bool, True at the last step before ``goals`` changes, and at the last row."""
    flat = goals.reshape(len(goals), -1)
    ends = np.zeros(len(goals), dtype=bool)
    ends[:-1] = np.any(flat[1:] != flat[:-1], axis=1)
    ends[-1] = True
    return ends


def load_hdf5(
    path: str | os.PathLike[str],
    *,
    layout_kind: LayoutKind = "auto",
    expected_obs_dim: int | None = None,
    expected_act_dim: int | None = None,
) -> Episodes:
    """Load a D4RL-layout HDF5 file into validated :class:`Episodes`.

    Args:
        path: the ``.hdf5`` / ``.h5`` file.
        layout_kind: how episodes are delimited (see the module docstring). ``"auto"`` picks
            ``diffplan`` for the project's own files, ``maze2d`` when ``infos/goal`` is present
            without ``next_observations``, else ``locomotion``.
        expected_obs_dim: observation size the task needs (None: unchecked).
        expected_act_dim: action size the task needs (None: unchecked).

    Raises:
        DatasetNotFoundError: the file does not exist.
        DatasetError: not an HDF5 file, invalid ``layout_kind``, missing key, empty file,
            length mismatch, NaN/inf, dimension mismatch.
    """
    allowed = get_args(LayoutKind)
    if layout_kind not in allowed:
        raise DatasetError(f"layout_kind={layout_kind!r} is not supported; use one of {list(allowed)}.")
    file_path = _check_hdf5_file(path)
    with h5py.File(file_path, "r") as handle:
        keys = _dataset_keys(handle)
        if not keys:
            raise DatasetError(f"{file_path}: the file is empty (it holds no datasets); re-export it.")
        file_metadata = _read_file_metadata(handle, file_path)
        kind = _detect_kind(keys, file_metadata) if layout_kind == "auto" else layout_kind
        if kind == "diffplan" and (file_metadata or {}).get("format") != DIFFPLAN_FORMAT:
            raise DatasetError(
                f"{file_path}: layout_kind='diffplan' needs a root attribute 'metadata' with "
                f"format '{DIFFPLAN_FORMAT}', found {file_metadata!r}; use layout_kind='auto'."
            )
        missing = [key for key in _REQUIRED_KEYS[kind] if key not in keys]
        if missing:
            raise DatasetError(
                f"{file_path}: missing key(s) {missing}; present keys: {keys}. The {kind!r} layout "
                f"needs {list(_REQUIRED_KEYS[kind])}; pass layout_kind= to pick another layout or "
                "re-export the file."
            )
        wanted = (*_REQUIRED_KEYS["diffplan"], *_OPTIONAL_KEYS.values())
        arrays = {key: handle[key][()] for key in wanted if key in keys}
    n_rows = len(arrays["observations"])
    if kind == "maze2d":
        goals = arrays["infos/goal"]
        ends = _goal_change_ends(goals) if len(goals) == n_rows and n_rows > 0 else None
        terminals = np.zeros(n_rows, dtype=bool)
        timeouts = np.zeros(n_rows, dtype=bool)
    else:
        terminals, timeouts, ends = arrays["terminals"], arrays["timeouts"], None
    metadata = {**(file_metadata or {}), "layout_kind": kind, "keys": keys}
    return Episodes.from_arrays(
        arrays["observations"], arrays["actions"], arrays["rewards"], terminals, timeouts,
        ends=ends,
        goals=arrays.get("infos/goal"),
        qpos=arrays.get("infos/qpos"),
        qvel=arrays.get("infos/qvel"),
        source=str(file_path),
        metadata=metadata,
        expected_obs_dim=expected_obs_dim,
        expected_act_dim=expected_act_dim,
        key_names=_OPTIONAL_KEYS,
    )


def _episodes_to_arrays(episodes: Episodes) -> dict[str, np.ndarray]:
    arrays = {"observations": episodes.observations, "actions": episodes.actions,
              "rewards": episodes.rewards, "terminals": episodes.terminals,
              "timeouts": episodes.timeouts}
    for field_name, key in _OPTIONAL_KEYS.items():
        value = getattr(episodes, field_name)
        if value is not None:
            arrays[key] = value
    return arrays


def write_hdf5(
    path: str | os.PathLike[str],
    data: Episodes | Mapping[str, np.ndarray],
    metadata: Mapping[str, Any] | None = None,
    *,
    compression: Literal["gzip", "lzf"] | None = None,
) -> Path:
    """Write a D4RL-layout HDF5 file atomically (temp file in the same folder, then rename).

    Args:
        path: destination file; parent folders are created.
        data: :class:`Episodes` (written in the project's own format, so episode boundaries
            survive a round trip), or a mapping of key -> (T, ...) array written as is (keys
            may be nested, e.g. ``"infos/goal"``); the latter with ``metadata=None`` makes a
            plain D4RL-style file.
        metadata: JSON-serialisable provenance stored in the root attribute ``metadata`` with
            ``"format": "diffplan-d4rl"``. Always written for :class:`Episodes`.
        compression: optional HDF5 compression filter for every dataset.

    Returns:
        The path written.
    """
    file_path = Path(path)
    file_path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, Episodes):
        arrays = _episodes_to_arrays(data)
        attr: dict[str, Any] | None = {**data.metadata, **(metadata or {})}
    else:
        arrays = {key: np.asarray(value) for key, value in data.items()}
        attr = None if metadata is None else dict(metadata)
    if attr is not None:
        attr.pop("keys", None)
        attr.pop("layout_kind", None)
        attr["format"] = DIFFPLAN_FORMAT
    with atomic_path(file_path) as tmp_path, h5py.File(tmp_path, "w") as handle:
        for key, value in arrays.items():
            handle.create_dataset(key, data=value, compression=compression)
        if attr is not None:
            handle.attrs["metadata"] = json.dumps(attr, sort_keys=True, default=str)
    return file_path
