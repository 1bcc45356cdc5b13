"""diffplan.reporting.stats: IQM, (stratified) percentile bootstrap and paired differences,
against hand-computed values and scipy."""

from __future__ import annotations

import numpy as np
import pytest

from diffplan.reporting.stats import (
    ConfidenceInterval,
    UnmatchedKeysError,
    bootstrap_ci,
    bootstrap_distribution,
    iqm,
    paired_difference,
)

scipy_stats = pytest.importorskip("scipy.stats", reason="scipy is in the test extra: pip install -e '.[test]'")


def test_iqm_hand_computed() -> None:
    assert float(iqm(np.arange(1, 9))) == pytest.approx(4.5)  # cut 2 from each end: mean(3, 4, 5, 6)
    assert float(iqm([1.0, 2.0, 3.0, 100.0])) == pytest.approx(2.5)  # cut 1 from each end
    assert float(iqm([5.0, 1.0, 3.0])) == pytest.approx(3.0)  # int(0.75) = 0 cut: the mean
    assert float(iqm([7.0])) == 7.0
    with pytest.raises(ValueError, match="empty"):
        iqm([])


@pytest.mark.parametrize("n", [4, 5, 7, 10, 13, 50, 101])
def test_iqm_matches_scipy_trim_mean(n: int) -> None:
    x = np.random.default_rng(n).standard_t(df=2, size=n)
    assert float(iqm(x)) == pytest.approx(scipy_stats.trim_mean(x, 0.25), rel=1e-12, abs=1e-12)
    batch = np.random.default_rng(0).normal(size=(3, n))
    np.testing.assert_allclose(iqm(batch), scipy_stats.trim_mean(batch, 0.25, axis=1), rtol=1e-12)


@pytest.mark.parametrize("statistic", ["mean", "iqm"])
def test_percentile_bootstrap_agrees_with_scipy(statistic: str) -> None:
    x = np.random.default_rng(1).normal(50.0, 10.0, size=60)
    ours = bootstrap_ci(x, statistic=statistic, n_resamples=20_000, seed=3)
    fn = np.mean if statistic == "mean" else (lambda v, axis: scipy_stats.trim_mean(v, 0.25, axis=axis))
    theirs = scipy_stats.bootstrap((x,), fn, n_resamples=20_000, confidence_level=0.95, method="percentile",
                                   random_state=np.random.default_rng(4)).confidence_interval
    se = x.std() / np.sqrt(x.size)  # ~1.3: Monte Carlo error of the bounds is ~0.03 with 20k resamples
    assert ours.low == pytest.approx(theirs.low, abs=0.15 * se)
    assert ours.high == pytest.approx(theirs.high, abs=0.15 * se)
    assert ours.estimate == pytest.approx(float(fn(x, axis=0)))
    assert ours.n == 60 and ours.low < ours.estimate < ours.high


def test_bootstrap_is_deterministic_and_seeded() -> None:
    x = np.random.default_rng(2).normal(size=30)
    assert bootstrap_ci(x, seed=7) == bootstrap_ci(x, seed=7)
    assert bootstrap_ci(x, seed=7) != bootstrap_ci(x, seed=8)


def test_degenerate_and_invalid_inputs() -> None:
    assert bootstrap_ci([3.0]) == ConfidenceInterval(3.0, 3.0, 3.0, 1, 0.95)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="one label per score"):
        bootstrap_ci([1.0, 2.0], strata=[0])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=1.5)
    with pytest.raises(ValueError, match="unknown statistic"):
        bootstrap_ci([1.0, 2.0], statistic="median")


def test_stratified_bootstrap_resamples_within_strata() -> None:
    # Seed 0 always scores 0, seed 1 always 10: resampling within seeds keeps 2 of each, so every
    # resample's mean is exactly 5; pooled resampling mixes them and the interval widens.
    scores, seeds = [0.0, 0.0, 10.0, 10.0], [0, 0, 1, 1]
    stratified = bootstrap_ci(scores, seeds)
    assert (stratified.estimate, stratified.low, stratified.high) == (5.0, 5.0, 5.0)
    pooled = bootstrap_ci(scores)
    assert pooled.low < 5.0 < pooled.high


def test_stratified_bootstrap_variance_matches_theory() -> None:
    rng = np.random.default_rng(5)
    groups = [rng.normal(0, 1, 20), rng.normal(3, 2, 40)]
    x = np.concatenate(groups)
    strata = [0] * 20 + [1] * 40
    boot = bootstrap_distribution(x, strata, "mean", n_resamples=40_000, seed=0)
    # Var of the stratified resample mean: sum_s (n_s / N)^2 * var_s(ddof=0) / n_s.
    expected = sum((g.size / x.size) ** 2 * g.var() / g.size for g in groups)
    assert boot.var() == pytest.approx(expected, rel=0.03)
    assert boot.mean() == pytest.approx(x.mean(), abs=0.01)


def test_paired_difference_matches_by_key() -> None:
    keys_a = [(0, 0), (0, 1), (1, 1_000_003), (1, 1_000_004)]
    a = [10.0, 20.0, 30.0, 40.0]
    # B lists the same episodes in another order.
    keys_b = [(1, 1_000_004), (0, 0), (1, 1_000_003), (0, 1)]
    b = [38.0, 9.0, 27.0, 16.0]
    result = paired_difference(a, b, keys_a, keys_b)
    # Differences: 1, 4, 3, 2 -> mean 2.5.
    assert result.difference.estimate == pytest.approx(2.5)
    assert result.n_pairs == 4 and result.mean_a == pytest.approx(25.0) and result.mean_b == pytest.approx(22.5)
    # Stratified by seed: seed 0 differences {1, 4}, seed 1 {3, 2}; resample means lie in [1.5, 3.5].
    assert 1.5 <= result.difference.low <= 2.5 <= result.difference.high <= 3.5


def test_paired_difference_names_unmatched_keys() -> None:
    with pytest.raises(UnmatchedKeysError, match=r"1 key\(s\) of A missing from B: \(2, 7\)") as info:
        paired_difference([1.0, 2.0], [1.0], [(0, 5), (2, 7)], [(0, 5)])
    assert "eval.seeds" in str(info.value)
    with pytest.raises(UnmatchedKeysError, match="share no episode key"):
        paired_difference([1.0], [1.0], [(0, 1)], [(1, 2)])
    with pytest.raises(ValueError, match="appears twice"):
        paired_difference([1.0, 2.0], [1.0, 2.0], [(0, 1), (0, 1)], [(0, 1), (0, 2)])
    dropped = paired_difference([1.0, 2.0, 9.0], [0.0, 1.0], [(0, 1), (0, 2), (3, 3)], [(0, 1), (0, 2)],
                                unmatched="drop")
    assert dropped.n_pairs == 2 and dropped.n_unmatched_a == 1 and dropped.n_unmatched_b == 0
    assert dropped.difference.estimate == pytest.approx(1.0)
