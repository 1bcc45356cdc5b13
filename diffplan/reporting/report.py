"""A guidance-sweep report from evaluator results: report.html, report.md, episodes.csv, images/.

:func:`build_report` reads results files (``diffplan-evaluate``'s results.json, through their
records), groups them into cells (task x guidance kind x strength,
:mod:`diffplan.reporting.cells`), estimates every cell's normalized score with 95%
stratified-bootstrap intervals and its IQM, compares each cell with a baseline cell on the same
start states (:mod:`diffplan.reporting.summary`), draws the metrics against strength
(:mod:`diffplan.reporting.plots`), adds episode media when ``episodes.npz`` files exist
(:mod:`diffplan.reporting.media`), builds one view of it all (:mod:`diffplan.reporting.view`)
and writes it with the templates (:mod:`diffplan.reporting.writer`):

- ``report.html``: self-contained (images inlined as base64; no external CSS or JS);
- ``report.md``: the same numbers as Markdown tables, linking ``images/``;
- ``episodes.csv``: one row per episode per cell;
- ``images/``: the figures and GIFs.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from diffplan.reporting.cells import Cell, find_results, group_cells, load_results
from diffplan.reporting.media import slug, task_media
from diffplan.reporting.plots import METRICS, paired_figure, strength_figure
from diffplan.reporting.summary import BootstrapSettings, CellSummary, TaskSummary, summarize
from diffplan.reporting.view import ReportFigure, TaskSection, build_view, ci_name, format_strength, mixed_sources
from diffplan.reporting.writer import write_report

CSV_COLUMNS = ("cell", "task", "kind", "strength", "seed", "episode", "reset_seed", "return", "normalized_score",
               "success", "length", "failed", "source")

DEFAULT_SETTINGS = BootstrapSettings()


def methods_text(settings: BootstrapSettings = DEFAULT_SETTINGS) -> str:
    """How the report's numbers are computed (its Method section)."""
    return (
        "Each cell is one setting (task, guidance kind, strength), pooled over its results files. "
        f"Intervals are {settings.confidence:.0%} percentile bootstrap intervals with {settings.n_resamples:,} "
        "resamples, stratified by evaluation seed (episodes are resampled within each seed, as rliable does over "
        f"runs), resampling seed {settings.seed}. IQM is the interquartile mean (mean of the middle 50% of "
        "episodes' normalized scores, scipy.stats.trim_mean(x, 0.25)). Paired differences match the episodes of "
        "a cell and of the baseline by (evaluation seed, reset seed), i.e. the same start state, and bootstrap "
        "the mean of the per-episode differences within seeds. Failed episodes count with the return they "
        "reached. Plan time is per plan call (one call plans every active environment of a batch; with "
        "replan_every=1 that is per environment step)."
    )


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    html: Path
    markdown: Path
    csv: Path
    images: list[Path]
    sections: list[TaskSection]
    notes: list[str]


# --- writers ----------------------------------------------------------------------------------


def write_episodes_csv(path: Path, cells: list[Cell]) -> Path:
    """One row per episode per cell (columns :data:`CSV_COLUMNS`; ``source``: the results file as
    :func:`~diffplan.reporting.cells.find_results` names it)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for cell in cells:
            for e in cell.episodes:
                writer.writerow([cell.label, cell.task, cell.kind, format_strength(cell.strength), e.seed, e.episode,
                                 e.reset_seed, repr(e.episode_return), repr(e.normalized_score), int(e.success),
                                 e.length, int(e.failed), str(e.source)])
    return path


# --- the whole report -------------------------------------------------------------------------


def _figures(task: TaskSummary, images: Path) -> list[ReportFigure]:
    figures = []
    ci = ci_name(task)
    captions = {
        "score": f"normalized score vs guidance strength: mean with {ci} band (stratified bootstrap), IQM dashed; "
                 "grey lines and bands: cells without a strength (e.g. unguided)",
        "success": f"success rate vs strength, with {ci} (stratified bootstrap)",
        "plan_time": "seconds per plan call vs strength: median, band = interquartile range",
        "dynamics_error": "dynamics error vs strength (mean ± 1.96 s.e. where given)",
        "target_log_likelihood": "target-policy log-likelihood vs strength (mean ± 1.96 s.e. where given)",
    }
    for metric in METRICS:
        png = strength_figure(task, metric)
        if png is not None:
            path = images / f"{slug(task.task)}-{metric}.png"
            path.write_bytes(png)
            figures.append(ReportFigure(path, captions[metric]))
    png = paired_figure(task)
    if png is not None:
        path = images / f"{slug(task.task)}-paired.png"
        path.write_bytes(png)
        figures.append(ReportFigure(path, f"paired difference of each cell to {task.baseline.label} with {ci} "
                                          "(green: above 0, red: below 0)"))
    return figures


def build_report(
    inputs: list[str | Path],
    out_dir: str | Path,
    *,
    baseline: str | None = None,
    title: str = "diffplan guidance sweep",
    media: bool = True,
    settings: BootstrapSettings = DEFAULT_SETTINGS,
) -> Report:
    """Read results files (or directories of them) and write the report into ``out_dir``.

    Args:
        inputs: results.json files and/or directories searched recursively.
        out_dir: created if needed; receives report.html, report.md, episodes.csv, images/.
        baseline: label of the cell others are compared with (default: the ``none`` cell of
            each task, else its lowest-strength cell).
        title: the report's heading.
        media: render episode GIFs (maze path plots are drawn regardless when episodes.npz exists).
        settings: bootstrap resamples, confidence and seed.

    Raises:
        ResultsError: a results file is unreadable or lacks a key (named with the file).
        ValueError: ``baseline`` names no cell.
    """
    out = Path(out_dir)
    files = [load_results(p) for p in find_results(inputs)]  # bad inputs leave no empty out_dir behind
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    cells, notes = group_cells(files)
    summaries = summarize(cells, baseline, settings)
    sections = []
    for task in summaries:
        task.notes += mixed_sources(task)
        section = TaskSection(task, _figures(task, images))
        section.media = task_media(task, images, render=media)
        sections.append(section)
    csv_path = write_episodes_csv(out / "episodes.csv", cells)
    html_path, md_path = write_report(build_view(title, sections, files, notes, out, methods_text(settings)), out)
    written = [f.path for s in sections for f in s.figures] + [m.path for s in sections for m in s.media.items]
    return Report(html_path, md_path, csv_path, written, sections, notes)


def cell_summaries(report: Report) -> dict[str, CellSummary]:
    """Every cell's summary by ``"<task>/<label>"`` (convenience for scripts and tests)."""
    return {f"{s.summary.task}/{c.label}": c for s in report.sections for c in s.summary.cells}
