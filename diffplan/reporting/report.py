"""A guidance-sweep report from evaluator results: report.html, report.md, episodes.csv, images/.

:func:`build_report` reads results files (``diffplan-evaluate``'s results.json), groups them
into cells (task x guidance kind x strength, :mod:`diffplan.reporting.cells`), estimates
every cell's normalized score with 95% stratified-bootstrap intervals and its IQM, compares
each cell with a baseline cell on the same start states (:mod:`diffplan.reporting.summary`),
draws the metrics against strength (:mod:`diffplan.reporting.plots`), adds episode media
when ``episodes.npz`` files exist (:mod:`diffplan.reporting.media`) and writes:

- ``report.html``: self-contained (images inlined as base64; no external CSS or JS);
- ``report.md``: the same numbers as Markdown tables, linking ``images/``;
- ``episodes.csv``: one row per episode per cell;
- ``images/``: the figures and GIFs.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffplan.evaluation.reference import scale_label
from diffplan.evaluation.results import package_versions
from diffplan.reporting.cells import REFERENCE_POLICIES, Cell, ResultsFile, find_results, group_cells, load_results
from diffplan.reporting.media import MediaItem, TaskMedia, slug, task_media
from diffplan.reporting.plots import METRICS, paired_figure, strength_figure
from diffplan.reporting.summary import BootstrapSettings, CellSummary, Comparison, TaskSummary, summarize
from diffplan.utils import git_revision

CSV_COLUMNS = ("cell", "task", "kind", "strength", "seed", "episode", "reset_seed", "return", "normalized_score",
               "success", "length", "failed", "source")

REPORT_PACKAGES = ("diffplan", "torch", "numpy", "gymnasium", "gymnasium-robotics", "mujoco", "matplotlib")
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
class ReportFigure:
    """A figure of the report: where it was written and its caption."""

    path: Path
    caption: str


@dataclass
class TaskSection:
    """Everything the report shows for one task."""

    summary: TaskSummary
    figures: list[ReportFigure] = field(default_factory=list)
    media: TaskMedia = field(default_factory=TaskMedia)


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    html: Path
    markdown: Path
    csv: Path
    images: list[Path]
    sections: list[TaskSection]
    notes: list[str]


# --- numbers as text --------------------------------------------------------------------------


def _num(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _secs(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def _strength(value: float) -> str:
    return f"{value:g}"


def _cell_rows(section: TaskSection) -> tuple[list[str], list[list[str]]]:
    task = section.summary
    ci = _ci_name(task)
    headers = ["cell", "kind", "strength", "episodes", "seeds", f"mean [{ci}]", f"IQM [{ci}]"]
    if task.has_success:
        headers.append(f"success [{ci}]")
    headers += ["s per plan (median)", "failed", "files"]
    rows = []
    for c in task.cells:
        label = c.label + (" (baseline)" if c is task.baseline else "")
        row = [label, c.cell.kind, _strength(c.cell.strength), str(c.score.n), ",".join(map(str, c.cell.seeds)),
               c.score.format(1), c.iqm.format(1)]
        if task.has_success:
            row.append("n/a" if c.success is None else c.success.format(2))
        row += [_secs(c.plan_time[0]), str(c.n_failed), ", ".join(_short(f.path) for f in c.cell.files)]
        rows.append(row)
    return headers, rows


def _verdict(comparison: Comparison) -> str:
    if comparison.result is None:
        return "n/a"
    ci = comparison.result.difference
    if ci.low > 0:
        return "higher (CI above 0)"
    if ci.high < 0:
        return "lower (CI below 0)"
    return "no clear difference (CI spans 0)"


def _ci_name(task: TaskSummary) -> str:
    return f"{task.baseline.score.confidence:.0%} CI"


def _paired_rows(task: TaskSummary) -> tuple[list[str], list[list[str]]]:
    headers = ["cell", "baseline", "pairs", "cell mean", "baseline mean", f"difference [{_ci_name(task)}]", "verdict",
               "note"]
    rows = []
    for comparison in task.comparisons:
        r = comparison.result
        rows.append([
            comparison.cell.label, task.baseline.label, str(r.n_pairs) if r else "0",
            _num(r.mean_a) if r else "n/a", _num(r.mean_b) if r else "n/a",
            r.difference.format(1) if r else "n/a", _verdict(comparison), comparison.note,
        ])
    return headers, rows


def _scale(task: TaskSummary) -> str:
    """`` (D4RL scale)`` and the like: the reference returns the task's results files normalize with."""
    refs = {(str(r.get("method")), r.get("min"), r.get("max")) for c in task.cells for f in c.cell.files
            if isinstance(r := f.data.get("reference_scores"), dict)}
    if not refs:
        return ""
    if len(refs) > 1:
        return " (mixed reference returns: the cells' scores are on different scales)"
    method, low, high = refs.pop()
    return f" ({scale_label({'method': method})}: min {low:g}, max {high:g})"


