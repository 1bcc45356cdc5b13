"""Smoke runs of every command on a tiny budget: collect, train, evaluate, demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from diffplan.config import Config, as_config, register_configs
from diffplan.data.errors import DatasetError
from diffplan.evaluation.episodes import load_episodes
from diffplan.pipeline.collect import run_collect
from diffplan.pipeline.evaluate import run_evaluate
from diffplan.pipeline.train import run_train

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")


def tiny_overrides(tmp_path: Path) -> list[str]:
    return [
        f"run_dir={tmp_path / 'run'}",
        f"task.dataset={tmp_path / 'umaze.hdf5'}",
        "task.horizon=32",
        "collect.n_steps=3000",
        "collect.ref_episodes=2",
        "collect.progress=false",
        "model.unet.dim=8",
        "model.unet.dim_mults=[1,2]",
        "diffusion.n_timesteps=8",
        "diffusion.sampling_steps=4",
        "train.steps=4",
        "train.batch_size=4",
        "train.ckpt_every=2",
        "train.progress=false",
        "train.threads=1",
        "eval.n_episodes=3",
        "eval.n_envs=2",
        "eval.seeds=[0,1]",
    ]


def tiny_config(tmp_path: Path, extra: list[str] | None = None, name: str = "config") -> Config:
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return as_config(compose(name, overrides=tiny_overrides(tmp_path) + (extra or [])))


def test_collect_train_evaluate(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    dataset = run_collect(cfg)
    with h5py.File(dataset) as handle:
        assert handle["observations"].shape == (3000, 4)
        assert json.loads(handle.attrs["metadata"])["ref_scores"]["n_episodes"] == 2

    summary = run_train(cfg)
    assert summary.steps == 4 and summary.checkpoint.exists()
    payload = torch.load(summary.checkpoint, weights_only=True)
    assert payload["step"] == 4

    results_path = run_evaluate(cfg)
    results = json.loads(results_path.read_text())
    assert results["task"] == "pointmaze-umaze"
    assert results["n_episodes"] == 6 and len(results["episode_returns"]) == 6
    assert results["seeds"] == [0, 1]
    assert set(results["normalized_score"]) >= {"mean", "stderr"}
    assert results["dataset"]["sha256"] and results["checkpoint"]["step"] == 4
    assert results["reference_scores"]["method"] == "minari"
    assert all(len(ep["reason"]) == 0 for ep in results["episodes"])
    assert results["plan_time_s"]["n_plans"] == len(results["plan_time_s"]["per_plan"]) > 0
    walls = results["plans_through_walls"]  # one plan per environment and planning call
    assert walls["n_plans"] >= results["plan_time_s"]["n_plans"] and 0 <= walls["n_through_walls"] <= walls["n_plans"]
    assert walls["rate"] == walls["n_through_walls"] / walls["n_plans"]
    assert (results_path.parent / "paths.png").stat().st_size > 1000
    assert not (results_path.parent / "episodes.npz").exists()  # eval.save_episodes is opt-in

    # eval.save_episodes=true: every episode's observations and plans next to results.json.
    cfg.eval.save_episodes = True
    cfg.eval.out_dir = str(tmp_path / "eval-saved")
    saved_results = run_evaluate(cfg)
    saved = load_episodes(saved_results.parent / "episodes.npz")
    episodes = json.loads(saved_results.read_text())["episodes"]
    assert len(saved) == 6
    assert [(int(s), int(r)) for s, r in zip(saved.seed, saved.reset_seed, strict=True)] == [
        (e["seed"], e["reset_seed"]) for e in episodes]
    assert list(saved.lengths) == [e["length"] for e in episodes]
    assert saved.observations.shape == (6, cfg.task.episode_steps + 1, 4) and saved.goals.shape == (6, 2)
    assert saved.plans.shape[0] > 0 and set(saved.plan_episode.tolist()) == set(range(6))
    trace = saved.trace(5)
    assert trace.plans and np.isfinite(trace.observations).all()

    # Training further resumes from the checkpoint instead of starting over.
    cfg.train.steps = 6
    again = run_train(cfg)
    assert again.resumed_from == 4 and again.steps == 6


def test_evaluate_without_dataset_names_the_fix(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    run_collect(cfg)
    run_train(cfg)
    cfg.task.dataset = str(tmp_path / "missing.hdf5")
    with pytest.raises(DatasetError, match="diffplan-collect"):
        run_evaluate(cfg)


@pytest.mark.slow
def test_demo_console_command(tmp_path: Path) -> None:
    """The installed console script runs the whole demo on a tiny budget and writes its files."""
    overrides = [o for o in tiny_overrides(tmp_path) if not o.startswith("task.dataset")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), *overrides],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    report = (run / "report.md").read_text()
    assert "normalized score" in report and "paths.png" in report
    assert (run / "eval" / "results.json").exists()
    assert (run / "pointmaze-umaze-3000.hdf5").exists()


def test_bc_policy_on_a_maze_is_refused(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, ["eval.controller=bc"])
    with pytest.raises(ValueError, match="eval.controller=bc is for locomotion tasks"):
        run_evaluate(cfg)


def test_evaluation_runs_on_the_threads_it_is_given(tmp_path: Path) -> None:
    """run.threads (eval.threads) holds for the evaluation too: beside another job on the same cores a
    2-thread OpenMP pool spins at every barrier, and a plan took 100 times longer."""
    cfg = tiny_config(tmp_path, ["run.threads=1"])
    assert cfg.eval.threads == 1
    run_collect(cfg)
    run_train(cfg)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        run_evaluate(cfg)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="eval.threads=-1 is out of range"):
        run_evaluate(tiny_config(tmp_path, ["eval.threads=-1"]))
