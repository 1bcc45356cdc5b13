"""Training noise levels per token, and per-token loss weights by level.

Noise modes (``train.noise_mode``), all integer levels (B, H) in ``[low, T]``:

- ``full_sequence``: one level per window, shared by its H tokens (full-sequence
  diffusion, Janner et al. 2022); what the sampler's full-sequence matrix denoises.
- ``independent``: an independent uniform level per token (Diffusion Forcing, Chen et al.
  2024), so the denoiser learns every mix of noise levels along the window, which
  per-token scheduling matrices (pyramid, autoregressive, trapezoid) need at sampling time.
- ``mixture``: per window, ``independent`` with probability p, else ``full_sequence``.
- ``schedule``: schedule-matched levels (:func:`planner_level_patterns`): per window, a
  clean-history length the forcing planner keeps and a row of the scheduling matrix it walks
  after that history, so a small model learns exactly the level patterns it will be asked for
  instead of every pattern; optionally a fraction of independent windows. Tokens at level 0
  (the history, finished tokens) are given clean and left out of the loss.

Level weighting (``train.level_weighting``) multiplies each token's squared error by a
weight of its level: ``none``, or ``min_snr``, Min-SNR-gamma with gamma = 5 (Hang et al.
2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"): the loss expressed on
x0 is weighted by ``min(SNR_k, 5)`` with ``SNR_k = abar_k / (1 - abar_k)``; for the other
prediction types the same weighting becomes ``min(SNR, 5) / SNR`` (epsilon) and
``min(SNR, 5) / (SNR + 1)`` (v), since their squared errors are SNR and SNR + 1 times the
x0 error.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffplan.diffusion.sampler import history_matrix
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.enums import LevelWeighting, NoiseMode, PredictionType

#: gamma of Min-SNR-gamma weighting (the paper's recommended value).
MIN_SNR_GAMMA = 5.0


def full_sequence_levels(
    size: int, horizon: int, n_timesteps: int, generator: torch.Generator, *, low: int = 1
) -> Tensor:
    """Integer levels (size, horizon): one level per window, uniform in [low, T], shared by its tokens.

    Full-sequence diffusion; draws ``size`` integers from ``generator`` (on the CPU).
    """
    levels = torch.randint(low, n_timesteps + 1, (size, 1), generator=generator)
    return levels.expand(size, horizon)


def independent_levels(
    size: int, horizon: int, n_timesteps: int, generator: torch.Generator, *, low: int = 1
) -> Tensor:
    """Integer levels (size, horizon): an independent uniform level in [low, T] per token.

    Diffusion Forcing's training noise; draws ``size * horizon`` integers from ``generator``.
    """
    return torch.randint(low, n_timesteps + 1, (size, horizon), generator=generator)


def default_history(horizon: int, execute: int, group: int = 1) -> int:
    """The forcing planner's history length when ``planner.forcing.n_history`` is null: the most tokens that
    still leave room for the executed ones and the next state (``horizon - 1 - execute``), rounded
    down to whole tokens of ``group`` timesteps (``model.transformer.frame_stack``)."""
    return (horizon - 1 - execute) // group * group


def resolve_history(horizon: int, execute: int, n_history: int | None, group: int = 1) -> int:
    """The forcing planner's history length: ``n_history``, or :func:`default_history` when None,
    checked against a window of ``horizon`` timesteps in tokens of ``group`` timesteps.

    Raises:
        ValueError: ``execute < 1``; a history that leaves no room for the executed tokens and the
            next state; lengths that are not whole tokens.
    """
    if execute < 1:
        raise ValueError(f"planner.forcing.execute must be >= 1, got {execute}")
    if n_history is None:
        n_history = default_history(horizon, execute, group)
    if n_history < 0 or n_history + execute > horizon - 1:
        raise ValueError(
            f"need planner.forcing.n_history >= 0 and planner.forcing.n_history + planner.forcing.execute <= "
            f"horizon - 1 = {horizon - 1} "
            f"(the window must hold the history, the executed tokens and the next state), got "
            f"n_history={n_history}, execute={execute}"
        )
    if execute % group or n_history % group:
        raise ValueError(
            f"with model.transformer.frame_stack={group}, planner.forcing.execute ({execute}) and "
            f"planner.forcing.n_history ({n_history}) "
            f"must be multiples of {group}"
        )
    return n_history


def planner_history_lengths(n_history: int, execute: int) -> list[int]:
    """The clean-history lengths a forcing planner keeping at most ``n_history`` tokens and executing
    ``execute`` per plan uses over an episode: 0, execute, 2 execute, ..., capped at ``n_history``."""
    if execute < 1 or n_history < 0:
        raise ValueError(f"need execute >= 1 and n_history >= 0, got execute={execute}, n_history={n_history}")
    return sorted({min(k * execute, n_history) for k in range(n_history // execute + 2)})


def planner_level_patterns(
    kind: str, *, n_timesteps: int, sampling_steps: int, horizon: int, uncertainty: float,
    history_lengths: list[int], group: int = 1,
) -> list[Tensor]:
    """The level patterns the forcing planner's sampler asks the denoiser for: for each history
    length, the rows (but the last, all clean) of its :func:`~diffplan.diffusion.sampler.history_matrix`;
    one (rows, H) tensor per history length."""
    return [history_matrix(kind, h, n_timesteps=n_timesteps, sampling_steps=sampling_steps, horizon=horizon,
                           uncertainty=uncertainty, group=group)[:-1] for h in history_lengths]


def schedule_levels(
    size: int, patterns: list[Tensor], generator: torch.Generator, *, n_timesteps: int,
    independent_p: float = 0.0,
) -> Tensor:
    """Integer levels (size, H): per window, a history length uniformly, then a row of its matrix
    uniformly (:func:`planner_level_patterns`); with probability ``independent_p`` an independent
    level per token instead (see :func:`schedule_levels_and_history` for the draws)."""
    return schedule_levels_and_history(size, patterns, list(range(len(patterns))), generator,
                                       n_timesteps=n_timesteps, independent_p=independent_p)[0]


def schedule_levels_and_history(
    size: int, patterns: list[Tensor], history_lengths: list[int], generator: torch.Generator, *,
    n_timesteps: int, independent_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """:func:`schedule_levels`, and the history length of each window (size,): the index of the
    token that holds the current state (0 for an independent window). ``history_lengths`` are
    those of ``patterns``, in order.

    Draws ``size`` history indices, ``size`` uniforms for the rows, and with ``independent_p > 0``
    B x H independent levels and ``size`` uniforms.
    """
    which = torch.randint(len(patterns), (size,), generator=generator)
    where = torch.rand(size, generator=generator)
    rows = [patterns[int(i)][min(int(u * patterns[int(i)].shape[0]), patterns[int(i)].shape[0] - 1)]
            for i, u in zip(which, where, strict=True)]
    levels = torch.stack(rows)
    pick = torch.zeros(size, dtype=torch.bool)
    if independent_p > 0:
        check_mixture_p(independent_p)
        independent = independent_levels(size, levels.shape[1], n_timesteps, generator)
        pick = torch.rand(size, generator=generator) < independent_p
        levels = torch.where(pick.unsqueeze(1), independent, levels)
    history = torch.tensor(history_lengths, dtype=torch.long)[which].masked_fill(pick, 0)
    return levels, history


def drop_history(levels: Tensor, history: Tensor, p: float, generator: torch.Generator, *,
                 n_timesteps: int) -> Tensor:
    """History dropout (``train.history_dropout``): with probability ``p`` per window, its ``history``
    (size,) first tokens go from level 0 (clean history) to ``n_timesteps`` (noised to the last level,
    predicted like the others), so the model also learns the history-free prediction that history
    guidance contrasts with. Draws ``size`` uniforms.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"train.history_dropout must be in [0, 1], got {p}")
    dropped = torch.rand(levels.shape[0], generator=generator) < p
    in_history = torch.arange(levels.shape[1])[None, :] < history[:, None]
    return levels.masked_fill(dropped[:, None] & in_history, n_timesteps)


