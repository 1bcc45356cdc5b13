"""The Python API (diffplan.collect/train/evaluate/load_planner/make_config) on a tiny umaze run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import diffplan
from diffplan.composition import overrides_of

TINY = {
    "task.horizon": 32, "collect.n_steps": 3000, "collect.ref_episodes": 2, "collect.progress": False,
    "model.unet.dim": 8, "model.unet.dim_mults": [1, 2], "diffusion.n_timesteps": 8, "diffusion.sampling_steps": 4,
    "train.steps": 4, "train.batch_size": 4, "train.progress": False, "train.threads": 1,
    "eval.n_episodes": 2, "eval.n_envs": 2, "eval.progress": False, "eval.plots": False,
}


def test_make_config_composes_like_the_commands() -> None:
    cfg = diffplan.make_config("pointmaze-medium", experiment="demo", run_dir="runs/x",
                               overrides={"train.steps": 123, "eval.seeds": [4, 5, 6]})
    assert cfg.task.env_id == "PointMaze_Medium-v3"
    assert (cfg.task.horizon, cfg.task.stride, cfg.train.lr) == (64, 2, 1e-3)  # the demo recipe
    assert cfg.run_dir == "runs/x" and cfg.task.dataset == "runs/x/pointmaze-medium-200000.hdf5"
    assert cfg.train.steps == 123 and list(cfg.eval.seeds) == [4, 5, 6]
    # Hydra strings are accepted as they are.
    assert diffplan.make_config(overrides=["train.steps=7"]).train.steps == 7


def test_overrides_are_written_in_hydra_syntax() -> None:
    assert overrides_of({"a": None, "b": True, "c": [1, 2.5], "d": "td3bc:runs/x.pt", "e": "plain/path.hdf5"}) == [
        "a=null", "b=true", "c=[1,2.5]", "d='td3bc:runs/x.pt'", "e=plain/path.hdf5"]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"task": "no-such-task"}, "task=no-such-task is not an option of the config group task"),
        ({"experiment": "nope"}, "experiment=nope is not an option"),
        ({"overrides": {"train.stepz": 1}}, "unknown config key train.stepz"),
        ({"overrides": {"train.steps": "many"}}, "train.steps=many: Value 'many'"),
    ],
)
def test_bad_settings_raise_one_line_value_errors(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace("[", r"\[")) as info:
        diffplan.make_config(**kwargs)
    assert "\n" not in str(info.value)


def test_collect_train_evaluate_and_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = {"run_dir": "run", "dataset": "run/umaze.hdf5", "overrides": TINY}
    assert diffplan.collect("pointmaze-umaze", **settings) == Path("run/umaze.hdf5")
    summary = diffplan.train("pointmaze-umaze", **settings)
    assert (summary.steps, summary.resumed_from) == (4, 0) and summary.checkpoint.exists()
    results = diffplan.evaluate("pointmaze-umaze", **settings)
    assert results["task"] == "pointmaze-umaze" and results["n_episodes"] == 2
    assert Path("run/eval/results.json").exists()

    planner = diffplan.load_planner("run/checkpoint.pt", seed=3)
    assert planner.config.task.horizon == 32 and planner.config.model.unet.dim == 8  # the checkpoint's own settings
    start, goal = [1.0, 0.5, 0.0, 0.0], [-1.0, -1.0]
    plan = planner.plan(start, goal=goal)
    assert plan.observations.shape == (32, 4) and plan.actions.shape == (32, 2)
    assert np.allclose(plan.observations[0], start, atol=1e-5)  # the plan starts where it was asked to
    action = planner.act(start, goal=goal)
    assert action.shape == (2,) and np.isfinite(action).all()
    # Same seed, same plan (determinism); another seed, another plan.
    again = diffplan.load_planner("run/checkpoint.pt", seed=3).plan(start, goal=goal)
    other = diffplan.load_planner("run/checkpoint.pt", seed=4).plan(start, goal=goal)
    assert np.array_equal(plan.observations, again.observations)
    assert not np.allclose(plan.observations, other.observations)
    with pytest.raises(ValueError, match="goal-reaching task; pass goal="):
        planner.act(start)
    with pytest.raises(ValueError, match="planner.n_candidates"):
        diffplan.load_planner("run/checkpoint.pt", overrides={"planner.n_candidates": "many"})
    with pytest.raises(ValueError, match="unknown config key planner.bogus"):
        diffplan.load_planner("run/checkpoint.pt", overrides={"planner.bogus": 1})
