"""Offline RL agents (TD3+BC, IQL): losses against hand-computed values, the target-policy
interface, the real/synthetic replay sampler, bit-identical resume, refusals, the policy-guided
diffusion regenerate hook, and the command end to end on a tiny Hopper dataset."""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from diffplan.agents import (
    IQLAgent,
    OfflineTrainer,
    ReplaySampler,
    TD3BCAgent,
    TransitionData,
    Transitions,
    as_transition_data,
    cosine_lr,
    expectile_loss,
    iql_actor_loss,
    iql_q_loss,
    iql_q_target,
    iql_value_loss,
    load_offline_agent,
    offline_policy_loader,
    read_next_observations,
    reward_normalization,
    smoothed_target_actions,
    synthetic_count,
    td3bc_actor_loss,
    td3bc_critic_loss,
    td3bc_critic_target,
    transitions_from_episodes,
)
from diffplan.agents.common import OfflineAgent
from diffplan.baselines import load_bc_model
from diffplan.config import Config, OfflineConfig, as_config, register_configs
from diffplan.data import Episodes, write_hdf5
from diffplan.data.errors import DatasetError
from diffplan.enums import OfflineAlgo
from diffplan.models.policy import TargetPolicy
from diffplan.training.checkpoint import CheckpointError, load_trained_model

ROOT = Path(__file__).resolve().parents[1]
OBS_DIM, ACT_DIM = 3, 2
INFO = {"path": "toy.hdf5", "sha256": "a" * 64}


# ----------------------------------------------------------------------------- losses


def test_expectile_and_value_loss_by_hand() -> None:
    # diff = target - v = [2, -1]: weights 0.7 and 0.3 -> mean(0.7 * 4, 0.3 * 1) = 1.55
    assert expectile_loss(torch.tensor([2.0, -1.0]), 0.7).item() == pytest.approx(1.55)
    assert iql_value_loss(torch.tensor([3.0, 0.0]), torch.tensor([1.0, 1.0]), 0.7).item() == pytest.approx(1.55)
    # expectile 0.5 is half the mean squared error
    diff = torch.tensor([0.5, -2.0, 3.0])
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * diff.pow(2).mean().item())


def test_iql_q_and_actor_losses_by_hand() -> None:
    target = iql_q_target(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), torch.tensor([10.0, 10.0]), 0.9)
    torch.testing.assert_close(target, torch.tensor([10.0, 2.0]))
    # q1 errors (1, 0) -> 0.5; q2 errors (0, 2) -> 2; mean of the two: 1.25
    loss = iql_q_loss(torch.tensor([9.0, 2.0]), torch.tensor([10.0, 4.0]), target)
    assert loss.item() == pytest.approx(1.25)
    log_prob = torch.tensor([-1.0, -2.0])
    # weights exp(3 * [0, 1]) = [1, e^3]: loss = (1 + 2 e^3) / 2
    assert iql_actor_loss(log_prob, torch.tensor([0.0, 1.0]), 3.0).item() == pytest.approx((1 + 2 * math.e**3) / 2)
    # exp(6) = 403 is clipped to 100: loss = (1 + 200) / 2
    assert iql_actor_loss(log_prob, torch.tensor([0.0, 2.0]), 3.0, 100.0).item() == pytest.approx(100.5)


