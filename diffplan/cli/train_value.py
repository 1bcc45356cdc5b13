"""``diffplan-train-value``: train the value function that guides a trained diffusion model.

Example: ``diffplan-train-value task=hopper-medium value.steps=200000`` trains on the dataset
of ``runs/hopper-medium/checkpoint.pt`` (``value.diffusion_checkpoint``) and writes
``runs/hopper-medium/value/checkpoint.pt`` (``value.run_dir``), resuming from it when rerun.
Data-parallel over N processes: ``torchrun --nproc-per-node N -m diffplan.cli.train_value ...``.
"""

from __future__ import annotations

from diffplan.cli.common import CommandHelp, hydra_entry
from diffplan.pipeline.train_value import run_train_value

main = hydra_entry(run_train_value, help=CommandHelp(
    doc=__doc__,
    options=(
        "task.name",
        "run_dir",
        "value.diffusion_checkpoint",
        "value.discount",
        "value.steps",
        "value.batch_size",
        "value.run_dir",
        "value.device",
    ),
    examples=(
        "diffplan-train-value task=hopper-medium +experiment=locomotion",
    ),
))

if __name__ == "__main__":
    main()
