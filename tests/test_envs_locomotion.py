"""Locomotion tasks, lockstep batch and the SB3 dataset collector on tiny budgets."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from diffplan_envs.collect_locomotion import (
    AgentPipeline,
    AgentRecipe,
    collect_locomotion_datasets,
    collect_with_policy,
    episode_returns,
    truncate,
)
from diffplan_envs.locomotion import (
    ROBOTS,
    LocomotionBatch,
    get_locomotion_task,
    is_locomotion_task,
    make_locomotion_env,
)
from diffplan_envs.reference_scores import normalized_score
from hydra import compose, initialize_config_dir

from diffplan.config import Config, as_config, register_configs
from diffplan.data.hdf5 import load_hdf5, read_metadata, reference_scores
from diffplan.data.identity import dataset_identity
from diffplan.pipeline.collect import run_collect

ROOT = Path(__file__).resolve().parents[1]
TINY_PPO = {"n_steps": 64, "batch_size": 64, "n_epochs": 1}


def tiny_recipe(**overrides: object) -> AgentRecipe:
    base = AgentRecipe(algo="ppo", n_envs=2, algo_kwargs=dict(TINY_PPO), medium_score=-1e9, eval_every=128,
                       eval_episodes=2, seed=0)
    return replace(base, **overrides)  # type: ignore[arg-type]


def uniform_policy(seed: int):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(-1, 1, size=(len(obs), 3))


def test_task_names() -> None:
    task = get_locomotion_task("walker2d-medium-replay")
    assert task.robot.env_id == "Walker2d-v5" and task.level == "medium-replay" and task.obs_dim == 17
    assert is_locomotion_task("hopper-medium-expert") and not is_locomotion_task("pointmaze-umaze")
    with pytest.raises(ValueError, match="robot in .*level in"):
        get_locomotion_task("ant-medium")
    env = make_locomotion_env("hopper")
    assert env.observation_space.shape == (11,) and env.action_space.shape == (3,)
    env.close()


def test_hopper_file_semantics(tmp_path: Path) -> None:
    """Terminals only on falls, timeouts on the time limit, next_observations and qpos consistent."""
    robot = replace(ROBOTS["hopper"], episode_steps=40)
    path = collect_with_policy(robot, uniform_policy(0), tmp_path / "hopper-random.hdf5", n_steps=500, seed=3,
                               n_envs=4, metadata={"robot": "hopper", "level": "random"}, progress=False)
    with h5py.File(path) as f:
        data = {key: f[key][()] for key in ("observations", "next_observations", "terminals", "timeouts",
                                           "infos/qpos", "infos/qvel", "rewards")}
    assert data["observations"].shape == (500, 11) and data["infos/qpos"].shape == (500, 6)
    assert not (data["terminals"] & data["timeouts"]).any()
    assert data["terminals"].any(), "uniform random actions make the hopper fall within 40 steps sometimes"
    ends = np.flatnonzero(data["terminals"] | data["timeouts"])
    assert ends[-1] == 499
    within = np.ones(500, dtype=bool)
    within[ends] = False
    np.testing.assert_allclose(data["next_observations"][:-1][within[:-1]], data["observations"][1:][within[:-1]],
                               atol=1e-6)
    # Hopper's observation is qpos without the root x, then the clipped qvel.
    np.testing.assert_allclose(data["observations"][:, :5], data["infos/qpos"][:, 1:], atol=1e-5)
    lengths = np.diff(np.r_[-1, ends])
    assert lengths.max() <= 40
    # Episodes that reached the 40-step limit without falling are timeouts, not terminals.
    timeout_ends = np.flatnonzero(data["timeouts"])
    assert all(lengths[list(ends).index(e)] == 40 or e == 499 for e in timeout_ends)
    episodes = load_hdf5(path)
    assert episodes.obs_dim == 11 and episodes.act_dim == 3 and len(episodes.rewards) == 500
    meta = read_metadata(path)
    assert meta["dataset_stats"]["n_steps"] == 500
    assert meta["ref_scores"]["method"] == "d4rl" and reference_scores(path)["max"] == pytest.approx(3234.3)
    np.testing.assert_allclose(meta["dataset_stats"]["mean_return"], episode_returns(data).mean())


def test_collection_resumes_identically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    robot = replace(ROBOTS["halfcheetah"], episode_steps=30)
    kwargs = {"n_steps": 300, "seed": 1, "n_envs": 2, "metadata": {"robot": "halfcheetah"}, "progress": False,
              "groups_per_chunk": 2}
    policy = lambda obs: np.tanh(obs[:, :6])  # noqa: E731 - deterministic policy, seeded env resets
    full = collect_with_policy(robot, policy, tmp_path / "full.hdf5", **kwargs)  # type: ignore[arg-type]

    import diffplan_envs.collect_locomotion as module

    original = module.rollout_episodes
    calls = {"n": 0}

    def interrupted(*args: object, **kw: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "rollout_episodes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        collect_with_policy(robot, policy, tmp_path / "resumed.hdf5", **kwargs)  # type: ignore[arg-type]
    assert len(list((tmp_path / "resumed.hdf5.partial").glob("chunk_*.npz"))) == 2
    monkeypatch.setattr(module, "rollout_episodes", original)
    resumed = collect_with_policy(robot, policy, tmp_path / "resumed.hdf5", **kwargs)  # type: ignore[arg-type]
    with h5py.File(full) as a, h5py.File(resumed) as b:
        for key in ("observations", "actions", "rewards", "terminals", "timeouts", "infos/qpos"):
            np.testing.assert_array_equal(a[key][()], b[key][()])
        assert a["timeouts"][()].sum() == 10 and not a["terminals"][()].any()
    assert not (tmp_path / "resumed.hdf5.partial").exists()


def test_rollouts_leave_the_global_torch_rng_alone() -> None:
    """Rollouts seed torch's global RNG per group (SB3 samples actions from it) but must restore the
    caller's state: AgentPipeline evaluates between training chunks, and reseeding there would
    restart the agent's exploration noise from the same state after every evaluation."""
    from diffplan_envs.collect_locomotion import rollout_episodes

    robot = replace(ROBOTS["hopper"], episode_steps=5)

    def torch_policy(obs: np.ndarray) -> np.ndarray:
        return torch.rand(len(obs), 3, dtype=torch.float64).numpy() * 2 - 1

    torch.manual_seed(1234)
    before = torch.get_rng_state()
    first = rollout_episodes(robot, torch_policy, n_episodes=3, first_seed=0, n_envs=2, action_seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)  # the rollouts' own seeding makes them independent of the caller's state
    again = rollout_episodes(robot, torch_policy, n_episodes=3, first_seed=0, n_envs=2, action_seed=7)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["actions"], b["actions"])


