"""Checkpoints: one file, written atomically, loaded with ``weights_only=True``.

A checkpoint holds plain containers of tensors and primitives only (no pickled objects):
model and EMA weights, optimizer state, the normalizer's statistics, the trajectory
layout, the resolved config, the step, the RNG states, the package version and the number of
processes that trained it (``world_size``, torchrun); with ``model.inverse_dynamics`` also the
inverse-dynamics head (weights, EMA, optimizer).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffplan import __version__
from diffplan.config import Config, as_config, drop_unknown_settings, migrate_legacy
from diffplan.data.layout import TrajectoryLayout
from diffplan.data.normalizer import Normalizer, normalizer_from_state_dict
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.models.factory import build_denoiser, build_inverse_dynamics
from diffplan.models.inverse_dynamics import InverseDynamics
from diffplan.utils import atomic_path

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, corrupt, or for another task)."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a temp file in the same folder, then rename,
    so an interruption never leaves a truncated checkpoint behind."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, key: str = "eval.checkpoint"
) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``; clear errors for bad files.

    ``key`` is the setting that names ``path``, for the message when it does not exist.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a folder; set {key} to the file, e.g. {key}={path / 'checkpoint.pt'}"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train first (diffplan-train) or set {key}")
    fix = f"point {key} at a checkpoint.pt written by diffplan"
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        text = " ".join(str(e).split())
        if "Trying to load unsupported " in text or "Unsupported global" in text:  # pickled Python objects
            found = text.split("Trying to load unsupported ", 1)[-1].split(" whose module", 1)[0]
            detail = f" ({found})" if "Trying to load unsupported " in text else ""
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects{detail}, which diffplan does not load (checkpoints "
                f"are read with torch.load(weights_only=True), so no code in them runs); {fix}"
            ) from e
        cause = text.split("WeightsUnpickler error: ", 1)[1] if "WeightsUnpickler error: " in text else text
        raise CheckpointError(
            f"checkpoint {path} cannot be read as a PyTorch checkpoint ({cause.split('. ', 1)[0].strip()}): it is "
            f"truncated or not a checkpoint; {fix} (or train again)"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {payload.get('format') if isinstance(payload, dict) else None!r}, "
            f"expected {CHECKPOINT_FORMAT}: it was written by another program or version; {fix}"
        )
    return payload


#: Sections that define the trained model: a setting there that this version lacks is refused, not dropped.
MODEL_SECTIONS = ("task", "model", "diffusion", "train")


def config_from_checkpoint(payload: dict[str, Any], path: str | Path = "the checkpoint") -> Config:
    """The resolved training config stored in a checkpoint (settings moved since it was written put in
    their sections). Settings this version of diffplan does not have (a checkpoint written by another
    version) are left out with one warning naming them when they lie in a known section other than
    :data:`MODEL_SECTIONS` (planner, guidance, eval, collect, sweep, ...).

    Raises:
        CheckpointError: a setting this version lacks in a section that defines the trained model, or a
            section this version does not know.
    """
    stored = migrate_legacy(json.loads(payload["config"]))
    dropped = drop_unknown_settings(stored)
    defining = [key for key in dropped if "." not in key or key.split(".", 1)[0] in MODEL_SECTIONS]
    if defining:
        raise CheckpointError(
            f"{path} was written by another diffplan version with settings this one does not have: "
            f"{', '.join(defining)}; load it with the diffplan version that wrote it")
    if dropped:
        log.warning("%s was written by another diffplan version; settings this one does not have are ignored "
                    "(none of them defines the trained model): %s", path, ", ".join(dropped))
    return as_config(stored, check=False)  # a stored config is what it is


@dataclass
class TrainedModel:
    """Everything planning needs from a checkpoint."""

    denoiser: nn.Module
    schedule: NoiseSchedule
    normalizer: Normalizer
    layout: TrajectoryLayout
    config: Config
    horizon: int
    step: int
    path: Path
    #: The inverse-dynamics head (model.inverse_dynamics), else None.
    inverse_dynamics: InverseDynamics | None = None
    #: The record of the dataset it was trained on (:func:`diffplan.data.identity.dataset_record`).
    dataset: dict[str, Any] = field(default_factory=dict)


def load_trained_model(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    use_ema: bool = True,
    expected_layout: TrajectoryLayout | None = None,
    expected_task: str | None = None,
    key: str = "eval.checkpoint",
) -> TrainedModel:
    """Rebuild the denoiser (EMA weights by default), schedule and normalizer from a checkpoint.
    ``key`` is the setting that names ``path``, for the messages.

    Raises:
        CheckpointError: if the checkpoint was trained for another task or layout.
    """
    payload = load_checkpoint(path, map_location=device, key=key)
    if payload.get("kind", "diffusion") != "diffusion":
        where = {"value": " (a value checkpoint goes in guidance.value_checkpoint)",
                 "bc": " (a BC checkpoint is evaluated with eval.controller=bc from bc.run_dir)",
                 "offline": " (an offline agent is evaluated with eval.controller=offline from offline.run_dir)"}
        raise CheckpointError(
            f"checkpoint {path} holds a {payload['kind']!r} model, not a trajectory diffusion model; point {key} at "
            f"the checkpoint.pt of diffplan-train{where.get(str(payload['kind']), '')}"
        )
    cfg = config_from_checkpoint(payload, path)
    layout = TrajectoryLayout.from_dict(payload["layout"])
    if expected_task is not None and cfg.task.name != expected_task:
        raise CheckpointError(
            f"checkpoint {path} was trained on task {cfg.task.name!r}, not {expected_task!r}; "
            f"point {key} at a checkpoint of {expected_task}, or set task={cfg.task.name}"
        )
    # Reward and terminal channels are extra outputs: a model with them still plans the task.
    if expected_layout is not None and (layout.obs_dim, layout.act_dim) != (expected_layout.obs_dim,
                                                                            expected_layout.act_dim):
        raise CheckpointError(
            f"checkpoint {path} has layout {layout.to_dict()} but the task needs {expected_layout.to_dict()}; "
            f"point {key} at a checkpoint trained on this task's data"
        )
    horizon = int(payload["horizon"])
    denoiser = build_denoiser(cfg.model, transition_dim=layout.transition_dim, horizon=horizon)
    denoiser.load_state_dict(payload["ema" if use_ema else "model"])
    denoiser.to(device).eval()
    inverse_dynamics = build_inverse_dynamics(cfg.model, obs_dim=layout.obs_dim, act_dim=layout.act_dim)
    if inverse_dynamics is not None:
        if "inverse_dynamics" not in payload:
            raise CheckpointError(f"checkpoint {path} sets model.inverse_dynamics but holds no inverse-dynamics head")
        inverse_dynamics.load_state_dict(payload["inverse_dynamics"]["ema" if use_ema else "model"])
        inverse_dynamics.to(device).eval()
    schedule = NoiseSchedule(
        cfg.diffusion.n_timesteps, kind=cfg.diffusion.schedule, prediction=cfg.diffusion.prediction
    ).to(device)
    normalizer = normalizer_from_state_dict(payload["normalizer"]["kind"], payload["normalizer"]["state"])
    normalizer.to(device)
    return TrainedModel(
        denoiser=denoiser,
        schedule=schedule,
        normalizer=normalizer,
        layout=layout,
        config=cfg,
        horizon=horizon,
        step=int(payload["step"]),
        path=Path(path),
        inverse_dynamics=inverse_dynamics,
        dataset=json.loads(payload.get("dataset", "{}")),
    )


def checkpoint_payload(
    *,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    normalizer_kind: str,
    normalizer: Normalizer,
    layout: TrajectoryLayout,
    config: dict[str, Any],
    horizon: int,
    step: int,
    generator: torch.Generator,
    dataset: dict[str, Any],
    inverse_dynamics: dict[str, Any] | None = None,
    world_size: int = 1,
) -> dict[str, Any]:
    """Assemble the checkpoint dict (tensors and primitives only).

    ``inverse_dynamics``: the head's ``{"model", "ema", "optimizer"}`` state dicts, if trained.
    ``world_size``: the processes that trained together up to this step (torchrun).
    """
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "normalizer": {"kind": normalizer_kind, "state": normalizer.state_dict()},
        "layout": layout.to_dict(),
        "config": json.dumps(config),
        "horizon": horizon,
        "step": step,
        "rng": {"generator": generator.get_state(), "torch": torch.get_rng_state()},
        "dataset": json.dumps(dataset),
        "world_size": world_size,
    }
    if inverse_dynamics is not None:
        payload["inverse_dynamics"] = inverse_dynamics
    return payload


def check_identity(label: str, path: Path, actual: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose identity differs from what the caller expects.

    Args:
        label: what the checkpoint is, e.g. ``"BC checkpoint"``.
        actual: the checkpoint's values by key (e.g. ``{"task.name": ..., "obs_dim": ...}``).
        expected: the expected values by the same keys; None skips a key.

    Raises:
        CheckpointError: naming the first differing key, both values and the fix.
    """
    for key, value in expected.items():
        if value is not None and actual[key] != value:
            raise CheckpointError(
                f"{label} {path} was trained with {key}={actual[key]!r}, but {value!r} is expected; "
                "pass the checkpoint trained for this task"
            )