def test_td3bc_losses_by_hand() -> None:
    target = td3bc_critic_target(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([5.0, 3.0]),
                                 torch.tensor([4.0, 7.0]), 0.99)
    torch.testing.assert_close(target, torch.tensor([1.0 + 0.99 * 4.0, 0.0]))
    loss = td3bc_critic_loss(torch.tensor([4.96, 1.0]), torch.tensor([3.96, 0.0]), target)
    assert loss.item() == pytest.approx(1.0, rel=1e-6)  # 0.5 + 0.5
    # lambda = 2.5 / mean|Q| = 2.5 / 3; -lambda * mean Q = 2.5 / 3; BC term mean((0.5, 0)^2) = 0.125
    q = torch.tensor([2.0, -4.0], requires_grad=True)
    actor = td3bc_actor_loss(q, torch.tensor([[0.5], [0.0]]), torch.tensor([[0.0], [0.0]]), 2.5)
    assert actor.item() == pytest.approx(2.5 / 3 + 0.125)
    actor.backward()
    assert q.grad is not None  # lambda is detached: dL/dq_i = -lambda / B
    torch.testing.assert_close(q.grad, torch.full((2,), -2.5 / 3 / 2))
    smoothed = smoothed_target_actions(torch.tensor([[0.8, -0.5]]), torch.tensor([[10.0, -0.1]]),
                                       policy_noise=0.2, noise_clip=0.5, max_action=1.0)
    torch.testing.assert_close(smoothed, torch.tensor([[1.0, -0.52]]))  # noise clipped to 0.5, then the box


def test_cosine_learning_rate() -> None:
    assert cosine_lr(3e-4, 0, 100) == pytest.approx(3e-4)
    assert cosine_lr(3e-4, 50, 100) == pytest.approx(1.5e-4)
    assert cosine_lr(3e-4, 100, 100) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- the policy interface


def _agent(algo: str) -> OfflineAgent:
    torch.manual_seed(0)
    stats = dict(obs_mean=torch.tensor([1.0, -2.0, 0.5]), obs_std=torch.tensor([2.0, 0.5, 1.0]))
    if algo == "td3bc":
        return TD3BCAgent(OBS_DIM, ACT_DIM, hidden_sizes=(16,), std=0.3, **stats)
    agent = IQLAgent(OBS_DIM, ACT_DIM, hidden_sizes=(16,), **stats)
    with torch.no_grad():
        agent.actor.log_std.copy_(torch.tensor([-0.5, 0.2]))
    return agent


@pytest.mark.parametrize("algo", ["td3bc", "iql"])
def test_log_prob_is_a_normal_around_the_action(algo: str) -> None:
    agent = _agent(algo)
    assert isinstance(agent, TargetPolicy) and agent.obs_dim == OBS_DIM and agent.act_dim == ACT_DIM
    observations = torch.randn(5, OBS_DIM) * 3
    actions = (torch.rand(5, ACT_DIM) * 2 - 1).requires_grad_(True)
    log_prob = agent.log_prob(observations, actions)
    mean = agent(observations)  # raw observations are normalized inside
    normalized = (observations - agent.obs_mean) / agent.obs_std
    torch.testing.assert_close(mean, agent.mean_action(normalized))
    std = torch.full((ACT_DIM,), 0.3) if algo == "td3bc" else torch.tensor([-0.5, 0.2]).exp()
    reference = torch.distributions.Normal(mean, std).log_prob(actions).sum(-1)
    assert log_prob.shape == (5,)
    torch.testing.assert_close(log_prob, reference)
    (grad,) = torch.autograd.grad(log_prob.sum(), actions)
    (expected,) = torch.autograd.grad(reference.sum(), actions)
    torch.testing.assert_close(grad, expected)
    # act: deterministic, the type it was given, inside the box
    raw = np.random.default_rng(0).normal(0, 3, (4, OBS_DIM))
    acted = agent.act(raw)
    assert isinstance(acted, np.ndarray) and acted.shape == (4, ACT_DIM) and np.all(np.abs(acted) <= 1.0)
    np.testing.assert_allclose(acted, agent.act(torch.as_tensor(raw, dtype=torch.float32)).numpy())


# ----------------------------------------------------------------------------- transitions and sampling