def test_truncate_marks_cut_episode() -> None:
    data = {"rewards": np.ones(5), "terminals": np.zeros(5, bool), "timeouts": np.array([0, 0, 1, 0, 0], bool)}
    out = truncate(data, 4)
    assert out["timeouts"].tolist() == [False, False, True, True]
    assert data["timeouts"][3] == 0  # input untouched


def test_agent_pipeline_levels_and_resume(tmp_path: Path) -> None:
    recipe = tiny_recipe(expert_steps=384)
    paths = collect_locomotion_datasets(
        ROBOTS["hopper"], ["random", "medium", "medium-replay", "medium-expert"], recipe=recipe,
        agent_dir=tmp_path / "agent", data_dir=tmp_path, n_steps=400, n_envs=4, progress=False,
    )
    for level in ("random", "medium", "medium-replay", "expert", "medium-expert"):
        assert (tmp_path / f"hopper-{level}.hdf5").exists()
    state = json.loads((tmp_path / "agent" / "state.json").read_text())
    assert state["snapshots"]["medium"]["steps"] == 128 and state["snapshots"]["expert"]["steps"] >= 384
    replay = load_hdf5(paths["medium-replay"])
    assert 0 < len(replay.rewards) <= 128
    assert len(load_hdf5(paths["medium-expert"]).rewards) == 800
    meta = read_metadata(paths["medium"])
    assert meta["agent"]["recipe"]["algo"] == "ppo" and meta["policy"]["steps"] == 128
    # A second call finds everything done and trains nothing more.
    mtime = (tmp_path / "agent" / "latest.zip").stat().st_mtime
    collect_locomotion_datasets(ROBOTS["hopper"], ["medium"], recipe=recipe, agent_dir=tmp_path / "agent",
                                data_dir=tmp_path, n_steps=400, n_envs=4, progress=False)
    assert (tmp_path / "agent" / "latest.zip").stat().st_mtime == mtime
    # A changed recipe is refused, naming the setting.
    with pytest.raises(ValueError, match=r"changed: \['n_envs'\]"):
        AgentPipeline(ROBOTS["hopper"], tiny_recipe(expert_steps=384, n_envs=3), tmp_path / "agent")


