"""Train a trajectory diffusion model on dataset windows.

One loop, top to bottom: sample windows, draw noise levels and noise from one generator,
take an AdamW step with warmup and gradient clipping, update the EMA, log, checkpoint.
Every random draw comes from one ``torch.Generator`` whose state is saved in the
checkpoint, so ``resume`` continues bit-identically on the same machine.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from diffplan.config import Config, to_container
from diffplan.data.episodes import Episodes
from diffplan.data.layout import TrajectoryLayout
from diffplan.data.normalizer import NormalizerKind, fit_normalizer
from diffplan.data.windows import WindowSampler
from diffplan.diffusion.conditioning import conditioning_mask
from diffplan.diffusion.loss import diffusion_loss
from diffplan.diffusion.sampler import check_clip
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.models.factory import build_denoiser
from diffplan.training.checkpoint import (
    CheckpointError,
    checkpoint_payload,
    load_checkpoint,
    save_checkpoint,
)
from diffplan.utils import select_device, set_threads

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
#: Settings that shape the trained model: they must match to resume a run. Everything else
#: (train.steps, planning-time sampler settings, evaluation) may change between runs.
RESUME_KEYS: dict[str, tuple[str, ...] | None] = {
    "model": None,
    "task": ("name", "horizon", "stride", "continuous_stream", "goal_obs_dims"),
    "diffusion": ("n_timesteps", "schedule", "prediction", "normalizer", "clean_condition_tokens"),
    "train": ("condition_start", "condition_goal", "pad", "action_weight"),
}


@dataclass
class TrainSummary:
    """What a training run did."""

    checkpoint: Path
    steps: int
    resumed_from: int
    final_loss: float
    wall_time_s: float
    steps_per_s: float


def layout_for(episodes: Episodes) -> TrajectoryLayout:
    """States and actions of the dataset, in the project's channel order."""
    return TrajectoryLayout(obs_dim=episodes.obs_dim, act_dim=episodes.act_dim)


def loss_weights(layout: TrajectoryLayout, horizon: int, action_weight: float) -> torch.Tensor:
    """(H, D) weights: 1 everywhere, ``action_weight`` on the first token's actions (Diffuser)."""
    weights = torch.ones(horizon, layout.transition_dim)
    weights[0, layout.act] = action_weight
    return weights


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for ema_p, p in zip(ema.parameters(), model.parameters(), strict=True):
        ema_p.lerp_(p, 1.0 - decay)


