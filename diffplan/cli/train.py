"""``diffplan-train``: train the trajectory diffusion model on the task's dataset.

Data-parallel over N processes: ``torchrun --nproc-per-node N -m diffplan.cli.train ...``
(:mod:`diffplan.training.distributed`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from diffplan.cli.common import hydra_entry
from diffplan.config import Config
from diffplan.data.loading import load_episodes
from diffplan.training import distributed
from diffplan.training.trainer import Trainer, TrainSummary
from diffplan.utils import file_sha256

log = logging.getLogger(__name__)


def run_train(cfg: Config) -> TrainSummary:
    """Train (resuming from ``run_dir/checkpoint.pt`` when it exists) and return a summary."""
    from diffplan_envs import MAZE_TASKS
    from diffplan_envs.locomotion import get_locomotion_task, is_locomotion_task

    task: Any = MAZE_TASKS.get(cfg.task.name)
    if task is None and is_locomotion_task(cfg.task.name):
        task = get_locomotion_task(cfg.task.name)
    episodes = load_episodes(
        cfg.task.dataset,
        expected_obs_dim=task.obs_dim if task else None,
        expected_act_dim=task.act_dim if task else None,
    )
    dataset_info = {"path": str(Path(cfg.task.dataset).resolve()), "sha256": file_sha256(cfg.task.dataset)}
    with distributed.session(cfg.train.device):
        trainer = Trainer(cfg, episodes, cfg.run_dir, dataset_info)
        summary = trainer.train()
    log.info(
        "trained to step %d (from %d) in %.1f s (%.1f steps/s, %d process(es)), loss %.4f -> %s",
        summary.steps, summary.resumed_from, summary.wall_time_s, summary.steps_per_s, summary.world_size,
        summary.final_loss, summary.checkpoint,
    )
    return summary


main = hydra_entry(run_train)

if __name__ == "__main__":
    main()
