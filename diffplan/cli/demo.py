"""``diffplan-demo``: collect a small umaze dataset, train, evaluate, write a report.

Everything goes under ``run_dir`` (default ``runs/demo``): the dataset, the checkpoint,
``eval/results.json``, ``eval/paths.png`` and ``report.md``. Each stage resumes: a
finished dataset is reused and training continues from its last checkpoint.
"""

from __future__ import annotations

from diffplan.cli.common import CommandHelp, hydra_entry
from diffplan.pipeline.demo import run_demo

main = hydra_entry(run_demo, config_name="demo", help=CommandHelp(
    doc=__doc__,
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
