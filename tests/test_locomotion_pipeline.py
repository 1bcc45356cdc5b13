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


def test_top_return_fraction_trains_every_model_on_the_best_episodes(tmp_path: Path, hopper_file: Path) -> None:
    """task.top_return_fraction: the diffusion model, its value function and BC learn from the best half of
    the episodes, and evaluation checks the checkpoint against the same selection."""
    from diffplan.data import load_hdf5
    from diffplan.data.errors import DatasetError
    from diffplan.data.returns import best_episodes
    from diffplan.training.checkpoint import load_trained_model

    (tmp_path / "hopper-medium.hdf5").symlink_to(hopper_file)
    cfg = tiny_locomotion_config(tmp_path, ["guidance=value", "task.top_return_fraction=0.5"])
    everything = load_hdf5(hopper_file)
    best = best_episodes(everything, 0.5)
    assert best.n_episodes == -(-everything.n_episodes // 2) and best.n_transitions < everything.n_transitions
    run_train(cfg)
    record = load_trained_model(cfg.eval.checkpoint).dataset
    assert record["top_return_fraction"] == 0.5 and record["n_episodes"] == best.n_episodes
    assert record["n_transitions"] == best.n_transitions
    assert run_train_value(cfg).steps == 4  # the value function reads the same selection from the checkpoint
    run_train_bc(cfg)
    results = json.loads(run_evaluate(cfg).read_text())
    assert results["dataset"]["top_return_fraction"] == 0.5 and results["dataset"]["matches_checkpoint"] is True
    cfg.task.top_return_fraction = 1.0
    with pytest.raises(DatasetError, match="pass task.top_return_fraction=0.5"):
        run_evaluate(cfg)

