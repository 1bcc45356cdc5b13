"""What ``diffplan-demo`` runs: collect a small umaze dataset, train, evaluate, write a report.

The command (:mod:`diffplan.cli.demo`) composes the config and calls :func:`run_demo`; the
Python API (:mod:`diffplan.api`) and sweeps call it too.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from diffplan.config import Config
from diffplan.evaluation.results import read_record
from diffplan.pipeline.collect import run_collect
from diffplan.pipeline.evaluate import run_evaluate
from diffplan.pipeline.train import run_train
from diffplan.reporting.markdown import write_eval_report

log = logging.getLogger(__name__)


def run_demo(cfg: Config) -> Path:
    """Run the three stages and write ``run_dir/report.md``; returns its path."""
    start = time.perf_counter()
    run_collect(cfg)
    summary = run_train(cfg)
    results_path = run_evaluate(cfg)
    results = read_record(results_path)
    training = {k: v for k, v in asdict(summary).items() if k != "checkpoint"}
    image = results_path.parent / "paths.png"
    report = write_eval_report(
        Path(cfg.run_dir) / "report.md",
        results,
        image=os.path.relpath(image, cfg.run_dir) if image.exists() else None,
        training=training,
        commands=["diffplan-demo " + " ".join(sys.argv[1:])],
    )
    log.info("demo finished in %.0f s: %s", time.perf_counter() - start, report)
    return report
