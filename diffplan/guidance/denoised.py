"""Guidance through the denoiser: the guide scores the denoiser's x0 estimate.

A guide evaluated on a noisy sample x_t sees noise; evaluated on the denoiser's estimate
x0_hat(x_t) and differentiated through the denoiser, its gradient says how every token of
x_t should move so that the *predicted clean trajectory* scores higher (Diffusion Forcing's
guidance, Chen et al. 2024, and reconstruction guidance in general). With a causal model the
estimate of a far token depends on the nearer ones, so a goal that only the far tokens can
reach still steers the near tokens. Tokens at level 0 (clean history, finished tokens) are
their own estimate. Use with ``apply_to = x_t``; Monte Carlo guidance wraps this guide to
average the gradient over re-noised futures.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffplan.diffusion.guide import Guide, GuideContext, GuideOutput
from diffplan.diffusion.sampler import Denoiser
from diffplan.diffusion.schedule import NoiseSchedule


class DenoisedGuide:
    """``guide`` evaluated at the denoiser's x0 estimate, differentiated through the denoiser.

    Args:
        guide: the objective on clean trajectories (called with levels 0).
        denoiser: (x_t, normalized levels) -> model output.
        schedule: the denoiser's noise schedule (turns its output into an x0 estimate).
        clip_denoised: clamp the estimate to [-clip, clip] (the sampler's clipping), or None.
    """

    def __init__(
        self, guide: Guide, denoiser: Denoiser, schedule: NoiseSchedule, clip_denoised: float | None = None
    ) -> None:
        self.guide = guide
        self.denoiser = denoiser
        self.schedule = schedule
        self.clip_denoised = clip_denoised

    def estimate(self, x: Tensor, levels: Tensor) -> Tensor:
        """The x0 estimate (B, H, D) of x at integer ``levels`` (B, H); differentiable in x."""
        integer = levels.long()
        x0 = self.schedule.pred_original_sample(x, self.denoiser(x, self.schedule.normalized_level(integer)), integer)
        if self.clip_denoised is not None:
            x0 = x0.clamp(-self.clip_denoised, self.clip_denoised)
        return torch.where((integer == 0).unsqueeze(-1), x, x0)

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
        """d guide(x0_hat(x)) / d x (B, H, D) and the objective (B,) at the estimate."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            x0 = self.estimate(x, levels)
            out = self.guide.gradient(x0, torch.zeros_like(levels), context)
            (grad,) = torch.autograd.grad(x0, x, grad_outputs=out.gradient)
        return GuideOutput(grad.detach(), out.value)

    @torch.no_grad()
    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        """The guide's objective (B,) at the x0 estimate."""
        return self.guide.objective(self.estimate(x, levels), torch.zeros_like(levels), context)
