"""What ``diffplan-train-offline`` runs: train an offline RL agent (TD3+BC or IQL) on the task's dataset.

The command (:mod:`diffplan.cli.train_offline`) composes the config and calls :func:`run_train_offline`; the
Python API (:mod:`diffplan.api`) and sweeps call it too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from diffplan.agents.replay import TransitionData
from diffplan.agents.trainer import OfflineTrainer, RegenerateFn
from diffplan.config import Config
from diffplan.data.identity import dataset_record
from diffplan.training.loop import TrainSummary
from diffplan.utils import file_sha256

log = logging.getLogger(__name__)


def _source_info(path: str) -> dict[str, Any]:
    return {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}


def run_train_offline(cfg: Config, regenerate: RegenerateFn | None = None) -> TrainSummary:
    """Train ``offline.algo`` on ``task.dataset`` (+ ``offline.synthetic``), resuming from
    ``offline.run_dir/checkpoint.pt`` when it exists; return a summary. Both files' own
    ``next_observations`` are used when they have the key.

    Args:
        regenerate: the policy-guided diffusion hook ``(policy, step) -> Episodes``; None with
            ``offline.regenerate_every > 0`` builds it from the config
            (:func:`diffplan.pipeline.generate.policy_guided_regenerator`: the model of
            ``eval.checkpoint``, ``generate.*``, ``guidance=policy``).
    """
    off = cfg.offline
    if regenerate is None and off.regenerate_every > 0:
        # Policy-Guided Diffusion's loop: the diffusion model of eval.checkpoint regenerates the
        # synthetic set (generate.*) guided towards the agent (guidance=policy) every U updates.
        from diffplan.pipeline.generate import policy_guided_regenerator

        regenerate = policy_guided_regenerator(cfg)
    real = TransitionData.from_file(cfg.task.dataset, top_return_fraction=cfg.task.top_return_fraction)
    synthetic = TransitionData.from_file(off.synthetic, expected_obs_dim=real.obs_dim,
                                         expected_act_dim=real.act_dim) if off.synthetic else None
    trainer = OfflineTrainer(
        off, real, task=cfg.task.name, dataset_info=dataset_record(cfg.task.dataset, real.episodes),
        synthetic=synthetic,
        synthetic_info=_source_info(off.synthetic) if off.synthetic else None, regenerate=regenerate,
    )
    summary = trainer.train()
    losses = ", ".join(f"{name} {value:.4g}" for name, value in trainer.last_losses.items())
    log.info(
        "%s trained to update %d (from %d) in %.1f s (%.1f updates/s); last losses: %s -> %s",
        trainer.log_prefix, summary.steps, summary.resumed_from, summary.wall_time_s, summary.steps_per_s,
        losses or "none", summary.checkpoint,
    )
    return summary
