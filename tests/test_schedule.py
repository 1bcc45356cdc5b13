"""Noise schedules against closed forms, prediction-type conversions, the forward process."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffplan.diffusion.schedule import NoiseSchedule, cosine_alphas_cumprod, linear_alphas_cumprod
from diffplan.enums import PredictionType, ScheduleKind


def _cosine_reference(n_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal eq. 17 in numpy float64, betas clipped at max_beta."""
    t = np.arange(n_timesteps + 1, dtype=np.float64)
    f = np.cos((t / n_timesteps + s) / (1 + s) * np.pi / 2) ** 2
    abar = f / f[0]
    betas = np.minimum(1 - abar[1:] / abar[:-1], max_beta)
    return np.concatenate([[1.0], np.cumprod(1 - betas)])


def _linear_reference(n_timesteps: int) -> np.ndarray:
    scale = 1000.0 / n_timesteps
    betas = np.linspace(1e-4 * scale, min(0.02 * scale, 0.999), n_timesteps, dtype=np.float64)
    return np.concatenate([[1.0], np.cumprod(1 - betas)])


@pytest.mark.parametrize("n_timesteps", [1, 10, 64, 1000])
def test_cosine_matches_closed_form(n_timesteps: int) -> None:
    expected = _cosine_reference(n_timesteps)
    got = cosine_alphas_cumprod(n_timesteps)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-15)
    schedule = NoiseSchedule(n_timesteps, kind="cosine")
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_cosine_unclipped_values_equal_f_over_f0() -> None:
    # Away from the end no beta reaches 0.999, so abar_k is exactly f(k) / f(0).
    n_timesteps = 100
    k = np.arange(n_timesteps)  # skip the last level, whose beta is clipped
    f = np.cos((k / n_timesteps + 0.008) / 1.008 * np.pi / 2) ** 2
    f0 = math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    np.testing.assert_allclose(cosine_alphas_cumprod(n_timesteps)[:-1].numpy(), f / f0, rtol=1e-10)
    # The last beta is clipped: abar_T = abar_{T-1} * (1 - 0.999), not f(T) / f0 = ~0.
    abar = cosine_alphas_cumprod(n_timesteps).numpy()
    assert abar[-1] == pytest.approx(abar[-2] * 0.001, rel=1e-9)


@pytest.mark.parametrize("n_timesteps", [50, 100, 1000])
def test_linear_matches_closed_form(n_timesteps: int) -> None:
    # betas = linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T) (no clipping needed for T >= 21).
    scale = 1000.0 / n_timesteps
    betas = np.linspace(1e-4 * scale, 0.02 * scale, n_timesteps)
    expected = np.concatenate([[1.0], np.cumprod(1 - betas)])
    np.testing.assert_allclose(linear_alphas_cumprod(n_timesteps).numpy(), expected, rtol=1e-12)
    schedule = NoiseSchedule(n_timesteps, kind=ScheduleKind.linear)
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_linear_short_chain_clips_last_beta() -> None:
    # With T = 10 the rescaled end beta would be 0.2 * 10 = 2; it is clipped to 0.999.
    np.testing.assert_allclose(linear_alphas_cumprod(10).numpy(), _linear_reference(10), rtol=1e-12)
    assert (linear_alphas_cumprod(10) > 0).all()