def _episodes(n_episodes: int = 6, length: int = 40, *, reward: float | None = None, seed: int = 0) -> Episodes:
    """Random-walk episodes: every third ends in a terminal, the others by timeout."""
    rng = np.random.default_rng(seed)
    n = n_episodes * length
    terminals, timeouts = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    for e in range(n_episodes):
        (terminals if e % 3 == 2 else timeouts)[(e + 1) * length - 1] = True
    observations = np.cumsum(rng.normal(0, 0.3, (n, OBS_DIM)), axis=0) + np.array([5.0, -1.0, 0.0])
    actions = np.clip(rng.normal(0, 0.5, (n, ACT_DIM)), -1, 1)
    rewards = np.full(n, reward) if reward is not None else observations[:, 0] * 0.1 + rng.normal(0, 0.1, n)
    return Episodes.from_arrays(observations.astype(np.float32), actions.astype(np.float32),
                                rewards.astype(np.float32), terminals, timeouts)


def test_transitions_drop_unknown_next_states_and_mark_only_terminals() -> None:
    obs = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, OBS_DIM), dtype=np.float32)
    episodes = Episodes.from_arrays(obs, np.zeros((5, ACT_DIM), np.float32), np.arange(5, dtype=np.float32),
                                    np.array([0, 0, 1, 0, 0], bool), np.array([0, 0, 0, 0, 1], bool))
    t = transitions_from_episodes(episodes)
    # episode 1 (rows 0-2) ends in a terminal: kept, done 1; episode 2 (rows 3-4) ends by timeout: row 4 dropped
    assert t.observations[:, 0].tolist() == [0, 1, 2, 3]
    assert t.next_observations[:, 0].tolist() == [1, 2, 2, 4]
    assert t.dones.tolist() == [0, 0, 1, 0] and t.rewards.tolist() == [0, 1, 2, 3]
    # With next observations in the data every transition is kept.
    t = transitions_from_episodes(episodes, obs + 10)
    assert len(t) == 5 and t.next_observations[:, 0].tolist() == [10, 11, 12, 13, 14]
    assert t.dones.tolist() == [0, 0, 1, 0, 0]
    with pytest.raises(DatasetError, match="next_observations must be finite with the observations' shape"):
        transitions_from_episodes(episodes, obs[:4])
    one_step = Episodes.from_arrays(obs[:1], np.zeros((1, ACT_DIM), np.float32), np.zeros(1, np.float32),
                                    np.zeros(1, bool), np.ones(1, bool))
    with pytest.raises(DatasetError, match="no transition has a known next observation"):
        transitions_from_episodes(one_step)


def test_transition_data_from_arrays_and_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {"observations": rng.normal(size=(6, OBS_DIM)).astype(np.float32),
              "actions": np.zeros((6, ACT_DIM), np.float32), "rewards": np.ones(6, np.float32),
              "next_observations": rng.normal(size=(6, OBS_DIM)).astype(np.float32),
              "terminals": np.array([0, 1, 0, 0, 0, 0], bool), "timeouts": np.array([0, 0, 0, 0, 0, 1], bool)}
    data = as_transition_data(arrays)  # what diffplan.synthetic.generate returns
    assert data.episodes.n_episodes == 2 and len(data.transitions()) == 6
    torch.testing.assert_close(data.transitions().next_observations, torch.from_numpy(arrays["next_observations"]))
    path = write_hdf5(tmp_path / "d4rl.hdf5", arrays)  # a plain D4RL-layout file
    loaded = TransitionData.from_file(path)
    assert loaded.next_observations is not None and len(loaded.transitions()) == 6
    assert read_next_observations(write_hdf5(tmp_path / "own.hdf5", loaded.episodes)) is None
    assert len(TransitionData.from_file(tmp_path / "own.hdf5").transitions()) == 5  # the timeout's step dropped


def test_reward_normalization_uses_the_return_range() -> None:
    episodes = Episodes.from_arrays(np.zeros((4, 1), np.float32), np.zeros((4, 1), np.float32),
                                    np.array([1.0, 2.0, 0.5, 0.5], np.float32), np.zeros(4, bool),
                                    np.array([0, 1, 0, 1], bool))
    assert reward_normalization(episodes) == pytest.approx(1000.0 / (3.0 - 1.0))
    with pytest.raises(DatasetError, match="normalize_reward=false"):
        reward_normalization(_episodes(reward=1.0))