class Trainer:
    """Trains the denoiser of ``cfg`` on ``episodes``; checkpoints under ``run_dir``.

    Args:
        cfg: the resolved config (task, model, diffusion, train sections are used).
        episodes: the dataset.
        run_dir: where ``checkpoint.pt`` and TensorBoard logs go.
        dataset_info: provenance stored in the checkpoint (file, hash).
    """

    def __init__(self, cfg: Config, episodes: Episodes, run_dir: str | Path, dataset_info: dict[str, Any]):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dataset_info = dataset_info
        for key in ("steps", "batch_size", "ckpt_every", "log_every"):
            if getattr(cfg.train, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(cfg.train, key)}")
        check_clip(cfg.diffusion.normalizer.value, cfg.diffusion.clip_denoised)
        set_threads(cfg.train.threads)
        self.device = select_device(cfg.train.device)
        self.horizon = cfg.task.horizon
        if cfg.task.continuous_stream:
            # One uninterrupted recording: windows may cross goal changes (not env resets).
            episodes = episodes.joined()
        self.layout = layout_for(episodes)
        self.normalizer_kind = NormalizerKind(cfg.diffusion.normalizer).value
        self.normalizer = fit_normalizer(self.normalizer_kind, episodes.transitions(self.layout))
        self.windows = WindowSampler(
            episodes, self.layout, self.horizon, self.normalizer, pad=cfg.train.pad, stride=cfg.task.stride
        )
        self.schedule = NoiseSchedule(
            cfg.diffusion.n_timesteps, kind=cfg.diffusion.schedule, prediction=cfg.diffusion.prediction
        ).to(self.device)
        torch.manual_seed(cfg.train.seed)
        self.model = build_denoiser(cfg.model, transition_dim=self.layout.transition_dim, horizon=self.horizon)
        self.model.to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        goal_dims = cfg.task.goal_obs_dims if cfg.train.condition_goal else []
        self.condition_mask = conditioning_mask(
            self.layout, self.horizon, start=cfg.train.condition_start, goal_dims=goal_dims
        ).to(self.device)
        self.weights = loss_weights(self.layout, self.horizon, cfg.train.action_weight).to(self.device)
        self.step = 0

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def resume(self) -> bool:
        """Load ``run_dir/checkpoint.pt`` if it exists; True if training state was restored."""
        if not self.checkpoint_path.exists():
            return False
        # RNG states must stay CPU byte tensors; load_state_dict copies weights onto the model's device.
        payload = load_checkpoint(self.checkpoint_path, map_location="cpu")
        saved = json.loads(payload["config"])
        current = to_container(self.cfg)
        for section, keys in RESUME_KEYS.items():
            names = keys if keys is not None else sorted(set(saved.get(section, {})) | set(current[section]))
            for name in names:
                old, new = saved.get(section, {}).get(name), current[section].get(name)
                if old != new:
                    raise CheckpointError(
                        f"cannot resume {self.checkpoint_path}: it was trained with {section}.{name}={old!r}, "
                        f"the current config has {new!r}; restore the setting or use a new run_dir"
                    )
        saved_hash = json.loads(payload.get("dataset", "{}")).get("sha256")
        if saved_hash and self.dataset_info.get("sha256") and saved_hash != self.dataset_info["sha256"]:
            raise CheckpointError(
                f"cannot resume {self.checkpoint_path}: it was trained on a dataset with sha256 {saved_hash[:12]}…, "
                f"but {self.dataset_info.get('path')} has {self.dataset_info['sha256'][:12]}…; "
                "use the original dataset or a new run_dir"
            )
        self.model.load_state_dict(payload["model"])
        self.ema.load_state_dict(payload["ema"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.normalizer.load_state_dict(payload["normalizer"]["state"])
        self.generator.set_state(payload["rng"]["generator"])
        torch.set_rng_state(payload["rng"]["torch"])
        self.step = int(payload["step"])
        log.info("resumed %s at step %d", self.checkpoint_path, self.step)
        return True

    def save(self) -> None:
        save_checkpoint(
            self.checkpoint_path,
            checkpoint_payload(
                model=self.model,
                ema=self.ema,
                optimizer=self.optimizer,
                normalizer_kind=self.normalizer_kind,
                normalizer=self.normalizer,
                layout=self.layout,
                config=to_container(self.cfg),
                horizon=self.horizon,
                step=self.step,
                generator=self.generator,
                dataset=self.dataset_info,
            ),
        )

    def train_step(self) -> float:
        """One optimizer step; returns the loss."""
        tc = self.cfg.train
        batch = self.windows.sample(tc.batch_size, self.generator)
        x0 = batch.x.to(self.device)
        size, horizon = x0.shape[:2]
        # Full-sequence diffusion: one level per window, shared by its H tokens.
        levels = torch.randint(1, self.schedule.n_timesteps + 1, (size, 1), generator=self.generator)
        levels = levels.expand(size, horizon).to(self.device)
        noise = torch.randn(x0.shape, generator=self.generator).to(self.device)
        loss = diffusion_loss(
            self.model,
            self.schedule,
            x0,
            levels,
            noise,
            condition_mask=self.condition_mask,
            valid=batch.valid.to(self.device),
            weights=self.weights,
            clean_condition_tokens=self.cfg.diffusion.clean_condition_tokens,
        )
        lr = tc.lr * min(1.0, (self.step + 1) / max(1, tc.warmup_steps))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.optimizer.step()
        update_ema(self.ema, self.model, tc.ema_decay)
        self.step += 1
        return float(loss.detach())

    def train(self, *, resume: bool = True) -> TrainSummary:
        """Train until ``train.steps``, checkpointing every ``train.ckpt_every`` steps and at the end."""
        tc = self.cfg.train
        if resume:
            self.resume()
        start = self.step
        writer = _summary_writer(self.run_dir / "tb")
        loss = float("nan")
        t0 = time.perf_counter()
        bar = tqdm(total=tc.steps, initial=start, desc="train", disable=not tc.progress, unit="step")
        running, n_running = 0.0, 0
        while self.step < tc.steps:
            loss = self.train_step()
            running, n_running = running + loss, n_running + 1
            bar.update(1)
            if self.step % tc.log_every == 0 or self.step == tc.steps:
                bar.set_postfix(loss=f"{running / n_running:.4f}")
                if writer is not None:
                    writer.add_scalar("train/loss", running / n_running, self.step)
                    writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)
                    writer.add_scalar("perf/steps_per_s", bar.format_dict.get("rate") or 0.0, self.step)
                running, n_running = 0.0, 0
            if self.step % tc.ckpt_every == 0:
                self.save()
        bar.close()
        self.save()
        if writer is not None:
            writer.close()
        wall = time.perf_counter() - t0
        done = self.step - start
        return TrainSummary(
            checkpoint=self.checkpoint_path,
            steps=self.step,
            resumed_from=start,
            final_loss=loss,
            wall_time_s=wall,
            steps_per_s=done / wall if wall > 0 else 0.0,
        )


def _summary_writer(path: Path) -> Any:
    """A TensorBoard writer, or None (with a warning) if tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a core dependency
        log.warning("tensorboard is not installed; no scalars are written")
        return None
    return SummaryWriter(log_dir=str(path))
