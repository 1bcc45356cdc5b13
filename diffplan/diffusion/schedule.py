"""Noise schedules and the forward process, for a noise level per token.

Convention: an integer noise level ``k`` in ``[0, T]`` per token, where ``k = 0`` is a clean
token (``alphas_cumprod[0] = 1``) and ``k = T`` is (almost) pure noise. Levels have shape
(B, H) everywhere; full-sequence diffusion is the case where all H levels are equal.

The schedule owns the math and no network (the denoiser owns no schedule). Values are
computed in float64 and stored as float32 buffers so they follow ``.to(device)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from diffplan.enums import PredictionType, ScheduleKind


def cosine_alphas_cumprod(n_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cumulative alphas of the cosine schedule (Nichol & Dhariwal 2021, eq. 17), float64.

    Returns a tensor of length T + 1 with ``alphas_cumprod[0] = 1``. Betas are clipped at
    ``max_beta`` so the last step stays invertible.
    """
    steps = torch.arange(n_timesteps + 1, dtype=torch.float64) / n_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=max_beta)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, dim=0)])


def linear_alphas_cumprod(
    n_timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2
) -> torch.Tensor:
    """Cumulative alphas of the linear schedule (Ho et al. 2020), float64, length T + 1.

    The endpoints are given for T = 1000 and rescaled by ``1000 / T`` (Nichol & Dhariwal
    2021) so short chains still end near pure noise.
    """
    scale = 1000.0 / n_timesteps
    betas = torch.linspace(beta_start * scale, min(beta_end * scale, 0.999), n_timesteps, dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, dim=0)])


class NoiseSchedule(nn.Module):
    """Forward-process quantities for integer noise levels 0..T, and prediction conversions.

    Args:
        n_timesteps: T, the number of diffusion steps of training.
        kind: beta schedule.
        prediction: what the denoiser outputs; every conversion goes through this object.
    """

    alphas_cumprod: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor

    def __init__(
        self,
        n_timesteps: int,
        *,
        kind: ScheduleKind | str = ScheduleKind.cosine,
        prediction: PredictionType | str = PredictionType.epsilon,
    ) -> None:
        super().__init__()
        if n_timesteps < 1:
            raise ValueError(f"n_timesteps must be >= 1, got {n_timesteps}")
        self.n_timesteps = int(n_timesteps)
        self.kind = ScheduleKind(kind)
        self.prediction = PredictionType(prediction)
        if self.kind is ScheduleKind.cosine:
            alphas_cumprod = cosine_alphas_cumprod(n_timesteps)
        else:
            alphas_cumprod = linear_alphas_cumprod(n_timesteps)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())
        self.register_buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt().float())
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1 - alphas_cumprod).sqrt().float())

    # -- helpers -------------------------------------------------------------------------
    def at_levels(self, table: Tensor, levels: Tensor) -> Tensor:
        """Look up ``table`` at integer levels (B, H) -> (B, H, 1), ready to broadcast over D."""
        return table[levels.long()].unsqueeze(-1)

    def normalized_level(self, levels: Tensor) -> Tensor:
        """Levels (B, H) as floats in [0, 1], the denoiser's conditioning input."""
        return levels.float() / self.n_timesteps

    # -- forward process -----------------------------------------------------------------
    def add_noise(self, x0: Tensor, noise: Tensor, levels: Tensor) -> Tensor:
        """q(x_k | x_0) = N(sqrt(abar_k) x_0, (1 - abar_k) I) (Ho et al. eq. 4); per token.

        Shapes: x0, noise (B, H, D); levels (B, H) integers.
        """
        return self.at_levels(self.sqrt_alphas_cumprod, levels) * x0 + self.at_levels(
            self.sqrt_one_minus_alphas_cumprod, levels
        ) * noise

    # -- prediction-type conversions -----------------------------------------------------
    def velocity(self, x0: Tensor, noise: Tensor, levels: Tensor) -> Tensor:
        """v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, sec. 4)."""
        return self.at_levels(self.sqrt_alphas_cumprod, levels) * noise - self.at_levels(
            self.sqrt_one_minus_alphas_cumprod, levels
        ) * x0

    def target(self, x0: Tensor, noise: Tensor, levels: Tensor) -> Tensor:
        """The regression target of the configured prediction type."""
        if self.prediction is PredictionType.epsilon:
            return noise
        if self.prediction is PredictionType.x0:
            return x0
        return self.velocity(x0, noise, levels)

    def pred_original_sample(self, x_t: Tensor, model_output: Tensor, levels: Tensor) -> Tensor:
        """The denoiser's estimate of x0 from its output, whatever it predicts."""
        sqrt_abar = self.at_levels(self.sqrt_alphas_cumprod, levels)
        sqrt_one_minus = self.at_levels(self.sqrt_one_minus_alphas_cumprod, levels)
        if self.prediction is PredictionType.epsilon:
            # x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)
            return (x_t - sqrt_one_minus * model_output) / sqrt_abar
        if self.prediction is PredictionType.x0:
            return model_output
        # x0 = sqrt(abar) x_t - sqrt(1 - abar) v
        return sqrt_abar * x_t - sqrt_one_minus * model_output

    def pred_noise(self, x_t: Tensor, x0: Tensor, levels: Tensor) -> Tensor:
        """The noise implied by x_t and an x0 estimate: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar).

        At level 0 the noise is undefined; the denominator is floored so the result stays
        finite (samplers never use it there).
        """
        sqrt_abar = self.at_levels(self.sqrt_alphas_cumprod, levels)
        sqrt_one_minus = self.at_levels(self.sqrt_one_minus_alphas_cumprod, levels).clamp(min=1e-8)
        return (x_t - sqrt_abar * x0) / sqrt_one_minus
