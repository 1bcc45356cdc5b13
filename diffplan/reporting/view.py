"""What a report shows, as text: the view-model the report templates lay out.

:func:`build_view` turns the analysed cells (:mod:`diffplan.reporting.summary`), their figures
and media, and the results files' records into a :class:`ReportView`: every number formatted
once, every table a :class:`Table` of strings whose columns say how they are shown. The same
view renders as report.html and as report.md (:mod:`diffplan.reporting.writer`), so the two
cannot disagree. :func:`evaluation_view` does the same for one evaluation (the demo's report.md).
"""

from __future__ import annotations

import base64
import json
import math
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffplan.evaluation.reference import scale_label
from diffplan.evaluation.results import EvaluationRecord, ReferenceScale, package_versions
from diffplan.reporting.cells import REFERENCE_POLICIES, ResultsFile
from diffplan.reporting.media import TaskMedia, slug
from diffplan.reporting.summary import Comparison, TaskSummary
from diffplan.utils import git_revision

#: Distributions whose versions the report's environment table lists.
REPORT_PACKAGES = ("diffplan", "torch", "numpy", "gymnasium", "gymnasium-robotics", "mujoco", "matplotlib")


# --- what the report is made of ---------------------------------------------------------------


@dataclass
class ReportFigure:
    """A figure of the report: where it was written and its caption."""

    path: Path
    caption: str


@dataclass
class TaskSection:
    """Everything the report shows for one task: its numbers, figures and media."""

    summary: TaskSummary
    figures: list[ReportFigure] = field(default_factory=list)
    media: TaskMedia = field(default_factory=TaskMedia)


# --- tables -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A table column: its header, and how HTML shows its values (``numeric``: right-aligned;
    ``verdict``: coloured by whether the value says higher or lower)."""

    header: str
    numeric: bool = False
    verdict: bool = False

    def css(self, value: str) -> str:
        """The HTML class of a value of this column ('' for none)."""
        if self.verdict:
            return "higher" if value.startswith("higher") else "lower" if value.startswith("lower") else ""
        return "num" if self.numeric else ""


@dataclass(frozen=True)
class Table:
    """Rows of strings under :class:`Column` s."""

    columns: tuple[Column, ...]
    rows: tuple[tuple[str, ...], ...]

    @property
    def headers(self) -> list[str]:
        return [c.header for c in self.columns]

    def cells(self, row: tuple[str, ...]) -> list[tuple[str, str]]:
        """(value, HTML class) of each entry of ``row``."""
        return [(value, column.css(value)) for column, value in zip(self.columns, row, strict=True)]


def _table(columns: list[Column], rows: list[list[str]]) -> Table:
    return Table(tuple(columns), tuple(tuple(r) for r in rows))


# --- the view -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """A figure or episode medium: ``link`` is its path relative to the report's folder."""

    path: Path
    caption: str
    link: str

    @property
    def mime(self) -> str:
        return "image/gif" if self.path.suffix == ".gif" else "image/png"

    def data_uri(self) -> str:
        """The image inlined (the self-contained HTML report)."""
        return f"data:{self.mime};base64,{base64.b64encode(self.path.read_bytes()).decode('ascii')}"


@dataclass(frozen=True)
class TaskView:
    """One task's part of the report."""

    task: str
    anchor: str
    findings: list[str]
    notes: list[str]
    figures: list[Image]
    cells: Table
    baseline: str
    paired: Table | None
    media_cell: str | None
    media: list[Image]
    media_notes: list[str]


@dataclass(frozen=True)
class ConfigView:
    """A results file's configs and records, as the JSON text the HTML report folds away."""

    path: str
    label: str
    text: str


@dataclass(frozen=True)
class ReportView:
    """Everything the report says, as text; rendered by ``report.html.j2`` and ``report.md.j2``."""

    title: str
    generated: str
    n_files: int
    n_cells: int
    notes: list[str]
    tasks: list[TaskView]
    methods: str
    provenance: list[tuple[str, str]]
    files: Table
    configs: list[ConfigView]
    environment: list[tuple[str, str]]

    @property
    def environment_table(self) -> Table:
        return _table([Column("package"), Column("version")], [[k, v] for k, v in self.environment])


# --- numbers as text ----------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _secs(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def format_strength(value: float) -> str:
    """A guidance strength as the report writes it (``0.1``, ``10``)."""
    return f"{value:g}"