def training_levels(
    mode: NoiseMode | str,
    size: int,
    horizon: int,
    n_timesteps: int,
    generator: torch.Generator,
    *,
    mixture_p: float = 0.5,
    low: int = 1,
    patterns: list[Tensor] | None = None,
    independent_p: float = 0.0,
) -> Tensor:
    """Integer noise levels (size, horizon) in [low, T] for a training batch, by ``mode``.

    Args:
        mode: ``full_sequence`` (exactly :func:`full_sequence_levels`, the same draws),
            ``independent`` (:func:`independent_levels`) or ``mixture`` (per window,
            independent with probability ``mixture_p``, else one shared level).
        size, horizon: the batch shape (B, H).
        n_timesteps: T.
        generator: the source of every draw (CPU). ``mixture`` always draws B shared
            levels, then B x H independent levels, then B uniforms, whatever they select.
        mixture_p: probability of an independent window in ``mixture`` mode, in [0, 1].
        low: smallest level drawn.
        patterns: ``schedule`` mode's level patterns (:func:`planner_level_patterns`).
        independent_p: ``schedule`` mode's fraction of independent windows mixed in.

    Raises:
        ValueError: an unknown mode, or ``mixture_p`` outside [0, 1] in ``mixture`` mode.
    """
    try:
        mode = NoiseMode(mode)
    except ValueError:
        allowed = ", ".join(m.value for m in NoiseMode)
        raise ValueError(f"unknown noise mode {mode!r}; set train.noise_mode to one of {allowed}") from None
    if mode is NoiseMode.full_sequence:
        return full_sequence_levels(size, horizon, n_timesteps, generator, low=low)
    if mode is NoiseMode.independent:
        return independent_levels(size, horizon, n_timesteps, generator, low=low)
    if mode is NoiseMode.schedule:
        if not patterns:
            raise ValueError("train.noise_mode=schedule needs the planner's level patterns (planner_level_patterns)")
        return schedule_levels(size, patterns, generator, n_timesteps=n_timesteps, independent_p=independent_p)
    check_mixture_p(mixture_p)
    shared = full_sequence_levels(size, horizon, n_timesteps, generator, low=low)
    independent = independent_levels(size, horizon, n_timesteps, generator, low=low)
    pick_independent = torch.rand(size, generator=generator) < mixture_p
    return torch.where(pick_independent.unsqueeze(1), independent, shared)


