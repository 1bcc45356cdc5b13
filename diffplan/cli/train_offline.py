"""``diffplan-train-offline``: train an offline RL agent (TD3+BC or IQL) on the task's dataset.

Examples: ``diffplan-train-offline task=hopper-medium`` (TD3+BC) or
``diffplan-train-offline task=hopper-medium offline=iql`` write
``runs/hopper-medium/offline-<algo>/checkpoint.pt`` (``offline.run_dir``) and resume from it when
rerun; ``offline.synthetic=FILE offline.synthetic_ratio=0.9375`` mixes 240 synthetic transitions
of a D4RL-layout file into each batch of 256. Evaluate with ``diffplan-evaluate eval.controller=offline``.
"""

from __future__ import annotations

from diffplan.cli.common import CommandHelp, hydra_entry
from diffplan.pipeline.train_offline import run_train_offline

main = hydra_entry(run_train_offline, help=CommandHelp(
    doc=__doc__,
    options=(
        "task.name",
        "run_dir",
        "offline.algo",
        "offline.steps",
        "offline.synthetic",
        "offline.synthetic_ratio",
        "offline.run_dir",
        "offline.device",
    ),
    examples=(
        "diffplan-train-offline task=hopper-medium offline=td3bc",
        "diffplan-train-offline task=hopper-medium offline=iql "
        "offline.synthetic=runs/hopper-medium/synthetic/hopper-medium.hdf5 offline.synthetic_ratio=0.5",
    ),
))

if __name__ == "__main__":
    main()
