"""Synthetic experience: flattening with terminals, generation and its resume, the command end to
end on a tiny real Hopper file, and the simulator replay behind the dynamics error."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import gymnasium
import h5py
import numpy as np
import pytest
import torch
from diffplan_envs.dynamics import dynamics_error, set_state_from_observation
from locomotion_fixtures import tiny_locomotion_config

from diffplan.data import TrajectoryLayout, load_episodes
from diffplan.pipeline.generate import run_generate
from diffplan.pipeline.train import run_train
from diffplan.planning.planner import planning_sampler
from diffplan.synthetic import GenerationSpec, generate, trajectories_to_transitions
from diffplan.training.checkpoint import TrainedModel, load_trained_model

LAYOUT = TrajectoryLayout(obs_dim=2, act_dim=1, reward=True, terminal=True)


class _Stub:
    layout = LAYOUT
    horizon = 5


def test_transitions_end_at_the_first_terminal_and_time_out_otherwise() -> None:
    # Token t of trajectory b: obs = (10 b + t, 0), action 0.5, reward t, terminal flag given.
    raw = np.zeros((2, 5, LAYOUT.transition_dim))
    raw[:, :, 0] = np.arange(5)[None] + 10 * np.arange(2)[:, None]
    raw[:, :, 2] = 0.5
    raw[:, :, 3] = np.arange(5)[None]
    raw[0, 1, 4] = 0.9  # trajectory 0 falls at its second transition; the later flag is ignored
    raw[0, 3, 4] = 0.9
    raw[1, 3, 4] = 0.2  # below the threshold
    out = trajectories_to_transitions(raw, _Stub(), GenerationSpec(n_trajectories=2, length=4))  # type: ignore[arg-type]
    assert out["observations"][:, 0].tolist() == [0, 1, 10, 11, 12, 13]
    assert out["next_observations"][:, 0].tolist() == [1, 2, 11, 12, 13, 14]
    assert out["rewards"].tolist() == [0, 1, 0, 1, 2, 3]
    assert out["terminals"].tolist() == [False, True, False, False, False, False]
    assert out["timeouts"].tolist() == [False, False, False, False, False, True]


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory: pytest.TempPathFactory, hopper_file: Path) -> tuple[TrainedModel, Path]:
    tmp_path = tmp_path_factory.mktemp("rt")
    (tmp_path / "hopper-medium.hdf5").symlink_to(hopper_file)
    cfg = tiny_locomotion_config(tmp_path, ["train.model_rewards=true", "train.model_terminals=true"])
    run_train(cfg)
    return load_trained_model(tmp_path / "run" / "checkpoint.pt"), tmp_path


def test_generation_resumes_from_saved_chunks_identically(reward_model: tuple[TrainedModel, Path],
                                                         tmp_path: Path) -> None:
    model, _ = reward_model
    sampler, matrix = planning_sampler(model, tiny_locomotion_config(tmp_path).diffusion)
    pool = np.random.default_rng(0).normal(size=(50, 11)).astype(np.float32)
    spec = GenerationSpec(n_trajectories=5, length=6, batch_size=2, seed=3)
    straight = generate(model, sampler, matrix, pool, spec)
    partial = tmp_path / "partial"
    first = generate(model, sampler, matrix, pool, GenerationSpec(n_trajectories=2, length=6, batch_size=2, seed=3),
                     partial_dir=partial, fingerprint={"a": 1})
    assert sorted(p.name for p in partial.glob("chunk-*")) == ["chunk-00000.npz"]
    resumed = generate(model, sampler, matrix, pool, spec, partial_dir=partial, fingerprint={"a": 1})
    for key, value in straight.items():
        np.testing.assert_array_equal(value, resumed[key])
    assert len(first["observations"]) <= 12 and (straight["terminals"] | straight["timeouts"]).sum() == 5
    with pytest.raises(ValueError, match="other settings"):
        generate(model, sampler, matrix, pool, spec, partial_dir=partial, fingerprint={"a": 2})


def test_generation_refuses_a_model_without_rewards_or_too_long_trajectories(
    reward_model: tuple[TrainedModel, Path], tmp_path: Path
) -> None:
    model, _ = reward_model
    with pytest.raises(ValueError, match=r"generate.length=8 .* horizon 8"):
        GenerationSpec(n_trajectories=1, length=8).check(model)
    with pytest.raises(ValueError, match=r"generate.n_trajectories must be >= 1, got 0"):
        GenerationSpec(n_trajectories=0, length=4).check(model)
    no_rewards = TrainedModel(model.denoiser, model.schedule, model.normalizer, TrajectoryLayout(11, 3),
                              model.config, model.horizon, 0, Path("plain.pt"))
    with pytest.raises(ValueError, match="train.model_rewards=true"):
        GenerationSpec(n_trajectories=1, length=4).check(no_rewards)


def test_generate_command_writes_a_loadable_file_and_metrics(reward_model: tuple[TrainedModel, Path]) -> None:
    _, folder = reward_model
    out = folder / "synthetic" / "unguided.hdf5"
    cfg = tiny_locomotion_config(folder, ["train.model_rewards=true", "train.model_terminals=true",
                                          "generate.n_trajectories=6", "generate.length=5", "generate.batch_size=4",
                                          f"generate.out={out}", "generate.progress=false"])
    run_generate(cfg)
    episodes = load_episodes(str(out))
    with h5py.File(out) as handle:
        assert set(handle) >= {"observations", "actions", "rewards", "next_observations", "terminals", "timeouts"}
    assert episodes.n_episodes == 6 and episodes.n_transitions <= 30
    assert episodes.metadata["synthetic"] is True and episodes.metadata["spec"]["length"] == 5
    metrics = json.loads(out.with_name("unguided.metrics.json").read_text())
    assert metrics["n_transitions"] == episodes.n_transitions
    assert metrics["dynamics_error"]["n_transitions"] == episodes.n_transitions
    assert np.isfinite(metrics["dynamics_error"]["next_obs_mse"])
    assert not out.with_name("unguided.hdf5.partial").exists()


def test_real_transitions_replay_with_near_zero_dynamics_error() -> None:
    env = gymnasium.make("Hopper-v5")
    obs, _ = env.reset(seed=1)
    rng = np.random.default_rng(0)
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]] = []
    for _ in range(60):
        action = rng.uniform(-1, 1, 3)
        nxt, reward, terminated, truncated, _ = env.step(action)
        rows.append((obs, action, nxt, float(reward)))
        obs = nxt
        if terminated or truncated:
            obs, _ = env.reset(seed=len(rows))
    observations, actions, next_obs, rewards = (np.array([r[i] for r in rows]) for i in range(4))
    assert (np.abs(observations[:, 5:]) < 10).all()  # no clipped velocity: the observation is the full state
    error = dynamics_error("hopper-medium", observations, actions, next_obs, obs_variance=observations.var(0),
                           rewards=rewards, reward_variance=float(rewards.var()))
    assert error.next_obs_mse < 1e-10 and error.reward_mse is not None and error.reward_mse < 1e-10
    # A wrong transition is not near zero.
    shifted = dynamics_error("hopper-medium", observations, actions, next_obs + 0.1, obs_variance=observations.var(0))
    assert shifted.next_obs_mse > 1e-3
    with pytest.raises(ValueError, match="nq - 1 \\+ nv = 11"):
        set_state_from_observation(env, np.zeros(12))
    env.close()
    torch.manual_seed(0)


def test_offline_agent_trains_on_data_regenerated_towards_itself(reward_model: tuple[TrainedModel, Path]) -> None:
    """Policy-Guided Diffusion's loop through the command: every 3 updates the diffusion model
    regenerates the synthetic set, guided towards the TD3+BC agent being trained."""
    from diffplan.pipeline.train_offline import run_train_offline

    _, folder = reward_model
    run = folder / "pgd-agent"
    cfg = tiny_locomotion_config(folder, [
        "train.model_rewards=true", "train.model_terminals=true", "guidance=policy", "guidance.policy_scale=0.01",
        "generate.n_trajectories=4", "generate.length=5", "generate.batch_size=4", "offline.steps=7",
        "offline.batch_size=8", "offline.synthetic_ratio=0.5", "offline.regenerate_every=3", "offline.progress=false",
        "offline.threads=1", "offline.hidden_sizes=[16,16]", f"offline.run_dir={run}",
    ])
    summary = run_train_offline(cfg)
    assert summary.steps == 7
    saved = sorted(p.name for p in run.glob("synthetic-*.pt"))
    assert saved == ["synthetic-00000006.pt"]  # the set in use (regenerated at 0, 3 and 6); older ones deleted
    cfg.guidance.kind = "value"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="needs guidance=policy"):
        run_train_offline(dataclasses.replace(cfg, offline=dataclasses.replace(cfg.offline, run_dir=str(folder / "x"))))


def test_the_first_regenerated_set_is_unguided(reward_model: tuple[TrainedModel, Path]) -> None:
    """At update 0 the agent is untrained: its set is sampled unguided; later sets follow the agent."""
    from diffplan.pipeline.generate import generation_setup, policy_guided_regenerator
    from diffplan.policies import LinearGaussianPolicy

    _, folder = reward_model
    cfg = tiny_locomotion_config(folder, ["train.model_rewards=true", "train.model_terminals=true", "guidance=policy",
                                          "guidance.policy_scale=0.05", "generate.n_trajectories=3",
                                          "generate.length=5", "generate.seed=7"])
    regenerate = policy_guided_regenerator(cfg)
    target = LinearGaussianPolicy(torch.zeros(3, 11), torch.full((3,), 0.9), std=0.1)
    setup = generation_setup(cfg)
    unguided = generate(setup.model, setup.sampler, setup.matrix, setup.episodes.observations, setup.spec)
    first = regenerate(target, 0)
    np.testing.assert_array_equal(first["actions"], unguided["actions"])
    later = regenerate(target, 0 + 0)  # same step, same data: deterministic
    np.testing.assert_array_equal(later["actions"], first["actions"])
    guided = regenerate(target, 5)
    plain = generate(setup.model, setup.sampler, setup.matrix, setup.episodes.observations,
                     dataclasses.replace(setup.spec, seed=12))
    assert guided["actions"].mean() > plain["actions"].mean()


def test_generation_follows_planner_precision(reward_model: tuple[TrainedModel, Path]) -> None:
    """planner.precision reaches the generator's sampler: bfloat16 gives float32 transitions close to float32's."""
    from diffplan.pipeline.generate import generation_setup

    _, folder = reward_model
    base = ["train.model_rewards=true", "train.model_terminals=true", "generate.n_trajectories=3", "generate.length=5"]
    exact = generation_setup(tiny_locomotion_config(folder, base))
    low = generation_setup(tiny_locomotion_config(folder, [*base, "planner.precision=bfloat16"]))
    assert exact.sampler.precision.value == "float32" and low.sampler.precision.value == "bfloat16"
    a = generate(exact.model, exact.sampler, exact.matrix, exact.episodes.observations, exact.spec)
    b = generate(low.model, low.sampler, low.matrix, low.episodes.observations, low.spec)
    assert "_diffplan_planar" in low.model.denoiser.__dict__  # sampled with the planar bfloat16 copy
    assert b["observations"].dtype == a["observations"].dtype
    assert not np.array_equal(a["observations"], b["observations"])
    np.testing.assert_allclose(b["observations"], a["observations"], atol=0.5)
    # task.top_return_fraction: the start states come from the best episodes only, as the model's training data.
    from diffplan.data.returns import best_episodes

    half = generation_setup(tiny_locomotion_config(folder, [*base, "task.top_return_fraction=0.5"]))
    best = best_episodes(exact.episodes, 0.5)
    assert half.episodes.n_transitions == best.n_transitions < exact.episodes.n_transitions