@pytest.mark.parametrize("kind", list(ScheduleKind))
def test_buffers_are_float32_follow_to_and_are_consistent(kind: ScheduleKind) -> None:
    schedule = NoiseSchedule(32, kind=kind)
    names = ("alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod")
    for name in names:
        buffer = getattr(schedule, name)
        assert buffer.dtype == torch.float32
        assert buffer.shape == (33,)
        assert name in schedule.state_dict()
    moved = schedule.to(torch.float64)
    assert all(getattr(moved, name).dtype == torch.float64 for name in names)
    abar = cosine_alphas_cumprod(32) if kind is ScheduleKind.cosine else linear_alphas_cumprod(32)
    np.testing.assert_allclose(schedule.sqrt_alphas_cumprod.numpy(), abar.sqrt().numpy(), rtol=1e-6)
    np.testing.assert_allclose(schedule.sqrt_one_minus_alphas_cumprod.numpy(), (1 - abar).sqrt().numpy(),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", list(ScheduleKind))
@pytest.mark.parametrize("n_timesteps", [1, 8, 64])
def test_abar_starts_at_one_and_decreases(kind: ScheduleKind, n_timesteps: int) -> None:
    abar = NoiseSchedule(n_timesteps, kind=kind).alphas_cumprod
    assert abar[0].item() == 1.0
    assert (abar[1:] < abar[:-1]).all()
    assert abar[-1].item() > 0


def test_normalized_level() -> None:
    schedule = NoiseSchedule(8)
    levels = torch.tensor([[0, 4, 8]])
    assert torch.equal(schedule.normalized_level(levels), torch.tensor([[0.0, 0.5, 1.0]]))


def _random_case(n_timesteps: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(3, 5, 4, generator=generator)
    noise = torch.randn(3, 5, 4, generator=generator)
    levels = torch.randint(1, n_timesteps + 1, (3, 5), generator=generator)
    levels[0, 0], levels[1, 1] = 1, n_timesteps  # both ends of the range appear
    return x0, noise, levels


@pytest.mark.parametrize("kind", list(ScheduleKind))
def test_add_noise_per_token(kind: ScheduleKind) -> None:
    n_timesteps = 20
    schedule = NoiseSchedule(n_timesteps, kind=kind)
    x0, noise, levels = _random_case(n_timesteps)
    abar = (cosine_alphas_cumprod if kind is ScheduleKind.cosine else linear_alphas_cumprod)(n_timesteps)
    x_t = schedule.add_noise(x0, noise, levels)
    for b in range(3):
        for h in range(5):
            a = abar[levels[b, h]].item()
            expected = math.sqrt(a) * x0[b, h].double() + math.sqrt(1 - a) * noise[b, h].double()
            torch.testing.assert_close(x_t[b, h].double(), expected, rtol=1e-6, atol=1e-6)
    # Level 0 is the clean sample, exactly.
    clean = schedule.add_noise(x0, noise, torch.zeros(3, 5, dtype=torch.long))
    assert torch.equal(clean, x0)


@pytest.mark.parametrize("prediction", list(PredictionType))
@pytest.mark.parametrize("kind", list(ScheduleKind))
def test_exact_target_recovers_x0_and_noise(prediction: PredictionType, kind: ScheduleKind) -> None:
    n_timesteps = 20
    schedule = NoiseSchedule(n_timesteps, kind=kind, prediction=prediction)
    x0, noise, levels = _random_case(n_timesteps, seed=1)
    x_t = schedule.add_noise(x0, noise, levels)
    target = schedule.target(x0, noise, levels)
    x0_hat = schedule.pred_original_sample(x_t, target, levels)
    # Float32 rounding of x_t is amplified by 1 / sqrt(abar) for epsilon (abar_T ~ 6e-6 here),
    # so the tolerance scales with it per token; x0 and v predictions need no division.
    sqrt_abar = schedule.at_levels(schedule.sqrt_alphas_cumprod, levels)
    tolerance = 1e-5 / sqrt_abar if prediction is PredictionType.epsilon else torch.full_like(sqrt_abar, 1e-5)
    assert ((x0_hat - x0).abs() <= tolerance).all()
    eps_hat = schedule.pred_noise(x_t, x0, levels)
    torch.testing.assert_close(eps_hat, noise, rtol=1e-4, atol=1e-4)


def test_targets_by_prediction_type() -> None:
    x0, noise, levels = _random_case(10, seed=2)
    eps = NoiseSchedule(10, prediction="epsilon")
    assert torch.equal(eps.target(x0, noise, levels), noise)
    assert torch.equal(NoiseSchedule(10, prediction="x0").target(x0, noise, levels), x0)
    v = NoiseSchedule(10, prediction="v").target(x0, noise, levels)
    abar = cosine_alphas_cumprod(10)[levels].unsqueeze(-1)
    expected = abar.sqrt() * noise.double() - (1 - abar).sqrt() * x0.double()
    torch.testing.assert_close(v.double(), expected, rtol=1e-6, atol=1e-6)


def test_pred_noise_is_finite_at_level_zero() -> None:
    schedule = NoiseSchedule(10)
    x = torch.ones(1, 2, 3)
    assert torch.isfinite(schedule.pred_noise(x, x, torch.zeros(1, 2, dtype=torch.long))).all()


@pytest.mark.parametrize("bad", [0, -3])
def test_invalid_n_timesteps_raises(bad: int) -> None:
    with pytest.raises(ValueError, match=f"n_timesteps must be >= 1, got {bad}"):
        NoiseSchedule(bad)


def test_invalid_kind_and_prediction_raise() -> None:
    with pytest.raises(ValueError, match="sigmoid"):
        NoiseSchedule(10, kind="sigmoid")
    with pytest.raises(ValueError, match="score"):
        NoiseSchedule(10, prediction="score")