def _marked(n: int, marker: float) -> Transitions:
    return Transitions(torch.full((n, OBS_DIM), marker), torch.zeros(n, ACT_DIM), torch.arange(n, dtype=torch.float32),
                       torch.zeros(n, OBS_DIM), torch.zeros(n))


def test_sampler_mixes_at_the_exact_ratio_and_is_deterministic() -> None:
    real, synthetic = _marked(50, 0.0), _marked(70, 1.0)
    assert synthetic_count(256, 240 / 256) == 240
    sampler = ReplaySampler(real, 256, 240 / 256, synthetic)
    for _ in range(3):
        batch = sampler.sample(torch.Generator().manual_seed(0))
        assert batch.n_synthetic == 240 and batch.observations.shape == (256, OBS_DIM)
        assert batch.observations[:16, 0].eq(0).all() and batch.observations[16:, 0].eq(1).all()
    a = [sampler.sample(g).rewards for g in [torch.Generator().manual_seed(3)] for _ in range(2)]
    b = [sampler.sample(g).rewards for g in [torch.Generator().manual_seed(3)] for _ in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)) and not torch.equal(a[0], a[1])
    assert ReplaySampler(real, 8, 0.0, synthetic).sample(torch.Generator()).observations.eq(0).all()
    assert ReplaySampler(real, 8, 1.0, synthetic).sample(torch.Generator()).observations.eq(1).all()
    with pytest.raises(ValueError, match="no synthetic transitions"):
        ReplaySampler(real, 8, 0.5).sample(torch.Generator())
    with pytest.raises(ValueError, match=r"synthetic_ratio must lie in \[0, 1\]"):
        ReplaySampler(real, 8, 1.5)


# ----------------------------------------------------------------------------- the trainer


def _cfg(run_dir: Path, algo: str, steps: int, **kwargs: Any) -> OfflineConfig:
    iql = algo == "iql"
    settings: dict[str, Any] = dict(algo=OfflineAlgo(algo), hidden_sizes=[32, 32], steps=steps, batch_size=32,
                                    normalize_reward=iql, actor_cosine=iql, device="cpu", progress=False,
                                    ckpt_every=1000, log_every=5, run_dir=str(run_dir))
    settings.update(kwargs)
    return OfflineConfig(**settings)


def _states_equal(a: OfflineTrainer, b: OfflineTrainer) -> None:
    for name, value in a.agent.state_dict().items():
        assert torch.equal(b.agent.state_dict()[name], value), name
    for name, optimizer in a.agent.optimizers().items():
        other = b.agent.optimizers()[name].state_dict()
        for index, state in optimizer.state_dict()["state"].items():
            for key, value in state.items():
                assert torch.equal(other["state"][index][key], value), (name, index, key)
        assert other["param_groups"][0]["lr"] == optimizer.state_dict()["param_groups"][0]["lr"]
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


class FakeGenerator:
    """A deterministic stand-in for the diffusion generator: short episodes whose reward marks the
    step and whose actions are the target policy's own (so the data depends on the policy)."""

    def __init__(self, as_arrays: bool = False) -> None:
        self.calls: list[int] = []
        self.as_arrays = as_arrays

    def __call__(self, policy: TargetPolicy, step: int) -> Episodes | dict[str, np.ndarray]:
        assert isinstance(policy, TargetPolicy)
        self.calls.append(step)
        n = 12
        obs = np.random.default_rng(step).normal(5.0, 1.0, (n, OBS_DIM)).astype(np.float32)
        with torch.no_grad():
            actions = policy.act(obs) if isinstance(policy, OfflineAgent) else np.zeros((n, ACT_DIM))
        timeouts = np.zeros(n, dtype=bool)
        timeouts[3::4] = True
        if self.as_arrays:  # D4RL-layout arrays with next observations: no transition is dropped
            return {"observations": obs, "actions": np.asarray(actions, np.float32), "rewards": np.full(n, step + 1.0),
                    "next_observations": obs + 1, "terminals": np.zeros(n, bool), "timeouts": timeouts}
        return Episodes.from_arrays(obs, np.asarray(actions, np.float32), np.full(n, float(step + 1), np.float32),
                                    np.zeros(n, bool), timeouts)


