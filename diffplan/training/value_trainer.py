"""Train the value function that guides a trained diffusion model (Diffuser's value guidance).

The value network regresses the discounted return from each training window's first step
(:mod:`diffplan.training.value_targets`) on windows of the diffusion model's own dataset,
cut, normalized and noised exactly as the diffusion model was trained: the horizon, layout,
normalizer, noise schedule, stride, padding and inpainting mask all come from the diffusion
checkpoint. Each window gets one noise level (full-sequence), drawn uniformly in [0, T]:
level 0 is included because the planner ranks finished plans, and ``apply_to = x0``
guidance evaluates x0 estimates, at level 0.

Targets are standardized with their mean and standard deviation over all windows; the
network's buffers hold both, so it predicts raw-scale returns.

With ``value.goal_conditioned`` (mazes, whose reward depends on a goal the trajectory does not
hold) the network also reads a goal, and the target of a window is the discounted number of
its tokens within ``value.goal_radius`` of that goal
(:func:`diffplan.training.value_targets.goal_reward_targets`), with hindsight-relabelled goals
(:func:`~diffplan.training.value_targets.relabel_goals`). Those targets depend on the goal
drawn with each batch, so their mean and standard deviation are estimated once from
:data:`GOAL_STATS_WINDOWS` relabelled windows. The loop (warmup, clipping,
EMA, tqdm progress, TensorBoard, periodic atomic checkpoints, bit-identical resume) is the
diffusion trainer's (:class:`diffplan.training.loop.TrainingLoop`).

A value checkpoint records what it was trained for (the diffusion checkpoint's task,
layout, horizon, stride, noise schedule and a hash of its normalizer);
:func:`load_value_model` refuses it for a diffusion model that differs in any of them.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from diffplan import __version__
from diffplan.acceleration import autocast, compile_module
from diffplan.config import ValueConfig
from diffplan.data.episodes import Episodes
from diffplan.data.layout import position_channels
from diffplan.data.normalizer import Normalizer, normalizer_from_state_dict
from diffplan.data.windows import WindowSampler
from diffplan.diffusion.conditioning import conditioning_mask
from diffplan.diffusion.loss import full_sequence_levels, noisy_input
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.models.value import ValueNet, build_value_net
from diffplan.training import distributed
from diffplan.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    TrainedModel,
    load_checkpoint,
    save_checkpoint,
)
from diffplan.training.loop import (
    LoopSettings,
    TrainingLoop,
    check_intervals,
    check_resume_config,
    check_resume_dataset,
    make_adamw,
    optimizer_step,
    restore_training_state,
    rng_state,
    update_ema,
    warmup_lr,
)
from diffplan.training.value_targets import (
    goal_reward_targets,
    relabel_goals,
    target_stats,
    targets_of_windows,
    value_targets,
)
from diffplan.utils import select_device, set_threads

log = logging.getLogger(__name__)

VALUE_CHECKPOINT_NAME = "checkpoint.pt"
#: ``kind`` entry of a value checkpoint (diffusion checkpoints have none, or "diffusion").
VALUE_KIND = "value"
#: Value settings that shape the trained network: they must match to resume a run.
VALUE_RESUME_KEYS: tuple[str, ...] = (
    "dim", "dim_mults", "kernel_size", "discount", "termination_penalty",
    "goal_conditioned", "goal_radius", "goal_window_prob",
)
#: Relabelled windows the goal-conditioned target statistics are estimated from.
GOAL_STATS_WINDOWS = 8192
#: Entries of the diffusion record a value checkpoint must share with the diffusion model it guides.
MATCH_KEYS: tuple[str, ...] = ("task", "layout", "horizon", "n_timesteps", "schedule", "normalizer")


def normalizer_digest(normalizer: Normalizer) -> str:
    """Hex SHA-256 of a normalizer's kind and statistics (float32 bytes, buffers by name)."""
    digest = hashlib.sha256(normalizer.kind.encode())
    for name, value in sorted(normalizer.state_dict().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(value.detach().cpu().to(torch.float32).numpy()).tobytes())
    return digest.hexdigest()


def diffusion_record(model: TrainedModel) -> dict[str, Any]:
    """What a value function depends on in the diffusion model it guides (JSON-safe)."""
    cfg = model.config
    return {
        "path": str(model.path),
        "step": model.step,
        "task": cfg.task.name,
        "layout": model.layout.to_dict(),
        "horizon": model.horizon,
        "stride": cfg.task.stride,
        "n_timesteps": model.schedule.n_timesteps,
        "schedule": model.schedule.kind.value,
        "normalizer": {"kind": model.normalizer.kind, "sha256": normalizer_digest(model.normalizer)},
    }