def test_expert_snapshot_when_medium_comes_after_the_expert_budget(tmp_path: Path) -> None:
    """Medium taken at 256 steps (medium_max_steps) with expert_steps 128 already passed: the expert
    snapshot must still be written (the pipeline used to stop with phase done and no expert, and
    collecting the expert level then failed with KeyError: 'expert')."""
    recipe = tiny_recipe(medium_score=1e9, medium_max_steps=256, expert_steps=128)
    paths = collect_locomotion_datasets(ROBOTS["hopper"], ["expert"], recipe=recipe, agent_dir=tmp_path / "agent",
                                        data_dir=tmp_path, n_steps=100, n_envs=2, progress=False)
    assert paths["expert"].exists()
    state = json.loads((tmp_path / "agent" / "state.json").read_text())
    assert state["snapshots"]["medium"]["steps"] == 256 and state["snapshots"]["expert"]["steps"] == 256
    assert state["phase"] == "done"


def test_agent_pipeline_resumes_training(tmp_path: Path) -> None:
    recipe = tiny_recipe(medium_score=1e9, medium_max_steps=256)
    pipeline = AgentPipeline(ROBOTS["walker2d"], recipe, tmp_path, progress=False)
    pipeline.run(until="random")
    assert pipeline.has_snapshot("random") and not pipeline.has_snapshot("medium")
    # The medium target may move while it is still ahead (here: a lower one, reached at once).
    lowered = replace(recipe, medium_score=-1e9)
    state = AgentPipeline(ROBOTS["walker2d"], lowered, tmp_path, progress=False).run(until="medium")
    assert state.snapshots["medium"]["steps"] == 128 and state.snapshots["medium"]["reached_target"]
    with pytest.raises(ValueError, match=r"changed: \['medium_score'\]"):
        AgentPipeline(ROBOTS["walker2d"], recipe, tmp_path)


def test_agent_pipeline_budget_stop(tmp_path: Path) -> None:
    recipe = tiny_recipe(medium_score=1e9, medium_max_steps=256)
    state = AgentPipeline(ROBOTS["walker2d"], recipe, tmp_path, progress=False).run(until="medium")
    assert state.snapshots["medium"]["steps"] == 256 and not state.snapshots["medium"]["reached_target"]
    assert [e["steps"] for e in state.evals] == [128, 256]


def test_batch_steps_and_terminates() -> None:
    batch = LocomotionBatch("hopper-medium", 3)
    obs, goals = batch.reset([0, 1, 2])
    assert obs.shape == (3, 11) and goals.shape == (3, 0)
    again = LocomotionBatch("hopper-medium", 3).reset([0, 1, 2])[0]
    np.testing.assert_array_equal(obs, again)
    active = np.array([True, False, True])
    result = batch.step(np.zeros((3, 3)), active)
    assert result.reward[1] == 0 and result.reward[0] != 0 and (result.errors == "").all()
    terminated = False
    for _ in range(200):  # full-force actions make the hopper fall
        result = batch.step(np.ones((3, 3)))
        terminated |= bool(result.terminated.any())
    assert terminated
    bad = batch.step(np.full((3, 3), np.nan))
    assert bad.obs.shape == (3, 11)
    batch.close()