@pytest.mark.parametrize("algo", ["td3bc", "iql"])
def test_resume_is_bit_identical(algo: str, tmp_path: Path) -> None:
    episodes, synthetic = _episodes(), _episodes(seed=1)
    files = dict(synthetic=synthetic, synthetic_info={"path": "syn.hdf5", "sha256": "c" * 64})

    def trainer(run: str, steps: int, **kwargs: Any) -> OfflineTrainer:
        cfg = _cfg(tmp_path / run, algo, steps, synthetic_ratio=0.25, **kwargs)
        return OfflineTrainer(cfg, episodes, task="toy", dataset_info=INFO, **files)  # type: ignore[arg-type]

    straight = trainer("a", 12)
    straight.train()
    first = trainer("b", 12, max_minutes=1e-9)  # the wall-clock budget stops it at once, with a checkpoint
    assert first.train().steps == 0 and first.checkpoint_path.exists()
    crashing = trainer("b", 12, ckpt_every=7)
    step = crashing.train_step

    def crash_at_9() -> float:
        if crashing.step == 9:
            raise KeyboardInterrupt
        return step()

    crashing.train_step = crash_at_9  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        crashing.train()  # killed after update 9; the last checkpoint holds update 7
    resumed = trainer("b", 12)
    summary = resumed.train()
    assert summary.resumed_from == 7 and summary.steps == 12
    _states_equal(straight, resumed)
    assert {p.name for p in (tmp_path / "b").iterdir()} == {"checkpoint.pt", "tb"}
    assert list((tmp_path / "b" / "tb").iterdir()), "TensorBoard scalars written"
    payload = torch.load(resumed.checkpoint_path, weights_only=True)
    assert payload["kind"] == "offline" and payload["algo"] == algo and payload["step"] == 12
    assert json.loads(payload["synthetic"]) == {"source": "file", "path": "syn.hdf5", "sha256": "c" * 64}
    assert json.loads(payload["dataset"])["sha256"] == "a" * 64
    assert "obs_mean" in payload["agent"] and "critic_target.q1.0.weight" in payload["agent"]
    loaded = load_offline_agent(resumed.checkpoint_path, expected_task="toy", expected_obs_dim=OBS_DIM,
                                expected_act_dim=ACT_DIM, expected_dataset_sha256="a" * 64)
    assert loaded.step == 12 and loaded.config.algo == algo and not loaded.agent.training
    raw = torch.randn(4, OBS_DIM) + 5
    torch.testing.assert_close(loaded.agent(raw), resumed.agent(raw))
    if algo == "iql":  # the cosine schedule reached update 11 of 12
        assert resumed.agent.actor_optimizer.param_groups[0]["lr"] == pytest.approx(cosine_lr(3e-4, 11, 12))
        assert float(resumed.agent.reward_scale) == pytest.approx(reward_normalization(episodes))


