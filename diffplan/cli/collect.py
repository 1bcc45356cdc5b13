"""``diffplan-collect``: write the task's dataset with the recipe of its suite."""

from __future__ import annotations

import logging
from pathlib import Path

from diffplan.cli.common import hydra_entry
from diffplan.config import Config

log = logging.getLogger(__name__)


def run_collect(cfg: Config) -> Path:
    """Collect ``collect.n_steps`` (default: ``task.dataset_steps``) into ``task.dataset``.

    Resumable: an interrupted collection continues from its partial file; a finished file
    is left as it is.
    """
    from diffplan_envs import MAZE_TASKS, collect_maze_dataset

    if cfg.task.name not in MAZE_TASKS:
        raise ValueError(f"no collector for task {cfg.task.name!r}; collectors exist for {sorted(MAZE_TASKS)}")
    n_steps = cfg.collect.n_steps or cfg.task.dataset_steps
    path = collect_maze_dataset(
        cfg.task.name,
        n_steps=n_steps,
        seed=cfg.collect.seed,
        path=Path(cfg.task.dataset),
        ref_episodes=cfg.collect.ref_episodes,
        progress=cfg.collect.progress,
    )
    log.info("dataset: %s", path)
    return path


main = hydra_entry(run_collect)
