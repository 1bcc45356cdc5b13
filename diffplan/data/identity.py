"""What a dataset is, independent of where and when it was written: one hash of its arrays.

:func:`dataset_record` is what ``diffplan-train`` stores in a checkpoint and ``diffplan-evaluate``
writes to results.json; :func:`check_same_dataset` compares two records. The ``identity`` is a
SHA-256 of the loaded arrays (observations, actions, rewards, flags, episode lengths, goals,
qpos, qvel: dtype, shape and bytes) and of the recipe part of the metadata (seeds, step counts,
policies, reference returns), without the parts that change from one writing to the next
(timestamps, package versions, folders of the machine that wrote it). Two collections with the
same recipe and seed therefore share an identity although their files' bytes differ, and the
same arrays read from a D4RL file, a Minari dataset or the project's own file hash alike up to
the recipe metadata they carry.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from diffplan.data.episodes import Episodes
from diffplan.data.errors import DatasetError
from diffplan.utils import file_sha256

log = logging.getLogger(__name__)

#: Version of the hashing scheme, hashed in: a new scheme never matches an old identity.
IDENTITY_FORMAT = 1
#: Arrays of :class:`Episodes` that make up its identity, in hashing order (None ones are skipped).
IDENTITY_ARRAYS = ("observations", "actions", "rewards", "terminals", "timeouts", "lengths", "goals", "qpos", "qvel")
#: Metadata keys (at any depth) about when, where or with what a dataset was written, not what it holds.
VOLATILE_KEYS = frozenset({
    "created", "created_at", "timestamp", "host", "hostname", "user", "agent_dir", "git_revision", "hardware",
    "diffplan_version", "gymnasium", "gymnasium_robotics", "mujoco", "package_versions", "minari_version",
    "wall_time_s",
})
#: Top-level metadata keys that describe the container, not the data (added by the loaders).
CONTAINER_KEYS = frozenset({"format", "keys", "layout_kind", "source", "dataset_id"})


def recipe_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` without the :data:`CONTAINER_KEYS` and, at any depth, the :data:`VOLATILE_KEYS`."""

    def strip(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): strip(v) for k, v in value.items() if k not in VOLATILE_KEYS}
        if isinstance(value, list | tuple):
            return [strip(v) for v in value]
        return value

    return strip({k: v for k, v in metadata.items() if k not in CONTAINER_KEYS})


def dataset_identity(episodes: Episodes) -> str:
    """Hex SHA-256 of ``episodes``' arrays and recipe metadata (see the module docstring)."""
    digest = hashlib.sha256(f"diffplan-dataset-identity/{IDENTITY_FORMAT}\n".encode())
    for name in IDENTITY_ARRAYS:
        array = getattr(episodes, name)
        if array is None:
            continue
        array = np.ascontiguousarray(array)
        digest.update(f"{name}:{array.dtype.str}:{list(array.shape)}\n".encode())
        digest.update(array.data)  # the bytes, without a copy
    recipe = json.dumps(recipe_metadata(episodes.metadata), sort_keys=True, default=str)
    digest.update(f"metadata:{recipe}\n".encode())
    return digest.hexdigest()


def source_name(source: str | Path) -> str:
    """How a dataset source is recorded: ``minari:<id>`` as given, a file or folder as an absolute path."""
    text = str(source)
    return text if text.startswith("minari:") else str(Path(text).resolve())


def dataset_record(source: str | Path, episodes: Episodes) -> dict[str, Any]:
    """Provenance of ``episodes`` loaded from ``source`` (checkpoints' and results.json's ``dataset``).

    Returns:
        ``path`` (:func:`source_name`), ``identity`` (:func:`dataset_identity`), ``sha256`` (the
        file's bytes; None for a Minari dataset), ``layout`` (the loader's layout kind),
        ``n_transitions`` and ``n_episodes``, and ``top_return_fraction`` (the share of the file's
        episodes kept, :func:`diffplan.data.returns.best_episodes`; 1.0 all).
    """
    path = Path(str(source))
    return {
        "path": source_name(source),
        "identity": dataset_identity(episodes),
        "sha256": file_sha256(path) if path.is_file() else None,
        "layout": episodes.metadata.get("layout_kind"),
        "n_transitions": episodes.n_transitions,
        "n_episodes": episodes.n_episodes,
        "top_return_fraction": float(episodes.metadata.get("selection", {}).get("top_return_fraction", 1.0)),
    }


def check_same_dataset(recorded: Mapping[str, Any], current: Mapping[str, Any], *, what: str, key: str,
                       fix: str) -> str | None:
    """Refuse ``current`` when it is not the dataset ``recorded`` (what ``what`` was trained on).

    Compares identities when both records have one; an older record with only its file's
    sha256 is compared by file, and a differing file is let through with a warning (a
    re-collection of the same data has other bytes), since the arrays it was made from are
    unknown.

    Args:
        recorded: the dataset record stored with ``what`` (may be empty).
        current: :func:`dataset_record` of the dataset in use.
        what: the checkpoint, e.g. ``"checkpoint runs/x/checkpoint.pt"``.
        key: the setting that names the current dataset, e.g. ``"task.dataset"``.
        fix: the second way out, after using the recorded dataset (e.g. ``"use a new run_dir"``).

    Returns:
        None when the datasets are the same; else a sentence saying why they cannot be
        compared (results.json records it).

    Raises:
        DatasetError: the identities differ, naming both datasets and the fix.
    """
    old, new = recorded.get("identity"), current.get("identity")
    if old and new:
        if old == new:
            return None
        old_share, new_share = recorded.get("top_return_fraction", 1.0), current.get("top_return_fraction", 1.0)
        if recorded.get("path") != current.get("path"):
            way_back = f"pass {key}={recorded.get('path')}"
        elif old_share != new_share:
            way_back = (f"it was trained on the best {old_share} of the file's episodes by return, this selects "
                        f"{new_share}: pass task.top_return_fraction={old_share}")
        else:
            way_back = "the data at that path changed since training: restore it there"
        raise DatasetError(
            f"{key}={current.get('path')} (identity {new[:12]}…) is not the dataset {what} was trained on "
            f"({recorded.get('path')}, identity {old[:12]}…); {way_back}, or {fix}"
        )
    old_file, new_file = recorded.get("sha256"), current.get("sha256")
    if old_file and new_file and old_file == new_file:
        return None
    if old_file and new_file:
        note = (f"{what} records only the file hash of {recorded.get('path')} (sha256 {old_file[:12]}…; it was "
                f"written before datasets were identified by their arrays), and {current.get('path')} has other "
                "bytes; a re-collection of the same data also does, so the dataset was not checked")
    else:
        note = f"{what} records no dataset identity, so the dataset was not checked"
    log.warning("%s", note)
    return note