def test_regenerate_hook_is_called_every_u_updates_and_its_data_is_used(tmp_path: Path) -> None:
    fake = FakeGenerator()
    cfg = _cfg(tmp_path, "td3bc", 12, synthetic_ratio=0.5, regenerate_every=5, ckpt_every=3)
    trainer = OfflineTrainer(cfg, _episodes(), task="toy", dataset_info=INFO, regenerate=fake)
    seen: list[tuple[int, set[float]]] = []
    update = trainer.agent.update

    def spy(batch: Any, step: int, generator: torch.Generator) -> dict[str, float]:
        assert batch.n_synthetic == 16
        seen.append((step, set(batch.rewards[16:].tolist())))
        return update(batch, step, generator)

    trainer.agent.update = spy  # type: ignore[method-assign]
    trainer.train()
    assert fake.calls == [0, 5, 10]  # the first set at step 0 (no file), then every 5 updates
    for step, rewards in seen:
        assert rewards == {float(step // 5 * 5 + 1)}, step  # synthetic rows come from the latest set
    assert {p.name for p in tmp_path.glob("synthetic-*.pt")} == {"synthetic-00000010.pt"}  # stale sets deleted
    record = json.loads(torch.load(trainer.checkpoint_path, weights_only=True)["synthetic"])
    assert record["source"] == "regenerated" and record["step"] == 10 and record["n_transitions"] == 9


def test_resume_with_regeneration_is_bit_identical(tmp_path: Path) -> None:
    episodes = _episodes()

    def trainer(run: str, steps: int, fake: FakeGenerator) -> OfflineTrainer:
        # (no cosine schedule: it depends on offline.steps, which differs between the runs here)
        cfg = _cfg(tmp_path / run, "iql", steps, synthetic_ratio=0.5, regenerate_every=4, ckpt_every=3,
                   actor_cosine=False)
        return OfflineTrainer(cfg, episodes, task="toy", dataset_info=INFO, regenerate=fake)

    straight_fake, first_fake, second_fake = FakeGenerator(True), FakeGenerator(True), FakeGenerator(True)
    straight = trainer("a", 11, straight_fake)
    straight.train()
    trainer("b", 6, first_fake).train()  # regenerates at 0 and 4; the checkpoint at 6 refers to the set of 4
    resumed = trainer("b", 11, second_fake)
    resumed.train()
    assert straight_fake.calls == [0, 4, 8] and first_fake.calls == [0, 4] and second_fake.calls == [8]
    _states_equal(straight, resumed)
    assert resumed.synthetic_record["n_transitions"] == 12
    (tmp_path / "b" / "synthetic-00000008.pt").write_bytes(b"altered")
    with pytest.raises(CheckpointError, match="synthetic set .* is missing or altered"):
        trainer("b", 12, FakeGenerator()).resume()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> OfflineTrainer:
    trainer = OfflineTrainer(_cfg(tmp_path_factory.mktemp("td3bc"), "td3bc", 4), _episodes(), task="toy",
                             dataset_info=INFO)
    trainer.train()
    return trainer


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"algo": OfflineAlgo.iql, "normalize_reward": False}, "offline.algo='td3bc', the current config has 'iql'"),
        ({"hidden_sizes": [16]}, r"offline.hidden_sizes=\[32, 32\], the current config has \[16\]"),
        ({"alpha": 1.0}, "offline.alpha=2.5, the current config has 1.0"),
        ({"normalize_reward": True}, "offline.normalize_reward=False, the current config has True"),
    ],
)
def test_resume_refuses_another_algorithm_or_network(trained: OfflineTrainer, change: dict[str, Any],
                                                     message: str) -> None:
    cfg = replace(_cfg(trained.run_dir, "td3bc", 8), **change)
    with pytest.raises(CheckpointError, match=message + ".*restore the setting or use a new run_dir"):
        OfflineTrainer(cfg, _episodes(), task="toy", dataset_info=INFO).resume()


