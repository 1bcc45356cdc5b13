"""Reverse-process sampling along a scheduling matrix, with per-token noise levels.

A scheduling matrix has shape (S + 1, H): row ``i`` holds the noise level of every token
after ``i`` sampling iterations; row 0 is where sampling starts and row S must be all zeros.
Full-sequence diffusion uses rows whose H entries are equal; :func:`scheduling_matrix` also
builds Diffusion Forcing's per-token matrices (autoregressive, pyramid, trapezoid), which
need a model trained with per-token levels (``train.noise_mode``). The sampler walks the rows,
calls the denoiser once per row, and applies one DDIM update per token from its level in
row ``i`` to its level in row ``i + 1`` (tokens whose level does not change are left as
they are). DDPM is the DDIM update with ``eta = 1`` over every integer level.

Inpainting constraints are written into the sample before the first call and after every
update, so constrained entries stay exact.

Optional guidance (:class:`diffplan.guidance.Guidance`, e.g. a value function's gradient)
moves the noisy sample before the denoiser call (``apply_to = x_t``, Diffuser) or the x0
estimate before the update (``apply_to = x0``), for the tokens being denoised in the row and
never for inpainted entries; without guidance the sampler is exactly the unguided one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffplan.acceleration import autocast
from diffplan.diffusion.guide import Guidance, GuidedRow, guidance_rule
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.enums import Precision, SamplerKind, ScheduleMatrixKind

#: A denoiser: (x_t (B, H, D), normalized noise level (B, H) in [0, 1]) -> output (B, H, D).
Denoiser = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Constraints:
    """Entries of the sample that are known (inpainting): held exactly at every step.

    Attributes:
        mask: bool (B, H, D), True where the value is given.
        values: (B, H, D), the clean (normalized) values; read only where ``mask``.
    """

    mask: Tensor
    values: Tensor

    def apply(self, x: Tensor) -> Tensor:
        """Overwrite the constrained entries of ``x`` (B, H, D)."""
        return torch.where(self.mask, self.values, x)

    @property
    def tokens(self) -> Tensor:
        """(B, H) bool: tokens with at least one given entry."""
        return self.mask.any(dim=-1)

    def repeat_interleave(self, repeats: int) -> Constraints:
        """Each of the B rows repeated ``repeats`` times (for K candidates per environment)."""
        return Constraints(
            self.mask.repeat_interleave(repeats, dim=0), self.values.repeat_interleave(repeats, dim=0)
        )


def full_sequence_matrix(n_timesteps: int, sampling_steps: int, horizon: int) -> Tensor:
    """Scheduling matrix (S + 1, H) where every token shares one level per row.

    Levels fall evenly from T to 0 in S rows (DDIM's uniform spacing); with S = T this is
    every integer level (DDPM).
    """
    if not 1 <= sampling_steps <= n_timesteps:
        raise ValueError(
            f"sampling_steps must be in [1, n_timesteps={n_timesteps}], got {sampling_steps}; "
            "lower diffusion.sampling_steps or raise diffusion.n_timesteps"
        )
    levels = torch.linspace(n_timesteps, 0, sampling_steps + 1, dtype=torch.float64).round().long()
    return levels.unsqueeze(1).expand(sampling_steps + 1, horizon).contiguous()


def scheduling_matrix(
    kind: ScheduleMatrixKind | str,
    *,
    n_timesteps: int,
    sampling_steps: int,
    horizon: int,
    uncertainty: float = 1,
) -> Tensor:
    """Scheduling matrix (rows, H) of integer levels by name: row 0 all T, last row all 0.

    Every token follows the same trajectory of levels as in :func:`full_sequence_matrix`
    (``sampling_steps`` evenly spaced levels from T to 0, so DDIM with fewer steps than
    levels works), delayed by ``offset_t`` rows: token t's level at row m is
    ``full_sequence_level[clamp(m - offset_t, 0, S)]``; the matrix has
    ``S + max(offset) + 1`` rows. Tokens not started yet stay at T, finished ones at 0, and
    the sampler leaves a token unchanged in a row where its level does not change.

    Kinds (Diffusion Forcing, Chen et al. 2024):

    - ``full_sequence``: offset 0 for every token; exactly :func:`full_sequence_matrix`.
    - ``pyramid``: ``offset_t = floor(uncertainty * t)``, each token starts ``uncertainty``
      rows after the previous one (a fraction: several tokens per row, as Diffusion Forcing's
      ``uncertainty_scale``), so nearer tokens are always at most as noisy as farther ones
      (S + floor(uncertainty (H - 1)) + 1 rows).
    - ``autoregressive``: the pyramid with ``uncertainty = S``: token t is denoised fully,
      in S rows, before token t + 1 starts (S H + 1 rows).
    - ``trapezoid``: the pyramid from both ends towards the middle,
      ``offset_t = floor(uncertainty * min(t, H - 1 - t))``: the first and last tokens are
      denoised first (useful when both ends are inpainted, start and goal).

    Args:
        kind: one of :class:`ScheduleMatrixKind`.
        n_timesteps: T.
        sampling_steps: S, rows per token, in [1, T].
        horizon: H, the number of tokens (columns), >= 1.
        uncertainty: rows between the starts of consecutive tokens (``pyramid``,
            ``trapezoid``), a number > 0 (below 1: several tokens start in the same row);
            ignored by the other kinds.

    Raises:
        ValueError: an unknown kind, a bad ``uncertainty`` or ``sampling_steps``, a horizon < 1.
    """
    try:
        kind = ScheduleMatrixKind(kind)
    except ValueError:
        allowed = ", ".join(k.value for k in ScheduleMatrixKind)
        raise ValueError(
            f"unknown scheduling matrix kind {kind!r}; set diffusion.schedule_matrix to one of {allowed}"
        ) from None
    if horizon < 1:
        raise ValueError(f"scheduling matrix {kind.value!r} needs a horizon >= 1, got {horizon}")
    if kind is ScheduleMatrixKind.full_sequence:
        return full_sequence_matrix(n_timesteps, sampling_steps, horizon)
    levels = full_sequence_matrix(n_timesteps, sampling_steps, 1)[:, 0]  # (S + 1,), validates the steps
    tokens = torch.arange(horizon)
    if kind is ScheduleMatrixKind.autoregressive:
        offsets = tokens * sampling_steps
    else:
        if (
            isinstance(uncertainty, bool)
            or not isinstance(uncertainty, (int, float))
            or not math.isfinite(uncertainty)
            or uncertainty <= 0
        ):
            raise ValueError(
                f"scheduling matrix {kind.value!r} needs an uncertainty > 0 (rows between the starts of "
                f"consecutive tokens), got {uncertainty!r}; set diffusion.uncertainty to e.g. 1 or 0.5, or use "
                "diffusion.schedule_matrix=full_sequence"
            )
        steps = tokens if kind is ScheduleMatrixKind.pyramid else torch.minimum(tokens, horizon - 1 - tokens)
        offsets = torch.floor(steps.double() * float(uncertainty) + 1e-9).long()
    rows = sampling_steps + int(offsets.max()) + 1
    index = (torch.arange(rows).unsqueeze(1) - offsets.unsqueeze(0)).clamp(0, sampling_steps)
    matrix = levels[index]
    validate_matrix(matrix, n_timesteps)
    return matrix


def validate_matrix(matrix: Tensor, n_timesteps: int) -> None:
    """Check a scheduling matrix: integer levels in [0, T], non-increasing per token, ends at 0."""
    if matrix.dim() != 2 or matrix.shape[0] < 2:
        raise ValueError(f"scheduling matrix must have shape (S + 1, H) with S >= 1, got {tuple(matrix.shape)}")
    if matrix.min() < 0 or matrix.max() > n_timesteps:
        raise ValueError(
            f"scheduling matrix levels must lie in [0, {n_timesteps}], "
            f"got min {int(matrix.min())} max {int(matrix.max())}"
        )
    if (matrix[1:] > matrix[:-1]).any():
        row = int((matrix[1:] > matrix[:-1]).any(dim=1).nonzero()[0]) + 1
        raise ValueError(f"scheduling matrix must be non-increasing per token; row {row} raises a level")
    if (matrix[-1] != 0).any():
        raise ValueError("scheduling matrix must end with a row of zeros (clean tokens)")


class Sampler:
    """DDIM/DDPM updates for per-token noise levels.

    Args:
        schedule: the noise schedule the denoiser was trained with.
        eta: DDIM stochasticity: 0 is deterministic DDIM, 1 with unit steps is DDPM
            (Song et al. 2021, eq. 16).
        clip_denoised: if set, clamp the x0 estimate to [-clip, clip] before each update
            (useful with the limits normalizer, whose data lie in [-1, 1]).
        clean_condition_tokens: tell the denoiser that constrained tokens are clean (level 0
            in its input); must match how the model was trained.
        precision: of the network calls (denoiser, guides): ``bfloat16`` runs them under
            autocast (:func:`diffplan.acceleration.autocast`); their outputs are cast back to
            float32, so the sample and every update stay float32.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        *,
        eta: float = 0.0,
        clip_denoised: float | None = None,
        clean_condition_tokens: bool = False,
        precision: Precision | str = Precision.float32,
    ):
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.schedule = schedule
        self.eta = float(eta)
        self.clip_denoised = clip_denoised
        self.clean_condition_tokens = clean_condition_tokens
        self.precision = Precision(precision)

    def step(
        self,
        x_t: Tensor,
        model_output: Tensor,
        level_from: Tensor,
        level_to: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One reverse update per token from ``level_from`` to ``level_to`` (both (B, H)).

        Returns (x at level_to (B, H, D), the x0 estimate (B, H, D)).
        """
        return self.update(x_t, self.estimate_x0(x_t, model_output, level_from), level_from, level_to, generator)

    def estimate_x0(self, x_t: Tensor, model_output: Tensor, level_from: Tensor) -> Tensor:
        """The x0 estimate (B, H, D) from the denoiser's output, clipped if ``clip_denoised``."""
        x0 = self.schedule.pred_original_sample(x_t, model_output, level_from)
        if self.clip_denoised is not None:
            x0 = x0.clamp(-self.clip_denoised, self.clip_denoised)
        return x0

    def posterior_variance(self, level_from: Tensor, level_to: Tensor) -> Tensor:
        """Variance (B, H, 1) of q(x at level_to | x at level_from, x0) per token.

        ``(1 - abar_to) / (1 - abar_from) * (1 - abar_from / abar_to)``: DDPM's posterior
        variance for unit steps (Ho et al. 2020, eq. 7), the squared sigma of DDIM with
        ``eta = 1`` in general (Song et al. 2021, eq. 16); zero where a token lands on level 0.
        """
        sched = self.schedule
        abar_from = sched.at_levels(sched.alphas_cumprod, level_from)
        abar_to = sched.at_levels(sched.alphas_cumprod, level_to)
        return (1 - abar_to) / (1 - abar_from).clamp(min=1e-12) * (1 - abar_from / abar_to)

    def update(
        self,
        x_t: Tensor,
        x0: Tensor,
        level_from: Tensor,
        level_to: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The reverse update of :meth:`step` from a given x0 estimate (B, H, D), used as is.

        Returns (x at level_to (B, H, D), ``x0``).
        """
        sched = self.schedule
        eps = sched.pred_noise(x_t, x0, level_from)
        abar_to = sched.at_levels(sched.alphas_cumprod, level_to)
        # sigma of DDIM (Song et al. 2021, eq. 16); zero where the token lands on level 0.
        variance = self.posterior_variance(level_from, level_to)
        sigma = self.eta * variance.clamp(min=0).sqrt()
        direction = (1 - abar_to - sigma**2).clamp(min=0).sqrt() * eps
        x_next = abar_to.sqrt() * x0 + direction
        if self.eta > 0:
            noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
            x_next = x_next + sigma * noise
        unchanged = (level_to == level_from).unsqueeze(-1)
        return torch.where(unchanged, x_t, x_next), x0

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        shape: tuple[int, int, int],
        matrix: Tensor,
        *,
        constraints: Constraints | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        x_init: Tensor | None = None,
        guidance: Guidance | None = None,
    ) -> Tensor:
        """Draw samples (B, H, D) by walking the rows of ``matrix`` (S + 1, H).

        Args:
            denoiser: called once per row with (x_t, normalized levels).
            shape: (B, H, D).
            matrix: scheduling matrix; row 0 is the starting level of each token.
            constraints: inpainted entries, held exact after every update.
            generator: source of all randomness (initial noise and DDPM noise).
            x_init: start from this tensor instead of Gaussian noise (warm starts).
            guidance: a guide and its settings (see :meth:`guided_step`); None samples
                unguided. Guidance draws no random numbers, so the generator's stream is
                the same with and without it.
        """
        validate_matrix(matrix, self.schedule.n_timesteps)
        batch, horizon, _ = shape
        if matrix.shape[1] != horizon:
            raise ValueError(f"scheduling matrix has {matrix.shape[1]} columns but the horizon is {horizon}")
        matrix = matrix.to(device)
        x = torch.randn(shape, generator=generator, device=device) if x_init is None else x_init.to(device)
        if constraints is not None:
            x = constraints.apply(x)
        if self.precision is not Precision.float32:
            denoiser = _float32_outputs(denoiser)
        with autocast(self.precision, device):
            return self._walk(denoiser, x, matrix, constraints, generator, guidance)

    def _walk(
        self,
        denoiser: Denoiser,
        x: Tensor,
        matrix: Tensor,
        constraints: Constraints | None,
        generator: torch.Generator | None,
        guidance: Guidance | None,
    ) -> Tensor:
        """The loop of :meth:`sample` over the rows of ``matrix``, from the initial sample ``x``."""
        batch, horizon, _ = x.shape
        for row in range(matrix.shape[0] - 1):
            level_from = matrix[row].expand(batch, horizon)
            level_to = matrix[row + 1].expand(batch, horizon)
            model_level = level_from
            if constraints is not None and self.clean_condition_tokens:
                model_level = level_from.masked_fill(constraints.tokens, 0)
            if guidance is None:
                output = denoiser(x, self.schedule.normalized_level(model_level))
                x, _ = self.step(x, output, level_from, level_to, generator)
            else:
                x = self.guided_step(
                    denoiser, x, level_from, level_to, model_level, guidance, constraints, generator
                )
            if constraints is not None:
                x = constraints.apply(x)
        return x


    def guided_step(
        self,
        denoiser: Denoiser,
        x: Tensor,
        level_from: Tensor,
        level_to: Tensor,
        model_level: Tensor,
        guidance: Guidance,
        constraints: Constraints | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One row of guided sampling: x (B, H, D) from ``level_from`` to ``level_to`` (both (B, H)).

        ``guidance.n_guide_steps`` times, the guided tensor moves by ``scale * g``, where g is
        the guide's gradient, times the step's :meth:`posterior_variance` if
        ``scale_grad_by_std``, times the schedule's per-token coefficient
        (:meth:`Guidance.coefficient`, none for ``constant``), and zero for inpainted entries,
        for tokens whose level does not change in this row, for tokens at level
        ``<= t_stopgrad``, for tokens whose coefficient is 0 and, with a per-sample scale
        (B,) (:attr:`Guidance.scale` as a tensor, broadcast as (B, 1, 1)), for samples whose
        scale is 0: those samples follow exactly the unguided updates.

        The rule named by ``guidance.apply_to`` takes the row (:mod:`diffplan.diffusion.guide`):
        ``x_t`` (Diffuser) moves the noisy sample at ``model_level`` (what the denoiser sees),
        then denoises the moved sample; ``x0`` moves the denoiser's x0 estimate (inpainted
        entries written in) at level 0 and updates with it (clipped again if ``clip_denoised``).
        """
        normalized = self.schedule.normalized_level(model_level)
        free = ((level_from > guidance.t_stopgrad) & (level_to != level_from)).unsqueeze(-1).expand_as(x)
        if constraints is not None:
            free = free & ~constraints.mask
        coefficient = guidance.coefficient(level_from, level_to, self.schedule.n_timesteps)
        if coefficient is not None:
            free = free & (coefficient != 0)
        sample_scale = guidance.sample_scale(x)
        if sample_scale is not None:
            free = free & (sample_scale != 0).view(-1, 1, 1)
        variance = self.posterior_variance(level_from, level_to) if guidance.scale_grad_by_std else None
        if coefficient is not None:
            variance = coefficient if variance is None else variance * coefficient
        row = GuidedRow(denoiser, x, level_from, level_to, model_level, normalized, free, bool(free.any()), variance,
                        sample_scale, constraints, generator, guidance.context_for(self.schedule.n_timesteps))
        return guidance_rule(guidance.apply_to)(self, guidance, row)


def _float32_outputs(denoiser: Denoiser) -> Denoiser:
    """``denoiser`` with its (autocast, lower-precision) output cast to float32."""

    def call(x_t: Tensor, levels: Tensor) -> Tensor:
        return denoiser(x_t, levels).float()

    return call


def history_matrix(
    kind: ScheduleMatrixKind | str,
    n_history: int,
    *,
    n_timesteps: int,
    sampling_steps: int,
    horizon: int,
    uncertainty: float = 1,
    group: int = 1,
) -> Tensor:
    """Scheduling matrix (rows, ``horizon``) for a window whose first ``n_history`` tokens are clean.

    The first ``n_history`` columns are 0 in every row (history: level 0 throughout, never
    updated); the remaining ``horizon - n_history`` columns are
    :func:`scheduling_matrix` of ``kind`` over that many tokens
    (so the pyramid starts at the first token after the history). With ``group = k > 1``
    (a transformer stacking k timesteps per token, ``model.transformer.frame_stack``) the matrix is built
    over groups of k timesteps and each group's column is repeated k times: the timesteps of
    one token share their level, and a pyramid steps once per token, not once per timestep.

    Raises:
        ValueError: ``n_history`` outside [0, horizon - 1] (at least one token must be
            generated), ``horizon`` or ``n_history`` not a multiple of ``group``, or what
            :func:`scheduling_matrix` raises.
    """
    if not 0 <= n_history < horizon:
        raise ValueError(f"n_history must be in [0, horizon - 1 = {horizon - 1}], got {n_history}")
    if group < 1 or horizon % group or n_history % group:
        raise ValueError(
            f"the horizon ({horizon}) and the history length ({n_history}) must be multiples of the "
            f"timesteps per token (model.transformer.frame_stack = {group})"
        )
    future = scheduling_matrix(
        kind, n_timesteps=n_timesteps, sampling_steps=sampling_steps, horizon=(horizon - n_history) // group,
        uncertainty=uncertainty,
    ).repeat_interleave(group, dim=1)
    history = future.new_zeros(future.shape[0], n_history)
    return torch.cat([history, future], dim=1)


def check_clip(normalizer_kind: str, clip_denoised: float | None) -> None:
    """Clipping x0 to [-c, c] only makes sense for data normalized into a box (limits)."""
    if clip_denoised is not None and normalizer_kind != "limits":
        raise ValueError(
            f"diffusion.clip_denoised={clip_denoised} clips x0 estimates, but the {normalizer_kind!r} normalizer does "
            "not bound the data; set diffusion.clip_denoised=null or diffusion.normalizer=limits"
        )


def make_sampler(
    schedule: NoiseSchedule,
    kind: SamplerKind | str,
    *,
    sampling_steps: int,
    horizon: int,
    eta: float = 0.0,
    clip_denoised: float | None = None,
    clean_condition_tokens: bool = False,
    matrix: ScheduleMatrixKind | str = ScheduleMatrixKind.full_sequence,
    uncertainty: float = 1,
    precision: Precision | str = Precision.float32,
) -> tuple[Sampler, Tensor]:
    """A sampler and its scheduling matrix (:func:`scheduling_matrix` of kind ``matrix``, by
    default full-sequence) over ``sampling_steps`` evenly spaced levels per token.

    DDPM is ancestral sampling, the DDIM update with ``eta = 1`` (``eta`` is ignored); with
    ``sampling_steps = T`` it visits every level (Ho et al. 2020). DDIM uses the given ``eta``.
    """
    if SamplerKind(kind) is SamplerKind.ddpm:
        eta = 1.0
    sampler = Sampler(
        schedule, eta=eta, clip_denoised=clip_denoised, clean_condition_tokens=clean_condition_tokens,
        precision=precision,
    )
    return sampler, scheduling_matrix(
        matrix,
        n_timesteps=schedule.n_timesteps,
        sampling_steps=sampling_steps,
        horizon=horizon,
        uncertainty=uncertainty,
    )
