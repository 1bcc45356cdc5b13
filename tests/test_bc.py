"""Behaviour cloning baseline: learning, bit-identical resume, checkpoint checks, the policy, the command."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from diffplan.baselines import AgentController, BCNetwork, BCTrainer, load_bc_model
from diffplan.config import BCConfig, as_config, register_configs
from diffplan.data import Episodes, write_hdf5
from diffplan.evaluation.evaluator import evaluate
from diffplan.pipeline.train_bc import run_train_bc
from diffplan.training.checkpoint import CheckpointError, load_checkpoint, load_trained_model

ROOT = Path(__file__).resolve().parents[1]
OBS_DIM, ACT_DIM = 4, 2
W = np.array([[1.5, -0.5, 0.0, 0.8], [0.0, 1.0, -1.2, 0.3]])
OFFSET = np.array([5.0, -3.0, 0.0, 10.0])  # observations far from zero mean: normalization matters


def expert(observations: np.ndarray) -> np.ndarray:
    """The linear expert, clipped to the action box."""
    return np.clip((observations - OFFSET) @ W.T, -1.0, 1.0)


@pytest.fixture(scope="module")
def episodes() -> Episodes:
    rng = np.random.default_rng(0)
    n_rows = 600
    observations = OFFSET + rng.normal(0.0, 1.0, (n_rows, OBS_DIM)) * np.array([1.0, 2.0, 0.5, 1.0])
    timeouts = np.zeros(n_rows, dtype=bool)
    timeouts[99::100] = True
    return Episodes.from_arrays(
        observations=observations.astype(np.float32),
        actions=expert(observations).astype(np.float32),
        rewards=np.zeros(n_rows, dtype=np.float32),
        terminals=np.zeros(n_rows, dtype=bool),
        timeouts=timeouts,
    )


def _cfg(tmp_path: Path, steps: int, **kwargs: Any) -> BCConfig:
    settings: dict[str, Any] = dict(hidden_sizes=[64, 64], steps=steps, batch_size=64, lr=3e-3, weight_decay=0.0,
                                    ckpt_every=1000, log_every=10, device="cpu", progress=False,
                                    run_dir=str(tmp_path))
    settings.update(kwargs)
    return BCConfig(**settings)


INFO = {"path": "linear.hdf5", "sha256": "a" * 64}


@pytest.fixture(scope="module")
def trained(episodes: Episodes, tmp_path_factory: pytest.TempPathFactory) -> BCTrainer:
    trainer = BCTrainer(_cfg(tmp_path_factory.mktemp("bc"), 400), episodes, task="linear", dataset_info=INFO)
    trainer.train()
    return trainer


def test_bc_learns_a_linear_expert(trained: BCTrainer, episodes: Episodes) -> None:
    variance = float(np.var(episodes.actions))
    assert trained.evaluate_mse() < 0.02 * variance, (trained.evaluate_mse(), variance)
    rng = np.random.default_rng(1)
    fresh = OFFSET + rng.normal(0.0, 1.0, (200, OBS_DIM)) * np.array([1.0, 2.0, 0.5, 1.0])
    with torch.no_grad():
        predicted = trained.network(torch.as_tensor(fresh, dtype=torch.float32)).numpy()
    assert np.mean((predicted - expert(fresh)) ** 2) < 0.03 * variance


def test_bc_resume_is_bit_identical(episodes: Episodes, tmp_path: Path) -> None:
    straight = BCTrainer(_cfg(tmp_path / "a", 20), episodes, task="linear", dataset_info=INFO)
    straight.train()
    BCTrainer(_cfg(tmp_path / "b", 10), episodes, task="linear", dataset_info=INFO).train()
    resumed = BCTrainer(_cfg(tmp_path / "b", 20), episodes, task="linear", dataset_info=INFO)
    summary = resumed.train()
    assert summary.resumed_from == 10 and summary.steps == 20
    for name, value in straight.network.state_dict().items():
        assert torch.equal(resumed.network.state_dict()[name], value), name
    for index, state in straight.optimizer.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(resumed.optimizer.state_dict()["state"][index][key], value)
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["checkpoint.pt"]  # no temp files left


def test_bc_checkpoint_contents_and_loading(trained: BCTrainer) -> None:
    payload = torch.load(trained.checkpoint_path, weights_only=True)
    assert payload["kind"] == "bc" and payload["step"] == 400
    assert payload["task"] == {"name": "linear", "obs_dim": OBS_DIM, "act_dim": ACT_DIM}
    assert '"sha256": "' + "a" * 64 in payload["dataset"]
    model = load_bc_model(trained.checkpoint_path, expected_task="linear", expected_obs_dim=OBS_DIM,
                          expected_act_dim=ACT_DIM, expected_dataset_sha256="a" * 64)
    assert model.step == 400 and model.task == "linear"
    for name, value in trained.network.state_dict().items():
        assert torch.equal(model.network.state_dict()[name], value)
    # Observation statistics travel as buffers.
    torch.testing.assert_close(model.network.obs_mean, torch.as_tensor(OFFSET, dtype=torch.float32), atol=0.3,
                               rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"expected_task": "hopper-medium"}, "task.name='linear', but 'hopper-medium' is expected"),
        ({"expected_obs_dim": 11}, "obs_dim=4, but 11 is expected"),
        ({"expected_act_dim": 3}, "act_dim=2, but 3 is expected"),
        ({"expected_dataset_sha256": "b" * 64}, "sha256 aaaaaaaaaaaa.*has sha256 bbbbbbbbbbbb"),
    ],
)
def test_mismatched_bc_checkpoint_is_refused(trained: BCTrainer, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        load_bc_model(trained.checkpoint_path, **kwargs)


def test_resume_refuses_other_dataset_task_or_network(trained: BCTrainer, episodes: Episodes) -> None:
    run_dir = trained.checkpoint_path.parent
    other_data = BCTrainer(_cfg(run_dir, 401), episodes, task="linear",
                           dataset_info={"path": "other.hdf5", "sha256": "b" * 64})
    with pytest.raises(CheckpointError, match="sha256 aaaaaaaaaaaa.*other.hdf5 has sha256 bbbbbbbbbbbb"):
        other_data.resume()
    with pytest.raises(CheckpointError, match="trained with task.name='linear', the current run has 'other'"):
        BCTrainer(_cfg(run_dir, 401), episodes, task="other", dataset_info=INFO).resume()
    with pytest.raises(CheckpointError, match=r"bc.hidden_sizes=\[64, 64\], the current run has \[32\]"):
        BCTrainer(_cfg(run_dir, 401, hidden_sizes=[32]), episodes, task="linear", dataset_info=INFO).resume()


def test_diffusion_and_bc_loaders_refuse_each_others_checkpoints(trained: BCTrainer, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="holds a 'bc' model, not a trajectory diffusion model"):
        load_trained_model(trained.checkpoint_path)
    payload = load_checkpoint(trained.checkpoint_path)
    payload.pop("kind")
    torch.save(payload, tmp_path / "diffusion.pt")
    with pytest.raises(CheckpointError, match="not a behaviour-cloning checkpoint"):
        load_bc_model(tmp_path / "diffusion.pt")


def test_network_output_stays_in_the_box() -> None:
    torch.manual_seed(0)
    network = BCNetwork(3, 2, (16,), action_low=-0.5, action_high=2.0)
    with torch.no_grad():
        network.net[-1].weight.mul_(100.0)  # saturate the tanh
        actions = network(torch.randn(256, 3) * 1e3)
    assert actions.shape == (256, 2)
    assert actions.min() >= -0.5 and actions.max() <= 2.0
    assert actions.min() < -0.4 and actions.max() > 1.9
    with pytest.raises(ValueError, match="must exceed bc.action_low"):
        BCNetwork(3, 2, action_low=1.0, action_high=1.0)


def test_policy_shapes_bounds_and_records(trained: BCTrainer) -> None:
    policy = AgentController(trained.network)
    policy.reset(3)
    observations = np.stack([OFFSET, OFFSET + 100.0, OFFSET - 100.0])
    active = np.array([True, False, True])
    actions, bad = policy.act(0, observations, np.zeros((3, 0)), active, torch.Generator())
    assert actions.shape == (3, ACT_DIM) and bad.shape == (3,) and bad.dtype == bool
    assert not bad.any()
    assert np.all(np.abs(actions) <= 1.0) and np.all(actions[1] == 0.0)
    np.testing.assert_allclose(actions[0], expert(OFFSET[None])[0], atol=0.1)
    assert len(policy.records) == 1 and policy.records[0].env_index.tolist() == [0, 2]
    assert policy.records[0].observations.shape == (2, 0, OBS_DIM) and policy.records[0].time_s > 0
    policy.reset(3)
    assert policy.records == []


class LinearBatch:
    """A lockstep batch whose reward is minus the distance to the expert's action."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._rng = np.random.default_rng(0)
        self._obs = np.zeros((n, OBS_DIM))

    @property
    def n_envs(self) -> int:
        return self._n

    def reset(self, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
        self._obs = np.stack([OFFSET + np.random.default_rng(s).normal(0, 1, OBS_DIM) for s in seeds])
        return self._obs.copy(), np.zeros((self._n, 0))

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> Any:
        reward = -np.abs(actions - expert(self._obs)).sum(axis=1)
        self._obs = OFFSET + self._rng.normal(0, 1, (self._n, OBS_DIM))
        no = np.zeros(self._n, dtype=bool)
        return type("Step", (), {"obs": self._obs.copy(), "reward": reward, "success": no,
                                 "terminated": no, "truncated": no})()

    def close(self) -> None:
        pass


def test_evaluator_runs_the_bc_policy(trained: BCTrainer) -> None:
    output = evaluate(AgentController(trained.network), LinearBatch, n_episodes=3, n_envs=2, seeds=[0],
                      episode_steps=10, ref_min=-20.0, ref_max=0.0, progress=False)
    assert len(output.episodes) == 3 and not any(e.failed for e in output.episodes)
    assert all(e.length == 10 for e in output.episodes)
    assert min(e.normalized_score for e in output.episodes) > 90.0
    assert len(output.plan_times_s) == 20  # one inference per step per batch


def test_train_bc_command(episodes: Episodes, tmp_path: Path) -> None:
    dataset = write_hdf5(tmp_path / "linear.hdf5", episodes, {"task": "linear"})
    overrides = [f"run_dir={tmp_path / 'run'}", f"task.dataset={dataset}", "bc.steps=5", "bc.batch_size=8",
                 "bc.hidden_sizes=[16]", "bc.progress=false", "bc.threads=1"]
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = as_config(compose("config", overrides=overrides))
    assert cfg.bc.run_dir == str(tmp_path / "run" / "bc")
    summary = run_train_bc(cfg)
    assert summary.steps == 5 and summary.checkpoint == tmp_path / "run" / "bc" / "checkpoint.pt"
    model = load_bc_model(summary.checkpoint, expected_task=cfg.task.name)
    assert model.dataset["sha256"] and model.obs_dim == OBS_DIM
    cfg = replace(cfg, bc=replace(cfg.bc, steps=7))
    assert run_train_bc(cfg).resumed_from == 5
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["diffplan-train-bc"] == "diffplan.cli.train_bc:main"