def test_resume_refuses_another_task_dataset_or_synthetic_file(trained: OfflineTrainer) -> None:
    cfg = _cfg(trained.run_dir, "td3bc", 8)
    with pytest.raises(CheckpointError, match="task.name='toy', the current config has 'other'"):
        OfflineTrainer(cfg, _episodes(), task="other", dataset_info=INFO).resume()
    with pytest.raises(CheckpointError, match="sha256 aaaaaaaaaaaa.*other.hdf5 has bbbbbbbbbbbb"):
        OfflineTrainer(cfg, _episodes(), task="toy", dataset_info={"path": "other.hdf5", "sha256": "b" * 64}).resume()
    mixed = replace(cfg, synthetic_ratio=0.5)
    with pytest.raises(CheckpointError, match="offline.synthetic=no synthetic data.*the current run has syn.hdf5"):
        OfflineTrainer(mixed, _episodes(), task="toy", dataset_info=INFO, synthetic=_episodes(seed=2),
                       synthetic_info={"path": "syn.hdf5", "sha256": "d" * 64}).resume()
    # Changing the budget, batch size or learning rate is allowed.
    assert OfflineTrainer(replace(cfg, batch_size=16, lr=1e-3), _episodes(), task="toy", dataset_info=INFO).resume()


def test_checkpoint_kinds_are_not_mixed_up(trained: OfflineTrainer) -> None:
    with pytest.raises(CheckpointError, match="not a behaviour-cloning checkpoint"):
        load_bc_model(trained.checkpoint_path)
    with pytest.raises(CheckpointError, match="holds a 'offline' model, not a trajectory diffusion model"):
        load_trained_model(trained.checkpoint_path)
    with pytest.raises(CheckpointError, match=r"task.name='toy', but 'hopper-medium' is expected"):
        load_offline_agent(trained.checkpoint_path, expected_task="hopper-medium")
    policy = offline_policy_loader(trained.checkpoint_path, 0.5, None)
    assert isinstance(policy, TD3BCAgent) and policy.std == 0.5 and isinstance(policy, TargetPolicy)
    with pytest.raises(ValueError, match="drop guidance.policy_vecnormalize"):
        offline_policy_loader(trained.checkpoint_path, 0.1, Path("vecnorm.pkl"))


def test_inconsistent_synthetic_settings_are_refused(tmp_path: Path) -> None:
    episodes = _episodes()
    with pytest.raises(ValueError, match="offline.synthetic_ratio=0.5 needs synthetic data"):
        OfflineTrainer(_cfg(tmp_path, "td3bc", 2, synthetic_ratio=0.5), episodes, task="toy", dataset_info=INFO)
    with pytest.raises(ValueError, match="offline.regenerate_every > 0 needs a regenerate callable"):
        OfflineTrainer(_cfg(tmp_path, "td3bc", 2, synthetic_ratio=0.5, regenerate_every=3), episodes, task="toy",
                       dataset_info=INFO, synthetic=episodes)
    with pytest.raises(ValueError, match="offline.synthetic_ratio is 0"):
        OfflineTrainer(_cfg(tmp_path, "td3bc", 2), episodes, task="toy", dataset_info=INFO, regenerate=FakeGenerator())


# ----------------------------------------------------------------------------- the commands


def _locomotion_config(tmp_path: Path, dataset: Path, algo: str, steps: int, extra: tuple[str, ...] = ()) -> Config:
    overrides = [
        "task=hopper-medium", f"run_dir={tmp_path / 'run'}", f"task.dataset={dataset}", "task.episode_steps=40",
        f"offline={algo}", f"offline.steps={steps}", "offline.batch_size=64", "offline.hidden_sizes=[32,32]",
        "offline.progress=false", "offline.threads=1", "offline.device=cpu", "offline.log_every=100",
        "eval.controller=offline", "eval.n_episodes=2", "eval.n_envs=2", "eval.seeds=[0]", "eval.progress=false",
        f"eval.out_dir={tmp_path / 'eval'}", "eval.device=cpu", *extra,
    ]
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return as_config(compose("config", overrides=overrides))


