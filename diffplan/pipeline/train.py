"""What ``diffplan-train`` runs: train the trajectory diffusion model on the task's dataset.

The command (:mod:`diffplan.cli.train`) composes the config and calls :func:`run_train`; the
Python API (:mod:`diffplan.api`) and sweeps call it too.
"""

from __future__ import annotations

import logging

from diffplan.config import Config
from diffplan.data.identity import dataset_record
from diffplan.tasks import task_episodes
from diffplan.training import distributed
from diffplan.training.trainer import Trainer, TrainSummary

log = logging.getLogger(__name__)


def run_train(cfg: Config) -> TrainSummary:
    """Train (resuming from ``run_dir/checkpoint.pt`` when it exists) and return a summary.

    ``task.dataset`` is a .hdf5 file (the project's or D4RL's layout), ``minari:<id>`` or a Minari
    dataset folder; the checkpoint records its identity (:func:`diffplan.data.identity.dataset_record`).
    """
    episodes = task_episodes(cfg.task)
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