def value_config_from_dict(data: dict[str, Any]) -> ValueConfig:
    """A :class:`ValueConfig` from its stored dict, type-checked against the schema (absent keys
    take their defaults); paths are kept as stored, interpolations unresolved."""
    merged = OmegaConf.merge(OmegaConf.structured(ValueConfig), data)
    values = OmegaConf.to_container(merged, resolve=False)
    assert isinstance(values, dict)
    return ValueConfig(**{str(k): v for k, v in values.items()})


class StandardizedValue(nn.Module):
    """``net.standardized`` as a module's forward: what training calls, and what
    DistributedDataParallel (which only hooks ``forward``) wraps under torchrun."""

    def __init__(self, net: ValueNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, levels: Tensor, goals: Tensor | None = None) -> Tensor:
        return self.net.standardized(x, levels, goals)


class ValueTrainer(TrainingLoop):
    """Trains a :class:`ValueNet` for the diffusion model ``diffusion`` on its dataset ``episodes``.

    Args:
        cfg: the ``value`` settings (network, targets, optimisation).
        diffusion: the trained diffusion model (its horizon, layout, normalizer, schedule and
            training config are used; its denoiser is not).
        episodes: the dataset the diffusion model was trained on.
        dataset_info: provenance stored in the checkpoint (file, sha256).
        run_dir: where ``checkpoint.pt`` and ``tb/`` go (default ``cfg.run_dir``).
    """

    log_prefix = "value"

    def __init__(
        self,
        cfg: ValueConfig,
        diffusion: TrainedModel,
        episodes: Episodes,
        dataset_info: dict[str, Any],
        run_dir: str | Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir if run_dir is not None else cfg.run_dir)
        self.dataset_info = dataset_info
        check_intervals(cfg, "value")
        set_threads(cfg.threads)
        self.device = distributed.place(select_device(cfg.device))
        #: This rank's slice of each global batch under torchrun (None in one process).
        self.part = distributed.batch_part(cfg.batch_size, "value.batch_size")
        dcfg = diffusion.config
        self.record = diffusion_record(diffusion)
        self.layout = diffusion.layout
        self.horizon = diffusion.horizon
        if dcfg.task.continuous_stream:
            episodes = episodes.joined()  # the windows the diffusion model was trained on
        self.normalizer_kind = diffusion.normalizer.kind
        # A CPU copy: windows are normalized once, on the CPU.
        self.normalizer = normalizer_from_state_dict(
            self.normalizer_kind, {k: v.detach().cpu() for k, v in diffusion.normalizer.state_dict().items()}
        )
        self.windows = WindowSampler(
            episodes, self.layout, self.horizon, self.normalizer, pad=dcfg.train.pad, stride=dcfg.task.stride
        )
        self.goal_dims = [int(d) for d in dcfg.task.goal_obs_dims] if cfg.goal_conditioned else []
        #: Trajectory channels of the goal's entries (none without goal conditioning).
        self.goal_channels: list[int] = []
        if cfg.goal_conditioned:
            if not 0.0 <= cfg.discount <= 1.0:
                raise ValueError(f"value.discount must be in [0, 1], got {cfg.discount}")
            self.goal_channels = position_channels(self.layout, self.goal_dims, "value.goal_conditioned=true")
            #: (T, G) raw positions of every step: the pool of relabelled goals.
            self.goal_pool = torch.from_numpy(np.ascontiguousarray(episodes.observations[:, self.goal_dims])).float()
            self.token_discount = cfg.discount ** dcfg.task.stride
            self.target_mean, self.target_std = self._goal_target_stats()
        else:
            #: (T,) float64 target of every step (discounted return to the episode end).
            self.targets = torch.from_numpy(value_targets(episodes, cfg.discount, cfg.termination_penalty))
            self.target_mean, self.target_std = target_stats(
                self.targets, self.windows.episode_starts, self.windows.window_episode, self.windows.window_start
            )
        # Every rank computed the same statistics from the same data; rank 0's make that certain.
        self.target_mean, self.target_std = distributed.from_main([self.target_mean, self.target_std])
        schedule = diffusion.schedule
        self.schedule = NoiseSchedule(schedule.n_timesteps, kind=schedule.kind, prediction=schedule.prediction)
        self.schedule.to(self.device)
        torch.manual_seed(cfg.seed)
        self.model: ValueNet = build_value_net(
            cfg, transition_dim=self.layout.transition_dim, horizon=self.horizon, goal_dim=len(self.goal_dims)
        )
        self.model.set_target_stats(self.target_mean, self.target_std)
        self.model.to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = make_adamw(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        goal_dims = dcfg.task.goal_obs_dims if dcfg.train.condition_goal else []
        self.condition_mask = conditioning_mask(
            self.layout, self.horizon, start=dcfg.train.condition_start, goal_dims=goal_dims
        ).to(self.device)
        self.clean_condition_tokens = dcfg.diffusion.clean_condition_tokens
        # In DistributedDataParallel under torchrun (gradients averaged over the ranks in backward).
        self.train_model = compile_module(
            distributed.wrap(StandardizedValue(self.model)), cfg.compile, what="the value network's training step"
        )
        self.step = 0

    def goal_batch(self, x0: Tensor, valid: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Relabelled goals (B, G), normalized, and their targets (B,) float64 for clean windows x0 (B, H, D).

        ``x0`` and ``valid`` are the CPU tensors of a :class:`WindowSampler` batch (the goal pool,
        the normalizer copy and ``generator`` live on the CPU); move the results to the device.
        """
        positions = self.normalizer.unnormalize(x0)[..., self.goal_channels]
        goals = relabel_goals(positions, self.goal_pool, self.cfg.goal_window_prob, generator)
        targets = goal_reward_targets(
            positions, goals, valid, radius=self.cfg.goal_radius, discount=self.token_discount
        )
        return self.normalizer.normalize_channels(goals, self.goal_channels), targets

    def _goal_target_stats(self) -> tuple[float, float]:
        """Mean and standard deviation of the goal-conditioned targets over :data:`GOAL_STATS_WINDOWS`
        relabelled windows (their own generator, seeded by ``value.seed + 1``). A resumed run keeps
        the statistics stored in its checkpoint (:meth:`resume`), which its network was trained with."""
        generator = torch.Generator().manual_seed(self.cfg.seed + 1)
        batch = self.windows.sample(GOAL_STATS_WINDOWS, generator)
        _, targets = self.goal_batch(batch.x, batch.valid, generator)
        std = float(targets.std(unbiased=False))
        return float(targets.mean()), (std if std >= 1e-6 else 1.0)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / VALUE_CHECKPOINT_NAME

    @property
    def settings(self) -> LoopSettings:
        return self.cfg

    def _config(self) -> dict[str, Any]:
        return {"value": dataclasses.asdict(self.cfg)}

    def train_step(self) -> float:
        """One optimizer step on a batch of noised windows; returns the loss (standardized units)."""
        vc = self.cfg
        batch = self.windows.sample(vc.batch_size, self.generator)
        size, horizon = batch.x.shape[:2]
        levels = full_sequence_levels(size, horizon, self.schedule.n_timesteps, self.generator, low=0)
        noise = torch.randn(batch.x.shape, generator=self.generator)
        goals = None
        if self.goal_dims:
            goals, target = self.goal_batch(batch.x, batch.valid, self.generator)
        else:
            target = targets_of_windows(self.targets, self.windows.episode_starts, batch.episode, batch.start)
        if self.part is not None:
            # Under torchrun every rank drew the global batch above (one process's draws) and trains on
            # its slice; equal slices make the mean of the ranks' mean losses the global mean.
            x_part, levels, noise, target = batch.x[self.part], levels[self.part], noise[self.part], target[self.part]
            goals = goals[self.part] if goals is not None else None
        else:
            x_part = batch.x
        x0 = x_part.to(self.device)
        levels, noise = levels.to(self.device), noise.to(self.device)
        goals = goals.to(self.device) if goals is not None else None
        x_t, model_levels = noisy_input(
            self.schedule,
            x0,
            noise,
            levels,
            condition_mask=self.condition_mask,
            clean_condition_tokens=self.clean_condition_tokens,
        )
        standardized = ((target - self.target_mean) / self.target_std).to(torch.float32).to(self.device)
        with autocast(vc.precision, self.device):
            prediction = self.train_model(x_t, self.schedule.normalized_level(model_levels), goals)
        loss = (prediction.float() - standardized).pow(2).mean()
        lr = warmup_lr(vc.lr, self.step, vc.warmup_steps, decay=vc.lr_decay, total_steps=vc.steps)
        optimizer_step(self.model, self.optimizer, loss, lr=lr, grad_clip=vc.grad_clip)
        update_ema(self.ema, self.model, vc.ema_decay)
        self.step += 1
        return float(loss.detach())

    def save(self) -> None:
        """Write the checkpoint atomically (tensors and primitives only)."""
        save_checkpoint(
            self.checkpoint_path,
            {
                "format": CHECKPOINT_FORMAT,
                "kind": VALUE_KIND,
                "version": __version__,
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "config": json.dumps(self._config()),
                "diffusion": json.dumps(self.record),
                "normalizer": {"kind": self.normalizer_kind, "state": self.normalizer.state_dict()},
                "layout": self.layout.to_dict(),
                "horizon": self.horizon,
                "target": {"mean": self.target_mean, "std": self.target_std},
                "goal_dims": list(self.goal_dims),
                "step": self.step,
                "rng": rng_state(self.generator),
                "dataset": json.dumps(self.dataset_info),
                "world_size": distributed.world_size(),
            },
        )

    def resume(self) -> bool:
        """Load ``run_dir/checkpoint.pt`` if it exists; True if training state was restored.

        Raises:
            CheckpointError: the checkpoint is not a value checkpoint, was trained with other
                network or target settings, for another diffusion model, or on another dataset.
        """
        if not self.checkpoint_path.exists():
            return False
        payload = load_checkpoint(self.checkpoint_path, map_location="cpu")
        if payload.get("kind") != VALUE_KIND:
            raise CheckpointError(
                f"cannot resume {self.checkpoint_path}: it is not a value checkpoint; use another value.run_dir"
            )
        saved = {"value": dataclasses.asdict(value_config_from_dict(json.loads(payload["config"])["value"]))}
        saved["diffusion"] = json.loads(payload["diffusion"])
        current = {**self._config(), "diffusion": self.record}
        check_resume_config(
            self.checkpoint_path, saved, current, {"value": VALUE_RESUME_KEYS, "diffusion": MATCH_KEYS + ("stride",)}
        )
        check_resume_dataset(self.checkpoint_path, payload, self.dataset_info)
        self.step = restore_training_state(
            payload, model=self.model, ema=self.ema, optimizer=self.optimizer, generator=self.generator
        )
        # The standardization the network was trained with (goal-conditioned statistics are estimated).
        self.target_mean, self.target_std = float(payload["target"]["mean"]), float(payload["target"]["std"])
        log.info("resumed %s at step %d", self.checkpoint_path, self.step)
        return True


def load_value_model(
    path: str | Path,
    diffusion_model: TrainedModel,
    device: torch.device | str = "cpu",
    *,
    use_ema: bool = True,
) -> ValueNet:
    """The value network of a value checkpoint (EMA weights by default), in eval mode, frozen.

    Raises:
        CheckpointError: the file is missing, unreadable or not a value checkpoint, or it was
            trained for a diffusion model with another task, layout, horizon, number of noise
            levels, schedule or normalizer than ``diffusion_model`` (the message names the
            file, the key, both values and the fix).
    """
    payload = load_checkpoint(path, map_location=device)
    if payload.get("kind") != VALUE_KIND:
        raise CheckpointError(
            f"checkpoint {path} is not a value checkpoint (it holds a {payload.get('kind', 'diffusion')!r} model); "
            "train one with diffplan-train-value and point guidance.value_checkpoint at it"
        )
    stored = json.loads(payload["diffusion"])
    expected = diffusion_record(diffusion_model)
    for key in MATCH_KEYS:
        if stored.get(key) != expected[key]:
            raise CheckpointError(
                f"value checkpoint {path} does not match the diffusion model {diffusion_model.path}: {key} is "
                f"{stored.get(key)!r} in the value checkpoint but {expected[key]!r} in the diffusion model; train a "
                f"value function for this diffusion model (diffplan-train-value "
                f"value.diffusion_checkpoint={diffusion_model.path}) or set guidance.value_checkpoint to one"
            )
    cfg = value_config_from_dict(json.loads(payload["config"])["value"])
    goal_dims = [int(d) for d in payload.get("goal_dims", [])]
    net = build_value_net(
        cfg, transition_dim=diffusion_model.layout.transition_dim, horizon=diffusion_model.horizon,
        goal_dim=len(goal_dims),
    )
    net.goal_dims = goal_dims
    net.load_state_dict(payload["ema" if use_ema else "model"])
    return net.to(device).eval().requires_grad_(False)