def ci_name(task: TaskSummary) -> str:
    """``"95% CI"``: the intervals' name in the task's headers and sentences."""
    return f"{task.baseline.score.confidence:.0%} CI"


def short_name(path: Path) -> str:
    """``<folder>/results.json`` for results.json files, the file name otherwise."""
    return f"{path.parent.name}/{path.name}" if path.name == "results.json" else path.name


def cell_table(task: TaskSummary) -> Table:
    """One row per cell: counts, estimates with intervals, plan time, failures, files."""
    ci = ci_name(task)
    columns = [Column("cell"), Column("kind"), Column("strength", numeric=True), Column("episodes", numeric=True),
               Column("seeds"), Column(f"mean [{ci}]", numeric=True), Column(f"IQM [{ci}]", numeric=True)]
    if task.has_success:
        columns.append(Column(f"success [{ci}]", numeric=True))
    columns += [Column("s per plan (median)", numeric=True), Column("failed", numeric=True), Column("files")]
    rows = []
    for c in task.cells:
        label = c.label + (" (baseline)" if c is task.baseline else "")
        row = [label, c.cell.kind, format_strength(c.cell.strength), str(c.score.n), ",".join(map(str, c.cell.seeds)),
               c.score.format(1), c.iqm.format(1)]
        if task.has_success:
            row.append("n/a" if c.success is None else c.success.format(2))
        row += [_secs(c.plan_time[0]), str(c.n_failed), ", ".join(short_name(f.path) for f in c.cell.files)]
        rows.append(row)
    return _table(columns, rows)


def verdict(comparison: Comparison) -> str:
    """Whether a cell's paired difference to the baseline is above, below or around 0."""
    if comparison.result is None:
        return "n/a"
    ci = comparison.result.difference
    if ci.low > 0:
        return "higher (CI above 0)"
    if ci.high < 0:
        return "lower (CI below 0)"
    return "no clear difference (CI spans 0)"


def paired_table(task: TaskSummary) -> Table:
    """One row per comparison of a cell with the task's baseline."""
    columns = [Column("cell"), Column("baseline"), Column("pairs", numeric=True), Column("cell mean", numeric=True),
               Column("baseline mean", numeric=True), Column(f"difference [{ci_name(task)}]", numeric=True),
               Column("verdict", verdict=True), Column("note")]
    rows = []
    for comparison in task.comparisons:
        r = comparison.result
        rows.append([
            comparison.cell.label, task.baseline.label, str(r.n_pairs) if r else "0",
            _num(r.mean_a) if r else "n/a", _num(r.mean_b) if r else "n/a",
            r.difference.format(1) if r else "n/a", verdict(comparison), comparison.note,
        ])
    return _table(columns, rows)


def _scale(task: TaskSummary) -> str:
    """`` (D4RL scale: min 0, max 100)`` and the like: the reference returns the task's files normalize with."""
    refs = {(f.record.reference_scores.method, f.record.reference_scores.min, f.record.reference_scores.max)
            for c in task.cells for f in c.cell.files}
    if len(refs) > 1:
        return " (mixed reference returns: the cells' scores are on different scales)"
    method, low, high = refs.pop()
    return f" ({scale_label({'method': method})}: min {low:g}, max {high:g})"


def findings(task: TaskSummary) -> list[str]:
    """The task's findings: its best cell, its baseline, and the cells that differ from it."""
    best = task.best
    lines = [f"Best mean normalized score{_scale(task)}: {best.label} with {best.score.format(1)} "
             f"(IQM {best.iqm.format(1)}) over {best.score.n} episodes, seeds {best.cell.seeds}."]
    lines.append(f"Baseline: {task.baseline.label} with {task.baseline.score.format(1)}.")
    for comparison in task.comparisons:
        if comparison.result is not None and comparison.result.difference.excludes(0.0):
            d = comparison.result.difference
            lines.append(f"{comparison.cell.label} vs {task.baseline.label}: {d.estimate:+.1f} "
                         f"[{d.low:+.1f}, {d.high:+.1f}] over {comparison.result.n_pairs} paired episodes "
                         f"(the {ci_name(task)} excludes 0).")
    if not task.comparisons:
        lines.append("A single cell: nothing to compare it with.")
    elif not any(c.result is not None and c.result.difference.excludes(0.0) for c in task.comparisons):
        lines.append(f"No cell differs from the baseline with a {ci_name(task)} that excludes 0.")
    return lines


# --- provenance ---------------------------------------------------------------------------------


