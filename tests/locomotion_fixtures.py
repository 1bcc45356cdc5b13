"""Helpers for the locomotion tests: a tiny Hopper file and a CPU-sized locomotion config."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from diffplan_envs.collect_locomotion import collect_with_policy
from diffplan_envs.locomotion import ROBOTS
from hydra import compose, initialize_config_dir

from diffplan.config import Config, as_config, register_configs

ROOT = Path(__file__).resolve().parents[1]


def tiny_locomotion_config(tmp_path: Path, extra: list[str] | None = None) -> Config:
    overrides = [
        "+experiment=locomotion", "task=hopper-medium", f"run_dir={tmp_path / 'run'}",
        f"task.dataset={tmp_path / 'hopper-medium.hdf5'}", "task.horizon=8", "task.episode_steps=12",
        "model.unet.dim=8", "model.unet.dim_mults=[1,2]", "value.dim=8", "value.dim_mults=[1,2]",
        "diffusion.n_timesteps=8", "diffusion.sampling_steps=4",
        "train.steps=4", "train.batch_size=4", "train.ckpt_every=2", "train.progress=false", "train.threads=1",
        "value.steps=4", "value.batch_size=4", "value.ckpt_every=2", "value.progress=false", "value.threads=1",
        "bc.steps=30", "bc.batch_size=16", "bc.progress=false", "bc.threads=1",
        "planner.n_candidates=3", "planner.warm_start.level=2", "planner.warm_start.steps=1",
        "eval.n_episodes=3", "eval.n_envs=2", "eval.seeds=[0]", "eval.progress=false",
    ]
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return as_config(compose("config", overrides=overrides + (extra or [])))


def make_hopper_file(folder: Path) -> Path:
    """600 steps of a noisy standing controller in Hopper-v5, written by the collector."""
    rng = np.random.default_rng(0)
    robot = replace(ROBOTS["hopper"], episode_steps=60)
    return collect_with_policy(
        robot, lambda obs: np.clip(-obs[:, 1:4] + 0.3 * rng.standard_normal((len(obs), 3)), -1, 1),
        folder / "hopper-medium.hdf5", n_steps=600, seed=0, n_envs=4,
        metadata={"robot": "hopper", "level": "medium"}, progress=False,
    )
