"""Random-weight models, trainers and planners built from composed Hydra configs.

Latency does not depend on the weights, so everything here is built exactly as training and
evaluation build it (same factories, same planner classes), with random weights and a small
synthetic dataset of the task's dimensions instead of checkpoints and dataset files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from diffplan.config import CONF_DIR, Config, as_config, register_configs
from diffplan.data.episodes import Episodes
from diffplan.data.layout import TrajectoryLayout
from diffplan.data.normalizer import fit_normalizer
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.guidance import GoalValueGuide, ValueGuide, build_guidance, guidance_kind
from diffplan.models.factory import build_denoiser
from diffplan.models.value import build_value_net
from diffplan.planning.forcing import ForcingPlanner, maze_forcing_planner
from diffplan.planning.planner import GoalPlanner
from diffplan.planning.value_planner import ValuePlanner
from diffplan.tasks import is_locomotion
from diffplan.training.checkpoint import TrainedModel
from diffplan.training.trainer import Trainer

#: The ``path`` of models built here (no checkpoint behind them).
RANDOM_WEIGHTS = Path("random-weights")


def compose_config(overrides: Sequence[str]) -> Config:
    """``conf/config.yaml`` with Hydra ``overrides``, validated against the schema."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return as_config(compose("config", overrides=list(overrides)))


def task_dims(cfg: Config) -> tuple[int, int]:
    """(obs_dim, act_dim) of ``cfg.task`` (a locomotion robot or a point maze)."""
    from diffplan_envs import get_maze_task
    from diffplan_envs.locomotion import get_locomotion_task

    task = get_locomotion_task(cfg.task.name) if is_locomotion(cfg.task) else get_maze_task(cfg.task.name)
    return task.obs_dim, task.act_dim


def synthetic_episodes(obs_dim: int, act_dim: int, *, span: int, n_episodes: int = 4, seed: int = 0) -> Episodes:
    """``n_episodes`` random-walk episodes (positions and velocities driven by uniform actions),
    each long enough for many windows of ``span`` steps."""
    rng = np.random.default_rng(seed)
    length = max(4 * span, 256)
    n_rows = n_episodes * length
    actions = rng.uniform(-1, 1, (n_rows, act_dim)).astype(np.float32)
    observations = rng.normal(0, 1, (n_rows, obs_dim)).astype(np.float32)
    # Smooth the observations along time (a random walk), like real trajectories.
    observations = np.cumsum(observations, axis=0).astype(np.float32) * 0.05
    timeouts = np.zeros(n_rows, dtype=bool)
    timeouts[length - 1::length] = True
    return Episodes.from_arrays(
        observations=observations,
        actions=actions,
        rewards=rng.uniform(0, 1, n_rows).astype(np.float32),
        terminals=np.zeros(n_rows, dtype=bool),
        timeouts=timeouts,
        source="<synthetic benchmark data>",
    )


def window_span(cfg: Config) -> int:
    """Environment steps one training window covers."""
    return (cfg.task.horizon - 1) * cfg.task.stride + 1


def episodes_for(cfg: Config) -> Episodes:
    """A synthetic dataset of ``cfg.task``'s dimensions."""
    obs_dim, act_dim = task_dims(cfg)
    return synthetic_episodes(obs_dim, act_dim, span=window_span(cfg))


def random_model(
    cfg: Config, layout: TrajectoryLayout, device: torch.device, data: np.ndarray | None = None
) -> TrainedModel:
    """A :class:`TrainedModel` of ``cfg`` (denoiser, schedule, normalizer) with random weights;
    the normalizer is fitted on ``data`` (T, D) (default: standard normal samples)."""
    torch.manual_seed(0)
    horizon = cfg.task.horizon
    denoiser = build_denoiser(cfg.model, transition_dim=layout.transition_dim, horizon=horizon)
    schedule = NoiseSchedule(
        cfg.diffusion.n_timesteps, kind=cfg.diffusion.schedule, prediction=cfg.diffusion.prediction
    )
    if data is None:
        data = torch.randn(1000, layout.transition_dim, generator=torch.Generator().manual_seed(0)).numpy()
    normalizer = fit_normalizer(cfg.diffusion.normalizer.value, data)
    return TrainedModel(
        denoiser.to(device).eval(), schedule.to(device), normalizer.to(device), layout, cfg, horizon, 0, RANDOM_WEIGHTS
    )


