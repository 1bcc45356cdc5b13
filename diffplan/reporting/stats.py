"""Honest uncertainty for evaluation scores: IQM, stratified percentile bootstrap, paired differences.

The definitions follow rliable (Agarwal et al. 2021, "Deep RL at the edge of the statistical
precipice"):

- the interquartile mean (:func:`iqm`) is the mean of the middle 50% of the scores, i.e.
  ``scipy.stats.trim_mean(x, 0.25)`` (``int(0.25 * n)`` scores cut at each end);
- :func:`bootstrap_ci` is the percentile bootstrap; given strata (evaluation seeds, say) it
  resamples *within* each stratum so every resample keeps each seed's episode count, as
  rliable's stratified bootstrap does over runs;
- :func:`paired_difference` compares two settings evaluated on the same start states
  (episodes matched by key, e.g. ``(seed, reset_seed)``), which removes the start-state
  variance both share.

Only numpy is needed at runtime. Every resampling is seeded, so the same inputs give the
same intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]
"""Maps a (..., n) array to the statistic over its last axis, shape (...)."""

_CHUNK_ELEMENTS = 4_000_000  # resampled values held in memory at once


def _trimmed_mean(x: np.ndarray, proportion: float) -> np.ndarray:
    n = x.shape[-1]
    cut = int(proportion * n)
    if n - 2 * cut < 1:
        raise ValueError(f"cannot trim {proportion:.0%} from each end of {n} values")
    return np.sort(x, axis=-1)[..., cut:n - cut].mean(axis=-1)


def mean(x: np.ndarray) -> np.ndarray:
    """Arithmetic mean over the last axis (a :data:`Statistic`)."""
    return np.asarray(x, dtype=np.float64).mean(axis=-1)


def iqm(x: np.ndarray | Sequence[float]) -> np.ndarray:
    """Interquartile mean over the last axis: the mean of the middle 50% of the values.

    ``int(0.25 * n)`` values are cut from each end after sorting, exactly as
    ``scipy.stats.trim_mean(x, 0.25)`` (rliable's IQM). For fewer than 4 values nothing is
    cut and the IQM is the mean. Returns a 0-d array for a 1-D input (``float(iqm(x))``).

    Raises:
        ValueError: ``x`` is empty.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.shape[-1] == 0:
        raise ValueError("iqm of an empty array is undefined")
    return _trimmed_mean(x, 0.25)


STATISTICS: dict[str, Statistic] = {"mean": mean, "iqm": iqm}


@dataclass(frozen=True)
class ConfidenceInterval:
    """A point estimate and its percentile bootstrap interval.

    Attributes:
        estimate: the statistic on the data itself.
        low / high: the interval's bounds.
        n: how many values the statistic was computed from.
        confidence: the interval's nominal coverage (0.95 = 95%).
    """

    estimate: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    @property
    def half_width(self) -> float:
        """Half the interval's width (a symmetric summary for tables)."""
        return (self.high - self.low) / 2

    def excludes(self, value: float = 0.0) -> bool:
        """True when ``value`` lies outside [low, high]."""
        return not (self.low <= value <= self.high)

    def format(self, digits: int = 1) -> str:
        """``"12.3 [10.1, 14.2]"``."""
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _resolve_statistic(statistic: str | Statistic) -> Statistic:
    if callable(statistic):
        return statistic
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; use one of {sorted(STATISTICS)} or a callable")
    return STATISTICS[statistic]


def _strata_indices(n: int, strata: Sequence[Hashable] | np.ndarray | None) -> list[np.ndarray]:
    if strata is None:
        return [np.arange(n)]
    labels = list(strata)
    if len(labels) != n:
        raise ValueError(f"strata has {len(labels)} labels for {n} scores; give one label per score")
    groups: dict[Hashable, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    return [np.asarray(groups[label]) for label in sorted(groups, key=repr)]


def bootstrap_distribution(
    scores: Sequence[float] | np.ndarray,
    strata: Sequence[Hashable] | np.ndarray | None = None,
    statistic: str | Statistic = "mean",
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> np.ndarray:
    """The statistic of ``n_resamples`` bootstrap resamples of ``scores``, shape (n_resamples,).

    With ``strata``, each resample draws, for every stratum, as many scores as it holds from
    that stratum only (with replacement); without, it draws ``len(scores)`` from all of them.
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D sequence, got shape {x.shape}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    stat = _resolve_statistic(statistic)
    groups = _strata_indices(x.size, strata)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // x.size)
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        m = min(chunk, n_resamples - start)
        parts = [x[idx[rng.integers(0, idx.size, size=(m, idx.size))]] for idx in groups]
        out[start:start + m] = stat(np.concatenate(parts, axis=1))
    return out


def bootstrap_ci(
    scores: Sequence[float] | np.ndarray,
    strata: Sequence[Hashable] | np.ndarray | None = None,
    statistic: str | Statistic = "mean",
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap confidence interval of ``statistic`` over ``scores``.

    Args:
        scores: one value per episode.
        strata: optional label per score (e.g. its evaluation seed); resampling then happens
            within each stratum (stratified bootstrap), so every resample has the same number
            of episodes per seed as the data.
        statistic: ``"mean"``, ``"iqm"`` or a callable mapping (..., n) to (...).
        n_resamples: bootstrap resamples.
        confidence: nominal coverage, in (0, 1).
        seed: the resampling's random seed (same inputs and seed, same interval).

    A single score gives the degenerate interval [x, x].

    Raises:
        ValueError: empty scores, a strata list of the wrong length, or confidence outside (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = np.asarray(scores, dtype=np.float64)
    stat = _resolve_statistic(statistic)
    boot = bootstrap_distribution(x, strata, stat, n_resamples=n_resamples, seed=seed)
    alpha = (1 - confidence) / 2
    low, high = np.percentile(boot, [100 * alpha, 100 * (1 - alpha)])
    return ConfidenceInterval(float(stat(x)), float(low), float(high), int(x.size), confidence)


class UnmatchedKeysError(ValueError):
    """Two sides of a paired comparison do not hold the same episodes."""


@dataclass(frozen=True)
class PairedDifference:
    """Mean of A minus mean of B over matched episodes, with a bootstrap interval.

    Attributes:
        difference: mean over pairs of (a - b) and its interval.
        mean_a / mean_b: the means of each side over the matched pairs.
        n_pairs: matched episodes.
        n_unmatched_a / n_unmatched_b: episodes dropped because the other side lacks them
            (always 0 unless called with ``unmatched="drop"``).
    """

    difference: ConfidenceInterval
    mean_a: float
    mean_b: float
    n_pairs: int
    n_unmatched_a: int = 0
    n_unmatched_b: int = 0


def _seed_of(key: Hashable) -> Hashable:
    """The stratum of an episode key: its first element (the evaluation seed) for tuples."""
    return key[0] if isinstance(key, tuple) and key else None


def _key_map(values: Sequence[float] | np.ndarray, keys: Sequence[Hashable], side: str) -> dict[Hashable, float]:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) != len(keys):
        raise ValueError(f"side {side}: {len(keys)} keys for {values.size} values; give one key per value")
    mapping: dict[Hashable, float] = {}
    for key, value in zip(keys, values, strict=True):
        if key in mapping:
            raise ValueError(f"side {side}: key {key!r} appears twice; every episode needs a distinct key")
        mapping[key] = float(value)
    return mapping


def _describe(keys: list[Hashable], limit: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    keys_a: Sequence[Hashable],
    keys_b: Sequence[Hashable],
    *,
    stratum: Callable[[Hashable], Hashable] | None = _seed_of,
    unmatched: Literal["error", "drop"] = "error",
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """Difference of means A - B over episodes matched by key, with a stratified bootstrap CI.

    Args:
        a, b: one score per episode of each side.
        keys_a, keys_b: each episode's identity, e.g. ``(seed, reset_seed)``: the same key
            means the same start state (the evaluator derives the reset seed from the
            evaluation seed and the episode index).
        stratum: maps a key to its bootstrap stratum; the default takes a tuple key's first
            element (the evaluation seed). None: unstratified.
        unmatched: ``"error"`` raises when the sides do not hold the same keys; ``"drop"``
            compares the common keys only (and counts the dropped ones).
        n_resamples, confidence, seed: as in :func:`bootstrap_ci`.

    Raises:
        UnmatchedKeysError: (``unmatched="error"``) keys present on one side only, named in the
            message; or no key in common at all.
        ValueError: keys and values of different lengths, or a key repeated on one side.
    """
    map_a, map_b = _key_map(a, keys_a, "A"), _key_map(b, keys_b, "B")
    only_a = [k for k in map_a if k not in map_b]
    only_b = [k for k in map_b if k not in map_a]
    common = [k for k in map_a if k in map_b]
    fix = "evaluate both settings with the same eval.seeds and eval.n_episodes so they share start states"
    if not common:
        raise UnmatchedKeysError(f"the two sides share no episode key (A: {_describe(list(map_a))}; "
                                 f"B: {_describe(list(map_b))}); {fix}")
    if (only_a or only_b) and unmatched == "error":
        parts = []
        if only_a:
            parts.append(f"{len(only_a)} key(s) of A missing from B: {_describe(only_a)}")
        if only_b:
            parts.append(f"{len(only_b)} key(s) of B missing from A: {_describe(only_b)}")
        raise UnmatchedKeysError("; ".join(parts) + f"; {fix}, or pass unmatched='drop'")
    diff = np.array([map_a[k] - map_b[k] for k in common])
    strata = None if stratum is None else [stratum(k) for k in common]
    ci = bootstrap_ci(diff, strata, "mean", n_resamples=n_resamples, confidence=confidence, seed=seed)
    return PairedDifference(
        difference=ci,
        mean_a=float(np.mean([map_a[k] for k in common])),
        mean_b=float(np.mean([map_b[k] for k in common])),
        n_pairs=len(common),
        n_unmatched_a=len(only_a),
        n_unmatched_b=len(only_b),
    )
