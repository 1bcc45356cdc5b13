"""Regression targets of the value network: the discounted return of the rest of the episode.

For step ``t`` of an episode whose last step is ``L - 1``:

    V_t = sum_{k = t}^{L - 1} discount ** (k - t) * r'_k,   r'_k = r_k + penalty * terminal_k

Diffuser's recipe (``ReplayBuffer.add_path``): a true terminal (the agent fell) adds
``termination_penalty`` (e.g. -100) to the reward of the terminal step; an episode cut off
by a timeout gets no penalty and is not bootstrapped (the unknown future counts as zero).
The target of a training window starting at step ``t`` is ``V_t``, whatever the window's
stride: it sums every environment step from ``t`` to the episode's end.

Goal-conditioned value functions (mazes) use :func:`goal_reward_targets` instead: the
discounted number of the window's own tokens within a radius of a goal, with goals relabelled
in hindsight by :func:`relabel_goals`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffplan.data.episodes import Episodes
from diffplan.data.returns import discounted_suffix_sums


def value_targets(episodes: Episodes, discount: float, termination_penalty: float) -> np.ndarray:
    """(T,) float64 discounted return from every step to its episode's end (see the module doc).

    Vectorised over the whole dataset (a segmented parallel scan, no loop over episodes).

    Raises:
        ValueError: ``discount`` outside [0, 1] or a non-finite penalty.
    """
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"value.discount must be in [0, 1], got {discount}")
    if not np.isfinite(termination_penalty):
        raise ValueError(f"value.termination_penalty must be finite, got {termination_penalty}")
    rewards = episodes.rewards.astype(np.float64)
    # Terminal flags are only set at an episode's last step (Episodes' invariant).
    rewards = rewards + float(termination_penalty) * episodes.terminals.astype(np.float64)
    ends = np.zeros(episodes.n_transitions, dtype=bool)
    ends[episodes.starts + episodes.lengths - 1] = True
    return discounted_suffix_sums(rewards, ends, discount)


def targets_of_windows(targets: Tensor, episode_starts: Tensor, episode: Tensor, start: Tensor) -> Tensor:
    """Targets (B,) of windows given by their episode (B,) and start step within it (B,).

    Args:
        targets: (T,) per-step targets of :func:`value_targets`.
        episode_starts: (E,) first row of every episode (``WindowSampler.episode_starts``).
    """
    return targets[episode_starts[episode] + start]


def target_stats(targets: Tensor, episode_starts: Tensor, window_episode: Tensor, window_start: Tensor,
                 min_std: float = 1e-6) -> tuple[float, float]:
    """Mean and standard deviation of the targets over all training windows (each counted once),
    computed in float64; a standard deviation below ``min_std`` becomes 1 (constant targets)."""
    values = targets_of_windows(targets, episode_starts, window_episode, window_start).to(torch.float64)
    mean = float(values.mean())
    std = float(values.std(unbiased=False)) if values.numel() > 1 else 0.0
    return mean, (std if std >= min_std else 1.0)


def goal_reward_targets(positions: Tensor, goals: Tensor, valid: Tensor, *, radius: float, discount: float) -> Tensor:
    """Goal-conditioned targets (B,): the discounted number of a window's tokens within ``radius`` of its goal.

    ``sum_k discount ** k * valid_k * [||positions_k - goal|| <= radius]``, token ``k`` counted
    from the window's first token: the maze2d sparse reward (1 per step within the goal radius)
    summed over the plan. With a token stride ``s`` pass ``discount ** s`` to discount per step.

    Args:
        positions: (B, H, G) raw positions of the window's tokens.
        goals: (B, G) raw goals.
        valid: (B, H) bool, False for padded tokens of unknown content (they count zero).
    """
    if not radius > 0:
        raise ValueError(f"value.goal_radius must be > 0, got {radius}")
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"value.discount must be in [0, 1], got {discount}")
    inside = torch.linalg.vector_norm(positions - goals[:, None, :], dim=-1) <= radius  # (B, H)
    weights = discount ** torch.arange(positions.shape[1], dtype=torch.float64, device=positions.device)
    return ((inside & valid).to(torch.float64) * weights).sum(dim=1)


def relabel_goals(positions: Tensor, pool: Tensor, window_prob: float, generator: torch.Generator) -> Tensor:
    """Hindsight goals (B, G) for windows with raw ``positions`` (B, H, G).

    With probability ``window_prob`` a goal is the position of a uniformly drawn token of the
    window itself (the window reaches it: a positive target), otherwise a position drawn
    uniformly from ``pool`` (T, G), the dataset's positions (mostly goals the window misses).
    Only ``generator`` supplies randomness (resumes bit-identically).
    """
    if not 0.0 <= window_prob <= 1.0:
        raise ValueError(f"value.goal_window_prob must be in [0, 1], got {window_prob}")
    batch, horizon = positions.shape[:2]
    token = torch.randint(horizon, (batch,), generator=generator)
    row = torch.randint(pool.shape[0], (batch,), generator=generator)
    own = torch.rand(batch, generator=generator) < window_prob
    rows = torch.arange(batch)
    return torch.where(own[:, None], positions[rows, token], pool[row].to(positions.dtype))
