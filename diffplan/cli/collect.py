"""``diffplan-collect``: write the task's dataset with the recipe of its suite."""

from __future__ import annotations

from diffplan.cli.common import CommandHelp, hydra_entry
from diffplan.pipeline.collect import run_collect

main = hydra_entry(run_collect, help=CommandHelp(
    doc=__doc__,
    options=(
        "task.name",
        "task.dataset",
        "collect.n_steps",
        "collect.seed",
        "collect.n_envs",
        "collect.levels",
    ),
    examples=(
        "diffplan-collect task=pointmaze-medium",
        "diffplan-collect task=hopper-medium collect.n_steps=100000",
    ),
))

if __name__ == "__main__":
    main()
