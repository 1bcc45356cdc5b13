"""Monte Carlo guidance (Diffusion Forcing, Chen et al. 2024, sec. 3.4).

Under a per-token scheduling matrix the tokens being denoised are followed by noisier future
tokens. A guide evaluated on the one noisy sample sees one arbitrary draw of that future;
Monte Carlo guidance averages the guide's gradient over ``n_samples`` independent draws of
the future, so the nearer tokens are steered by the expected objective over futures.

Exact choice made here (:class:`MonteCarloGuide`): at a guide call with sample x (B, H, D)
and normalized levels (B, H), a token is *future* if its level is above 0 and above the
smallest positive level of its sample (the tokens furthest along, and clean or inpainted
tokens at level 0, are held as they are). For each of the ``n_samples`` copies, every future
token k at integer level l_k is replaced by

    x_k' = sqrt(abar_{l_k}) x0_hat_k + sqrt(1 - abar_{l_k}) eps,   eps ~ N(0, I) fresh per copy,

a fresh draw of q(x_{l_k} | x0 = x0_hat), where x0_hat is the denoiser's x0 estimate from
(x, levels) (computed once per call, clipped if ``clip_denoised``). The guide's gradients
(B, H, D) and objectives (B,) on the copies are averaged; the gradient entries of future
tokens are taken at the copies' values (a straight-through estimate for those tokens).
With ``renoise = False`` the copies are x itself; with ``n_samples = 1`` and no re-noising
the wrapped guide's output is returned unchanged (plain guidance, bit for bit). With a
full-sequence matrix every positive level is equal, so no token is future and the average
is over identical gradients. With ``apply_to = x0`` the guide sees level 0 everywhere, so
nothing is re-noised either: Monte Carlo guidance is meant for ``apply_to = x_t``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from diffplan.diffusion.guide import Guidance, Guide, GuideContext, GuideOutput
from diffplan.diffusion.sampler import Denoiser
from diffplan.diffusion.schedule import NoiseSchedule


def future_tokens(levels: Tensor) -> Tensor:
    """(B, H) bool: tokens whose level is above 0 and above the smallest positive level of their row."""
    positive = levels > 0
    inf = torch.full_like(levels, torch.iinfo(torch.long).max if not levels.is_floating_point() else float("inf"))
    lowest = torch.where(positive, levels, inf).min(dim=1, keepdim=True).values
    return positive & (levels > lowest)


class MonteCarloGuide:
    """A guide whose gradient is averaged over re-noised draws of the future tokens.

    Args:
        guide: the wrapped guide.
        n_samples: copies per call, >= 1.
        denoiser: the model's denoiser (x_t, normalized levels) -> output, for the x0
            estimate; required when ``renoise``.
        schedule: the noise schedule of ``denoiser``; required when ``renoise``.
        renoise: replace future tokens by fresh draws (see the module docstring); False
            averages over copies of x itself.
        clip_denoised: clamp the x0 estimate to [-clip, clip] (as the sampler does).
        seed: seed of the guide's own random generator (the sampler's stream is untouched).
    """

    def __init__(
        self,
        guide: Guide,
        n_samples: int,
        *,
        denoiser: Denoiser | None = None,
        schedule: NoiseSchedule | None = None,
        renoise: bool = True,
        clip_denoised: float | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"guidance.mc_samples must be an integer >= 1, got {n_samples!r}")
        if renoise and (denoiser is None or schedule is None):
            raise ValueError("Monte Carlo guidance with re-noising needs the denoiser and its noise schedule")
        self.guide = guide
        self.n_samples = n_samples
        self.denoiser = denoiser
        self.schedule = schedule
        self.renoise = renoise
        self.clip_denoised = clip_denoised
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.seed)
            self._generators[device] = generator
        return self._generators[device]

    def samples(self, x: Tensor, levels: Tensor) -> list[Tensor]:
        """The ``n_samples`` copies of x (B, H, D) the gradient is averaged over (integer levels (B, H))."""
        if not self.renoise:
            return [x] * self.n_samples
        future = future_tokens(levels)
        if not bool(future.any()):
            return [x] * self.n_samples
        assert self.denoiser is not None and self.schedule is not None
        sched = self.schedule
        integer = levels.long()
        with torch.no_grad():
            x0 = sched.pred_original_sample(x, self.denoiser(x, sched.normalized_level(integer)), integer)
            if self.clip_denoised is not None:
                x0 = x0.clamp(-self.clip_denoised, self.clip_denoised)
        mean = sched.at_levels(sched.sqrt_alphas_cumprod, integer) * x0
        std = sched.at_levels(sched.sqrt_one_minus_alphas_cumprod, integer)
        mask = future.unsqueeze(-1).expand_as(x)
        generator = self._generator(x.device)
        copies = []
        for _ in range(self.n_samples):
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            copies.append(torch.where(mask, (mean + std * noise).to(x.dtype), x))
        return copies

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
        """The wrapped guide's gradient (B, H, D) and objective (B,), averaged over :meth:`samples`."""
        outputs = [self.guide.gradient(copy, levels, context) for copy in self.samples(x, levels)]
        if len(outputs) == 1:
            return outputs[0]
        gradient = torch.stack([out.gradient for out in outputs]).mean(dim=0)
        value = torch.stack([out.value for out in outputs]).mean(dim=0)
        return GuideOutput(gradient, value)

    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        """The wrapped guide's objective (B,) at x itself (for ranking finished candidates)."""
        return self.guide.objective(x, levels, context)


def wrap_monte_carlo(
    guidance: Guidance,
    n_samples: int,
    *,
    denoiser: Denoiser | None = None,
    schedule: NoiseSchedule | None = None,
    clip_denoised: float | None = None,
    seed: int = 0,
) -> Guidance:
    """``guidance`` with its guide wrapped in :class:`MonteCarloGuide` (``guidance.mc_samples``).

    ``n_samples = 1`` returns ``guidance`` itself (plain guidance); more need the denoiser and
    schedule for re-noising.
    """
    if n_samples == 1:
        return guidance
    guide = MonteCarloGuide(
        guidance.guide, n_samples, denoiser=denoiser, schedule=schedule, clip_denoised=clip_denoised, seed=seed
    )
    return replace(guidance, guide=guide)
