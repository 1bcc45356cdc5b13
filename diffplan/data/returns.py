"""Returns-to-go of every transition, for return-conditioned models (Decision Diffuser).

The return-to-go of step ``t`` of an episode that ends at step ``L - 1`` is the discounted
sum of the rewards still to come in that episode:

    G_t = sum_{k = t}^{L - 1} discount ** (k - t) * r_k

An episode cut off by a timeout simply sums the rewards it recorded (the unknown future is
not bootstrapped), as Decision Diffuser does. The model sees ``G_t / return_scale``
(:func:`normalized_returns_to_go`), with ``task.return_scale`` chosen per task so that good
returns land near 1 (Decision Diffuser: hopper 400, walker2d 550, halfcheetah 1200 with
discount 0.99).
"""

from __future__ import annotations

import numpy as np

from diffplan.data.episodes import Episodes


def discounted_suffix_sums(rewards: np.ndarray, ends: np.ndarray, discount: float) -> np.ndarray:
    """Discounted suffix sums of ``rewards`` (T,) that restart after every ``ends`` (T,) flag.

    Solves ``y[t] = r[t] + a[t] * y[t + 1]`` with ``a[t] = 0`` where ``ends[t]`` (the last
    step of an episode) and ``a[t] = discount`` elsewhere, by a parallel prefix scan
    (recursive doubling): O(T log T) vectorised work, no Python loop over steps, and only
    multiplications by factors in [0, 1], so long episodes stay accurate. Float64.
    """
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"discount must be in [0, 1], got {discount}; fix task.return_discount")
    values = np.asarray(rewards, dtype=np.float64).reshape(-1).copy()
    carry = np.where(np.asarray(ends, dtype=bool).reshape(-1), 0.0, float(discount))
    if carry.shape != values.shape:
        raise ValueError(f"rewards have {values.shape[0]} entries but ends has {carry.shape[0]}")
    # Invariant after each round with offset d: y[t] = values[t] + carry[t] * y[t + d] (y = 0 past the end).
    offset = 1
    while offset < len(values) and carry.any():
        shifted_values = np.zeros_like(values)
        shifted_values[:-offset] = values[offset:]
        shifted_carry = np.zeros_like(carry)
        shifted_carry[:-offset] = carry[offset:]
        values += carry * shifted_values
        carry *= shifted_carry
        offset *= 2
    return values


def returns_to_go(episodes: Episodes, discount: float) -> np.ndarray:
    """(T,) float64 discounted return-to-go of every transition, within its episode."""
    ends = np.zeros(episodes.n_transitions, dtype=bool)
    ends[episodes.starts + episodes.lengths - 1] = True
    return discounted_suffix_sums(episodes.rewards, ends, discount)


def normalized_returns_to_go(episodes: Episodes, discount: float, scale: float) -> np.ndarray:
    """(T,) float32 return-to-go divided by ``scale`` (``task.return_scale``), the model's condition."""
    if not scale > 0:
        raise ValueError(f"return scale must be > 0, got {scale}; fix task.return_scale")
    return (returns_to_go(episodes, discount) / scale).astype(np.float32)


def episode_returns(episodes: Episodes) -> np.ndarray:
    """(E,) float64 undiscounted return (sum of rewards) of every episode."""
    return np.add.reduceat(np.asarray(episodes.rewards, dtype=np.float64), episodes.starts)


def best_episode_rows(
    episodes: Episodes, fraction: float, *, key: str = "task.top_return_fraction"
) -> np.ndarray | None:
    """(T,) bool: the rows of the ``ceil(fraction * E)`` episodes with the highest returns (ties keep
    the earlier episode); None for ``fraction`` 1.0 (every row). The rows :func:`best_episodes`
    keeps, for arrays aligned with the episodes' rows (a file's ``next_observations``).

    Raises:
        ValueError: ``fraction`` outside (0, 1], naming ``key``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"{key}={fraction} must be in (0, 1]: the share of episodes kept, best returns first")
    if fraction == 1:
        return None
    n_keep = int(np.ceil(fraction * episodes.n_episodes))
    keep = np.zeros(episodes.n_episodes, dtype=bool)
    keep[np.argsort(-episode_returns(episodes), kind="stable")[:n_keep]] = True
    return np.repeat(keep, episodes.lengths)


def best_episodes(episodes: Episodes, fraction: float, *, key: str = "task.top_return_fraction") -> Episodes:
    """The ``ceil(fraction * E)`` episodes with the highest returns, in the dataset's order (the
    filter of filtered behaviour cloning, for datasets that mix poor and good policies).

    ``fraction`` 1.0 returns ``episodes`` itself. Otherwise the metadata gains a ``selection``
    entry (the fraction and the counts), so the selection is part of the dataset's identity
    (:func:`diffplan.data.identity.dataset_identity`): a checkpoint trained on it is checked
    against the same selection. Ties keep the earlier episode.

    Raises:
        ValueError: ``fraction`` outside (0, 1], naming ``key``.
    """
    rows = best_episode_rows(episodes, fraction, key=key)  # (T,) the kept episodes' rows, in the file's order
    return episodes if rows is None else episodes_at_rows(episodes, rows, fraction)


def episodes_at_rows(episodes: Episodes, rows: np.ndarray, fraction: float) -> Episodes:
    """The episodes whose rows ``rows`` (T,) bool of :func:`best_episode_rows` keeps, with the
    ``selection`` metadata of ``fraction`` (what :func:`best_episodes` returns)."""
    keep = rows[np.cumsum(episodes.lengths) - episodes.lengths]  # (E,) each episode's first row
    n_keep = int(keep.sum())
    ends = np.zeros(int(rows.sum()), dtype=bool)
    ends[np.cumsum(episodes.lengths[keep]) - 1] = True

    def cut(array: np.ndarray | None) -> np.ndarray | None:
        return None if array is None else array[rows]

    metadata = {**episodes.metadata, "selection": {"top_return_fraction": float(fraction), "n_episodes": n_keep,
                                                   "of_episodes": episodes.n_episodes}}
    return Episodes.from_arrays(
        episodes.observations[rows], episodes.actions[rows], episodes.rewards[rows], episodes.terminals[rows],
        episodes.timeouts[rows], ends=ends, goals=cut(episodes.goals), qpos=cut(episodes.qpos),
        qvel=cut(episodes.qvel), source=episodes.source, metadata=metadata,
    )

