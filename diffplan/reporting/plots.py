"""Figures of a sweep report (matplotlib, Agg backend), returned as PNG bytes.

Every metric is drawn against guidance strength with one panel per guidance kind (strength
units differ between kinds); cells whose kind has no strength (``none``, ``bc``, ``offline``)
are drawn in every panel as horizontal reference lines with their interval as a band.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from diffplan.reporting.summary import CellSummary, TaskSummary  # noqa: E402

Interval = tuple[float, float, float]
"""(estimate, low, high); low/high NaN when there is no interval."""

_NAN3: Interval = (math.nan, math.nan, math.nan)


def _score(c: CellSummary) -> Interval | None:
    return c.score.estimate, c.score.low, c.score.high


def _iqm(c: CellSummary) -> Interval | None:
    return c.iqm.estimate, c.iqm.low, c.iqm.high


def _success(c: CellSummary) -> Interval | None:
    return None if c.success is None else (100 * c.success.estimate, 100 * c.success.low, 100 * c.success.high)


def _plan_time(c: CellSummary) -> Interval | None:
    return None if c.n_plans == 0 else c.plan_time


def _pm(value: tuple[float, float] | None) -> Interval | None:
    if value is None:
        return None
    mean, stderr = value
    return (mean, mean - 1.96 * stderr, mean + 1.96 * stderr) if not math.isnan(stderr) else (mean, math.nan, math.nan)


METRICS: dict[str, tuple[str, Callable[[CellSummary], Interval | None], str]] = {
    "score": ("normalized score", _score, "mean with its stratified-bootstrap CI (band); IQM dashed"),
    "success": ("success rate (%)", _success, "mean with its stratified-bootstrap CI"),
    "plan_time": ("seconds per plan call", _plan_time, "median with interquartile range"),
    "dynamics_error": ("dynamics error", lambda c: _pm(c.dynamics_error), "mean ± 1.96 s.e. where given"),
    "target_log_likelihood": ("target-policy log-likelihood", lambda c: _pm(c.target_log_likelihood),
                              "mean ± 1.96 s.e. where given"),
}
"""Plottable metrics: name -> (axis label, per-cell getter, what the band shows)."""


def has_metric(task: TaskSummary, metric: str) -> bool:
    """True when at least one cell of ``task`` has a value of ``metric``."""
    getter = METRICS[metric][1]
    return any(getter(c) is not None for c in task.cells)


def _kinds(task: TaskSummary) -> tuple[list[str], list[CellSummary]]:
    """(guided kinds with a strength axis, reference cells drawn as horizontal lines)."""
    by_kind: dict[str, list[CellSummary]] = {}
    for c in task.cells:
        by_kind.setdefault(c.cell.kind, []).append(c)
    guided = sorted(k for k, cells in by_kind.items() if any(c.cell.strength != 0 for c in cells))
    reference = [c for k, cells in by_kind.items() if k not in guided for c in cells]
    return guided, reference


def _set_strength_scale(ax: Axes, strengths: list[float]) -> None:
    positive = [s for s in strengths if s > 0]
    if len(positive) < 2 or max(positive) / min(positive) < 10:
        return
    if min(strengths) <= 0:
        ax.set_xscale("symlog", linthresh=min(positive))
    else:
        ax.set_xscale("log")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _strength_ticks(ax: Axes, xs: list[float]) -> None:
    unique = sorted(set(xs))
    if len(unique) == 1 and ax.get_xscale() == "linear":
        pad = abs(unique[0]) * 0.5 or 1.0
        ax.set_xlim(unique[0] - pad, unique[0] + pad)
    if len(unique) <= 8:
        ax.set_xticks(unique, [f"{x:g}" for x in unique])
        ax.minorticks_off()


def strength_figure(task: TaskSummary, metric: str) -> bytes | None:
    """``metric`` (a key of :data:`METRICS`) versus strength, one panel per guidance kind; None
    when no cell of the task has it."""
    label, getter, _ = METRICS[metric]
    if not has_metric(task, metric):
        return None
    guided, reference = _kinds(task)
    panels = guided or [""]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(5.0, 4.0 * len(panels)), 3.3), squeeze=False,
                             sharey=True)
    grey = ["0.3", "0.5", "0.65", "0.8"]
    for ax, kind in zip(axes.flat, panels, strict=True):
        cells = sorted((c for c in task.cells if c.cell.kind == kind), key=lambda c: c.cell.strength)
        points = [(c.cell.strength, getter(c)) for c in cells]
        points = [(s, v) for s, v in points if v is not None]
        if points:
            xs = [s for s, _ in points]
            est, low, high = zip(*[v for _, v in points], strict=True)
            style = "o-" if len(set(xs)) == len(xs) else "o"  # split cells share a strength: no line
            ax.plot(xs, est, style, color="tab:blue", label="guided (mean)" if metric == "score" else "guided")
            if all(math.isnan(v) for v in low):
                pass
            elif style == "o-":
                ax.fill_between(xs, low, high, color="tab:blue", alpha=0.2, lw=0)
            else:
                ax.vlines(xs, low, high, color="tab:blue", alpha=0.5, lw=3)
            if metric == "score":
                iqm = [_iqm(c) or _NAN3 for c in cells]
                ax.plot(xs, [v[0] for v in iqm], "x--" if style == "o-" else "x", color="tab:purple",
                        label="guided (IQM)")
            _set_strength_scale(ax, xs)
            _strength_ticks(ax, xs)
        for i, ref in enumerate(reference):
            value = getter(ref)
            if value is None:
                continue
            color = grey[i % len(grey)]
            ax.axhline(value[0], color=color, ls=(0, (4, 1 + i)), lw=1.3, label=ref.label)
            if not math.isnan(value[1]):
                ax.axhspan(value[1], value[2], color=color, alpha=0.12, lw=0)
        ax.set_xlabel(f"{kind} strength" if kind else "")
        if not kind:
            ax.set_xticks([])
        ax.set_title(kind or task.task, fontsize=10)
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel(label)
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(name, handle)
    ncol = 2 if max((len(name) for name in handles), default=0) <= 36 * len(panels) else 1
    rows = math.ceil(len(handles) / ncol)
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=ncol, fontsize=7,
                   frameon=False)
    fig.set_figheight(3.3 + 0.17 * rows)
    fig.tight_layout(rect=(0, min(0.5, 0.17 * rows / fig.get_figheight() + 0.01), 1, 1))
    return _png(fig)


def paired_figure(task: TaskSummary) -> bytes | None:
    """Forest plot of every cell's paired difference to the baseline, with its CI; None if none."""
    rows = [c for c in task.comparisons if c.result is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(rows) + 1.3))
    for y, comparison in enumerate(rows):
        ci = comparison.result.difference  # type: ignore[union-attr]
        color = "tab:green" if ci.low > 0 else "tab:red" if ci.high < 0 else "tab:gray"
        ax.errorbar(ci.estimate, y, xerr=[[ci.estimate - ci.low], [ci.high - ci.estimate]], fmt="o", color=color,
                    capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [c.cell.label for c in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"normalized score minus baseline (paired, {task.baseline.score.confidence:.0%} CI)")
    ax.set_title(f"vs {task.baseline.label}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)
