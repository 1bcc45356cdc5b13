"""The report writer: Jinja2 templates (``diffplan/reporting/templates/``) lay out a view as text.

One view (:mod:`diffplan.reporting.view`) renders as the sweep report's HTML and Markdown
(``report.html.j2``, ``report.md.j2``) or as one evaluation's Markdown (``evaluation.md.j2``).
HTML templates (``*.html.j2``) escape every value; Markdown ones write values as they are
(table cells with ``|`` escaped).
"""

from __future__ import annotations

import functools
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from diffplan.reporting.view import EvaluationView, ReportView


def md_cell(text: str) -> str:
    """A Markdown table cell: ``|`` escaped, line breaks as spaces."""
    return str(text).replace("|", "\\|").replace("\n", " ")


@functools.cache
def environment() -> Environment:
    """The templates' environment: autoescaping for ``*.html.j2``, an error for an undefined name."""
    env = Environment(
        loader=PackageLoader("diffplan.reporting", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=True, default=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md_cell"] = md_cell
    return env


def render(template: str, view: ReportView | EvaluationView) -> str:
    """``template`` (a file name under templates/) rendered with ``view``."""
    return environment().get_template(template).render(view=view)


def write_report(view: ReportView, out_dir: Path) -> tuple[Path, Path]:
    """Write ``view`` as ``out_dir``/report.html and report.md; returns their paths."""
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    md_path.write_text(render("report.md.j2", view))
    html_path.write_text(render("report.html.j2", view))
    return html_path, md_path
