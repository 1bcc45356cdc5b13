"""What ``diffplan-train-bc`` runs: train the behaviour-cloning baseline on the task's dataset.

The command (:mod:`diffplan.cli.train_bc`) composes the config and calls :func:`run_train_bc`; the
Python API (:mod:`diffplan.api`) and sweeps call it too.
"""

from __future__ import annotations

import logging

from diffplan.baselines.bc import BCSummary, BCTrainer
from diffplan.config import Config
from diffplan.data.identity import dataset_record
from diffplan.tasks import task_episodes

log = logging.getLogger(__name__)


def run_train_bc(cfg: Config) -> BCSummary:
    """Train BC (resuming from ``bc.run_dir/checkpoint.pt`` when it exists) and return a summary."""
    episodes = task_episodes(cfg.task)
    dataset_info = dataset_record(cfg.task.dataset, episodes)
    trainer = BCTrainer(cfg.bc, episodes, task=cfg.task.name, dataset_info=dataset_info)
    summary = trainer.train()
    log.info(
        "BC trained to step %d (from %d) in %.1f s (%.1f steps/s), loss %.5f -> %s",
        summary.steps, summary.resumed_from, summary.wall_time_s, summary.steps_per_s,
        summary.final_loss, summary.checkpoint,
    )
    return summary
