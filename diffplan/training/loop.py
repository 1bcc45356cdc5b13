"""What every trainer of the package shares: EMA, warmup, the optimizer step, resume checks,
RNG state, and the loop itself (tqdm progress, TensorBoard scalars, periodic checkpoints).

:class:`diffplan.training.trainer.Trainer` (the diffusion model) and
:class:`diffplan.training.value_trainer.ValueTrainer` (the value function) subclass
:class:`TrainingLoop` and implement one optimizer step and the checkpoint format.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffplan.config import migrate_legacy
from diffplan.training import distributed
from diffplan.training.checkpoint import CheckpointError

log = logging.getLogger(__name__)


class LoopSettings(Protocol):
    """The optimisation settings a training section holds (``train``, ``value``)."""

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    grad_clip: float
    ema_decay: float
    ckpt_every: int
    log_every: int
    progress: bool
    max_minutes: float | None


@dataclass
class TrainSummary:
    """What a training run did."""

    checkpoint: Path
    steps: int
    resumed_from: int
    final_loss: float
    wall_time_s: float
    steps_per_s: float
    #: Processes that trained together (torchrun; :mod:`diffplan.training.distributed`).
    world_size: int = 1

    @classmethod
    def since(
        cls, checkpoint: Path, step: int, start: int, final_loss: float, t0: float, world_size: int = 1
    ) -> TrainSummary:
        """The summary of a run that went from step ``start`` to ``step``, started at ``perf_counter() = t0``."""
        wall = time.perf_counter() - t0
        return cls(checkpoint=checkpoint, steps=step, resumed_from=start, final_loss=final_loss, wall_time_s=wall,
                   steps_per_s=(step - start) / wall if wall > 0 else 0.0, world_size=world_size)


def check_intervals(settings: LoopSettings, section: str) -> None:
    """Raise unless steps, batch size and the checkpoint and log intervals are positive."""
    for key in ("steps", "batch_size", "ckpt_every", "log_every"):
        if getattr(settings, key) < 1:
            raise ValueError(f"{section}.{key} must be >= 1, got {getattr(settings, key)}")
    if settings.max_minutes is not None and not settings.max_minutes > 0:
        raise ValueError(
            f"{section}.max_minutes must be > 0 minutes (or null for no limit), got {settings.max_minutes}"
        )


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for every parameter, in one multi-tensor call
    (the same lerp per element as a per-parameter loop, without its per-tensor dispatch)."""
    ema_params: list[Tensor] = list(ema.parameters())
    params: list[Tensor] = list(model.parameters())
    if len(ema_params) != len(params):
        raise ValueError(f"EMA has {len(ema_params)} parameters but the model {len(params)}")
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)


