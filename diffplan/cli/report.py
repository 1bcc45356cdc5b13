"""``diffplan-report``: one report of many evaluations (a guidance sweep).

    diffplan-report runs/sweep --out reports/sweep
    diffplan-report results/locomotion/hopper-medium-*.json --out reports/hopper --baseline none=0

Inputs are results.json files written by ``diffplan-evaluate`` and/or directories searched
recursively for them. Writes report.html (self-contained), report.md, episodes.csv and
images/ into ``--out``; see :mod:`diffplan.reporting.report`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from diffplan.reporting.cells import ResultsError
from diffplan.reporting.summary import BootstrapSettings

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffplan-report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="results.json files and/or directories holding them")
    parser.add_argument("--out", type=Path, required=True, help="output directory (created if needed)")
    parser.add_argument("--baseline", default=None,
                        help="label of the cell others are compared with, e.g. 'none=0' (default: the unguided "
                             "cell of each task, else its lowest-strength cell)")
    parser.add_argument("--title", default="diffplan guidance sweep", help="the report's heading")
    parser.add_argument("--no-media", action="store_true", help="do not render episode GIFs (needs no OpenGL)")
    parser.add_argument("--n-resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval coverage (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap resampling seed (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``diffplan-report``; returns the exit status (2 for bad inputs)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from diffplan.reporting.report import build_report

    settings = BootstrapSettings(n_resamples=args.n_resamples, confidence=args.confidence, seed=args.seed)
    try:
        if args.out.exists() and not args.out.is_dir():  # before any results are read
            raise ValueError(f"--out {args.out} is a file, not a folder; choose another --out folder")
        report = build_report(args.inputs, args.out, baseline=args.baseline, title=args.title,
                              media=not args.no_media, settings=settings)
    except (ResultsError, ValueError, OSError) as e:
        print(f"diffplan-report: error: {e}", file=sys.stderr)
        return 2
    n_cells = sum(len(s.summary.cells) for s in report.sections)
    log.info("%d cells over %d task(s) -> %s, %s, %s", n_cells, len(report.sections), report.html, report.markdown,
             report.csv)
    for note in report.notes:
        log.info("note: %s", note)
    for section in report.sections:
        for note in section.summary.notes + section.media.notes:
            log.info("note (%s): %s", section.summary.task, note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
