"""TrajectoryTransformer: shapes, causality, horizons, per-token levels, frame stacking, and
the training / checkpoint / sampling paths the U-Net goes through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import random_walk_episodes, training_state
from torch import Tensor

from diffplan.config import Config, DiffusionConfig, ModelConfig, TaskConfig, TrainConfig, TransformerConfig
from diffplan.data import Episodes
from diffplan.diffusion.sampler import Constraints, make_sampler
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.enums import ModelKind, NoiseMode
from diffplan.models.factory import build_denoiser
from diffplan.models.transformer import TrajectoryTransformer, sinusoidal_positions
from diffplan.training.checkpoint import load_checkpoint, load_trained_model
from diffplan.training.trainer import Trainer

B, H, D = 2, 16, 5


def _net(*, causal: bool = True, frame_stack: int = 1, horizon: int = H, **kwargs: object) -> TrajectoryTransformer:
    torch.manual_seed(0)
    return TrajectoryTransformer(transition_dim=D, horizon=horizon, d_model=32, n_layers=2, n_heads=4,
                                 causal=causal, frame_stack=frame_stack, **kwargs).eval()  # type: ignore[arg-type]


def _inputs(horizon: int = H) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(B, horizon, D, generator=gen), torch.rand(B, horizon, generator=gen)


def test_output_shape_and_factory() -> None:
    x, levels = _inputs()
    assert _net()(x, levels).shape == (B, H, D)
    cfg = ModelConfig(name=ModelKind.transformer,
                      transformer=TransformerConfig(d_model=32, n_layers=2, n_heads=2, causal=False, frame_stack=2))
    model = build_denoiser(cfg, transition_dim=D, horizon=H)
    assert isinstance(model, TrajectoryTransformer)
    assert not model.causal and model.frame_stack == 2 and len(model.blocks) == 2
    assert model(x, levels).shape == (B, H, D)


@pytest.mark.parametrize("frame_stack", [1, 2])
def test_causal_attention_hides_later_tokens(frame_stack: int) -> None:
    x, levels = _inputs()
    cut = 10  # a token boundary for k = 1 and 2
    x2, levels2 = x.clone(), levels.clone()
    x2[:, cut:] += 1.0
    levels2[:, cut + 1] = 1.0 - levels2[:, cut + 1]
    with torch.no_grad():
        causal = _net(frame_stack=frame_stack)
        a, b = causal(x, levels), causal(x2, levels2)
        torch.testing.assert_close(a[:, :cut], b[:, :cut], rtol=0, atol=1e-6)
        assert not torch.allclose(a[:, cut:], b[:, cut:])
        bidirectional = _net(causal=False, frame_stack=frame_stack)
        a, b = bidirectional(x, levels), bidirectional(x2, levels2)
        assert (a[:, :cut] - b[:, :cut]).abs().amax() > 1e-4


def test_runs_at_other_horizons() -> None:
    net = _net()  # built for H = 16
    for horizon in (24, 8, 7):
        x, levels = _inputs(horizon)
        out = net(x, levels)
        assert out.shape == (B, horizon, D) and torch.isfinite(out).all()
    # Causal attention with absolute positions: a prefix's outputs do not depend on the length.
    x, levels = _inputs(24)
    with torch.no_grad():
        torch.testing.assert_close(net(x, levels)[:, :8], net(x[:, :8], levels[:, :8]), rtol=0, atol=1e-5)


def test_per_token_levels_matter() -> None:
    net = _net(causal=False)
    x, _ = _inputs()
    with torch.no_grad():
        shared = net(x, torch.full((B, H), 0.5))
        assert torch.equal(shared, net(x, torch.tensor(0.5).expand(B, H)))
        levels = torch.full((B, H), 0.5)
        levels[0, 5] = 0.9
        changed = net(x, levels)
    assert torch.equal(changed[1], shared[1])
    assert not torch.allclose(changed[0, 5], shared[0, 5])
    with torch.no_grad():
        assert not torch.allclose(net(x, torch.zeros(B, H)), net(x, torch.ones(B, H)))


def test_frame_stack_levels_within_a_token_are_each_seen() -> None:
    net = _net(frame_stack=2)
    x, _ = _inputs()
    levels = torch.full((B, H), 0.5)
    other = levels.clone()
    other[:, 5] = 0.1  # the second timestep of token 2 only
    with torch.no_grad():
        assert not torch.allclose(net(x, levels)[:, 4:6], net(x, other)[:, 4:6])


def test_frame_stack_shapes_and_divisibility() -> None:
    net = _net(frame_stack=2)
    assert net.input_proj.in_features == 2 * D and net.output_proj.out_features == 2 * D
    x, levels = _inputs()
    assert net(x, levels).shape == (B, H, D)
    x, levels = _inputs(6)
    assert net(x, levels).shape == (B, 6, D)
    with pytest.raises(ValueError, match=r"horizon 7 must be a positive multiple of model.transformer.frame_stack=2"):
        net(*_inputs(7))
    with pytest.raises(ValueError, match=r"horizon 15 must be a positive multiple of model.transformer.frame_stack=4"):
        _net(frame_stack=4, horizon=15)


def test_bad_settings_raise() -> None:
    with pytest.raises(ValueError, match="divisible by model.transformer.n_heads"):
        TrajectoryTransformer(transition_dim=D, horizon=H, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="frame_stack must be >= 1"):
        TrajectoryTransformer(transition_dim=D, horizon=H, frame_stack=0)
    with pytest.raises(ValueError, match="without model.return_condition"):
        _net()(*_inputs(), condition=torch.zeros(B))


def test_return_condition_and_drop() -> None:
    net = _net(return_condition=True)
    assert net.null_condition is not None
    with torch.no_grad():
        net.null_condition.normal_()
        x, levels = _inputs()
        cond = torch.tensor([0.2, 0.9])
        conditioned = net(x, levels, cond)
        unconditioned = net(x, levels)
        dropped = net(x, levels, cond, torch.tensor([True, False]))
    assert not torch.allclose(conditioned, unconditioned)
    torch.testing.assert_close(dropped[0], unconditioned[0])
    torch.testing.assert_close(dropped[1], conditioned[1])


def test_gradients_reach_every_parameter() -> None:
    net = _net().train()
    x = torch.randn(B, H, D, requires_grad=True)
    net(x, torch.rand(B, H)).pow(2).mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_sinusoidal_positions() -> None:
    pos = sinusoidal_positions(3, 4)
    assert pos.shape == (3, 4)
    torch.testing.assert_close(pos[0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(sinusoidal_positions(40, 8)[:3], sinusoidal_positions(3, 8))


@pytest.mark.parametrize("matrix_kind", ["full_sequence", "pyramid"])
def test_sampling_keeps_the_inpainted_start(matrix_kind: str) -> None:
    schedule = NoiseSchedule(10)
    sampler, matrix = make_sampler(schedule, "ddim", sampling_steps=5, horizon=H, clip_denoised=1.0,
                                   matrix=matrix_kind, uncertainty=2)
    net = _net()
    mask = torch.zeros(B, H, D, dtype=torch.bool)
    mask[:, 0] = True
    constraints = Constraints(mask, torch.randn(B, H, D, generator=torch.Generator().manual_seed(3)).clamp(-1, 1))
    sample = sampler.sample(net, (B, H, D), matrix, constraints=constraints,
                            generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(sample).all() and sample[:, 1:].std() > 0
    assert torch.equal(sample[mask], constraints.values[mask])


# -- training, checkpoints, resume ----------------------------------------------------------
OBS_DIM, ACT_DIM = 4, 2


@pytest.fixture(scope="module")
def episodes() -> Episodes:
    return random_walk_episodes()


def _config(steps: int) -> Config:
    return Config(
        task=TaskConfig(name="tiny", env_id="Tiny-v0", dataset="tiny.hdf5", horizon=16),
        model=ModelConfig(name=ModelKind.transformer,
                          transformer=TransformerConfig(d_model=16, n_layers=2, n_heads=2, frame_stack=2)),
        diffusion=DiffusionConfig(n_timesteps=10, sampling_steps=5),
        train=TrainConfig(steps=steps, batch_size=4, warmup_steps=2, ckpt_every=1000, log_every=2,
                          ema_decay=0.5, device="cpu", progress=False, noise_mode=NoiseMode.mixture),
    )




def test_trainer_saves_reloads_and_resumes_bit_identically(episodes: Episodes, tmp_path: Path) -> None:
    straight = Trainer(_config(3), episodes, tmp_path / "a", {"path": "tiny.hdf5"})
    summary = straight.train()
    assert summary.steps == 3 and np.isfinite(summary.final_loss)
    assert isinstance(straight.model, TrajectoryTransformer)

    loaded = load_trained_model(straight.checkpoint_path, expected_task="tiny")
    assert isinstance(loaded.denoiser, TrajectoryTransformer) and loaded.denoiser.frame_stack == 2
    for key, value in loaded.denoiser.state_dict().items():
        assert torch.equal(value, straight.ema.state_dict()[key]), key
    x = torch.randn(1, 16, OBS_DIM + ACT_DIM)
    assert loaded.denoiser(x, torch.rand(1, 16)).shape == x.shape

    first = Trainer(_config(2), episodes, tmp_path / "b", {"path": "tiny.hdf5"})
    first.train()
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 2
    second = Trainer(_config(3), episodes, tmp_path / "b", {"path": "tiny.hdf5"})
    resumed = second.train(resume=True)
    assert resumed.resumed_from == 2 and resumed.steps == 3
    expected, got = training_state(straight), training_state(second)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