def make_adamw(params: Iterable[nn.Parameter], *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with PyTorch's fused kernel (one vectorized pass over all parameters per step, on
    CPU and CUDA) instead of one dispatch per tensor and operation; the update rule is AdamW's."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def warmup_lr(
    lr: float, step: int, warmup_steps: int, *, decay: str = "constant", total_steps: int = 0, final_ratio: float = 0.0
) -> float:
    """The learning rate of optimizer step ``step`` (0-based): linear warmup over ``warmup_steps``,
    then ``lr`` (``decay=constant``) or a cosine decay from ``lr`` at the end of the warmup to
    ``final_ratio * lr`` at ``total_steps`` (``decay=cosine``; SGDR, Loshchilov and Hutter 2017,
    without restarts). A run resumed with another ``train.steps`` follows the new curve.

    Raises:
        ValueError: an unknown ``decay``.
    """
    warm = lr * min(1.0, (step + 1) / max(1, warmup_steps))
    if decay == "constant" or step < warmup_steps:
        return warm
    if decay != "cosine":
        raise ValueError(f"unknown learning-rate decay {decay!r}; use constant or cosine")
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return lr * (final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def optimizer_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor, *, lr: float, grad_clip: float
) -> None:
    """Set the learning rate, backpropagate ``loss``, clip the gradient norm (if > 0), step."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
    optimizer.step()


def check_resume_config(
    path: Path, saved: Mapping[str, Any], current: Mapping[str, Any], keys: Mapping[str, tuple[str, ...] | None]
) -> None:
    """Refuse to resume ``path`` when a setting that shapes the model changed.

    Args:
        saved, current: resolved configs as nested dicts (section -> name -> value).
        keys: section -> the names to compare (None: every name of the section).

    Raises:
        CheckpointError: naming the setting, both values and the fix.
    """
    saved = migrate_legacy(dict(saved))  # a checkpoint written before settings moved into their sections
    for section, names in keys.items():
        old_section, new_section = _flat(saved.get(section, {}) or {}), _flat(current.get(section, {}) or {})
        compared = names if names is not None else sorted(set(old_section) | set(new_section))
        for name in compared:
            old, new = old_section.get(name), new_section.get(name)
            if old != new:
                raise CheckpointError(
                    f"cannot resume {path}: it was trained with {section}.{name}={old!r}, "
                    f"the current config has {new!r}; restore the setting or use a new run_dir"
                )


def _flat(section: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A section's settings by dotted name (``unet.dim``), nested sections flattened."""
    out: dict[str, Any] = {}
    for name, value in section.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def check_resume_dataset(path: Path, payload: Mapping[str, Any], dataset_info: Mapping[str, Any]) -> None:
    """Refuse to resume ``path`` on another dataset: by identity (:mod:`diffplan.data.identity`) when
    both records have one, else by the files' sha256 when both are known.

    Raises:
        CheckpointError: naming both datasets and the fix.
    """
    saved = json.loads(payload.get("dataset", "{}"))
    saved_identity, identity = saved.get("identity"), dataset_info.get("identity")
    if saved_identity and identity:
        if saved_identity != identity:
            raise CheckpointError(
                f"cannot resume {path}: it was trained on {saved.get('path')} (identity {saved_identity[:12]}…), "
                f"but task.dataset={dataset_info.get('path')} has identity {identity[:12]}…; "
                "use the original dataset or a new run_dir"
            )
        return
    saved_share, share = saved.get("top_return_fraction", 1.0), dataset_info.get("top_return_fraction", 1.0)
    if saved_share != share:  # an older record without an identity: the same file, another selection
        raise CheckpointError(
            f"cannot resume {path}: it was trained on task.top_return_fraction={saved_share} of its dataset, "
            f"the current config keeps {share}; pass task.top_return_fraction={saved_share} or use a new run_dir"
        )
    saved_hash = saved.get("sha256")
    if saved_hash and dataset_info.get("sha256") and saved_hash != dataset_info["sha256"]:
        raise CheckpointError(
            f"cannot resume {path}: it was trained on a dataset with sha256 {saved_hash[:12]}…, "
            f"but {dataset_info.get('path')} has {dataset_info['sha256'][:12]}…; "
            "use the original dataset or a new run_dir"
        )


def rng_state(generator: torch.Generator) -> dict[str, Tensor]:
    """The training generator's and torch's global RNG states (CPU byte tensors)."""
    return {"generator": generator.get_state(), "torch": torch.get_rng_state()}


