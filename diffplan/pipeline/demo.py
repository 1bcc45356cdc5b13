"""``diffplan-demo``: collect a small umaze dataset, train, evaluate, write a report.

Everything goes under ``run_dir`` (default ``runs/demo``): the dataset, the checkpoint,
``eval/results.json``, ``eval/paths.png`` and ``report.md``. Each stage resumes: a
finished dataset is reused and training continues from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from diffplan.cli.collect import run_collect
from diffplan.cli.common import CommandHelp, hydra_entry
from diffplan.cli.evaluate import run_evaluate
from diffplan.cli.train import run_train
from diffplan.config import Config
from diffplan.reporting.markdown import write_eval_report

log = logging.getLogger(__name__)


def run_demo(cfg: Config) -> Path:
    """Run the three stages and write ``run_dir/report.md``; returns its path."""
    start = time.perf_counter()
    run_collect(cfg)
    summary = run_train(cfg)
    results_path = run_evaluate(cfg)
    results = json.loads(results_path.read_text())
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


main = hydra_entry(run_demo, config_name="demo", help=CommandHelp(
    options=(
        "task.name",
        "run_dir",
        "collect.n_steps",
        "train.steps",
        "eval.n_episodes",
        "eval.seeds",
    ),
    examples=(
        "diffplan-demo",
        "diffplan-demo run_dir=runs/demo-long train.steps=20000",
    ),
))

if __name__ == "__main__":
    main()
