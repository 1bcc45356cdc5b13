"""Locomotion end to end on a tiny real Hopper dataset: train the diffusion model, the value
function and BC, then evaluate value-guided, unguided and BC policies through the command
functions, as ``diffplan-train``, ``diffplan-train-value``, ``diffplan-train-bc`` and
``diffplan-evaluate`` run them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from diffplan_envs.collect_locomotion import collect_with_policy
from diffplan_envs.locomotion import ROBOTS
from hydra import compose, initialize_config_dir

from diffplan.cli.evaluate import run_evaluate
from diffplan.cli.train import run_train
from diffplan.cli.train_bc import run_train_bc
from diffplan.cli.train_value import run_train_value
from diffplan.config import Config, as_config, register_configs
from diffplan.training.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


def tiny_locomotion_config(tmp_path: Path, extra: list[str] | None = None) -> Config:
    overrides = [
        "+experiment=locomotion", "task=hopper-medium", f"run_dir={tmp_path / 'run'}",
        f"task.dataset={tmp_path / 'hopper-medium.hdf5'}", "task.horizon=8", "task.episode_steps=12",
        "model.dim=8", "model.dim_mults=[1,2]", "value.dim=8", "value.dim_mults=[1,2]",
        "diffusion.n_timesteps=8", "diffusion.sampling_steps=4",
        "train.steps=4", "train.batch_size=4", "train.ckpt_every=2", "train.progress=false", "train.threads=1",
        "value.steps=4", "value.batch_size=4", "value.ckpt_every=2", "value.progress=false", "value.threads=1",
        "bc.steps=30", "bc.batch_size=16", "bc.progress=false", "bc.threads=1",
        "planner.n_candidates=3", "planner.warm_start_level=2", "planner.warm_start_steps=1",
        "eval.n_episodes=3", "eval.n_envs=2", "eval.seeds=[0]", "eval.progress=false",
    ]
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return as_config(compose("config", overrides=overrides + (extra or [])))


@pytest.fixture(scope="module")
def hopper_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 steps of a noisy standing controller in Hopper-v5, written by the collector."""
    folder = tmp_path_factory.mktemp("hopper")
    rng = np.random.default_rng(0)
    robot = replace(ROBOTS["hopper"], episode_steps=60)
    return collect_with_policy(
        robot, lambda obs: np.clip(-obs[:, 1:4] + 0.3 * rng.standard_normal((len(obs), 3)), -1, 1),
        folder / "hopper-medium.hdf5", n_steps=600, seed=0, n_envs=4,
        metadata={"robot": "hopper", "level": "medium"}, progress=False,
    )


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

    cfg.eval.policy = "bc"  # type: ignore[assignment]
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
