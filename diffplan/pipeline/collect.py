"""What ``diffplan-collect`` runs: write the task's dataset with the recipe of its suite.

The command (:mod:`diffplan.cli.collect`) composes the config and calls :func:`run_collect`; the
Python API (:mod:`diffplan.api`) and sweeps call it too.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from diffplan.config import Config
from diffplan.tasks import is_locomotion
from diffplan.utils import set_threads

log = logging.getLogger(__name__)


def run_collect(cfg: Config) -> Path:
    """Collect ``collect.n_steps`` (default: ``task.dataset_steps``) into ``task.dataset``.

    Mazes: the noisy waypoint-controller stream. Locomotion (``<robot>-<level>``): an SB3
    agent is trained as far as ``collect.levels`` need and each level's file is written
    next to ``task.dataset``. Resumable: an interrupted collection continues; a finished
    file is left as it is.
    """
    from diffplan_envs import MAZE_TASKS, collect_maze_dataset
    set_threads(cfg.collect.threads)
    n_steps = cfg.collect.n_steps or cfg.task.dataset_steps
    if Path(cfg.task.dataset).is_dir():
        raise IsADirectoryError(
            f"task.dataset={cfg.task.dataset} is a folder; give the path of the .hdf5 file to write, "
            f"e.g. task.dataset={Path(cfg.task.dataset) / (cfg.task.name + '.hdf5')}"
        )
    if is_locomotion(cfg.task):
        return _collect_locomotion(cfg, n_steps)
    if cfg.task.name not in MAZE_TASKS:
        raise ValueError(
            f"no collector for task {cfg.task.name!r}; collectors exist for {sorted(MAZE_TASKS)} and "
            "<robot>-<level> locomotion tasks (hopper, walker2d, halfcheetah)"
        )
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


def _collect_locomotion(cfg: Config, n_steps: int) -> Path:
    from diffplan_envs.collect_locomotion import AgentRecipe, collect_locomotion_datasets
    from diffplan_envs.locomotion import get_locomotion_task

    task = get_locomotion_task(cfg.task.name)
    robot = task.robot.name
    if robot not in cfg.collect.agents:
        raise ValueError(
            f"collect.agents has no recipe for robot {robot!r} (it has {sorted(cfg.collect.agents)}); "
            f"add collect.agents.{robot} to conf/collect/default.yaml or on the command line"
        )
    agent = OmegaConf.to_container(OmegaConf.structured(cfg.collect.agents[robot]), resolve=True)
    assert isinstance(agent, dict)
    levels = list(cfg.collect.levels) or [task.level]
    paths = collect_locomotion_datasets(
        task.robot,
        levels,
        recipe=AgentRecipe(**{str(k): v for k, v in agent.items()}),
        agent_dir=Path(cfg.collect.agent_dir) / robot,
        data_dir=Path(cfg.task.dataset).parent,
        n_steps=n_steps,
        seed=cfg.collect.seed,
        n_envs=cfg.collect.n_envs,
        progress=cfg.collect.progress,
    )
    for level, path in paths.items():
        log.info("%s-%s: %s", robot, level, path)
    return paths.get(task.level, next(iter(paths.values())))
