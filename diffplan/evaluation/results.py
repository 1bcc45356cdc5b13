"""The evaluator's JSON: one file per evaluation, self-describing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from diffplan import __version__
from diffplan.evaluation.evaluator import EvaluationOutput
from diffplan.utils import atomic_path, git_revision, hardware_info

RESULTS_FORMAT = 1

#: Distributions whose versions results.json records (``packages``) and the report shows.
TRACKED_PACKAGES = ("diffplan", "torch", "numpy", "gymnasium", "gymnasium-robotics", "mujoco")


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed version of each distribution in ``names`` ("not installed" when absent)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def build_results(
    output: EvaluationOutput,
    *,
    task: str,
    config: dict[str, Any],
    trained_config: dict[str, Any],
    dataset: dict[str, Any],
    checkpoint: dict[str, Any],
    seeds: list[int],
    n_episodes_per_seed: int,
    reference_scores: dict[str, Any],
) -> dict[str, Any]:
    """Assemble results.json: provenance, summary, and every episode.

    ``config`` is the evaluation's resolved config (planner, sampler, eval settings);
    ``trained_config`` is the checkpoint's (model, horizon, stride, training budget).
    """
    summary = output.summary()
    return {
        "format": RESULTS_FORMAT,
        "task": task,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "diffplan_version": __version__,
        "git_revision": git_revision(),
        "hardware": hardware_info(),
        "packages": package_versions(),
        "config": config,
        "trained_config": trained_config,
        "dataset": dataset,
        "checkpoint": checkpoint,
        "seeds": seeds,
        "n_episodes_per_seed": n_episodes_per_seed,
        "n_episodes": summary["n_episodes"],
        "n_failed": summary["n_failed"],
        "reference_scores": reference_scores,
        "normalized_score": summary["normalized_score"],
        "success_rate": summary["success_rate"],
        "return": summary["return"],
        "plan_time_s": {**summary["plan_time_s"], "per_plan": output.plan_times_s},
        "wall_time_s": summary["wall_time_s"],
        "episode_returns": [e.episode_return for e in output.episodes],
        "episodes": output.episode_dicts(),
    }


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")
    return path