@pytest.fixture(scope="module")
def hopper_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 steps of a noisy standing controller in Hopper-v5, written by the collector."""
    from diffplan_envs.collect_locomotion import collect_with_policy
    from diffplan_envs.locomotion import ROBOTS

    folder = tmp_path_factory.mktemp("hopper")
    rng = np.random.default_rng(0)
    robot = replace(ROBOTS["hopper"], episode_steps=50)
    return collect_with_policy(
        robot, lambda obs: np.clip(-obs[:, 1:4] + 0.3 * rng.standard_normal((len(obs), 3)), -1, 1),
        folder / "hopper-medium.hdf5", n_steps=400, seed=0, n_envs=4,
        metadata={"robot": "hopper", "level": "medium"}, progress=False,
    )


@pytest.mark.parametrize("algo", ["td3bc", "iql"])
def test_train_offline_and_evaluate_commands(algo: str, tmp_path: Path, hopper_file: Path) -> None:
    from diffplan.pipeline.evaluate import run_evaluate
    from diffplan.pipeline.train_offline import run_train_offline

    cfg = _locomotion_config(tmp_path, hopper_file, algo, 300)
    assert cfg.offline.run_dir == str(tmp_path / "run" / f"offline-{algo}")
    assert cfg.offline.algo == algo and cfg.offline.normalize_reward == (algo == "iql")
    summary = run_train_offline(cfg)
    assert summary.steps == 300 and summary.checkpoint == tmp_path / "run" / f"offline-{algo}" / "checkpoint.pt"
    assert run_train_offline(replace(cfg, offline=replace(cfg.offline, steps=310))).resumed_from == 300
    results = json.loads(run_evaluate(cfg).read_text())
    assert results["n_episodes"] == 2 and results["n_failed"] == 0 and results["success_rate"] is None
    assert results["trained_config"]["offline"]["algo"] == algo and results["checkpoint"]["step"] == 310
    assert results["config"]["eval"]["controller"] == "offline"
    assert all(1 <= ep["length"] <= 40 for ep in results["episodes"])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["diffplan-train-offline"] == "diffplan.cli.train_offline:main"


def test_train_offline_learns_from_the_best_episodes(tmp_path: Path, hopper_file: Path) -> None:
    """task.top_return_fraction reaches the offline agents: the agent trains on the best half of the
    episodes (next observations cut alike), its checkpoint records the selection, and resuming it on
    the whole file is refused."""
    from diffplan.data import load_hdf5
    from diffplan.data.returns import best_episodes
    from diffplan.pipeline.train_offline import run_train_offline

    best = best_episodes(load_hdf5(hopper_file), 0.5)
    cfg = _locomotion_config(tmp_path, hopper_file, "td3bc", 20, ("task.top_return_fraction=0.5",))
    data = TransitionData.from_file(hopper_file, top_return_fraction=0.5)
    assert data.episodes.n_transitions == best.n_transitions < load_hdf5(hopper_file).n_transitions
    assert data.next_observations is not None and len(data.next_observations) == best.n_transitions
    np.testing.assert_array_equal(data.next_observations[:-1][~best.terminals[:-1] & ~best.timeouts[:-1]],
                                  best.observations[1:][~best.terminals[:-1] & ~best.timeouts[:-1]])
    summary = run_train_offline(cfg)
    payload = torch.load(summary.checkpoint, map_location="cpu", weights_only=True)
    record = json.loads(payload["dataset"])
    assert record["top_return_fraction"] == 0.5 and record["n_transitions"] == best.n_transitions
    whole = _locomotion_config(tmp_path, hopper_file, "td3bc", 30)
    with pytest.raises(CheckpointError, match="cannot resume .*identity"):
        run_train_offline(whole)
    # A checkpoint of before the selection was recorded (path and sha256 only) is still checked: same file,
    # another share of it is refused, naming the share to pass.
    from diffplan.training.loop import check_resume_dataset

    old = {"dataset": json.dumps({"path": str(hopper_file), "sha256": record["sha256"]})}
    with pytest.raises(CheckpointError, match="top_return_fraction=1.0 of its dataset, the current config keeps 0.5"):
        check_resume_dataset(summary.checkpoint, old, record)
    check_resume_dataset(summary.checkpoint, old, {**record, "identity": None, "top_return_fraction": 1.0})
