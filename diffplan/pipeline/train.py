"""``diffplan-train``: train the trajectory diffusion model on the task's dataset.

Data-parallel over N processes: ``torchrun --nproc-per-node N -m diffplan.cli.train ...``
(:mod:`diffplan.training.distributed`).
"""

from __future__ import annotations

import logging

from diffplan.cli.common import CommandHelp, hydra_entry
from diffplan.config import Config
from diffplan.data.identity import dataset_record
from diffplan.data.loading import load_task_episodes
from diffplan.training import distributed
from diffplan.training.trainer import Trainer, TrainSummary

log = logging.getLogger(__name__)


def run_train(cfg: Config) -> TrainSummary:
    """Train (resuming from ``run_dir/checkpoint.pt`` when it exists) and return a summary.

    ``task.dataset`` is a .hdf5 file (the project's or D4RL's layout), ``minari:<id>`` or a Minari
    dataset folder; the checkpoint records its identity (:func:`diffplan.data.identity.dataset_record`).
    """
    episodes = load_task_episodes(cfg.task.dataset, cfg.task.name)
    dataset_info = dataset_record(cfg.task.dataset, episodes)
    with distributed.session(cfg.train.device):
        trainer = Trainer(cfg, episodes, cfg.run_dir, dataset_info)
        summary = trainer.train()
    log.info(
        "trained to step %d (from %d) in %.1f s (%.1f steps/s, %d process(es)), loss %.4f -> %s",
        summary.steps, summary.resumed_from, summary.wall_time_s, summary.steps_per_s, summary.world_size,
        summary.final_loss, summary.checkpoint,
    )
    return summary


main = hydra_entry(run_train, help=CommandHelp(
    options=(
        "task.name",
        "task.dataset",
        "task.horizon",
        "run_dir",
        "model.name",
        "model.dim",
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