def _findings(task: TaskSummary) -> list[str]:
    best = task.best
    lines = [f"Best mean normalized score{_scale(task)}: {best.label} with {best.score.format(1)} "
             f"(IQM {best.iqm.format(1)}) over {best.score.n} episodes, seeds {best.cell.seeds}."]
    lines.append(f"Baseline: {task.baseline.label} with {task.baseline.score.format(1)}.")
    for comparison in task.comparisons:
        if comparison.result is not None and comparison.result.difference.excludes(0.0):
            d = comparison.result.difference
            lines.append(f"{comparison.cell.label} vs {task.baseline.label}: {d.estimate:+.1f} "
                         f"[{d.low:+.1f}, {d.high:+.1f}] over {comparison.result.n_pairs} paired episodes "
                         f"(the {_ci_name(task)} excludes 0).")
    if not task.comparisons:
        lines.append("A single cell: nothing to compare it with.")
    elif not any(c.result is not None and c.result.difference.excludes(0.0) for c in task.comparisons):
        lines.append(f"No cell differs from the baseline with a {_ci_name(task)} that excludes 0.")
    return lines


def _short(path: Path) -> str:
    return f"{path.parent.name}/{path.name}" if path.name == "results.json" else path.name


# --- provenance -------------------------------------------------------------------------------


def _hardware(data: dict[str, Any]) -> str:
    hw = data.get("hardware") or {}
    parts = [str(hw.get("processor", "?")), f"{hw.get('cpu_count', '?')} cores"]
    if "gpu" in hw:
        parts.append(str(hw["gpu"]))
    return ", ".join(parts)


def _versions(data: dict[str, Any]) -> str:
    versions = dict(data.get("packages") or {})
    hw = data.get("hardware") or {}
    versions.setdefault("diffplan", data.get("diffplan_version", "?"))
    if "torch" in hw:
        versions.setdefault("torch", hw["torch"])
    if "python" in hw:
        versions.setdefault("python", hw["python"])
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def _provenance_rows(files: list[ResultsFile]) -> tuple[list[str], list[list[str]]]:
    """One row per results file; hashes shortened to 12 characters (in full in the groups)."""
    headers = ["file", "cell", "created", "git revision", "dataset sha256", "checkpoint sha256", "seeds", "episodes"]
    rows = []
    for f in files:
        d = f.data
        rows.append([
            _short(f.path), f"{f.cell.task} / {f.cell.label}", str(d.get("created_at", "?")),
            str(d.get("git_revision", "?"))[:18], _dataset_sha(d)[:12], str(f.checkpoint_sha256 or "?")[:12],
            ",".join(map(str, d.get("seeds") or sorted({e.seed for e in f.episodes}))), str(len(f.episodes)),
        ])
    return headers, rows


def _dataset_sha(data: dict[str, Any]) -> str:
    dataset = data.get("dataset")
    return str(dataset.get("sha256", "?")) if isinstance(dataset, dict) else "?"


def _with_path(data: dict[str, Any], key: str, sha: str) -> str:
    entry = data.get(key)
    path = entry.get("path") if isinstance(entry, dict) else None
    return f"{sha} ({path})" if path else sha


