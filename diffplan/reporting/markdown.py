"""A short Markdown report of one evaluation (the demo's report.md), written with ``evaluation.md.j2``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffplan.evaluation.results import EvaluationRecord
from diffplan.reporting.view import evaluation_view
from diffplan.reporting.writer import render


def eval_report(
    results: EvaluationRecord | Mapping[str, Any],
    *,
    image: str | None = None,
    training: Mapping[str, Any] | None = None,
    commands: list[str] | None = None,
) -> str:
    """Markdown text summarizing one evaluation: its record, or results.json's parsed JSON.

    Raises:
        ResultsError: ``results`` is not a results record (naming the key and the fix).
    """
    return render("evaluation.md.j2", evaluation_view(results, image=image, training=training, commands=commands))


def write_eval_report(path: str | Path, results: EvaluationRecord | Mapping[str, Any], **kwargs: Any) -> Path:
    """Write :func:`eval_report` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(eval_report(results, **kwargs))
    return path