def check_mixture_p(mixture_p: float) -> None:
    """Refuse a mixture probability outside [0, 1] (naming ``train.noise_mixture_p``)."""
    if not 0.0 <= mixture_p <= 1.0:
        raise ValueError(f"train.noise_mixture_p must be in [0, 1], got {mixture_p}")


def level_loss_weights(schedule: NoiseSchedule, levels: Tensor, weighting: LevelWeighting | str) -> Tensor | None:
    """Per-token loss weights (B, H) of integer ``levels`` (B, H); None for ``none``.

    ``min_snr``: ``min(SNR, gamma)`` for x0 prediction, ``min(SNR, gamma) / SNR`` for epsilon,
    ``min(SNR, gamma) / (SNR + 1)`` for v, with gamma = :data:`MIN_SNR_GAMMA` and
    ``SNR = abar / (1 - abar)`` of the schedule (see the module docstring).
    """
    weighting = LevelWeighting(weighting)
    if weighting is LevelWeighting.none:
        return None
    abar = schedule.alphas_cumprod[levels.long()]
    snr = abar / (1 - abar).clamp(min=1e-12)
    weights = snr.clamp(max=MIN_SNR_GAMMA)
    if schedule.prediction is PredictionType.epsilon:
        weights = weights / snr.clamp(min=1e-12)
    elif schedule.prediction is PredictionType.v:
        weights = weights / (snr + 1)
    return weights
