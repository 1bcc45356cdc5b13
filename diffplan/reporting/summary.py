"""The numbers of a sweep report: per-cell estimates with intervals, paired differences to a baseline.

Intervals are 95% percentile bootstrap intervals, stratified by evaluation seed (episodes
are resampled within each seed), with a fixed resampling seed: the same results give the
same report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from diffplan.reporting.cells import Cell
from diffplan.reporting.stats import (
    ConfidenceInterval,
    PairedDifference,
    UnmatchedKeysError,
    bootstrap_ci,
    paired_difference,
)


@dataclass(frozen=True)
class BootstrapSettings:
    """How intervals are computed (``n_resamples`` resamples, ``confidence`` coverage, RNG ``seed``)."""

    n_resamples: int = 10_000
    confidence: float = 0.95
    seed: int = 0


@dataclass
class CellSummary:
    """One cell's estimates.

    Attributes:
        cell: the cell.
        score: mean normalized score and its stratified bootstrap interval.
        iqm: interquartile mean of the normalized score and its interval.
        success: success rate and its interval (None for tasks without success, i.e. locomotion).
        plan_time: (median, 25th, 75th percentile) seconds per plan call (NaNs without records).
        n_plans: recorded plan calls.
        n_failed: failed episodes (counted in every statistic with the return they reached).
        dynamics_error / target_log_likelihood: optional (mean, stderr) from the results files.
    """

    cell: Cell
    score: ConfidenceInterval
    iqm: ConfidenceInterval
    success: ConfidenceInterval | None
    plan_time: tuple[float, float, float]
    n_plans: int
    n_failed: int
    dynamics_error: tuple[float, float] | None = None
    target_log_likelihood: tuple[float, float] | None = None

    @property
    def label(self) -> str:
        return self.cell.label


@dataclass
class Comparison:
    """Paired difference of a cell's normalized score against the task's baseline cell.

    ``result`` is None when the two share no episode; ``note`` then says why, or says which
    unmatched episodes were left out of the comparison.
    """

    cell: CellSummary
    baseline: CellSummary
    result: PairedDifference | None
    note: str = ""


@dataclass
class TaskSummary:
    """Every cell of one task, its baseline and the comparisons with it."""

    task: str
    cells: list[CellSummary]
    baseline: CellSummary
    comparisons: list[Comparison]
    notes: list[str] = field(default_factory=list)

    @property
    def has_success(self) -> bool:
        return any(c.success is not None for c in self.cells)

    @property
    def best(self) -> CellSummary:
        """The cell with the highest mean normalized score."""
        return max(self.cells, key=lambda c: c.score.estimate)


def summarize_cell(cell: Cell, settings: BootstrapSettings = BootstrapSettings()) -> CellSummary:
    """Estimates and intervals of one cell (stratified by evaluation seed)."""
    episodes = cell.episodes
    scores = np.array([e.normalized_score for e in episodes])
    strata = [e.seed for e in episodes]

    def ci(values: np.ndarray, statistic: str) -> ConfidenceInterval:
        return bootstrap_ci(values, strata, statistic, n_resamples=settings.n_resamples,
                            confidence=settings.confidence, seed=settings.seed)

    success = ci(np.array([float(e.success) for e in episodes]), "mean") if cell.has_success else None
    times = np.array(cell.plan_times)
    plan_time = tuple(float(v) for v in np.percentile(times, [50, 25, 75])) if times.size else (math.nan,) * 3
    return CellSummary(
        cell=cell,
        score=ci(scores, "mean"),
        iqm=ci(scores, "iqm"),
        success=success,
        plan_time=plan_time,  # type: ignore[arg-type]
        n_plans=int(times.size),
        n_failed=sum(e.failed for e in episodes),
        dynamics_error=cell.metric("dynamics_error"),
        target_log_likelihood=cell.metric("target_log_likelihood"),
    )


def default_baseline(cells: list[Cell]) -> Cell:
    """The ``none`` cell (unguided), else the cell of lowest strength; ties go to the cell with
    the most episodes, then to the first label."""
    unguided = [c for c in cells if c.kind == "none"]
    if unguided:
        return min(unguided, key=lambda c: (-len(c.episodes), c.label))
    return min(cells, key=lambda c: (c.strength, -len(c.episodes), c.label))


def compare(cell: CellSummary, baseline: CellSummary, settings: BootstrapSettings = BootstrapSettings()) -> Comparison:
    """Paired difference cell - baseline over episodes matched by (seed, reset_seed).

    When the two hold different episodes, the comparison uses the common ones and says how
    many were left out; with none in common there is no comparison (and the note says why).
    """
    a, b = cell.cell.episodes, baseline.cell.episodes

    def paired(unmatched: Literal["error", "drop"]) -> PairedDifference:
        return paired_difference(
            [e.normalized_score for e in a], [e.normalized_score for e in b], [e.key for e in a], [e.key for e in b],
            unmatched=unmatched, n_resamples=settings.n_resamples, confidence=settings.confidence, seed=settings.seed,
        )

    try:
        return Comparison(cell, baseline, paired("error"))
    except UnmatchedKeysError as e:
        try:
            result = paired("drop")
        except UnmatchedKeysError:
            return Comparison(cell, baseline, None, f"not paired: {e}")
        note = (f"compared on the {result.n_pairs} shared episodes only ({result.n_unmatched_a} of this cell and "
                f"{result.n_unmatched_b} of the baseline have no counterpart)")
        return Comparison(cell, baseline, result, note)


def summarize(
    cells: list[Cell],
    baseline_label: str | None = None,
    settings: BootstrapSettings = BootstrapSettings(),
) -> list[TaskSummary]:
    """One :class:`TaskSummary` per task (in order of first appearance).

    Args:
        cells: every cell (all tasks).
        baseline_label: the label of the cell the others are compared with (in every task that
            has it; the others fall back to :func:`default_baseline`, with a note).

    Raises:
        ValueError: ``baseline_label`` names no cell of any task (the message lists the labels).
    """
    tasks = list(dict.fromkeys(c.task for c in cells))
    if baseline_label is not None and not any(c.label == baseline_label for c in cells):
        labels = sorted({c.label for c in cells})
        raise ValueError(f"--baseline {baseline_label!r} is not a cell label; the labels are {labels}")
    summaries = []
    for task in tasks:
        task_cells = [c for c in cells if c.task == task]
        notes = []
        chosen = next((c for c in task_cells if c.label == baseline_label), None)
        if chosen is None:
            chosen = default_baseline(task_cells)
            if baseline_label is not None:
                notes.append(f"no cell {baseline_label!r} in {task}: the baseline is {chosen.label!r}")
        by_label = {c.label: summarize_cell(c, settings) for c in task_cells}
        baseline = by_label[chosen.label]
        comparisons = [compare(s, baseline, settings) for s in by_label.values() if s is not baseline]
        summaries.append(TaskSummary(task, list(by_label.values()), baseline, comparisons, notes))
    return summaries
