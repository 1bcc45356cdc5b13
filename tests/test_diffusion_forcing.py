"""Diffusion Forcing pieces: training noise modes, level-weighted loss, scheduling matrices,
per-token sampling along them, bit-identical resume and planning-time matrix selection."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import random_walk_episodes, training_state
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError
from torch import Tensor

from diffplan.config import Config, DiffusionConfig, ModelConfig, TaskConfig, TrainConfig, UnetConfig
from diffplan.data import Episodes
from diffplan.diffusion import loss as loss_module
from diffplan.diffusion.levels import (
    MIN_SNR_GAMMA,
    full_sequence_levels,
    independent_levels,
    level_loss_weights,
    training_levels,
)
from diffplan.diffusion.loss import diffusion_loss
from diffplan.diffusion.sampler import (
    Constraints,
    Sampler,
    full_sequence_matrix,
    make_sampler,
    scheduling_matrix,
    validate_matrix,
)
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.enums import LevelWeighting, NoiseMode, PredictionType, ScheduleMatrixKind
from diffplan.models.unet import TemporalUnet
from diffplan.planning.planner import planning_sampler
from diffplan.training.checkpoint import CheckpointError, load_checkpoint, load_trained_model, save_checkpoint
from diffplan.training.trainer import RESUME_KEYS, Trainer

B, H, D = 2, 8, 3


# -- scheduling matrices -------------------------------------------------------------------
EXPECTED = {
    # T = 4, S = 4, H = 3, uncertainty 1: columns are tokens, rows sampler steps.
    "pyramid": [
        [4, 4, 4],
        [3, 4, 4],
        [2, 3, 4],
        [1, 2, 3],
        [0, 1, 2],
        [0, 0, 1],
        [0, 0, 0],
    ],
    "autoregressive": [
        [4, 4, 4],
        [3, 4, 4],
        [2, 4, 4],
        [1, 4, 4],
        [0, 4, 4],
        [0, 3, 4],
        [0, 2, 4],
        [0, 1, 4],
        [0, 0, 4],
        [0, 0, 3],
        [0, 0, 2],
        [0, 0, 1],
        [0, 0, 0],
    ],
    "trapezoid": [
        [4, 4, 4],
        [3, 4, 3],
        [2, 3, 2],
        [1, 2, 1],
        [0, 1, 0],
        [0, 0, 0],
    ],
    "full_sequence": [[4, 4, 4], [3, 3, 3], [2, 2, 2], [1, 1, 1], [0, 0, 0]],
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_scheduling_matrix_small_case(kind: str) -> None:
    matrix = scheduling_matrix(kind, n_timesteps=4, sampling_steps=4, horizon=3, uncertainty=1)
    assert matrix.dtype == torch.long
    assert torch.equal(matrix, torch.tensor(EXPECTED[kind]))
    assert torch.equal(scheduling_matrix(ScheduleMatrixKind(kind), n_timesteps=4, sampling_steps=4, horizon=3),
                       matrix)


def test_pyramid_with_ddim_spacing_and_uncertainty() -> None:
    # Each token follows full_sequence_matrix's levels 10, 7, 3, 0 (S = 3 < T = 10), two rows apart.
    matrix = scheduling_matrix("pyramid", n_timesteps=10, sampling_steps=3, horizon=3, uncertainty=2)
    expected = torch.tensor([
        [10, 10, 10],
        [7, 10, 10],
        [3, 10, 10],
        [0, 7, 10],
        [0, 3, 10],
        [0, 0, 7],
        [0, 0, 3],
        [0, 0, 0],
    ])
    assert torch.equal(matrix, expected)


def test_trapezoid_even_horizon_and_uncertainty() -> None:
    matrix = scheduling_matrix("trapezoid", n_timesteps=4, sampling_steps=2, horizon=4, uncertainty=2)
    # Levels 4, 2, 0; offsets 0, 2, 2, 0.
    expected = torch.tensor([
        [4, 4, 4, 4],
        [2, 4, 4, 2],
        [0, 4, 4, 0],
        [0, 2, 2, 0],
        [0, 0, 0, 0],
    ])
    assert torch.equal(matrix, expected)


@pytest.mark.parametrize(("n_timesteps", "steps", "horizon"), [(4, 4, 3), (10, 3, 5), (64, 20, 16), (7, 1, 1)])
def test_full_sequence_kind_equals_full_sequence_matrix(n_timesteps: int, steps: int, horizon: int) -> None:
    expected = full_sequence_matrix(n_timesteps, steps, horizon)
    got = scheduling_matrix("full_sequence", n_timesteps=n_timesteps, sampling_steps=steps, horizon=horizon,
                            uncertainty=3)
    assert torch.equal(got, expected)
    _, from_make_sampler = make_sampler(NoiseSchedule(n_timesteps), "ddim", sampling_steps=steps, horizon=horizon)
    assert torch.equal(from_make_sampler, expected)


@pytest.mark.parametrize("kind", [k.value for k in ScheduleMatrixKind])
@pytest.mark.parametrize(("n_timesteps", "steps", "horizon", "uncertainty"),
                         [(10, 10, 6, 1), (10, 4, 7, 3), (64, 20, 16, 2), (5, 5, 1, 1), (6, 2, 2, 5)])
def test_matrix_properties(kind: str, n_timesteps: int, steps: int, horizon: int, uncertainty: int) -> None:
    matrix = scheduling_matrix(kind, n_timesteps=n_timesteps, sampling_steps=steps, horizon=horizon,
                               uncertainty=uncertainty)
    validate_matrix(matrix, n_timesteps)
    assert matrix.shape[1] == horizon
    assert (matrix[0] == n_timesteps).all() and (matrix[-1] == 0).all()
    assert (matrix[1:] <= matrix[:-1]).all()
    assert (matrix[-2] != 0).any()  # no trailing row of zeros: every row denoises something
    levels = full_sequence_matrix(n_timesteps, steps, 1)[:, 0]
    for t in range(horizon):
        # Each token visits exactly the full-sequence levels, in order (waiting rows repeat them).
        assert torch.equal(torch.unique_consecutive(matrix[:, t]), levels)
    offsets = {"full_sequence": 0, "pyramid": uncertainty * (horizon - 1),
               "autoregressive": steps * (horizon - 1), "trapezoid": uncertainty * ((horizon - 1) // 2)}
    assert matrix.shape[0] == steps + offsets[kind] + 1
    if kind in ("pyramid", "autoregressive"):
        assert (matrix[:, :-1] <= matrix[:, 1:]).all()  # nearer tokens are never noisier
    if kind == "trapezoid":
        assert torch.equal(matrix, matrix.flip(1))
    if kind == "autoregressive":
        # Token t is clean before token t + 1 leaves T: at most one token is in between.
        assert ((matrix[:, 1:] < n_timesteps) <= (matrix[:, :-1] == 0)).all()
        assert (((matrix > 0) & (matrix < n_timesteps)).sum(dim=1) <= 1).all()


def test_fractional_uncertainty_starts_several_tokens_per_row() -> None:
    # Diffusion Forcing's uncertainty_scale < 1: offset_t = floor(0.5 t) -> 0, 0, 1, 1, 2.
    matrix = scheduling_matrix("pyramid", n_timesteps=2, sampling_steps=2, horizon=5, uncertainty=0.5)
    expected = torch.tensor([
        [2, 2, 2, 2, 2],
        [1, 1, 2, 2, 2],
        [0, 0, 1, 1, 2],
        [0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0],
    ])
    assert torch.equal(matrix, expected)
    # Integer uncertainties are unchanged by the float path.
    assert torch.equal(
        scheduling_matrix("pyramid", n_timesteps=4, sampling_steps=4, horizon=3, uncertainty=2.0),
        scheduling_matrix("pyramid", n_timesteps=4, sampling_steps=4, horizon=3, uncertainty=2),
    )


def test_scheduling_matrix_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown scheduling matrix kind 'zigzag'; set diffusion.schedule_matrix "
                                         r"to one of full_sequence, autoregressive, pyramid, trapezoid"):
        scheduling_matrix("zigzag", n_timesteps=4, sampling_steps=4, horizon=3)
    for kind in ("pyramid", "trapezoid"):
        for bad in (0, -1, float("nan"), True):
            with pytest.raises(ValueError, match=rf"'{kind}' needs an uncertainty > 0 .*got {bad!r}; "
                                                 r"set diffusion.uncertainty to e.g. 1 or 0.5"):
                scheduling_matrix(kind, n_timesteps=4, sampling_steps=4, horizon=3, uncertainty=bad)  # type: ignore[arg-type]
    # Kinds that ignore uncertainty accept anything there.
    scheduling_matrix("autoregressive", n_timesteps=4, sampling_steps=4, horizon=3, uncertainty=0)
    with pytest.raises(ValueError, match=r"sampling_steps must be in \[1, n_timesteps=4\], got 5"):
        scheduling_matrix("pyramid", n_timesteps=4, sampling_steps=5, horizon=3)
    with pytest.raises(ValueError, match="'pyramid' needs a horizon >= 1, got 0"):
        scheduling_matrix("pyramid", n_timesteps=4, sampling_steps=4, horizon=0)


def test_validate_matrix_rejects_first_row_above_t_and_nonzero_last_row() -> None:
    pyramid = scheduling_matrix("pyramid", n_timesteps=4, sampling_steps=4, horizon=3)
    with pytest.raises(ValueError, match=r"levels must lie in \[0, 3\]"):
        validate_matrix(pyramid, 3)
    with pytest.raises(ValueError, match="must end with a row of zeros"):
        validate_matrix(pyramid[:-1], 4)
    with pytest.raises(ValueError, match="non-increasing per token"):
        validate_matrix(pyramid.flip(0), 4)


def test_diffusion_config_schedule_matrix_is_validated() -> None:
    with pytest.raises(ValidationError, match="schedule_matrix"):
        OmegaConf.merge(OmegaConf.structured(DiffusionConfig), {"schedule_matrix": "zigzag"})
    cfg = OmegaConf.merge(OmegaConf.structured(DiffusionConfig), {"schedule_matrix": "pyramid", "uncertainty": 2})
    assert cfg.schedule_matrix is ScheduleMatrixKind.pyramid and cfg.uncertainty == 2


# -- training noise modes --------------------------------------------------------------------
def test_full_sequence_mode_is_bit_identical_to_full_sequence_levels() -> None:
    assert loss_module.full_sequence_levels is full_sequence_levels  # re-exported, same function
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(3):
        new = training_levels("full_sequence", 16, H, 10, a, mixture_p=0.7)
        # The previous implementation, written out.
        old = torch.randint(1, 11, (16, 1), generator=b).expand(16, H)
        assert torch.equal(new, old)
        assert torch.equal(a.get_state(), b.get_state())
    assert torch.equal(training_levels(NoiseMode.full_sequence, 4, H, 10, torch.Generator().manual_seed(0), low=0),
                       full_sequence_levels(4, H, 10, torch.Generator().manual_seed(0), low=0))


def test_independent_levels_vary_per_token_in_range() -> None:
    levels = training_levels("independent", 4000, H, 10, torch.Generator().manual_seed(0))
    assert levels.shape == (4000, H) and levels.dtype == torch.long
    assert int(levels.min()) == 1 and int(levels.max()) == 10
    assert set(levels.unique().tolist()) == set(range(1, 11))
    varying = (levels != levels[:, :1]).any(dim=1).float().mean()
    assert varying > 0.99  # a constant window has probability 10^-7
    # Roughly uniform per level and per position.
    counts = torch.bincount(levels.flatten(), minlength=11)[1:].float() / levels.numel()
    assert (counts - 0.1).abs().max() < 0.01
    assert (levels.float().mean(dim=0) - 5.5).abs().max() < 0.15
    low0 = independent_levels(2000, H, 10, torch.Generator().manual_seed(1), low=0)
    assert int(low0.min()) == 0


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_mixture_fraction_near_p(p: float) -> None:
    n = 20000
    levels = training_levels("mixture", n, H, 10, torch.Generator().manual_seed(0), mixture_p=p)
    assert levels.shape == (n, H) and int(levels.min()) >= 1 and int(levels.max()) <= 10
    independent = (levels != levels[:, :1]).any(dim=1).float().mean().item()
    # sigma = sqrt(p (1 - p) / n) <= 0.0035; constant independent windows are negligible.
    assert abs(independent - p) < 0.015


def test_training_levels_errors() -> None:
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="unknown noise mode 'bogus'; set train.noise_mode to one of "
                                         "full_sequence, independent, mixture"):
        training_levels("bogus", 2, H, 10, generator)
    with pytest.raises(ValueError, match=r"train.noise_mixture_p must be in \[0, 1\], got 1.5"):
        training_levels("mixture", 2, H, 10, generator, mixture_p=1.5)


# -- level-weighted loss -------------------------------------------------------------------
def _zero_denoiser(x_t: Tensor, normalized: Tensor) -> Tensor:
    return torch.zeros_like(x_t)


def test_min_snr_weights_by_prediction_type() -> None:
    levels = torch.tensor([[1, 2, 5, 10]])
    abar = NoiseSchedule(10).alphas_cumprod.double()[levels[0]]
    snr = abar / (1 - abar)
    clipped = snr.clamp(max=MIN_SNR_GAMMA)
    expected = {"x0": clipped, "epsilon": clipped / snr, "v": clipped / (snr + 1)}
    for prediction, want in expected.items():
        weights = level_loss_weights(NoiseSchedule(10, prediction=prediction), levels, "min_snr")
        assert weights is not None and weights.shape == (1, 4)
        torch.testing.assert_close(weights[0].double(), want, rtol=1e-5, atol=1e-7)
    assert level_loss_weights(NoiseSchedule(10), levels, LevelWeighting.none) is None
    # Low levels (high SNR) are capped at gamma for x0 prediction; T is nearly pure noise.
    x0_weights = level_loss_weights(NoiseSchedule(10, prediction="x0"), levels, "min_snr")
    assert x0_weights is not None
    assert x0_weights[0, 0].item() == MIN_SNR_GAMMA and x0_weights[0, 3].item() < 1e-3


def test_level_weighted_loss_by_hand() -> None:
    # x0 prediction and a zero denoiser: the squared error of entry (b, h, d) is x0^2.
    schedule = NoiseSchedule(4, prediction=PredictionType.x0)
    x0 = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]]])  # (1, 3, 2)
    levels = torch.tensor([[1, 3, 4]])
    noise = torch.zeros_like(x0)
    abar = [float(schedule.alphas_cumprod[k]) for k in (1, 3, 4)]
    w = [min(a / (1 - a), 5.0) for a in abar]
    unweighted = diffusion_loss(_zero_denoiser, schedule, x0, levels, noise)
    assert unweighted.item() == pytest.approx((1 + 4 + 9 + 1 + 0.25 + 0) / 6, rel=1e-6)
    weighted = diffusion_loss(_zero_denoiser, schedule, x0, levels, noise, level_weighting="min_snr")
    expected = (w[0] * (1 + 4) + w[1] * (9 + 1) + w[2] * 0.25) / 6
    assert weighted.item() == pytest.approx(expected, rel=1e-5)
    # With per-entry weights, an invalid token and an inpainted entry: both drop out of sum and count.
    entry_weights = torch.tensor([[2.0, 1.0], [1.0, 1.0], [1.0, 3.0]])
    valid = torch.tensor([[True, True, False]])
    mask = torch.zeros(1, 3, 2, dtype=torch.bool)
    mask[0, 1, 0] = True
    masked = diffusion_loss(_zero_denoiser, schedule, x0, levels, noise, weights=entry_weights, valid=valid,
                            condition_mask=mask, level_weighting=LevelWeighting.min_snr)
    expected = (w[0] * (2 * 1 + 4) + w[1] * 1) / 3
    assert masked.item() == pytest.approx(expected, rel=1e-5)


def test_none_weighting_is_bit_identical() -> None:
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 3, generator=generator), torch.randn(2, 4, 3, generator=generator)
    levels = torch.randint(1, 11, (2, 4), generator=generator)
    schedule = NoiseSchedule(10)

    def denoiser(x_t: Tensor, normalized: Tensor) -> Tensor:
        return 0.3 * x_t + normalized.unsqueeze(-1)

    a = diffusion_loss(denoiser, schedule, x0, levels, noise)
    b = diffusion_loss(denoiser, schedule, x0, levels, noise, level_weighting="none")
    assert torch.equal(a, b)


# -- sampling along per-token matrices -----------------------------------------------------
def _tiny_unet() -> TemporalUnet:
    torch.manual_seed(0)
    return TemporalUnet(transition_dim=D, horizon=H, dim=8, dim_mults=(1, 2)).eval()


def _start_constraints() -> Constraints:
    mask = torch.zeros(B, H, D, dtype=torch.bool)
    mask[:, 0, :] = True  # the start token, inpainted
    values = torch.randn(B, H, D, generator=torch.Generator().manual_seed(11))
    return Constraints(mask, values)


@pytest.mark.parametrize("sampler_kind", ["ddpm", "ddim"])
@pytest.mark.parametrize("matrix_kind", ["pyramid", "autoregressive", "trapezoid"])
def test_sampling_along_per_token_matrices(sampler_kind: str, matrix_kind: str) -> None:
    schedule = NoiseSchedule(6)
    steps = 6 if sampler_kind == "ddpm" else 3  # DDIM jumps between non-adjacent levels
    sampler, matrix = make_sampler(schedule, sampler_kind, sampling_steps=steps, horizon=H, clip_denoised=1.0,
                                   matrix=matrix_kind, uncertainty=2)
    unet = _tiny_unet()
    seen: list[Tensor] = []

    def record(x_t: Tensor, normalized: Tensor) -> Tensor:
        seen.append(x_t.clone())
        return unet(x_t, normalized)

    constraints = _start_constraints()
    sample = sampler.sample(record, (B, H, D), matrix, constraints=constraints,
                            generator=torch.Generator().manual_seed(0))
    assert len(seen) == matrix.shape[0] - 1
    assert torch.equal(sample[constraints.mask], constraints.values[constraints.mask])
    assert torch.isfinite(sample).all() and sample[:, 1:].std() > 0
    # A token whose level does not change in a row is left exactly as it was by that row.
    states = [*seen, sample]
    unchanged_checked = 0
    for row in range(matrix.shape[0] - 1):
        for t in range(H):
            if matrix[row + 1, t] == matrix[row, t]:
                assert torch.equal(states[row + 1][:, t], states[row][:, t]), (row, t)
                unchanged_checked += 1
            elif t > 0:
                assert not torch.equal(states[row + 1][:, t], states[row][:, t]), (row, t)
    assert unchanged_checked > 0


@pytest.mark.parametrize("prediction", list(PredictionType))
@pytest.mark.parametrize(("matrix_kind", "steps"), [("pyramid", 10), ("pyramid", 4), ("autoregressive", 3),
                                                    ("trapezoid", 5)])
def test_oracle_recovers_x0_along_per_token_matrices(prediction: PredictionType, matrix_kind: str,
                                                      steps: int) -> None:
    """A denoiser that knows x0 returns it from mixed-level rows, with DDIM jumps between
    non-adjacent levels and DDPM noise (which must not touch tokens that wait)."""
    schedule = NoiseSchedule(10, prediction=prediction)
    x0 = torch.randn(B, H, D, generator=torch.Generator().manual_seed(5))

    def oracle(x_t: Tensor, normalized: Tensor) -> Tensor:
        levels = (normalized * schedule.n_timesteps).round().long()
        return schedule.target(x0, schedule.pred_noise(x_t, x0, levels), levels)

    for kind in ("ddim", "ddpm"):
        sampler, matrix = make_sampler(schedule, kind, sampling_steps=steps, horizon=H, matrix=matrix_kind)
        sample = sampler.sample(oracle, (B, H, D), matrix, generator=torch.Generator().manual_seed(6))
        torch.testing.assert_close(sample, x0, rtol=1e-4, atol=1e-4)


def test_step_with_unchanged_and_non_adjacent_levels_under_ddpm_noise() -> None:
    schedule = NoiseSchedule(10)
    sampler = Sampler(schedule, eta=1.0)
    x = torch.randn(1, 5, D, generator=torch.Generator().manual_seed(1))
    output = torch.randn(1, 5, D, generator=torch.Generator().manual_seed(2))
    level_from = torch.tensor([[10, 10, 6, 0, 3]])
    level_to = torch.tensor([[10, 4, 6, 0, 0]])
    out, _ = sampler.step(x, output, level_from, level_to, torch.Generator().manual_seed(3))
    for t in (0, 2, 3):  # waiting at T, mid-way, done: untouched, no noise added
        assert torch.equal(out[:, t], x[:, t])
    assert torch.isfinite(out).all()
    # The jump 10 -> 4 is DDIM with eta = 1 between non-adjacent levels: mean and noise scale of eq. 16.
    abar = schedule.alphas_cumprod
    x0 = sampler.estimate_x0(x, output, level_from)
    eps = schedule.pred_noise(x, x0, level_from)
    var = (1 - abar[4]) / (1 - abar[10]) * (1 - abar[10] / abar[4])
    replay = torch.Generator().manual_seed(3)
    noise = torch.randn(x.shape, generator=replay)
    expected = abar[4].sqrt() * x0[:, 1] + (1 - abar[4] - var).sqrt() * eps[:, 1] + var.sqrt() * noise[:, 1]
    torch.testing.assert_close(out[:, 1], expected)
    # Landing on level 0 adds no noise: x0 itself (epsilon prediction, so up to rounding).
    torch.testing.assert_close(out[:, 4], x0[:, 4])


# -- training with per-token levels --------------------------------------------------------
OBS_DIM, ACT_DIM = 4, 2


@pytest.fixture(scope="module")
def episodes() -> Episodes:
    return random_walk_episodes()


def _config(steps: int, *, noise_mode: str = "independent", level_weighting: str = "min_snr") -> Config:
    return Config(
        task=TaskConfig(name="tiny", env_id="Tiny-v0", dataset="tiny.hdf5", horizon=16),
        model=ModelConfig(unet=UnetConfig(dim=8, dim_mults=[1, 2], kernel_size=3)),
        diffusion=DiffusionConfig(n_timesteps=10, sampling_steps=5),
        train=TrainConfig(steps=steps, batch_size=4, warmup_steps=2, ckpt_every=1000, log_every=2, ema_decay=0.5,
                          device="cpu", progress=False, noise_mode=NoiseMode(noise_mode),
                          level_weighting=LevelWeighting(level_weighting)),
    )




@pytest.fixture(scope="module")
def independent_run(episodes: Episodes, tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    trainer = Trainer(_config(6), episodes, tmp_path_factory.mktemp("df_a"), {"path": "tiny.hdf5"})
    summary = trainer.train()
    assert summary.steps == 6 and np.isfinite(summary.final_loss)
    return trainer


def test_independent_training_resumes_bit_identically(independent_run: Trainer, episodes: Episodes,
                                                      tmp_path: Path) -> None:
    first = Trainer(_config(3), episodes, tmp_path, {"path": "tiny.hdf5"})
    first.train()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    second = Trainer(_config(6), episodes, tmp_path, {"path": "tiny.hdf5"})
    assert second.train(resume=True).resumed_from == 3
    expected, got = training_state(independent_run), training_state(second)
    assert expected.keys() == got.keys()
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []
    assert torch.equal(independent_run.generator.get_state(), second.generator.get_state())
    # The noise mode and weighting change training: the default run ends elsewhere.
    default = Trainer(_config(6, noise_mode="full_sequence", level_weighting="none"), episodes, tmp_path / "d", {})
    default.train()
    assert not all(torch.equal(a, b) for a, b in zip(default.model.state_dict().values(),
                                                      independent_run.model.state_dict().values(), strict=True))


def test_training_draws_per_token_levels(episodes: Episodes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import diffplan.training.trainer as trainer_module

    seen: list[Tensor] = []
    original = trainer_module.diffusion_loss

    def spy(*args: object, **kwargs: object) -> Tensor:
        seen.append(args[3].clone())  # type: ignore[union-attr]
        assert kwargs["level_weighting"] is LevelWeighting.min_snr
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer_module, "diffusion_loss", spy)
    Trainer(_config(2), episodes, tmp_path, {}).train()
    assert len(seen) == 2 and all((levels != levels[:, :1]).any() for levels in seen)


def test_noise_settings_are_resume_keys(independent_run: Trainer, episodes: Episodes, tmp_path: Path) -> None:
    assert {"noise_mode", "noise_mixture_p", "level_weighting"} <= set(RESUME_KEYS["train"] or ())
    assert "schedule_matrix" not in (RESUME_KEYS["diffusion"] or ())
    other = Trainer(_config(8, noise_mode="mixture"), episodes, independent_run.run_dir, {})
    with pytest.raises(CheckpointError, match="trained with train.noise_mode='independent', the current config "
                                              "has 'mixture'"):
        other.resume()
    # Planning-time matrix settings may change between runs.
    cfg = _config(8)
    cfg.diffusion.schedule_matrix, cfg.diffusion.uncertainty = ScheduleMatrixKind.pyramid, 3
    assert Trainer(cfg, episodes, independent_run.run_dir, {}).resume()


def test_old_checkpoint_without_noise_keys_resumes(episodes: Episodes, tmp_path: Path) -> None:
    Trainer(_config(2, noise_mode="full_sequence", level_weighting="none"), episodes, tmp_path, {}).train()
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    config = json.loads(payload["config"])
    for key in ("noise_mode", "noise_mixture_p", "level_weighting"):
        del config["train"][key]
    for key in ("schedule_matrix", "uncertainty"):
        del config["diffusion"][key]
    payload["config"] = json.dumps(config)
    save_checkpoint(tmp_path / "checkpoint.pt", payload)
    cfg = _config(3, noise_mode="full_sequence", level_weighting="none")
    assert Trainer(cfg, episodes, tmp_path, {}).train().resumed_from == 2
    with pytest.raises(CheckpointError, match="train.noise_mode='full_sequence'"):
        Trainer(_config(4), episodes, tmp_path, {}).resume()


def test_mixture_p_is_checked(episodes: Episodes, tmp_path: Path) -> None:
    cfg = _config(2, noise_mode="mixture")
    cfg.train.noise_mixture_p = -0.1
    with pytest.raises(ValueError, match=r"train.noise_mixture_p must be in \[0, 1\], got -0.1"):
        Trainer(cfg, episodes, tmp_path, {})


# -- planning-time matrix ------------------------------------------------------------------
def test_planning_sampler_builds_the_configured_matrix(independent_run: Trainer, caplog: pytest.LogCaptureFixture,
                                                       tmp_path: Path, episodes: Episodes) -> None:
    model = load_trained_model(independent_run.checkpoint_path)
    _, default = planning_sampler(model, DiffusionConfig(n_timesteps=10, sampling_steps=5))
    assert torch.equal(default, full_sequence_matrix(10, 5, 16))
    with caplog.at_level(logging.WARNING, logger="diffplan.planning.planner"):
        _, pyramid = planning_sampler(model, DiffusionConfig(n_timesteps=10, sampling_steps=5,
                                                             schedule_matrix=ScheduleMatrixKind.pyramid,
                                                             uncertainty=2))
    assert not caplog.records  # trained with per-token levels: no warning
    assert torch.equal(pyramid, scheduling_matrix("pyramid", n_timesteps=10, sampling_steps=5, horizon=16,
                                                  uncertainty=2))
    # A full-sequence model planned with a per-token matrix: allowed, with a warning.
    Trainer(_config(1, noise_mode="full_sequence"), episodes, tmp_path, {}).train()
    full_model = load_trained_model(tmp_path / "checkpoint.pt")
    with caplog.at_level(logging.WARNING, logger="diffplan.planning.planner"):
        planning_sampler(full_model, DiffusionConfig(n_timesteps=10, sampling_steps=5,
                                                     schedule_matrix=ScheduleMatrixKind.trapezoid))
    assert "train.noise_mode=full_sequence" in caplog.text
