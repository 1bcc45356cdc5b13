"""Classifier-free guidance (Ho & Salimans 2022) for return-conditioned denoisers.

A network trained with its condition randomly replaced by a null condition predicts both
``cond = f(x_t, k, c)`` and ``uncond = f(x_t, k, null)``. Guidance combines them as

    out = uncond + w * (cond - uncond)

``w = 0`` is the unconditional prediction, ``w = 1`` the conditional one, ``w > 1``
(Decision Diffuser uses 1.2) pushes samples further towards the condition.

The combination is valid for every prediction type. For a fixed ``x_t`` and level, the
epsilon, x0 and v predictions are affine functions of one another
(``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``, ``v = sqrt(abar) eps - sqrt(1 - abar) x0``)
with coefficients that do not depend on the condition, and an affine map commutes with
the weighted combination: guiding the x0 (or v) outputs gives exactly the x0 (or v) of the
guided epsilon. So the sampler may convert the guided output as it converts any output.

Classifier-free guidance is a model input with dropout, not a gradient guide: it is a
:data:`~diffplan.diffusion.sampler.Denoiser` wrapper and the sampler needs no change.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffplan.diffusion.schedule import NoiseSchedule


class ClassifierFreeGuidance:
    """A denoiser ``(x_t, levels) -> output`` that guides ``model`` towards ``condition``.

    Each call runs the network once on a doubled batch: the B conditional rows, then the
    same B rows with the null condition.

    Args:
        model: a network called as ``model(x, levels, condition, drop)`` (a
            :class:`~diffplan.models.unet.TemporalUnet` built with ``return_condition``).
        condition: (B,) the normalized condition of every sample (e.g. the target return).
        weight: w, the guidance weight: a float, or a per-sample tensor (B,) (guidance sweeps
            evaluate several weights in one batch); per sample the result is bit-identical
            to the float weight's.
    """

    def __init__(self, model: nn.Module, condition: Tensor, weight: float | Tensor) -> None:
        if condition.dim() != 1:
            raise ValueError(f"condition must have shape (B,), got {tuple(condition.shape)}")
        self.model = model
        self.condition = condition
        self.weight: float | Tensor
        if isinstance(weight, Tensor):
            if weight.shape != condition.shape:
                raise ValueError(
                    f"a per-sample guidance weight must have the condition's shape {tuple(condition.shape)}, "
                    f"got {tuple(weight.shape)}"
                )
            self.weight = weight.float()
        else:
            self.weight = float(weight)

    def __call__(self, x: Tensor, levels: Tensor) -> Tensor:
        """x (B, H, D), levels (B, H) in [0, 1] -> guided output (B, H, D)."""
        batch = x.shape[0]
        if self.condition.shape[0] != batch:
            raise ValueError(f"condition has {self.condition.shape[0]} entries but the batch has {batch}")
        condition = self.condition.to(x.device, x.dtype)
        drop = torch.zeros(2 * batch, dtype=torch.bool, device=x.device)
        drop[batch:] = True
        output = self.model(
            torch.cat([x, x]), torch.cat([levels, levels]), torch.cat([condition, condition]), drop
        )
        cond, uncond = output[:batch], output[batch:]
        # lerp(uncond, cond, w) = uncond + w (cond - uncond); exact at w = 0 and w = 1.
        if isinstance(self.weight, Tensor):
            return torch.lerp(uncond, cond, self.weight.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1))))
        return torch.lerp(uncond, cond, self.weight)


class HistoryGuidance:
    """Classifier-free guidance on clean history (Diffusion Forcing's history guidance): a denoiser
    ``(x_t, levels) -> output`` that runs ``model`` once with the window's first ``n_history`` tokens
    as given (clean history) and once with them dropped (noised to the schedule's last level with the
    fixed ``noise``, at level 1), and returns ``uncond + w (cond - uncond)``. ``w = 1`` is the
    history-conditioned prediction (exactly); ``w > 1`` pushes the plan towards consistency with the
    history. The model should have been trained with history dropped at a rate
    (``train.history_dropout``), so that it knows the dropped case.

    Args:
        model: a denoiser called as ``model(x, levels)`` with normalized levels (B, H).
        n_history: the history tokens at the start of every window, >= 1.
        weight: w.
        schedule: the model's noise schedule.
        noise: (B, n_history, D) the noise the dropped history is drawn with (fixed over the rows).
    """

    def __init__(self, model: Callable[[Tensor, Tensor], Tensor], n_history: int, weight: float,
                 schedule: NoiseSchedule, noise: Tensor) -> None:
        if n_history < 1:
            raise ValueError(f"history guidance needs history tokens, got n_history={n_history}")
        if noise.shape[1] != n_history:
            raise ValueError(f"noise must cover the {n_history} history tokens, got shape {tuple(noise.shape)}")
        self.model, self.n_history, self.weight = model, n_history, float(weight)
        self.schedule, self.noise = schedule, noise

    def __call__(self, x: Tensor, levels: Tensor) -> Tensor:
        """x (B, H, D), levels (B, H) in [0, 1] -> guided output (B, H, D)."""
        batch, h = x.shape[0], self.n_history
        if self.noise.shape[0] != batch:
            raise ValueError(f"noise covers {self.noise.shape[0]} samples but the batch has {batch}")
        last = torch.full((batch, h), self.schedule.n_timesteps, dtype=torch.long, device=x.device)
        dropped, dropped_levels = x.clone(), levels.clone()
        dropped[:, :h] = self.schedule.add_noise(x[:, :h], self.noise.to(x.device, x.dtype), last)
        dropped_levels[:, :h] = 1.0
        output = self.model(torch.cat([x, dropped]), torch.cat([levels, dropped_levels]))
        cond, uncond = output[:batch], output[batch:]
        return torch.lerp(uncond, cond, self.weight)
