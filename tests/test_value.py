"""Value targets, the value network, its trainer, checkpoints and the train-value command."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import training_state

from diffplan.config import Config, DiffusionConfig, ModelConfig, TaskConfig, TrainConfig, UnetConfig, ValueConfig
from diffplan.data import Episodes, GaussianNormalizer, TrajectoryLayout, write_hdf5
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.enums import NormalizerKind
from diffplan.models.unet import TemporalUnet
from diffplan.models.value import ValueNet, build_value_net
from diffplan.pipeline.train_value import run_train_value
from diffplan.training.checkpoint import CheckpointError, TrainedModel, load_checkpoint
from diffplan.training.trainer import Trainer
from diffplan.training.value_targets import value_targets
from diffplan.training.value_trainer import ValueTrainer, diffusion_record, load_value_model

OBS_DIM, ACT_DIM, H = 3, 2, 8
LAYOUT = TrajectoryLayout(obs_dim=OBS_DIM, act_dim=ACT_DIM)


# -- targets -----------------------------------------------------------------------------------
def _episodes(rewards: list[list[float]], terminal: list[bool], seed: int = 0) -> Episodes:
    """Episodes with the given rewards; episode i ends in a true terminal if terminal[i], else a timeout."""
    rng = np.random.default_rng(seed)
    flat = np.concatenate([np.asarray(r, dtype=np.float32) for r in rewards])
    n_rows = len(flat)
    terminals, timeouts = np.zeros(n_rows, dtype=bool), np.zeros(n_rows, dtype=bool)
    ends = np.cumsum([len(r) for r in rewards]) - 1
    for end, is_terminal in zip(ends, terminal, strict=True):
        (terminals if is_terminal else timeouts)[end] = True
    return Episodes.from_arrays(
        observations=rng.normal(size=(n_rows, OBS_DIM)).astype(np.float32),
        actions=rng.uniform(-1, 1, (n_rows, ACT_DIM)).astype(np.float32),
        rewards=flat,
        terminals=terminals,
        timeouts=timeouts,
    )


def test_value_targets_hand_computed() -> None:
    # Episode 0 falls (terminal) after 3 steps, episode 1 times out after 2, episode 2 after 1.
    episodes = _episodes([[1.0, 2.0, 3.0], [1.0, 1.0], [4.0]], [True, False, False])
    targets = value_targets(episodes, discount=0.5, termination_penalty=-10.0)
    # Episode 0: r' = (1, 2, 3 - 10); V2 = -7, V1 = 2 + 0.5 * -7 = -1.5, V0 = 1 + 0.5 * -1.5 = 0.25.
    # Episode 1: V1 = 1, V0 = 1 + 0.5 * 1 = 1.5 (no penalty, no bootstrap). Episode 2: V0 = 4.
    assert targets.dtype == np.float64
    np.testing.assert_array_equal(targets, [0.25, -1.5, -7.0, 1.5, 1.0, 4.0])
    # Without a penalty the terminal episode is a plain discounted sum.
    np.testing.assert_array_equal(value_targets(episodes, 0.5, 0.0)[:3], [2.75, 3.5, 3.0])


def test_value_targets_match_a_loop_on_long_episodes() -> None:
    rng = np.random.default_rng(1)
    lengths = [700, 1, 300, 1000]
    rewards = [rng.normal(size=n).tolist() for n in lengths]
    episodes = _episodes(rewards, [False, True, True, False])
    targets = value_targets(episodes, discount=0.997, termination_penalty=-100.0)
    expected = []
    for r, terminal in zip(rewards, [False, True, True, False], strict=True):
        r = np.asarray(r, dtype=np.float32).astype(np.float64)
        if terminal:
            r[-1] += -100.0
        out, acc = np.zeros(len(r)), 0.0
        for t in range(len(r) - 1, -1, -1):
            acc = r[t] + 0.997 * acc
            out[t] = acc
        expected.append(out)
    np.testing.assert_allclose(targets, np.concatenate(expected), rtol=1e-12, atol=1e-9)


def test_value_targets_errors() -> None:
    episodes = _episodes([[1.0]], [True])
    with pytest.raises(ValueError, match=r"value.discount must be in \[0, 1\], got 1.5"):
        value_targets(episodes, 1.5, -100.0)
    with pytest.raises(ValueError, match="termination_penalty must be finite"):
        value_targets(episodes, 0.9, float("nan"))


# -- the network -------------------------------------------------------------------------------
def test_value_net_shapes_and_per_token_levels() -> None:
    torch.manual_seed(0)
    net = ValueNet(transition_dim=5, horizon=H, dim=8, dim_mults=(1, 2, 4))
    x = torch.randn(3, H, 5)
    levels = torch.full((3, H), 0.5)
    values = net(x, levels)
    assert values.shape == (3,)
    # Each token's level matters on its own: changing one token's level changes the value.
    other = levels.clone()
    other[:, 5] = 0.1
    assert not torch.allclose(net(x, other), values)
    # Samples are independent: changing sample 0 leaves the others' values unchanged.
    changed = x.clone()
    changed[0] += 1.0
    torch.testing.assert_close(net(changed, levels)[1:], values[1:], rtol=0, atol=1e-6)
    # Raw-scale output through the target statistics.
    standardized = net.standardized(x, levels)
    net.set_target_stats(mean=10.0, std=4.0)
    torch.testing.assert_close(net(x, levels), standardized * 4.0 + 10.0)
    with pytest.raises(ValueError, match=r"shape \(B, 8, 5\), got \(3, 16, 5\)"):
        net(torch.randn(3, 16, 5), torch.zeros(3, 16))
    with pytest.raises(ValueError, match="multiple of 8"):
        ValueNet(transition_dim=5, horizon=H, dim=12)
    with pytest.raises(ValueError, match="divisible by 4"):
        ValueNet(transition_dim=5, horizon=6, dim=8, dim_mults=(1, 2, 4))


def test_value_net_reuses_the_unet_encoder() -> None:
    # The level embedding and the downsampling path are the U-Net's own modules.
    value = ValueNet(transition_dim=5, horizon=H, dim=8, dim_mults=(1, 2))
    unet = TemporalUnet(transition_dim=5, horizon=H, dim=8, dim_mults=(1, 2))
    shared = {k: v.shape for k, v in unet.state_dict().items() if k.startswith(("level_embedding.", "downs."))}
    mine = {k: v.shape for k, v in value.state_dict().items() if k.startswith(("level_embedding.", "downs."))}
    assert shared == mine and shared
    cfg = ValueConfig(dim=16, dim_mults=[1, 2], kernel_size=3)
    built = build_value_net(cfg, transition_dim=5, horizon=H)
    assert built.downs.out_channels == 32 and built(torch.zeros(2, H, 5), torch.zeros(2, H)).shape == (2,)


# -- the trainer ---------------------------------------------------------------------------------
def _diffusion_model(normalizer: GaussianNormalizer, *, horizon: int = H, task: str = "tiny",
                     n_timesteps: int = 10) -> TrainedModel:
    cfg = Config(
        task=TaskConfig(name=task, env_id="Tiny-v0", dataset="tiny.hdf5", horizon=horizon, goal_obs_dims=[]),
        model=ModelConfig(unet=UnetConfig(dim=8, dim_mults=[1, 2], kernel_size=3)),
        diffusion=DiffusionConfig(n_timesteps=n_timesteps, normalizer=NormalizerKind.gaussian, clip_denoised=None),
        train=TrainConfig(condition_goal=False),
    )
    denoiser = TemporalUnet(transition_dim=LAYOUT.transition_dim, horizon=horizon, dim=8, dim_mults=(1, 2))
    return TrainedModel(denoiser=denoiser, schedule=NoiseSchedule(n_timesteps), normalizer=normalizer,
                        layout=LAYOUT, config=cfg, horizon=horizon, step=0, path=Path("diffusion.pt"))


@pytest.fixture(scope="module")
def data() -> Episodes:
    rng = np.random.default_rng(2)
    rewards = [rng.uniform(0, 1, n).tolist() for n in (20, 15, 25)]
    return _episodes(rewards, [True, False, True], seed=3)


@pytest.fixture(scope="module")
def diffusion(data: Episodes) -> TrainedModel:
    return _diffusion_model(GaussianNormalizer.fit(data.transitions(LAYOUT)))


def _value_config(steps: int, **overrides: object) -> ValueConfig:
    settings: dict[str, object] = dict(dim=8, dim_mults=[1, 2], kernel_size=3, steps=steps, batch_size=4,
                                       warmup_steps=2, ckpt_every=1000, log_every=2, ema_decay=0.5,
                                       discount=0.9, device="cpu", progress=False)
    settings.update(overrides)
    return ValueConfig(**settings)  # type: ignore[arg-type]




@pytest.fixture(scope="module")
def straight(data: Episodes, diffusion: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> ValueTrainer:
    trainer = ValueTrainer(_value_config(6), diffusion, data, {"path": "tiny.hdf5"},
                           run_dir=tmp_path_factory.mktemp("value"))
    summary = trainer.train()
    assert summary.steps == 6 and summary.resumed_from == 0 and np.isfinite(summary.final_loss)
    return trainer


def test_target_statistics_over_windows(straight: ValueTrainer, data: Episodes) -> None:
    targets = value_targets(data, 0.9, -100.0)
    # Windows of 8 steps (stride 1, no padding) start at steps 0..L-8 of each episode.
    starts = np.concatenate([s + np.arange(n - H + 1) for s, n in zip(data.starts, data.lengths, strict=True)])
    assert straight.target_mean == pytest.approx(targets[starts].mean(), rel=1e-12)
    assert straight.target_std == pytest.approx(targets[starts].std(), rel=1e-12)
    assert float(straight.model.target_mean) == pytest.approx(straight.target_mean, rel=1e-6)


def test_value_resume_is_bit_identical(straight: ValueTrainer, data: Episodes, diffusion: TrainedModel,
                                       tmp_path: Path) -> None:
    ValueTrainer(_value_config(3), diffusion, data, {"path": "tiny.hdf5"}, run_dir=tmp_path).train()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    second = ValueTrainer(_value_config(6), diffusion, data, {"path": "tiny.hdf5"}, run_dir=tmp_path)
    summary = second.train()
    assert summary.resumed_from == 3 and summary.steps == 6
    expected, got = training_state(straight), training_state(second)
    assert expected.keys() == got.keys()
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []
    assert torch.equal(straight.generator.get_state(), second.generator.get_state())
    fresh = ValueTrainer(_value_config(6), diffusion, data, {}, run_dir=tmp_path / "fresh")
    assert not all(torch.equal(a, b) for a, b in zip(fresh.model.parameters(), straight.model.parameters(),
                                                      strict=True))


def test_value_checkpoint_contents_and_loading(straight: ValueTrainer, diffusion: TrainedModel) -> None:
    payload = torch.load(straight.checkpoint_path, weights_only=True)
    assert payload["kind"] == "value" and payload["step"] == 6 and payload["horizon"] == H
    record = json.loads(payload["diffusion"])
    assert record == diffusion_record(diffusion)
    assert {"task", "layout", "horizon", "stride", "n_timesteps", "normalizer"} <= set(record)
    assert record["normalizer"]["kind"] == "gaussian" and len(record["normalizer"]["sha256"]) == 64
    assert torch.equal(payload["normalizer"]["state"]["mean"], diffusion.normalizer.mean)
    assert payload["target"] == {"mean": straight.target_mean, "std": straight.target_std}
    assert json.loads(payload["config"])["value"]["discount"] == 0.9
    net = load_value_model(straight.checkpoint_path, diffusion, "cpu")
    for name, value in straight.ema.state_dict().items():
        assert torch.equal(net.state_dict()[name], value)
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    x = torch.randn(2, H, LAYOUT.transition_dim)
    torch.testing.assert_close(net(x, torch.zeros(2, H)), straight.ema(x, torch.zeros(2, H)))
    raw = load_value_model(straight.checkpoint_path, diffusion, use_ema=False)
    assert torch.equal(raw.head[0].weight, straight.model.head[0].weight)


def test_mismatched_value_checkpoint_is_refused(straight: ValueTrainer, diffusion: TrainedModel,
                                                data: Episodes) -> None:
    path = straight.checkpoint_path
    other_stats = GaussianNormalizer(diffusion.normalizer.mean + 1.0, diffusion.normalizer.std)
    with pytest.raises(CheckpointError) as info:
        load_value_model(path, _diffusion_model(other_stats), "cpu")
    message = str(info.value)
    assert str(path) in message and "normalizer is {'kind': 'gaussian', 'sha256':" in message
    assert "in the value checkpoint but {'kind': 'gaussian'" in message
    assert "diffplan-train-value value.diffusion_checkpoint=diffusion.pt" in message
    with pytest.raises(CheckpointError, match="task is 'tiny' in the value checkpoint but 'other' in the diffusion"):
        load_value_model(path, _diffusion_model(diffusion.normalizer, task="other"))
    with pytest.raises(CheckpointError, match="horizon is 8 in the value checkpoint but 16"):
        load_value_model(path, _diffusion_model(diffusion.normalizer, horizon=16))
    with pytest.raises(CheckpointError, match="n_timesteps is 10 in the value checkpoint but 20"):
        load_value_model(path, _diffusion_model(diffusion.normalizer, n_timesteps=20))


def test_value_resume_refuses_other_settings_and_foreign_checkpoints(
    straight: ValueTrainer, data: Episodes, diffusion: TrainedModel, tmp_path: Path
) -> None:
    other = ValueTrainer(_value_config(8, dim=16), diffusion, data, {}, run_dir=straight.run_dir)
    with pytest.raises(CheckpointError, match="trained with value.dim=8, the current config has 16"):
        other.resume()
    penalty = ValueTrainer(_value_config(8, termination_penalty=-1.0), diffusion, data, {}, run_dir=straight.run_dir)
    with pytest.raises(CheckpointError, match="value.termination_penalty=-100.0"):
        penalty.resume()
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": 1, "model": {}}, foreign)
    with pytest.raises(CheckpointError, match="is not a value checkpoint"):
        load_value_model(foreign, diffusion)


def test_value_trainer_argument_errors(data: Episodes, diffusion: TrainedModel, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="value.batch_size must be >= 1"):
        ValueTrainer(_value_config(2, batch_size=0), diffusion, data, {}, run_dir=tmp_path)


def test_train_value_command(data: Episodes, tmp_path: Path) -> None:
    dataset = write_hdf5(tmp_path / "tiny.hdf5", data, {"task": "tiny"})
    cfg = Config(
        task=TaskConfig(name="tiny", env_id="Tiny-v0", dataset=str(dataset), horizon=H, goal_obs_dims=[]),
        model=ModelConfig(unet=UnetConfig(dim=8, dim_mults=[1, 2], kernel_size=3)),
        diffusion=DiffusionConfig(n_timesteps=10, normalizer=NormalizerKind.gaussian, clip_denoised=None),
        train=TrainConfig(steps=1, batch_size=2, condition_goal=False, device="cpu", progress=False),
        run_dir=str(tmp_path / "run"),
    )
    from diffplan.utils import file_sha256

    Trainer(cfg, data, cfg.run_dir, {"path": str(dataset), "sha256": file_sha256(dataset)}).train()
    cfg.value = _value_config(2, diffusion_checkpoint=str(tmp_path / "run" / "checkpoint.pt"),
                              run_dir=str(tmp_path / "run" / "value"))
    summary = run_train_value(cfg)
    assert summary.steps == 2 and summary.checkpoint == tmp_path / "run" / "value" / "checkpoint.pt"
    stored = json.loads(load_checkpoint(summary.checkpoint)["dataset"])
    assert stored["sha256"] == file_sha256(dataset)
    # Another dataset than the diffusion model's is refused.
    other = write_hdf5(tmp_path / "other.hdf5", _episodes([[1.0] * 12], [False]), {"task": "tiny"})
    cfg.value = dataclasses.replace(cfg.value, dataset=str(other))
    with pytest.raises(CheckpointError, match=r"other.hdf5 has sha256 .* set value.dataset to that file"):
        run_train_value(cfg)
