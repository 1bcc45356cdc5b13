"""The denoising loss, with per-token noise levels and masked entries.

:func:`full_sequence_levels` (or :func:`diffplan.diffusion.levels.training_levels` for the
other noise modes) and :func:`noisy_input` are the forward-process half of a training step,
shared with the value function's training (:mod:`diffplan.training.value_trainer`) so both
see exactly what the sampler produces.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffplan.diffusion.levels import full_sequence_levels as full_sequence_levels  # re-exported
from diffplan.diffusion.levels import level_loss_weights
from diffplan.diffusion.sampler import Denoiser
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.enums import LevelWeighting


def noisy_input(
    schedule: NoiseSchedule,
    x0: Tensor,
    noise: Tensor,
    levels: Tensor,
    *,
    condition_mask: Tensor | None = None,
    clean_condition_tokens: bool = False,
) -> tuple[Tensor, Tensor]:
    """What the network sees in training: x_t (B, H, D) with the conditioned entries clean, and
    the integer levels (B, H) it is told (0 for conditioned tokens if ``clean_condition_tokens``).

    Args: as :func:`diffusion_loss`.
    """
    x_t = schedule.add_noise(x0, noise, levels)
    model_levels = levels
    if condition_mask is not None:
        condition_mask = condition_mask.expand_as(x0)
        x_t = torch.where(condition_mask, x0, x_t)
        if clean_condition_tokens:
            model_levels = levels.masked_fill(condition_mask.any(dim=-1), 0)
    return x_t, model_levels


def diffusion_loss(
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    x0: Tensor,
    levels: Tensor,
    noise: Tensor,
    *,
    condition_mask: Tensor | None = None,
    valid: Tensor | None = None,
    weights: Tensor | None = None,
    clean_condition_tokens: bool = False,
    level_weighting: LevelWeighting | str = LevelWeighting.none,
) -> Tensor:
    """Weighted mean squared error of the denoiser's prediction.

    ``sum(w_token * w_entry * error * keep) / sum(keep)``, where ``keep`` drops conditioned
    entries and invalid tokens, ``w_entry`` is ``weights`` (1 if None) and ``w_token`` the
    level weight of each token (:func:`diffplan.diffusion.levels.level_loss_weights`, 1 for
    ``none``); the denominator counts kept entries, so weights scale the loss, as in
    Min-SNR's weighted mean.

    Args:
        x0: clean normalized trajectories (B, H, D).
        levels: integer noise level per token (B, H), in [1, T].
        noise: standard Gaussian noise (B, H, D).
        condition_mask: bool (B, H, D) or (H, D): entries given to the model clean
            (inpainting); they are written into x_t and excluded from the loss.
        valid: bool (B, H): tokens that carry data (padding after a timeout does not).
        weights: per-entry loss weights broadcastable to (B, H, D) (e.g. first-action weight).
        clean_condition_tokens: feed level 0 to the denoiser for tokens with a given entry
            (the sampler must do the same).
        level_weighting: per-token weight by noise level (``none`` or ``min_snr``), from
            ``levels`` (the drawn levels, not the ones the denoiser is told).
    """
    x_t, model_levels = noisy_input(
        schedule, x0, noise, levels, condition_mask=condition_mask, clean_condition_tokens=clean_condition_tokens
    )
    keep = torch.ones_like(x0, dtype=torch.bool)
    if condition_mask is not None:
        keep = keep & ~condition_mask.expand_as(x0)
    if valid is not None:
        keep = keep & valid.unsqueeze(-1)
    output = denoiser(x_t, schedule.normalized_level(model_levels))
    error = (output - schedule.target(x0, noise, levels)) ** 2
    if weights is not None:
        error = error * weights
    token_weights = level_loss_weights(schedule, levels, level_weighting)
    if token_weights is not None:
        error = error * token_weights.unsqueeze(-1)
    keep_f = keep.to(error.dtype)
    return (error * keep_f).sum() / keep_f.sum().clamp(min=1.0)
