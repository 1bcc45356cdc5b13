"""Locomotion end to end on a tiny real Hopper dataset: train the diffusion model, the value
function and BC, then evaluate value-guided, unguided and BC policies through the command
functions, as ``diffplan-train``, ``diffplan-train-value``, ``diffplan-train-bc`` and
``diffplan-evaluate`` run them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from locomotion_fixtures import tiny_locomotion_config

from diffplan.pipeline.evaluate import run_evaluate
from diffplan.pipeline.train import run_train
from diffplan.pipeline.train_bc import run_train_bc
from diffplan.pipeline.train_value import run_train_value
from diffplan.training.checkpoint import CheckpointError


def test_train_value_bc_and_evaluate(tmp_path: Path, hopper_file: Path) -> None:
    (tmp_path / "hopper-medium.hdf5").symlink_to(hopper_file)
    cfg = tiny_locomotion_config(tmp_path, ["guidance=value"])
    assert run_train(cfg).steps == 4
    assert run_train_value(cfg).steps == 4
    run_train_bc(cfg)

    guided = json.loads(run_evaluate(cfg).read_text())
    assert guided["task"] == "hopper-medium" and guided["n_episodes"] == 3 and guided["n_failed"] == 0
    assert guided["reference_scores"]["method"] == "d4rl" and guided["success_rate"] is None
    assert guided["config"]["guidance"]["kind"] == "value" and guided["checkpoint"]["value"]["sha256"]
    assert all(1 <= ep["length"] <= 12 for ep in guided["episodes"])
    # Warm-started replans every 2 steps: more plans than episodes' first plans.
    assert guided["plan_time_s"]["n_plans"] > 2

    again = json.loads(run_evaluate(cfg).read_text())
    assert again["episode_returns"] == guided["episode_returns"], "same seed, same result"

    cfg.guidance.kind = "none"  # type: ignore[assignment]
    cfg.eval.out_dir = str(tmp_path / "unguided")
    unguided = json.loads(run_evaluate(cfg).read_text())
    assert unguided["config"]["guidance"]["kind"] == "none" and unguided["n_failed"] == 0

    cfg.eval.controller = "bc"  # type: ignore[assignment]
    cfg.eval.out_dir = str(tmp_path / "bc")
    bc = json.loads(run_evaluate(cfg).read_text())
    assert bc["n_episodes"] == 3 and "bc" in bc["trained_config"] and bc["n_failed"] == 0


def test_value_checkpoint_of_another_model_is_refused(tmp_path: Path, hopper_file: Path) -> None:
    (tmp_path / "hopper-medium.hdf5").symlink_to(hopper_file)
    cfg = tiny_locomotion_config(tmp_path, ["guidance=value"])
    run_train(cfg)
    run_train_value(cfg)
    other = tiny_locomotion_config(tmp_path / "other", ["guidance=value", "task.horizon=16",
                                                         f"task.dataset={hopper_file}"])
    run_train(other)
    other.guidance.value_checkpoint = cfg.guidance.value_checkpoint
    with pytest.raises(CheckpointError, match="horizon"):
        run_evaluate(other)
