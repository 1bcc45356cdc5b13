"""What ``diffplan-train-value`` runs: train the value function that guides a trained diffusion model.

The command (:mod:`diffplan.cli.train_value`) composes the config and calls :func:`run_train_value`; the
Python API (:mod:`diffplan.api`) and sweeps call it too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from diffplan.config import Config
from diffplan.data.identity import dataset_record
from diffplan.data.loading import load_episodes
from diffplan.data.returns import best_episodes
from diffplan.training import distributed
from diffplan.training.checkpoint import CheckpointError, load_checkpoint, load_trained_model
from diffplan.training.loop import TrainSummary
from diffplan.training.value_trainer import ValueTrainer

log = logging.getLogger(__name__)


def run_train_value(cfg: Config) -> TrainSummary:
    """Train the value function of ``cfg.value`` (resuming when its checkpoint exists).

    The dataset is ``value.dataset``, or when null the one recorded in the diffusion
    checkpoint; either way it must be the dataset the diffusion model was trained on (by identity,
    :mod:`diffplan.data.identity`; by the file's sha256 for checkpoints that record no identity).

    Raises:
        CheckpointError: missing diffusion checkpoint, or a dataset other than its own.
    """
    vc = cfg.value
    checkpoint = Path(vc.diffusion_checkpoint)
    recorded = json.loads(load_checkpoint(checkpoint, key="value.diffusion_checkpoint").get("dataset", "{}"))
    dataset = vc.dataset or recorded.get("path")
    if not dataset:
        raise CheckpointError(
            f"diffusion checkpoint {checkpoint} records no dataset file; "
            "set value.dataset to the file it was trained on"
        )
    diffusion = load_trained_model(checkpoint, device="cpu", key="value.diffusion_checkpoint")
    episodes = best_episodes(  # the episodes the diffusion model learned from (its task.top_return_fraction)
        load_episodes(dataset, expected_obs_dim=diffusion.layout.obs_dim,
                      expected_act_dim=diffusion.layout.act_dim or None),
        diffusion.config.task.top_return_fraction,
    )
    dataset_info = dataset_record(dataset, episodes)
    if recorded.get("identity"):
        if recorded["identity"] != dataset_info["identity"]:
            raise CheckpointError(
                f"{dataset} has identity {dataset_info['identity'][:12]}…, but {checkpoint} was trained on a dataset "
                f"with identity {recorded['identity'][:12]}… ({recorded.get('path')}); set value.dataset to that one"
            )
    elif recorded.get("sha256") and recorded["sha256"] != dataset_info["sha256"]:
        raise CheckpointError(
            f"{dataset} has sha256 {str(dataset_info['sha256'])[:12]}…, but {checkpoint} was trained on a dataset "
            f"with sha256 {recorded['sha256'][:12]}… ({recorded.get('path')}); set value.dataset to that file"
        )
    with distributed.session(vc.device):
        trainer = ValueTrainer(vc, diffusion, episodes, dataset_info)
        summary = trainer.train()
    log.info(
        "value function trained to step %d (from %d) in %.1f s (%.1f steps/s, %d process(es)), loss %.4f -> %s",
        summary.steps, summary.resumed_from, summary.wall_time_s, summary.steps_per_s, summary.world_size,
        summary.final_loss, summary.checkpoint,
    )
    return summary
