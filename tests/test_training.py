"""Training: bit-identical resume, checkpoint contents and atomicity, loading errors, the loss."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import random_walk_episodes, training_state

from diffplan.config import Config, DiffusionConfig, ModelConfig, TaskConfig, TrainConfig, UnetConfig
from diffplan.data import Episodes, TrajectoryLayout, load_hdf5, write_hdf5
from diffplan.diffusion.loss import diffusion_loss
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.training import checkpoint as checkpoint_module
from diffplan.training import loop as loop_module
from diffplan.training.checkpoint import CheckpointError, load_checkpoint, load_trained_model
from diffplan.training.trainer import Trainer, loss_weights, update_ema

OBS_DIM, ACT_DIM = 4, 2


@pytest.fixture(scope="module")
def episodes(tmp_path_factory: pytest.TempPathFactory) -> Episodes:
    """Three 30-step episodes of a smooth random walk, through an HDF5 round trip."""
    data = random_walk_episodes()
    path = write_hdf5(tmp_path_factory.mktemp("data") / "tiny.hdf5", data, {"task": "tiny"})
    return load_hdf5(path)


def _config(steps: int, *, ckpt_every: int = 1000, dim: int = 8) -> Config:
    return Config(
        task=TaskConfig(name="tiny", env_id="Tiny-v0", dataset="tiny.hdf5", horizon=16),
        model=ModelConfig(unet=UnetConfig(dim=dim, dim_mults=[1, 2], kernel_size=3)),
        diffusion=DiffusionConfig(n_timesteps=10, sampling_steps=5),
        train=TrainConfig(steps=steps, batch_size=4, warmup_steps=2, ckpt_every=ckpt_every, log_every=2,
                          ema_decay=0.5, device="cpu", progress=False),
    )




@pytest.fixture(scope="module")
def straight_run(episodes: Episodes, tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    trainer = Trainer(_config(6), episodes, tmp_path_factory.mktemp("run_a"), {"path": "tiny.hdf5"})
    summary = trainer.train()
    assert summary.steps == 6 and summary.resumed_from == 0
    assert np.isfinite(summary.final_loss)
    return trainer


def test_resume_is_bit_identical(straight_run: Trainer, episodes: Episodes, tmp_path: Path) -> None:
    first = Trainer(_config(3), episodes, tmp_path, {"path": "tiny.hdf5"})
    first.train()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    second = Trainer(_config(6), episodes, tmp_path, {"path": "tiny.hdf5"})
    summary = second.train(resume=True)
    assert summary.resumed_from == 3 and summary.steps == 6
    expected, got = training_state(straight_run), training_state(second)
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert different == []
    assert torch.equal(straight_run.generator.get_state(), second.generator.get_state())
    # Training actually moved the weights away from the initialisation.
    fresh = Trainer(_config(6), episodes, tmp_path / "fresh", {})
    assert not all(torch.equal(a, b) for a, b in zip(fresh.model.state_dict().values(),
                                                      straight_run.model.state_dict().values(), strict=True))


def test_max_minutes_stops_with_a_checkpoint_and_the_same_command_resumes(
    straight_run: Trainer, episodes: Episodes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter(range(0, 10_000, 20))  # every reading of the clock is 20 s after the last
    monkeypatch.setattr(loop_module.time, "perf_counter", lambda: float(next(clock)))
    cfg = _config(6)
    cfg.train.max_minutes = 1.0
    first = Trainer(cfg, episodes, tmp_path, {"path": "tiny.hdf5"})
    summary = first.train()
    assert summary.steps == 2 and load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
    monkeypatch.undo()
    cfg.train.max_minutes = None
    second = Trainer(cfg, episodes, tmp_path, {"path": "tiny.hdf5"})
    assert second.train().resumed_from == 2
    expected, got = training_state(straight_run), training_state(second)
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []


def test_max_minutes_must_be_positive(episodes: Episodes, tmp_path: Path) -> None:
    cfg = _config(6)
    cfg.train.max_minutes = 0.0
    with pytest.raises(ValueError, match=r"train\.max_minutes must be > 0"):
        Trainer(cfg, episodes, tmp_path, {})


def test_checkpoint_contents(straight_run: Trainer) -> None:
    payload = torch.load(straight_run.checkpoint_path, weights_only=True)
    for key in ("model", "ema", "optimizer", "normalizer", "layout", "config", "step", "rng", "version",
                "format", "horizon", "dataset"):
        assert key in payload, key
    assert payload["step"] == 6
    assert payload["horizon"] == 16
    assert payload["layout"] == {"obs_dim": OBS_DIM, "act_dim": ACT_DIM, "reward": False, "terminal": False}
    assert payload["normalizer"]["kind"] == "limits"
    for name, value in straight_run.ema.state_dict().items():
        assert torch.equal(payload["ema"][name], value)
    assert set(payload["rng"]) == {"generator", "torch"}


def test_no_temp_files_after_training(straight_run: Trainer) -> None:
    names = sorted(p.name for p in straight_run.run_dir.iterdir())
    assert [n for n in names if n != "tb"] == ["checkpoint.pt"]


def test_failed_save_keeps_previous_checkpoint(straight_run: Trainer, monkeypatch: pytest.MonkeyPatch) -> None:
    before = straight_run.checkpoint_path.read_bytes()

    def broken_save(payload: object, handle) -> None:  # noqa: ANN001 - torch.save's signature
        handle.write(b"partial checkpoint bytes")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        straight_run.save()
    monkeypatch.undo()
    assert straight_run.checkpoint_path.read_bytes() == before
    assert sorted(p.name for p in straight_run.run_dir.iterdir() if p.name != "tb") == ["checkpoint.pt"]
    assert load_checkpoint(straight_run.checkpoint_path)["step"] == 6


def test_resume_with_other_model_config_raises(straight_run: Trainer, episodes: Episodes) -> None:
    other = Trainer(_config(8, dim=16), episodes, straight_run.run_dir, {})
    with pytest.raises(CheckpointError, match="trained with model.unet.dim=8, the current config has 16"):
        other.train(resume=True)


def test_resume_allows_planning_only_changes_and_refuses_another_dataset(
    straight_run: Trainer, episodes: Episodes, tmp_path: Path
) -> None:
    cfg = _config(6)
    cfg.diffusion.sampling_steps = 3  # a planning-time setting: resuming is fine
    assert Trainer(cfg, episodes, straight_run.run_dir, {}).resume()
    Trainer(_config(6), episodes, tmp_path, {"path": "tiny.hdf5", "sha256": "a" * 64}).save()
    other = Trainer(_config(6), episodes, tmp_path, {"path": "other.hdf5", "sha256": "b" * 64})
    with pytest.raises(CheckpointError, match="sha256 aaaaaaaaaaaa.*other.hdf5 has bbbbbbbbbbbb"):
        other.resume()


@pytest.mark.parametrize("key", ["steps", "batch_size", "ckpt_every", "log_every"])
def test_train_intervals_must_be_positive(episodes: Episodes, tmp_path: Path, key: str) -> None:
    cfg = _config(6)
    setattr(cfg.train, key, 0)
    with pytest.raises(ValueError, match=f"train.{key} must be >= 1"):
        Trainer(cfg, episodes, tmp_path, {})


def test_clip_with_gaussian_normalizer_is_refused(episodes: Episodes, tmp_path: Path) -> None:
    cfg = _config(6)
    cfg.diffusion.normalizer = cfg.diffusion.normalizer.__class__("gaussian")
    with pytest.raises(ValueError, match="clip_denoised=null"):
        Trainer(cfg, episodes, tmp_path, {})


def test_load_trained_model_uses_ema(straight_run: Trainer) -> None:
    model = load_trained_model(straight_run.checkpoint_path, expected_task="tiny",
                               expected_layout=TrajectoryLayout(obs_dim=OBS_DIM, act_dim=ACT_DIM))
    assert model.step == 6 and model.horizon == 16
    for name, value in straight_run.ema.state_dict().items():
        assert torch.equal(model.denoiser.state_dict()[name], value)
    assert model.schedule.n_timesteps == 10
    assert torch.equal(model.normalizer.mins, straight_run.normalizer.mins)
    raw = load_trained_model(straight_run.checkpoint_path, use_ema=False)
    for name, value in straight_run.model.state_dict().items():
        assert torch.equal(raw.denoiser.state_dict()[name], value)


def test_load_trained_model_refuses_other_task_or_layout(straight_run: Trainer) -> None:
    with pytest.raises(CheckpointError, match="trained on task 'tiny', not 'pointmaze-umaze'"):
        load_trained_model(straight_run.checkpoint_path, expected_task="pointmaze-umaze")
    with pytest.raises(CheckpointError, match="has layout .*'obs_dim': 4.* but the task needs .*'obs_dim': 6"):
        load_trained_model(straight_run.checkpoint_path, expected_layout=TrajectoryLayout(obs_dim=6, act_dim=2))


def test_missing_garbage_and_foreign_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_trained_model(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="has format None, expected 1"):
        load_checkpoint(foreign)


# -- pieces of the training step -------------------------------------------------------------
def test_reward_and_terminal_channels_are_trained_and_weighted(episodes: Episodes, tmp_path: Path) -> None:
    cfg = _config(2)
    cfg.train.model_rewards, cfg.train.model_terminals = True, True
    cfg.train.reward_weight, cfg.train.terminal_weight = 3.0, 0.5
    trainer = Trainer(cfg, episodes, tmp_path, {})
    assert trainer.layout == TrajectoryLayout(OBS_DIM, ACT_DIM, reward=True, terminal=True)
    assert trainer.weights[:, OBS_DIM + ACT_DIM].tolist() == [3.0] * 16
    assert trainer.weights[:, OBS_DIM + ACT_DIM + 1].tolist() == [0.5] * 16
    assert trainer.weights[1:, :OBS_DIM + ACT_DIM].eq(1.0).all()
    # The reward channel of the training table holds the dataset's rewards (normalized).
    raw = trainer.normalizer.unnormalize(trainer.windows.table[: episodes.n_transitions])
    np.testing.assert_allclose(raw[:, OBS_DIM + ACT_DIM].numpy(), episodes.rewards, atol=1e-5)
    trainer.train()
    model = load_trained_model(tmp_path / "checkpoint.pt", expected_layout=TrajectoryLayout(OBS_DIM, ACT_DIM))
    assert model.layout.transition_dim == OBS_DIM + ACT_DIM + 2
    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, reward_weight=1.0, steps=4))
    with pytest.raises(CheckpointError, match="train.reward_weight"):
        Trainer(changed, episodes, tmp_path, {}).train()


def test_loss_weights_and_ema_update() -> None:
    layout = TrajectoryLayout(obs_dim=2, act_dim=1)
    weights = loss_weights(layout, 3, 10.0)
    assert torch.equal(weights, torch.tensor([[1.0, 1.0, 10.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]))
    ema, model = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        ema.weight.fill_(1.0)
        model.weight.fill_(3.0)
    update_ema(ema, model, 0.75)
    assert ema.weight.item() == pytest.approx(0.75 * 1.0 + 0.25 * 3.0)


def _zero_denoiser(x_t: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x_t)


def _loss_case() -> tuple[NoiseSchedule, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 3, generator=generator)
    noise = torch.randn(2, 4, 3, generator=generator)
    levels = torch.randint(1, 11, (2, 4), generator=generator)
    return NoiseSchedule(10), x0, levels, noise


def test_loss_closed_form() -> None:
    schedule, x0, levels, noise = _loss_case()
    loss = diffusion_loss(_zero_denoiser, schedule, x0, levels, noise)
    torch.testing.assert_close(loss, noise.pow(2).mean())


def test_loss_ignores_conditioned_entries() -> None:
    schedule, x0, levels, noise = _loss_case()
    mask = torch.ones(2, 4, 3, dtype=torch.bool)
    mask[1, 2, 0] = False
    seen: list[torch.Tensor] = []

    def denoiser(x_t: torch.Tensor, normalized: torch.Tensor) -> torch.Tensor:
        seen.append(x_t)
        return torch.zeros_like(x_t)

    loss = diffusion_loss(denoiser, schedule, x0, levels, noise, condition_mask=mask)
    assert loss.item() == pytest.approx(noise[1, 2, 0].item() ** 2, rel=1e-6)
    # The conditioned entries reach the denoiser clean.
    assert torch.equal(seen[0][mask], x0[mask])
    # An (H, D) mask broadcasts over the batch.
    shared = torch.zeros(4, 3, dtype=torch.bool)
    shared[0] = True
    loss = diffusion_loss(_zero_denoiser, schedule, x0, levels, noise, condition_mask=shared)
    torch.testing.assert_close(loss, noise[:, 1:].pow(2).mean())


def test_loss_excludes_invalid_tokens_and_applies_weights() -> None:
    schedule, x0, levels, noise = _loss_case()
    valid = torch.tensor([[True, True, False, False], [True, False, False, False]])
    loss = diffusion_loss(_zero_denoiser, schedule, x0, levels, noise, valid=valid)
    kept = torch.cat([noise[0, :2].reshape(-1), noise[1, :1].reshape(-1)])
    torch.testing.assert_close(loss, kept.pow(2).mean())
    weights = torch.ones(4, 3)
    weights[0, 2] = 5.0
    loss = diffusion_loss(_zero_denoiser, schedule, x0, levels, noise, weights=weights)
    expected = (noise.pow(2) * weights).sum() / noise.numel()
    torch.testing.assert_close(loss, expected)


def test_loss_of_exact_prediction_is_zero() -> None:
    schedule, x0, levels, noise = _loss_case()
    for prediction in ("epsilon", "x0", "v"):
        sched = NoiseSchedule(10, prediction=prediction)

        def oracle(x_t: torch.Tensor, normalized: torch.Tensor, s: NoiseSchedule = sched) -> torch.Tensor:
            return s.target(x0, noise, levels)

        assert diffusion_loss(oracle, sched, x0, levels, noise).item() == 0.0


def test_config_round_trip_through_checkpoint(straight_run: Trainer) -> None:
    stored = checkpoint_module.config_from_checkpoint(load_checkpoint(straight_run.checkpoint_path))
    assert dataclasses.asdict(stored.model) == dataclasses.asdict(straight_run.cfg.model)
    assert stored.train.steps == 6 and stored.task.name == "tiny"


def test_a_checkpoint_from_another_version_loads_without_the_settings_this_one_lacks(
        straight_run: Trainer, episodes: Episodes, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    payload = load_checkpoint(straight_run.checkpoint_path)
    stored = json.loads(payload["config"])
    stored["planner"]["forcing"]["a_newer_setting"] = 3
    stored["collect"]["agents"]["a_robot"] = {"algo": "sac", "an_agent_setting": 1, "algo_kwargs": {"gamma": 0.9}}
    stored["sweep"]["cells"] = [{"kind": "guidance", "a_cell_setting": 2}]
    stored["planner"]["p_gain"] = 9.0  # written before the tracker section: moved, not dropped
    del stored["planner"]["tracker"]["p_gain"]
    payload["config"] = json.dumps(stored)
    path = tmp_path / "checkpoint.pt"
    torch.save(payload, path)
    with caplog.at_level(logging.WARNING):
        model = checkpoint_module.load_trained_model(path)
    agent = model.config.collect.agents["a_robot"]
    assert model.step == straight_run.step and agent.algo == "sac" and agent.algo_kwargs == {"gamma": 0.9}
    assert model.config.planner.tracker.p_gain == 9.0 and model.config.sweep.cells[0].kind == "guidance"
    assert "settings this one does not have are ignored (none of them defines the trained model): " \
        "planner.forcing.a_newer_setting, collect.agents.a_robot.an_agent_setting, sweep.cells[0].a_cell_setting" \
        in caplog.text
    assert str(path) in caplog.text and "p_gain" not in caplog.text
    # Training resumes from it: the dropped settings are planning ones.
    assert Trainer(_config(6), episodes, tmp_path, {"path": "tiny.hdf5"}).resume()
    # A setting of a section that defines the trained model, or a section this version does not know, is refused.
    for section, key in (("model", "a_newer_layer"), (None, "a_newer_section")):
        changed = json.loads(json.dumps(stored))
        (changed[section] if section else changed)[key] = {"x": 1}
        payload["config"] = json.dumps(changed)
        torch.save(payload, path)
        name = f"{section}.{key}" if section else key
        with pytest.raises(CheckpointError, match=rf"settings this one does not have: {name}; load it with the "
                                                  r"diffplan version that wrote it"):
            checkpoint_module.load_trained_model(path)
        with pytest.raises(CheckpointError, match=name):
            Trainer(_config(6), episodes, tmp_path, {"path": "tiny.hdf5"}).resume()