def _hardware(record: EvaluationRecord) -> str:
    hw = record.hardware
    parts = [hw.processor, f"{hw.cpu_count} cores"]
    if hw.gpu is not None:
        parts.append(hw.gpu)
    return ", ".join(parts)


def _versions(record: EvaluationRecord) -> str:
    versions = dict(record.packages or {})
    versions.setdefault("diffplan", record.diffplan_version)
    versions.setdefault("torch", record.hardware.torch)
    versions.setdefault("python", record.hardware.python)
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def dataset_sha(f: ResultsFile) -> str:
    """The dataset's file hash as the report shows it (``None`` for a Minari folder)."""
    return str(f.dataset_sha256)


def files_table(files: list[ResultsFile]) -> Table:
    """One row per results file; hashes shortened to 12 characters (in full in the groups)."""
    columns = [Column("file"), Column("cell"), Column("created"), Column("git revision"), Column("dataset sha256"),
               Column("checkpoint sha256"), Column("seeds"), Column("episodes", numeric=True)]
    rows = []
    for f in files:
        r = f.record
        rows.append([
            short_name(f.path), f"{f.cell.task} / {f.cell.label}", r.created_at, r.git_revision[:18],
            dataset_sha(f)[:12], f.checkpoint_sha256[:12],
            ",".join(map(str, r.seeds or sorted({e.seed for e in f.episodes}))), str(len(f.episodes)),
        ])
    return _table(columns, rows)


def _with_path(sha: str, path: str) -> str:
    return f"{sha} ({path})" if path else sha


def provenance_groups(files: list[ResultsFile]) -> list[tuple[str, list[tuple[str, int]]]]:
    """For each provenance field, its distinct values over the files and how many files have each."""
    fields: dict[str, Callable[[ResultsFile], str]] = {
        "git revision": lambda f: f.record.git_revision,
        "dataset sha256": lambda f: _with_path(dataset_sha(f), f.record.dataset.path),
        "checkpoint sha256": lambda f: _with_path(f.checkpoint_sha256, f.record.checkpoint.path),
        "hardware": lambda f: _hardware(f.record),
        "versions": lambda f: _versions(f.record),
    }
    groups = []
    for name, value in fields.items():
        counts: dict[str, int] = {}
        for f in files:
            counts[value(f)] = counts.get(value(f), 0) + 1
        groups.append((name, sorted(counts.items(), key=lambda kv: -kv[1])))
    return groups


def _group_lines(files: list[ResultsFile]) -> list[tuple[str, str]]:
    n = len(files)
    return [(name, "; ".join(f"{value} ({count} of {n} files)" for value, count in values))
            for name, values in provenance_groups(files)]


def mixed_sources(task: TaskSummary) -> list[str]:
    """Notes for a task whose planner cells come from different checkpoints or datasets (their differences
    then mix the guidance with the model); baselines of their own (``bc``, ``offline``) are left out."""
    files = [f for c in task.cells if c.cell.kind not in REFERENCE_POLICIES for f in c.cell.files]
    notes = []
    keys: tuple[tuple[str, Callable[[ResultsFile], str | None]], ...] = (
        ("checkpoints", lambda f: f.checkpoint_sha256), ("datasets", dataset_sha))
    for what, key in keys:
        distinct = {key(f) for f in files}
        if len(distinct) > 1:
            notes.append(f"the cells of {task.task} come from {len(distinct)} different {what}: differences between "
                         "them are not the guidance's alone (see Provenance)")
    return notes


def _config_text(f: ResultsFile) -> str:
    r = f.record
    config = {"cell": None if r.cell is None else r.cell.to_json(), "config": dict(r.config),
              "trained_config": dict(r.trained_config), "checkpoint": r.checkpoint.to_json(),
              "dataset": r.dataset.to_json()}
    return json.dumps(config, indent=1, default=str)


def environment() -> list[tuple[str, str]]:
    """What wrote the report: Python, package versions, git revision, platform."""
    return [("python", platform.python_version()), *package_versions(REPORT_PACKAGES).items(),
            ("git revision", git_revision()), ("platform", platform.platform())]


# --- building the views -------------------------------------------------------------------------


def _image(path: Path, caption: str, out_dir: Path) -> Image:
    return Image(path, caption, path.relative_to(out_dir).as_posix())


