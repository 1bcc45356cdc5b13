"""Structured configs: typed dataclasses registered in Hydra's ConfigStore.

Each config group under ``conf/`` (task, model, diffusion, planner, train, eval, collect)
is validated against one of these schemas, so a bad override fails early with its full key
and, for choices, the allowed values (enums).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from diffplan.data.normalizer import NormalizerKind
from diffplan.diffusion.sampler import SamplerKind
from diffplan.diffusion.schedule import PredictionType, ScheduleKind


class ModelKind(StrEnum):
    unet = "unet"


class ExecutionMode(StrEnum):
    """How a plan becomes actions: a PD tracker follows its states, or its actions run."""

    tracker = "tracker"
    actions = "actions"


class Tracking(StrEnum):
    """How the tracker picks its target on the plan: by elapsed time, or by progress along the path."""

    time = "time"
    pursuit = "pursuit"


class Selection(StrEnum):
    """Which of the K candidate plans per environment is executed."""

    first = "first"
    smoothest = "smoothest"


@dataclass
class TaskConfig:
    """The environment and its dataset."""

    name: str = MISSING
    env_id: str = MISSING
    dataset: str = MISSING
    dataset_steps: int = 1_000_000
    episode_steps: int = 300
    horizon: int = 128
    stride: int = 1
    continuous_stream: bool = False
    goal_obs_dims: list[int] = field(default_factory=lambda: [0, 1])
    velocity_obs_dims: list[int] = field(default_factory=lambda: [2, 3])


@dataclass
class ModelConfig:
    name: ModelKind = ModelKind.unet
    dim: int = 32
    dim_mults: list[int] = field(default_factory=lambda: [1, 4, 8])
    kernel_size: int = 5


@dataclass
class DiffusionConfig:
    n_timesteps: int = 64
    schedule: ScheduleKind = ScheduleKind.cosine
    prediction: PredictionType = PredictionType.x0
    sampler: SamplerKind = SamplerKind.ddim
    sampling_steps: int = 20
    eta: float = 0.0
    clip_denoised: float | None = 1.0
    normalizer: NormalizerKind = NormalizerKind.limits
    # Mark tokens with inpainted entries as clean (level 0) in the denoiser's input, in
    # training and sampling alike (the checkpoint's setting is used at planning time).
    clean_condition_tokens: bool = False


@dataclass
class TrainConfig:
    steps: int = 20_000
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    ckpt_every: int = 1000
    log_every: int = 100
    action_weight: float = 1.0
    condition_start: bool = True
    condition_goal: bool = True
    pad: bool = False
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    progress: bool = True


@dataclass
class PlannerConfig:
    mode: ExecutionMode = ExecutionMode.tracker
    tracking: Tracking = Tracking.time
    lookahead: int = 4
    replan_every: int = 0
    # Pursuit only: replan an env whose progress along its plan has not advanced for this
    # many steps (stuck, e.g. against a wall the plan cut through); 0 = never.
    replan_on_stall: int = 0
    n_candidates: int = 1
    selection: Selection = Selection.first
    p_gain: float = 1.0
    d_gain: float = 1.0


@dataclass
class EvalConfig:
    n_episodes: int = 50
    n_envs: int = 50
    seeds: list[int] = field(default_factory=lambda: [0])
    checkpoint: str = "${run_dir}/checkpoint.pt"
    out_dir: str = "${run_dir}/eval"
    use_ema: bool = True
    device: str = "auto"
    plots: bool = True
    progress: bool = True


@dataclass
class CollectConfig:
    n_steps: int | None = None
    seed: int = 0
    ref_episodes: int = 100
    progress: bool = True


@dataclass
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    run_dir: str = "runs/${task.name}"


def register_configs() -> None:
    """Register the schemas so conf/*.yaml files are validated against them."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    store.store(group="task", name="task_schema", node=TaskConfig)
    store.store(group="model", name="model_schema", node=ModelConfig)
    store.store(group="diffusion", name="diffusion_schema", node=DiffusionConfig)
    store.store(group="train", name="train_schema", node=TrainConfig)
    store.store(group="planner", name="planner_schema", node=PlannerConfig)
    store.store(group="eval", name="eval_schema", node=EvalConfig)
    store.store(group="collect", name="collect_schema", node=CollectConfig)


def to_container(cfg: DictConfig | Config) -> dict[str, Any]:
    """Resolved plain-dict copy of a config (enums as strings), for checkpoints and results."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg)
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


def as_config(cfg: DictConfig | dict[str, Any]) -> Config:
    """Typed object view of a composed config (validates against the schema)."""
    merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    obj = OmegaConf.to_object(merged)
    assert isinstance(obj, Config)
    return obj
