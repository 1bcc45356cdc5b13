"""``diffplan-train``: train the trajectory diffusion model on the task's dataset.

Data-parallel over N processes: ``torchrun --nproc-per-node N -m diffplan.cli.train ...``
(:mod:`diffplan.training.distributed`).
"""

from __future__ import annotations

from diffplan.cli.common import CommandHelp, hydra_entry
from diffplan.pipeline.train import run_train

main = hydra_entry(run_train, help=CommandHelp(
    doc=__doc__,
    options=(
        "task.name",
        "task.dataset",
        "task.horizon",
        "run_dir",
        "model.name",
        "model.unet.dim",
        "train.steps",
        "train.batch_size",
        "train.lr",
        "train.lr_decay",
        "train.device",
        "train.precision",
        "train.seed",
    ),
    examples=(
        "diffplan-train task=pointmaze-medium train.steps=50000",
        "diffplan-train +experiment=demo",
        "diffplan-train task=hopper-medium task.dataset=path/to/d4rl-hopper-medium.hdf5",
        "torchrun --nproc-per-node 4 -m diffplan.cli.train task=hopper-medium",
    ),
))

if __name__ == "__main__":
    main()