def provenance_groups(files: list[ResultsFile]) -> list[tuple[str, list[tuple[str, int]]]]:
    """For each provenance field, its distinct values over the files and how many files have each."""
    fields = {
        "git revision": lambda f: str(f.data.get("git_revision", "?")),
        "dataset sha256": lambda f: _with_path(f.data, "dataset", _dataset_sha(f.data)),
        "checkpoint sha256": lambda f: _with_path(f.data, "checkpoint", str(f.checkpoint_sha256 or "?")),
        "hardware": lambda f: _hardware(f.data),
        "versions": lambda f: _versions(f.data),
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
    for what, key in (("checkpoints", lambda f: f.checkpoint_sha256), ("datasets", lambda f: _dataset_sha(f.data))):
        distinct = {key(f) for f in files}
        if len(distinct) > 1:
            notes.append(f"the cells of {task.task} come from {len(distinct)} different {what}: differences between "
                         "them are not the guidance's alone (see Provenance)")
    return notes


def _environment() -> dict[str, str]:
    return {"python": platform.python_version(), **package_versions(REPORT_PACKAGES),
            "git revision": git_revision(), "platform": platform.platform()}


# --- writers ----------------------------------------------------------------------------------


def write_episodes_csv(path: Path, cells: list[Cell]) -> Path:
    """One row per episode per cell (columns :data:`CSV_COLUMNS`)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for cell in cells:
            for e in cell.episodes:
                writer.writerow([cell.label, cell.task, cell.kind, _strength(cell.strength), e.seed, e.episode,
                                 e.reset_seed, repr(e.episode_return), repr(e.normalized_score), int(e.success),
                                 e.length, int(e.failed), str(e.source)])
    return path


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    def clean(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(clean, headers)) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(map(clean, row)) + " |" for row in rows]
    return lines + [""]


def render_markdown(title: str, sections: list[TaskSection], files: list[ResultsFile], notes: list[str],
                    out_dir: Path, methods: str) -> str:
    """The Markdown report (images linked relative to ``out_dir``)."""
    generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"# {title}", "", f"{len(files)} results files, {sum(len(s.summary.cells) for s in sections)} cells, "
             f"tasks: {', '.join(s.summary.task for s in sections)}. Generated {generated}.", ""]
    lines += [f"> {n}" for n in notes] + ([""] if notes else [])
    for section in sections:
        task = section.summary
        lines += [f"## {task.task}", ""]
        lines += [f"- {line}" for line in _findings(task) + task.notes] + [""]
        for figure in section.figures:
            link = figure.path.relative_to(out_dir).as_posix()
            lines += [f"![{figure.caption}]({link})", "", f"*{figure.caption}*", ""]
        lines += ["### Cells", ""] + _md_table(*_cell_rows(section))
        if task.comparisons:
            lines += [f"### Paired differences vs {task.baseline.label}", ""] + _md_table(*_paired_rows(task))
        lines += ["### Episodes", ""]
        for item in section.media.items:
            lines += [f"![{item.caption}]({item.path.relative_to(out_dir).as_posix()})", "", f"*{item.caption}*", ""]
        lines += [f"- {n}" for n in section.media.notes] + [""]
    lines += ["## Method", "", methods, "", "## Provenance", ""]
    lines += [f"- {name}: {text}" for name, text in _group_lines(files)] + [""] + _md_table(*_provenance_rows(files))
    env = _environment()
    lines += ["Report environment: " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".", "",
              "Resolved configs: in report.html (collapsed) and in each results file.", ""]
    return "\n".join(lines)


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#1f2328;line-height:1.45}
h1{font-size:1.6rem;border-bottom:2px solid #d0d7de;padding-bottom:.3rem}
h2{font-size:1.3rem;margin-top:2.2rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
h3{font-size:1.05rem;margin-top:1.4rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.85rem}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}
tr:nth-child(even) td{background:#fbfcfd}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
figure{display:inline-block;margin:.5rem 1rem .5rem 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #eaeef2}
figcaption{font-size:.8rem;color:#57606a;max-width:720px}
.note{background:#fff8c5;border-left:4px solid #d4a72c;padding:.4rem .7rem;margin:.4rem 0;font-size:.9rem}
.findings li{margin:.15rem 0}
.higher{color:#1a7f37;font-weight:600}.lower{color:#cf222e;font-weight:600}
details{margin:.3rem 0}summary{cursor:pointer;font-size:.9rem}
pre{background:#f6f8fa;padding:.6rem;overflow:auto;font-size:.75rem;max-height:30rem}
.meta{color:#57606a;font-size:.9rem}
td,code{overflow-wrap:anywhere}code{font-size:.8rem}.prov li{margin:.2rem 0}
"""

_NUMERIC = {"strength", "episodes", "pairs", "cell mean", "baseline mean", "failed", "s per plan (median)"}


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for h, value in zip(headers, row, strict=True):
            cls = ' class="num"' if h in _NUMERIC or h.endswith("CI]") else ""
            if h == "verdict":
                cls = ' class="higher"' if value.startswith("higher") else ' class="lower"' if value.startswith(
                    "lower") else ""
            cells.append(f"<td{cls}>{html.escape(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(path: Path, mime: str, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:{mime};base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _media_html(item: MediaItem) -> str:
    return _img(item.path, item.mime, item.caption)


def render_html(title: str, sections: list[TaskSection], files: list[ResultsFile], notes: list[str],
                methods: str) -> str:
    """The self-contained HTML report."""
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{e(title)}</h1>",
             f"<p class=\"meta\">{len(files)} results files, {sum(len(s.summary.cells) for s in sections)} cells. "
             f"Generated {e(time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))}. Tasks: "
             + ", ".join(f'<a href="#{e(slug(s.summary.task))}">{e(s.summary.task)}</a>' for s in sections)
             + ' &middot; <a href="#method">method</a> &middot; <a href="#provenance">provenance</a></p>']
    parts += [f'<div class="note">{e(n)}</div>' for n in notes]
    for section in sections:
        task = section.summary
        parts.append(f'<h2 id="{e(slug(task.task))}">{e(task.task)}</h2>')
        parts.append('<ul class="findings">' + "".join(f"<li>{e(line)}</li>" for line in _findings(task)) + "</ul>")
        parts += [f'<div class="note">{e(n)}</div>' for n in task.notes]
        parts += [_img(f.path, "image/png", f.caption) for f in section.figures]
        parts += ["<h3>Cells</h3>", _html_table(*_cell_rows(section))]
        if task.comparisons:
            parts += [f"<h3>Paired differences vs {e(task.baseline.label)}</h3>", _html_table(*_paired_rows(task))]
        parts.append("<h3>Episodes</h3>")
        if section.media.cell:
            parts.append(f"<p class=\"meta\">Best, median and worst episode of {e(section.media.cell)}.</p>")
        parts += [_media_html(item) for item in section.media.items]
        parts += [f'<div class="note">{e(n)}</div>' for n in section.media.notes]
    parts += ['<h2 id="method">Method</h2>', f"<p>{e(methods)}</p>"]
    parts += ['<h2 id="provenance">Provenance</h2>', '<ul class="prov">']
    parts += [f"<li><b>{e(name)}</b>: <code>{e(text)}</code></li>" for name, text in _group_lines(files)]
    parts += ["</ul>", _html_table(*_provenance_rows(files)), "<h3>Resolved configs</h3>"]
    for f in files:
        config = {"cell": f.data.get("cell"), "config": f.data.get("config"),
                  "trained_config": f.data.get("trained_config"), "checkpoint": f.data.get("checkpoint"),
                  "dataset": f.data.get("dataset")}
        parts.append(f"<details><summary>{e(str(f.path))} ({e(f.cell.label)})</summary>"
                     f"<pre>{e(json.dumps(config, indent=1, default=str))}</pre></details>")
    env = _environment()
    parts += ["<h3>Report environment</h3>", _html_table(["package", "version"], [[k, v] for k, v in env.items()])]
    parts.append("</body></html>")
    return "\n".join(parts)


# --- the whole report -------------------------------------------------------------------------


def _figures(task: TaskSummary, images: Path) -> list[ReportFigure]:
    figures = []
    ci = _ci_name(task)
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
    md_path = out / "report.md"
    methods = methods_text(settings)
    md_path.write_text(render_markdown(title, sections, files, notes, out, methods))
    html_path = out / "report.html"
    html_path.write_text(render_html(title, sections, files, notes, methods))
    written = [f.path for s in sections for f in s.figures] + [m.path for s in sections for m in s.media.items]
    return Report(html_path, md_path, csv_path, written, sections, notes)


def cell_summaries(report: Report) -> dict[str, CellSummary]:
    """Every cell's summary by ``"<task>/<label>"`` (convenience for scripts and tests)."""
    return {f"{s.summary.task}/{c.label}": c for s in report.sections for c in s.summary.cells}