def keep_implementation(state: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``state`` (an optimizer state dict) with this optimizer's implementation flags (``fused``,
    ``foreach``) in its parameter groups: ``load_state_dict`` takes the groups' settings from the
    saved state, so a checkpoint written before the fused kernel was used would switch it off."""
    groups = [
        {**saved, **{flag: current[flag] for flag in ("fused", "foreach") if flag in current}}
        for saved, current in zip(state["param_groups"], optimizer.param_groups, strict=False)
    ]
    return {**state, "param_groups": groups}


def restore_training_state(
    payload: Mapping[str, Any],
    *,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> int:
    """Load weights, EMA, optimizer and RNG states saved by a trainer; returns the step.

    ``payload`` must have been loaded with ``map_location="cpu"`` (RNG states stay CPU byte
    tensors; ``load_state_dict`` copies weights onto the model's device).
    """
    model.load_state_dict(payload["model"])
    ema.load_state_dict(payload["ema"])
    optimizer.load_state_dict(keep_implementation(payload["optimizer"], optimizer))
    generator.set_state(payload["rng"]["generator"])
    torch.set_rng_state(payload["rng"]["torch"])
    saved_world, world = int(payload.get("world_size", 1)), distributed.world_size()
    if saved_world != world:
        log.info("resuming a checkpoint trained by %d process(es) with %d: the same windows and noise, "
                 "gradients equal up to float rounding", saved_world, world)
    return int(payload["step"])


class TrainingLoop:
    """The training loop shared by the trainers.

    Subclasses set ``step``, ``optimizer`` and ``run_dir``, define :attr:`checkpoint_path`,
    :attr:`settings`, :meth:`train_step` (one optimizer step, returns the loss), :meth:`save`
    and :meth:`resume`, and may report further losses through :meth:`extra_losses`.

    Under torchrun (:mod:`diffplan.training.distributed`) every rank runs this loop in step:
    each resumes from the same checkpoint; losses are averaged over the ranks where they are
    logged; only rank 0 saves, writes TensorBoard scalars and shows progress; the ranks stop
    together (rank 0's clock decides ``max_minutes``) and return once the last checkpoint exists.
    """

    #: TensorBoard tag prefix and progress-bar label.
    log_prefix = "train"
    step: int
    optimizer: torch.optim.Optimizer
    run_dir: Path

    @property
    def checkpoint_path(self) -> Path:
        raise NotImplementedError

    @property
    def settings(self) -> LoopSettings:
        raise NotImplementedError

    @property
    def tb_dir(self) -> Path:
        """Where TensorBoard scalars go."""
        return self.run_dir / "tb"

    def train_step(self) -> float:
        raise NotImplementedError

    def extra_losses(self) -> dict[str, float]:
        """Further losses of the last step, logged as ``<prefix>/<name>_loss``."""
        return {}

    def save(self) -> None:
        raise NotImplementedError

    def resume(self) -> bool:
        raise NotImplementedError

    def train(self, *, resume: bool = True) -> TrainSummary:
        """Train until ``settings.steps``, checkpointing every ``ckpt_every`` steps and at the end.

        With ``settings.max_minutes`` set, stop after that much wall-clock time (checkpointing as
        at the end); the same call with ``resume=True`` goes on from there.
        """
        if resume:
            self.resume()
        settings = self.settings
        start = self.step
        world_size, main = distributed.world_size(), distributed.is_main()
        if world_size > 1:
            log.info("%s: data-parallel over %d processes, %d of the %d windows of each step per process",
                     self.log_prefix, world_size, settings.batch_size // world_size, settings.batch_size)
        writer = summary_writer(self.tb_dir) if main else None
        loss = float("nan")
        t0 = time.perf_counter()
        bar = tqdm(
            total=settings.steps, initial=start, desc=self.log_prefix, disable=not (settings.progress and main),
            unit="step",
        )
        running, n_running = 0.0, 0
        running_extra: dict[str, float] = {}
        deadline = t0 + 60.0 * settings.max_minutes if settings.max_minutes is not None else float("inf")
        while self.step < settings.steps:
            stop = time.perf_counter() >= deadline
            if settings.max_minutes is not None and world_size > 1:
                stop = bool(distributed.from_main([float(stop)])[0])
            if stop:
                log.info("%s: stopping at step %d of %d (max_minutes=%s); rerun to resume",
                         self.log_prefix, self.step, settings.steps, settings.max_minutes)
                break
            loss = self.train_step()
            running, n_running = running + loss, n_running + 1
            for name, value in self.extra_losses().items():
                running_extra[name] = running_extra.get(name, 0.0) + value
            bar.update(1)
            if self.step % settings.log_every == 0 or self.step == settings.steps:
                if world_size > 1:  # the losses of the global batch
                    running, *extra = distributed.mean([running, *running_extra.values()])
                    running_extra = dict(zip(running_extra, extra, strict=True))
                bar.set_postfix(loss=f"{running / n_running:.4f}")
                if writer is not None:
                    writer.add_scalar(f"{self.log_prefix}/loss", running / n_running, self.step)
                    writer.add_scalar(f"{self.log_prefix}/lr", self.optimizer.param_groups[0]["lr"], self.step)
                    writer.add_scalar("perf/steps_per_s", bar.format_dict.get("rate") or 0.0, self.step)
                    for name, total in running_extra.items():
                        writer.add_scalar(f"{self.log_prefix}/{name}_loss", total / n_running, self.step)
                running, n_running = 0.0, 0
                running_extra = {}
            if self.step % settings.ckpt_every == 0 and main:
                self.save()
        bar.close()
        if main:
            self.save()
        if writer is not None:
            writer.close()
        if world_size > 1:
            loss = distributed.mean([loss])[0]
            distributed.barrier()  # every rank returns once the checkpoint is complete
        return TrainSummary.since(self.checkpoint_path, self.step, start, loss, t0, world_size)


def summary_writer(path: Path) -> Any:
    """A TensorBoard writer, or None (with a warning) if tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a core dependency
        log.warning("tensorboard is not installed; no scalars are written")
        return None
    return SummaryWriter(log_dir=str(path))