def _tiny_collection(folder: Path) -> Config:
    """hopper-medium collected by a PPO agent trained for a few hundred steps, all under folder."""
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return as_config(compose("config", overrides=[
            "task=hopper-medium", f"task.dataset={folder / 'hopper-medium.hdf5'}", "collect.n_steps=300",
            "collect.progress=false", "collect.n_envs=3", f"collect.agent_dir={folder / 'agents'}",
            "collect.agents.hopper.n_envs=2", "collect.agents.hopper.eval_every=128",
            "collect.agents.hopper.eval_episodes=1", "collect.agents.hopper.medium_score=-1000",
            "collect.agents.hopper.algo_kwargs.n_steps=64", "collect.agents.hopper.algo_kwargs.batch_size=64",
            "collect.agents.hopper.algo_kwargs.n_epochs=1", "run.threads=1",
        ]))


def test_collect_command_locomotion(tmp_path: Path) -> None:
    cfg = _tiny_collection(tmp_path)
    path = run_collect(cfg)
    assert path == tmp_path / "hopper-medium.hdf5" and len(load_hdf5(path).rewards) == 300
    assert (tmp_path / "agents" / "hopper" / "medium.zip").exists()
    bad = cfg.copy() if hasattr(cfg, "copy") else cfg
    bad.collect.levels = ["mediocre"]
    with pytest.raises(ValueError, match="unknown level"):
        run_collect(bad)


def test_a_collection_repeated_with_its_seed_writes_the_same_arrays(tmp_path: Path) -> None:
    """Agent training and collection from scratch twice, same seed and threads: the same data (the
    files differ only in their metadata's creation time)."""
    first, again = (run_collect(_tiny_collection(tmp_path / name)) for name in ("a", "b"))
    assert dataset_identity(load_hdf5(first)) == dataset_identity(load_hdf5(again))
    assert read_metadata(first)["agent"]["evals"] == read_metadata(again)["agent"]["evals"]


def test_bad_agent_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="algo='dqn' is not supported"):
        AgentPipeline(ROBOTS["hopper"], tiny_recipe(algo="dqn"), tmp_path, progress=False).run(until="random")
    bad_act = tiny_recipe(algo_kwargs={**TINY_PPO, "policy_kwargs": {"activation_fn": "swish"}})
    with pytest.raises(ValueError, match="activation_fn='swish'"):
        AgentPipeline(ROBOTS["hopper"], bad_act, tmp_path / "act", progress=False).run(until="random")
    with pytest.raises(ValueError, match="expert_steps > 0"):
        collect_locomotion_datasets(ROBOTS["hopper"], ["expert"], recipe=tiny_recipe(), agent_dir=tmp_path / "e",
                                    data_dir=tmp_path, progress=False)
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = as_config(compose("config", overrides=["task=hopper-medium", f"task.dataset={tmp_path / 'h.hdf5'}"]))
    del cfg.collect.agents["hopper"]
    with pytest.raises(ValueError, match="collect.agents has no recipe for robot 'hopper'"):
        run_collect(cfg)