def build_view(title: str, sections: list[TaskSection], files: list[ResultsFile], notes: list[str], out_dir: Path,
               methods: str) -> ReportView:
    """The report's view: built once, rendered as HTML and as Markdown (images under ``out_dir``)."""
    tasks = []
    for section in sections:
        task = section.summary
        tasks.append(TaskView(
            task=task.task, anchor=slug(task.task), findings=findings(task), notes=list(task.notes),
            figures=[_image(f.path, f.caption, out_dir) for f in section.figures],
            cells=cell_table(task), baseline=task.baseline.label,
            paired=paired_table(task) if task.comparisons else None,
            media_cell=section.media.cell, media=[_image(m.path, m.caption, out_dir) for m in section.media.items],
            media_notes=list(section.media.notes),
        ))
    return ReportView(
        title=title,
        generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        n_files=len(files),
        n_cells=sum(len(s.summary.cells) for s in sections),
        notes=list(notes),
        tasks=tasks,
        methods=methods,
        provenance=_group_lines(files),
        files=files_table(files),
        configs=[ConfigView(str(f.path), f.cell.label, _config_text(f)) for f in files],
        environment=environment(),
    )


# --- one evaluation (the demo's report.md) -----------------------------------------------------


@dataclass(frozen=True)
class EvaluationView:
    """One evaluation's report, as text; rendered by ``evaluation.md.j2``."""

    task: str
    facts: list[str]
    image: str | None
    commands: list[str]


def _reference_detail(ref: ReferenceScale) -> str:
    """What the reference returns were measured with, and which scales they must not be compared to."""
    if ref.method == "minari":
        detail = (f" ({ref.min_policy or 'random policy'} and {ref.max_policy or 'expert policy'}"
                  + (f", {ref.n_episodes} episodes each" if ref.n_episodes is not None else "") + ")")
        return detail + ". These are not D4RL's maze2d reference scores; do not compare the two scales directly."
    if ref.method == "d4rl":
        return " (D4RL's published reference returns)."
    return ""


def _dataset_line(record: EvaluationRecord) -> str:
    """The dataset's name and identity (or, in results written before identities, its file hash)."""
    dataset = record.dataset
    name = dataset.path if dataset.path.startswith("minari:") else Path(dataset.path).name
    if dataset.identity:
        return f"`{name}` (identity {dataset.identity[:12]}…)"
    return f"`{name}` (sha256 {str(dataset.sha256)[:12]}…)"


def evaluation_view(
    results: EvaluationRecord | Mapping[str, Any],
    *,
    image: str | None = None,
    training: Mapping[str, Any] | None = None,
    commands: list[str] | None = None,
) -> EvaluationView:
    """The view of one evaluation (its record, or results.json's parsed JSON).

    Raises:
        ResultsError: ``results`` is not a results record.
    """
    r = results if isinstance(results, EvaluationRecord) else EvaluationRecord.from_json(results)
    score, ref, cfg, hardware = r.normalized_score, r.reference_scores, r.config, r.hardware
    gpu = f", {hardware.gpu}" if hardware.gpu is not None else ""
    facts = [
        f"normalized score: **{score.mean:.1f} ± {score.stderr:.1f}** ({ref.label}; mean ± standard error over "
        f"{r.n_episodes} episodes, seeds {list(r.seeds)}; {r.n_failed} failed)",
        "success rate (reached the goal at least once): "
        + ("n/a (scored by return only)" if r.success_rate is None else f"{r.success_rate:.2f}"),
        f"mean episode return: {r.return_.mean:.1f}",
        f"reference returns ({ref.method} method, from {ref.source or '?'}): "
        f"min {ref.min:.2f}, max {ref.max:.2f}{_reference_detail(ref)}",
        f"planning: {r.plan_time_s.n_plans} batched plans, {r.plan_time_s.mean:.3f} s each on average "
        f"({cfg['planner']['mode']} execution, replan_every={cfg['planner']['replan_every']}, "
        f"{cfg['diffusion']['sampler']} with {cfg['diffusion']['sampling_steps']} steps)",
        f"evaluation wall time: {r.wall_time_s:.1f} s on {hardware.processor} ({hardware.cpu_count} cores{gpu})",
        f"dataset: {_dataset_line(r)}",
        f"checkpoint: step {r.checkpoint.step} ({'EMA' if r.checkpoint.ema else 'raw'} weights)",
        f"git revision: {r.git_revision}",
    ]
    if training:
        facts.append(f"training: {training['steps']} steps in {training['wall_time_s']:.0f} s "
                     f"({training['steps_per_s']:.1f} steps/s), final loss {training['final_loss']:.4f}")
    return EvaluationView(r.task, facts, image, list(commands or []))
