"""Warm starts: begin sampling from the previous plan instead of pure noise.

In receding-horizon control consecutive plans overlap: after executing ``shift`` steps of a
plan, its remaining tokens are a good guess for the next one. The previous plan is shifted
left by ``shift`` tokens (its last token repeated at the end), re-noised to a moderate level
with the forward process, and denoised from there in a few steps, which costs a fraction
of a cold start from level T.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffplan.diffusion.sampler import full_sequence_matrix
from diffplan.diffusion.schedule import NoiseSchedule


def shift_plan(plan: Tensor, shift: int) -> Tensor:
    """Drop the first ``shift`` tokens of ``plan`` (B, H, D) and repeat the last token at the end.

    A shift of H or more gives the last token repeated H times.
    """
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    horizon = plan.shape[1]
    shift = min(shift, horizon)
    if shift == 0:
        return plan.clone()
    tail = plan[:, -1:].expand(-1, shift, -1)
    return torch.cat([plan[:, shift:], tail], dim=1)


def warm_start(
    previous: Tensor,
    *,
    shift: int,
    schedule: NoiseSchedule,
    level: int,
    steps: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Start tensor and scheduling matrix for sampling from a shifted, re-noised previous plan.

    Args:
        previous: (B, H, D) the previous normalized plans.
        shift: tokens to drop from the front (the steps executed since planning).
        schedule: the noise schedule of the model.
        level: re-noise level k in [0, T]; the shifted plan is drawn from q(x_k | x_0).
        steps: sampling steps from k to 0, in [1, k] (for k = 0: one step that keeps the plan).
        generator: source of the re-noising noise (nothing is drawn when ``level`` is 0).

    Returns:
        (x_init (B, H, D) at level k, full-sequence matrix (steps + 1, H) from k down to 0).
        With ``level = 0``, x_init is exactly the shifted plan and the matrix is two rows of
        zeros (the sampler then leaves x_init unchanged apart from inpainting).

    Raises:
        ValueError: level outside [0, T] or steps outside [1, max(level, 1)].
    """
    n_timesteps = schedule.n_timesteps
    if not 0 <= level <= n_timesteps:
        raise ValueError(
            f"warm start level must be in [0, n_timesteps={n_timesteps}], got {level}; fix planner.warm_start.level"
        )
    if not 1 <= steps <= max(level, 1):
        raise ValueError(
            f"warm start steps must be in [1, {max(level, 1)}] (at most one per level), got {steps}; "
            "fix planner.warm_start.steps"
        )
    batch, horizon, _ = previous.shape
    shifted = shift_plan(previous, shift)
    if level == 0:
        return shifted, torch.zeros(2, horizon, dtype=torch.long)
    draw_on = generator.device if generator is not None else shifted.device
    noise = torch.randn(shifted.shape, generator=generator, dtype=shifted.dtype, device=draw_on).to(shifted.device)
    levels = torch.full((batch, horizon), level, dtype=torch.long, device=shifted.device)
    return schedule.add_noise(shifted, noise, levels), full_sequence_matrix(level, steps, horizon)