def test_expert_snapshot_best_takes_the_best_evaluation_after_medium(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """expert_snapshot=best: the expert is the checkpoint of the best evaluation after the medium snapshot
    (the first of equals), not the agent at expert_steps; its files are that checkpoint's, the ones no
    longer best are removed, and the record names the pick."""
    returns = iter([0.0, 10.0, 50.0, 50.0, 20.0])  # evaluations at 128 (medium), 256, 384, 512, 640 steps
    monkeypatch.setattr(AgentPipeline, "_evaluate", lambda self, model, venv: next(returns))
    recipe = tiny_recipe(expert_steps=640, expert_snapshot="best")
    state = AgentPipeline(ROBOTS["hopper"], recipe, tmp_path, progress=False).run(until="expert")
    assert state.snapshots["medium"]["steps"] == 128 and [e["steps"] for e in state.evals][-1] == 640
    score = float(normalized_score(50.0, *ROBOTS["hopper"].ref_scores))
    assert state.snapshots["expert"] == {"steps": 384, "eval_return": 50.0, "eval_score": score, "picked": "best",
                                         "evaluated_from": 256, "evaluated_to": 640}
    assert sorted(p.name for p in tmp_path.glob("expert_best_*")) == ["expert_best_384.zip",
                                                                      "expert_best_384_vecnorm.pkl"]
    assert (tmp_path / "expert.zip").read_bytes() == (tmp_path / "expert_best_384.zip").read_bytes()
    assert (tmp_path / "expert_vecnorm.pkl").read_bytes() == (tmp_path / "expert_best_384_vecnorm.pkl").read_bytes()
    assert (tmp_path / "expert.zip").read_bytes() != (tmp_path / "latest.zip").read_bytes()
    # The default keeps the agent at expert_steps.
    returns = iter([0.0, 10.0, 50.0, 50.0, 20.0])
    last = AgentPipeline(ROBOTS["hopper"], tiny_recipe(expert_steps=640), tmp_path / "last", progress=False)
    assert last.run(until="expert").snapshots["expert"]["steps"] == 640
    assert (tmp_path / "last" / "expert.zip").read_bytes() == (tmp_path / "last" / "latest.zip").read_bytes()


def test_expert_snapshot_setting_checked_and_older_recipes_resume(tmp_path: Path) -> None:
    with pytest.raises(ValueError,
                       match=r"collect.agents.hopper.expert_snapshot='bestest' is not one of \['last', 'best'\]"):
        AgentPipeline(ROBOTS["hopper"], tiny_recipe(expert_snapshot="bestest"), tmp_path)
    AgentPipeline(ROBOTS["hopper"], tiny_recipe(expert_steps=256), tmp_path, progress=False).run(until="expert")
    # A state written before the setting existed (its recipe lacks the key) resumes with the default ...
    path = tmp_path / "state.json"
    saved = json.loads(path.read_text())
    assert saved["snapshots"]["expert"]["picked"] == "last"
    del saved["recipe"]["expert_snapshot"]
    path.write_text(json.dumps(saved))
    assert AgentPipeline(ROBOTS["hopper"], tiny_recipe(expert_steps=256), tmp_path).has_snapshot("expert")
    # ... and, the expert taken, the pick may no longer change.
    with pytest.raises(ValueError, match=r"changed: \['expert_snapshot'\]"):
        AgentPipeline(ROBOTS["hopper"], tiny_recipe(expert_steps=256, expert_snapshot="best"), tmp_path)


def test_a_changed_expert_pick_compares_afresh_and_a_missing_best_checkpoint_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    returns = iter([0.0])  # the evaluation at 128 steps (medium)
    monkeypatch.setattr(AgentPipeline, "_evaluate", lambda self, model, venv: next(returns))
    state = AgentPipeline(ROBOTS["hopper"], tiny_recipe(expert_steps=512, expert_snapshot="best"), tmp_path,
                          progress=False).run(until="medium")
    assert state.best_expert is None  # no evaluation after the medium snapshot yet
    # Switching the pick to last and back forgets the best so far: the next best is compared afresh.
    saved = json.loads((tmp_path / "state.json").read_text())
    saved["best_expert"] = {"steps": 256, "eval_return": 50.0, "eval_score": 9.0, "since": 256,
                            "snapshot": "expert_best_256"}
    (tmp_path / "state.json").write_text(json.dumps(saved))
    assert AgentPipeline(ROBOTS["hopper"], tiny_recipe(expert_steps=1024, expert_snapshot="best"),
                         tmp_path).state.best_expert is not None
    saved["recipe"]["expert_snapshot"] = "last"
    (tmp_path / "state.json").write_text(json.dumps(saved))
    assert AgentPipeline(ROBOTS["hopper"], tiny_recipe(expert_steps=1024, expert_snapshot="best"),
                         tmp_path).state.best_expert is None
    # A state from before snapshots were named (no "snapshot") is compared afresh too.
    saved["recipe"]["expert_snapshot"] = "best"
    del saved["best_expert"]["snapshot"]
    (tmp_path / "state.json").write_text(json.dumps(saved))
    pipeline = AgentPipeline(ROBOTS["hopper"], tiny_recipe(expert_steps=1024, expert_snapshot="best"), tmp_path)
    assert pipeline.state.best_expert is None
    with pytest.raises(FileNotFoundError, match=r"expert_best_999.zip is missing: .* set "
                                                r"collect.agents.hopper.expert_snapshot=last"):
        pipeline._copy_snapshot("expert_best_999", "expert")
