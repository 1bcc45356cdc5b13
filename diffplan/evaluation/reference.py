"""Which reference returns normalize an evaluation's scores, and where they came from.

A normalized score is ``100 * (return - min) / (max - min)``. The reference returns
(``min``, ``max``) are taken from, in order:

1. the config: ``task.ref_min`` and ``task.ref_max`` (method ``"config"``);
2. the dataset: the ``ref_scores`` a ``diffplan-collect`` file stores in its metadata (method
   as stored: ``"minari"`` for the mazes, ``"d4rl"`` for locomotion), or the ``ref_min_score`` /
   ``ref_max_score`` of a Minari dataset (method ``"minari"``);
3. D4RL's published reference returns for the locomotion robots (method ``"d4rl"``).

The mazes have no published reference on their evaluation environment (D4RL's maze2d
returns were measured on other environments), so a maze dataset without reference returns
needs the config keys or a collection with ``diffplan-collect``, which measures them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffplan.data.errors import DatasetError


def resolve_reference_scores(
    task_name: str,
    source: str,
    metadata: Mapping[str, Any],
    *,
    ref_min: float | None = None,
    ref_max: float | None = None,
) -> dict[str, Any]:
    """Reference returns for task ``task_name`` evaluated with the dataset ``source`` (see the module docstring).

    Args:
        task_name: the task, e.g. ``hopper-medium``.
        source: the dataset as the user named it (``task.dataset``), for messages and ``source``.
        metadata: the loaded dataset's metadata (:attr:`diffplan.data.Episodes.metadata`).
        ref_min, ref_max: ``task.ref_min`` / ``task.ref_max`` (None: unset).

    Returns:
        ``{"method", "min", "max", "source", ...}`` (results.json ``reference_scores``); ``method``
        names the scale: ``"config"``, ``"minari"`` or ``"d4rl"``.

    Raises:
        DatasetError: only one of ``ref_min`` / ``ref_max`` set, ``max <= min``, or no reference
            at all for the task, each naming the fix.
    """
    if (ref_min is None) != (ref_max is None):
        unset = "task.ref_max" if ref_max is None else "task.ref_min"
        raise DatasetError(f"task.ref_min={ref_min} and task.ref_max={ref_max}: set both or neither (set {unset})")
    if ref_min is not None and ref_max is not None:
        return _checked({"method": "config", "min": float(ref_min), "max": float(ref_max),
                         "source": "task.ref_min / task.ref_max"}, "task.ref_min / task.ref_max")
    stored = metadata.get("ref_scores")
    if isinstance(stored, Mapping) and "min" in stored and "max" in stored:
        return _checked({"method": "dataset", **stored, "source": f"{source} metadata"}, source)
    if metadata.get("ref_min_score") is not None and metadata.get("ref_max_score") is not None:
        return _checked({"method": "minari", "min": float(metadata["ref_min_score"]),
                         "max": float(metadata["ref_max_score"]),
                         "source": f"{source} metadata (ref_min_score, ref_max_score)"}, source)
    from diffplan_envs.locomotion import get_locomotion_task, is_locomotion_task

    if is_locomotion_task(task_name):
        robot = get_locomotion_task(task_name).robot
        ref = robot.ref_scores
        return {"method": "d4rl", "min": ref.ref_min, "max": ref.ref_max,
                "source": f"D4RL's reference returns for {robot.name} (d4rl/infos.py)"}
    raise DatasetError(
        f"task.dataset={source} holds no reference returns and task {task_name} has no published ones "
        "(D4RL's maze2d scores were measured on other environments); set task.ref_min=<a random policy's "
        "return> task.ref_max=<an expert's return>, or collect the dataset with diffplan-collect, which measures them"
    )


def _checked(ref: dict[str, Any], where: str) -> dict[str, Any]:
    if not float(ref["max"]) > float(ref["min"]):
        raise DatasetError(
            f"{where}: reference returns min={ref['min']} and max={ref['max']} need max > min; "
            "set task.ref_min and task.ref_max"
        )
    return ref


def scale_label(ref: Mapping[str, Any]) -> str:
    """A short name of the scale for reports, e.g. ``"D4RL scale"``."""
    names = {"d4rl": "D4RL", "minari": "Minari-style", "config": "task.ref_min/ref_max"}
    method = str(ref.get("method", "?"))
    return f"{names.get(method, method)} scale"
