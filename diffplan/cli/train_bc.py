"""``diffplan-train-bc``: train the behaviour-cloning baseline on the task's dataset.

Example: ``diffplan-train-bc task=hopper-medium bc.steps=100000`` writes
``runs/hopper-medium/bc/checkpoint.pt`` (``bc.run_dir``) and resumes from it when rerun.
"""

from __future__ import annotations

from diffplan.cli.common import CommandHelp, hydra_entry
from diffplan.pipeline.train_bc import run_train_bc

main = hydra_entry(run_train_bc, help=CommandHelp(
    doc=__doc__,
    options=(
        "task.name",
        "run_dir",
        "bc.steps",
        "bc.batch_size",
        "bc.run_dir",
        "bc.device",
    ),
    examples=(
        "diffplan-train-bc task=hopper-medium",
    ),
))

if __name__ == "__main__":
    main()