def random_value_net(
    cfg: Config, model: TrainedModel, device: torch.device, goal_dims: Sequence[int] = ()
) -> nn.Module:
    """A value network of ``cfg.value`` for ``model`` (goal-conditioned on ``goal_dims`` when
    ``value.goal_conditioned``), random weights, in eval mode on ``device``."""
    net = build_value_net(
        cfg.value, transition_dim=model.layout.transition_dim, horizon=model.horizon, goal_dim=len(goal_dims)
    )
    net.goal_dims = list(goal_dims) if net.goal_dim else []
    return net.to(device).eval()


def build_value_planner(
    cfg: Config, model: TrainedModel, device: torch.device, *, guided: bool | None = None
) -> ValuePlanner:
    """``diffplan-evaluate``'s locomotion planner for ``model`` with a random-weight value network
    (ranks the K candidates and, with ``guidance.kind=value``, guides). ``guided`` forces
    ``guidance.kind`` to ``value`` (True) or ``none`` (False); None keeps the config's."""
    guidance = cfg.guidance
    if guided is not None:
        guidance = dataclasses.replace(guidance, kind="value" if guided else "none")
    guide = ValueGuide(random_value_net(cfg, model, device))
    return ValuePlanner(
        model, guide, planner=cfg.planner, diffusion=cfg.diffusion, guidance=guidance, device=device
    )


def build_goal_planner(cfg: Config, model: TrainedModel, device: torch.device) -> GoalPlanner:
    """``diffplan-evaluate``'s maze planner (goal inpainting, ``guidance`` none or goal; a
    value-guided one gets a random-weight goal-conditioned value network)."""
    spec = guidance_kind(cfg.guidance.kind)
    if spec is None or not spec.needs_value:
        return GoalPlanner(
            model, planner=cfg.planner, diffusion=cfg.diffusion, goal_dims=cfg.task.goal_obs_dims, device=device,
            guidance=cfg.guidance,
        )
    # GoalPlanner loads guidance.value_checkpoint for kind=value: build it unguided, then attach
    # the guidance of a random goal-conditioned value network exactly as it would.
    planner = GoalPlanner(
        model, planner=cfg.planner, diffusion=cfg.diffusion, goal_dims=cfg.task.goal_obs_dims, device=device,
    )
    value_cfg = dataclasses.replace(cfg, value=dataclasses.replace(cfg.value, goal_conditioned=True))
    net = random_value_net(value_cfg, model, device, cfg.task.goal_obs_dims)
    guide = GoalValueGuide(net, model.layout, model.normalizer, list(cfg.task.goal_obs_dims))
    planner.guidance = build_guidance(
        cfg.guidance, model, device, value_guide=guide, clip_denoised=cfg.diffusion.clip_denoised
    )
    return planner


def build_forcing_planner(cfg: Config, model: TrainedModel, device: torch.device) -> ForcingPlanner:
    """``diffplan-evaluate``'s Diffusion Forcing planner (``planner.mode=forcing``)."""
    return maze_forcing_planner(cfg, model, device)


def build_trainer(cfg: Config, episodes: Episodes, run_dir: str | Path) -> Trainer:
    """The real :class:`~diffplan.training.trainer.Trainer` of ``cfg`` on ``episodes`` (writes
    nothing until asked to save)."""
    return Trainer(cfg, episodes, run_dir, {"path": "<synthetic benchmark data>", "sha256": None})
