"""The Python API: collect, train, evaluate and plan without knowing Hydra.

    import diffplan

    diffplan.collect("pointmaze-umaze", run_dir="runs/umaze", overrides={"collect.n_steps": 200_000})
    diffplan.train("pointmaze-umaze", run_dir="runs/umaze", experiment="demo")
    results = diffplan.evaluate("pointmaze-umaze", run_dir="runs/umaze", experiment="demo")
    planner = diffplan.load_planner("runs/umaze/checkpoint.pt")
    action = planner.act(observation, goal=goal)

Each function composes the same configs as the command of the same name (``conf/``, with
``experiment`` as ``+experiment=<name>`` and ``overrides`` as ``key=value`` pairs), so a call and a
command line with the same settings do the same thing. Bad settings raise ``ValueError`` with the
same one-line message the command prints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from diffplan.composition import compose_config, overrides_of
from diffplan.config import Config, as_config, to_container
from diffplan.guidance.kinds import import_plugins
from diffplan.tasks import is_locomotion
from diffplan.training.loop import TrainSummary

#: Overrides as a mapping (``{"train.steps": 1000}``) or Hydra strings (``["train.steps=1000"]``).
Overrides = Mapping[str, Any] | Sequence[str] | None


def make_config(
    task: str = "pointmaze-umaze",
    *,
    run_dir: str | Path | None = None,
    dataset: str | Path | None = None,
    experiment: str | None = None,
    overrides: Overrides = None,
) -> Config:
    """The validated config a command would run with these settings.

    Args:
        task: a task of ``conf/task/`` (e.g. ``pointmaze-medium``, ``hopper-medium``).
        run_dir: where checkpoints and results go (default ``runs/<task>``).
        dataset: ``task.dataset``: an HDF5 file (the project's or D4RL's layout), a Minari
            dataset folder or ``minari:<id>`` (default: the file ``diffplan-collect`` writes).
        experiment: a recipe of ``conf/experiment/`` (e.g. ``demo``), as ``+experiment=<name>``.
        overrides: any other settings, e.g. ``{"train.steps": 4000, "eval.seeds": [4, 5, 6]}``.

    Raises:
        ValueError: an unknown task, experiment or key, or a value of the wrong type.
    """
    given = [f"task={task}"]
    if experiment is not None:
        given.append(f"+experiment={experiment}")
    named = {"run_dir": run_dir, "task.dataset": dataset}
    given += overrides_of({key: str(value) for key, value in named.items() if value is not None})
    cfg = as_config(compose_config("config", given + overrides_of(overrides)))
    import_plugins(cfg.plugins)
    return cfg


def collect(task: str = "pointmaze-umaze", **settings: Any) -> Path:
    """Collect the task's dataset (``diffplan-collect``); returns its path. ``settings``: as
    :func:`make_config` (``run_dir``, ``dataset``, ``experiment``, ``overrides``)."""
    from diffplan.pipeline.collect import run_collect

    return run_collect(make_config(task, **settings))


def train(task: str = "pointmaze-umaze", **settings: Any) -> TrainSummary:
    """Train the diffusion model (``diffplan-train``), resuming from ``run_dir/checkpoint.pt`` when
    it exists; returns what the run did. ``settings``: as :func:`make_config`."""
    from diffplan.pipeline.train import run_train

    return run_train(make_config(task, **settings))


def evaluate(task: str = "pointmaze-umaze", **settings: Any) -> dict[str, Any]:
    """Evaluate ``eval.checkpoint`` (``diffplan-evaluate``) and return the results it wrote to
    ``eval.out_dir/results.json`` (normalized score, per-episode returns, timings, provenance).
    ``settings``: as :func:`make_config`.

    Raises:
        ValueError: a bad setting, a dataset or checkpoint that does not fit the task, or an
            evaluation in which every episode failed.
    """
    from diffplan.pipeline.evaluate import run_evaluate

    path = run_evaluate(make_config(task, **settings))
    results: dict[str, Any] = json.loads(path.read_text())
    return results


@dataclass(frozen=True)
class Trajectory:
    """One plan in environment units.

    Attributes:
        observations: (H, obs_dim) planned states; row 0 is the state planned from.
        actions: (H, act_dim) planned actions.
        plan_time_s: wall time of the planner call.
    """

    observations: np.ndarray
    actions: np.ndarray
    plan_time_s: float


class LoadedPlanner:
    """A trained planner of one environment: :meth:`plan` a trajectory, or :meth:`act` in closed
    loop (the controller of the checkpoint's task: a tracker for mazes, the plan's actions for
    locomotion), with the settings the model was trained with unless overridden."""

    def __init__(self, config: Config, seed: int = 0) -> None:
        from diffplan.pipeline.evaluate import build_setup

        self.config = config
        self._setup = build_setup(config)
        self._generator = torch.Generator().manual_seed(seed)
        self._step = 0
        self.reset()

    @property
    def controller(self) -> Any:
        """The batched closed-loop controller (:class:`diffplan.controllers.Controller`)."""
        return self._setup.controller

    def reset(self) -> None:
        """Forget the current plan (call at the start of each episode)."""
        self._setup.controller.reset(1)
        self._step = 0

    def _goal(self, goal: np.ndarray | Sequence[float] | None) -> np.ndarray:
        if goal is not None:
            return np.asarray(goal, dtype=np.float64).reshape(1, -1)
        if self._needs_goal:
            raise ValueError(f"{self.config.task.name} is a goal-reaching task; pass goal=<the goal position>")
        return np.zeros((1, 0))

    @property
    def _needs_goal(self) -> bool:
        return not is_locomotion(self.config.task)

    def act(self, observation: np.ndarray | Sequence[float], goal: np.ndarray | Sequence[float] | None = None
            ) -> np.ndarray:
        """The action (act_dim,) to take at ``observation`` (obs_dim,), replanning when the
        controller's schedule says so."""
        obs = np.asarray(observation, dtype=np.float64).reshape(1, -1)
        actions, bad = self._setup.controller.act(self._step, obs, self._goal(goal), np.ones(1, dtype=bool),
                                              self._generator)
        self._step += 1
        if bad.any():
            raise ValueError("the plan came out non-finite (NaN or inf); check the checkpoint and the observation")
        return np.asarray(actions[0])

    def plan(self, observation: np.ndarray | Sequence[float], goal: np.ndarray | Sequence[float] | None = None
             ) -> Trajectory:
        """One plan from ``observation`` (to ``goal`` on goal-reaching tasks)."""
        obs = torch.as_tensor(np.asarray(observation, dtype=np.float32).reshape(1, -1))
        planner = getattr(self._setup.controller, "planner", None)
        if planner is None:
            raise ValueError(f"eval.controller={self.config.eval.controller} acts without planning; use act()")
        if self._needs_goal:
            goals = torch.as_tensor(self._goal(goal), dtype=torch.float32)
            result = planner.plan(obs, self._generator, goals=goals)
        else:
            result = planner.plan(obs, self._generator)
        return Trajectory(result.observations[0].numpy(), result.actions[0].numpy(), float(result.plan_time_s))


def load_planner(
    checkpoint: str | Path, *, overrides: Overrides = None, device: str = "auto", seed: int = 0
) -> LoadedPlanner:
    """The planner of a ``diffplan-train`` checkpoint, with the settings it was trained with
    (planner, sampler, guidance) and ``overrides`` on top, e.g. ``{"planner.n_candidates": 8}``.

    Raises:
        CheckpointError: a missing or damaged checkpoint, or one of another kind.
        ValueError: an unknown key or a bad value in ``overrides``.
    """
    from diffplan.training.checkpoint import config_from_checkpoint, load_checkpoint

    trained = config_from_checkpoint(load_checkpoint(checkpoint, map_location="cpu"), checkpoint)
    base = OmegaConf.create(to_container(trained))
    base.eval.checkpoint = str(checkpoint)
    base.eval.device = device
    extra = OmegaConf.from_dotlist([o.lstrip("+") for o in overrides_of(overrides)])
    merged = OmegaConf.merge(base, extra)
    assert isinstance(merged, DictConfig)
    cfg = as_config(merged)
    import_plugins(cfg.plugins)
    return LoadedPlanner(cfg, seed=seed)
