"""Behaviour cloning: an MLP policy ``obs -> action`` fitted to a dataset's pairs by MSE.

The network normalizes observations with the dataset's mean and standard deviation (module
buffers, so they travel in the checkpoint) and bounds its output to the action box with a
scaled tanh. :class:`BCTrainer` draws every minibatch from one ``torch.Generator`` whose
state is saved in the checkpoint, so resuming is bit-identical; the checkpoint (written
atomically, read with ``weights_only=True``) records the task, the dimensions and the
dataset's sha256, and :func:`load_bc_model` refuses one that does not match.
:class:`AgentController` has the batched interface of :class:`~diffplan.planning.controllers.PlanController`,
so :func:`diffplan.evaluation.evaluator.evaluate` runs it unchanged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffplan import __version__
from diffplan.config import BCConfig
from diffplan.controllers import PlanRecord
from diffplan.data.episodes import Episodes
from diffplan.data.normalizer import MIN_STD
from diffplan.models.mlp import mlp
from diffplan.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    check_identity,
    load_checkpoint,
    save_checkpoint,
)
from diffplan.training.loop import TrainSummary, check_resume_dataset
from diffplan.utils import select_device, set_threads

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
#: The ``kind`` entry of a BC checkpoint (diffusion checkpoints have none or ``"diffusion"``).
CHECKPOINT_KIND = "bc"


class BCNetwork(nn.Module):
    """MLP policy: Gaussian-normalized observations in, tanh-bounded actions out.

    Args:
        obs_dim: observation size.
        act_dim: action size.
        hidden_sizes: hidden layer widths (ReLU between layers).
        obs_mean, obs_std: (obs_dim,) normalization statistics (default 0 and 1); stds below
            ``MIN_STD`` are treated as 1 (constant dimensions).
        action_low, action_high: the action box; outputs lie strictly inside it.
    """

    obs_mean: Tensor
    obs_std: Tensor
    action_low: Tensor
    action_high: Tensor

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: Sequence[int] = (256, 256),
        *,
        obs_mean: Tensor | None = None,
        obs_std: Tensor | None = None,
        action_low: float = -1.0,
        action_high: float = 1.0,
    ) -> None:
        super().__init__()
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f"BC needs obs_dim >= 1 and act_dim >= 1, got {obs_dim} and {act_dim}")
        if not action_high > action_low:
            raise ValueError(f"bc.action_high ({action_high}) must exceed bc.action_low ({action_low})")
        self.obs_dim, self.act_dim, self.hidden_sizes = obs_dim, act_dim, list(hidden_sizes)
        mean = torch.zeros(obs_dim) if obs_mean is None else torch.as_tensor(obs_mean, dtype=torch.float32)
        std = torch.ones(obs_dim) if obs_std is None else torch.as_tensor(obs_std, dtype=torch.float32)
        std = torch.where(std < MIN_STD, torch.ones_like(std), std)
        self.register_buffer("obs_mean", mean.clone().float())
        self.register_buffer("obs_std", std.clone().float())
        self.register_buffer("action_low", torch.full((act_dim,), float(action_low)))
        self.register_buffer("action_high", torch.full((act_dim,), float(action_high)))
        self.net = mlp(obs_dim, act_dim, hidden_sizes, setting="bc.hidden_sizes")

    def forward(self, observations: Tensor) -> Tensor:
        """Raw observations (..., obs_dim) -> actions (..., act_dim) inside the action box."""
        z = self.net((observations - self.obs_mean) / self.obs_std)
        half = (self.action_high - self.action_low) / 2
        return self.action_low + half * (torch.tanh(z) + 1)


def observation_stats(observations: np.ndarray) -> tuple[Tensor, Tensor]:
    """(obs_dim,) mean and std of raw observations, computed in float64."""
    data = np.asarray(observations, dtype=np.float64)
    return torch.from_numpy(data.mean(axis=0)).float(), torch.from_numpy(data.std(axis=0)).float()


#: What a BC training run did (the same record as the diffusion and value trainers').
BCSummary = TrainSummary


class BCTrainer:
    """Trains a :class:`BCNetwork` on the (observation, action) pairs of ``episodes``.

    Args:
        cfg: the ``bc`` settings (network, optimizer, steps, seed, device, run_dir).
        episodes: the dataset.
        task: the task's name, recorded in the checkpoint and checked on resume and load.
        dataset_info: provenance stored in the checkpoint (``path``, ``sha256``).
        run_dir: overrides ``cfg.run_dir`` (where ``checkpoint.pt`` goes).
    """

    def __init__(
        self,
        cfg: BCConfig,
        episodes: Episodes,
        *,
        task: str,
        dataset_info: dict[str, Any],
        run_dir: str | Path | None = None,
    ) -> None:
        for key in ("steps", "batch_size", "ckpt_every", "log_every"):
            if getattr(cfg, key) < 1:
                raise ValueError(f"bc.{key} must be >= 1, got {getattr(cfg, key)}")
        self.cfg = cfg
        self.task = task
        self.dataset_info = dict(dataset_info)
        self.run_dir = Path(cfg.run_dir if run_dir is None else run_dir)
        set_threads(cfg.threads)
        self.device = select_device(cfg.device)
        self.obs_dim, self.act_dim = episodes.obs_dim, episodes.act_dim
        self.observations = torch.from_numpy(episodes.observations).to(self.device)
        actions = torch.from_numpy(episodes.actions)
        outside = (actions < cfg.action_low) | (actions > cfg.action_high)
        if outside.any():
            log.warning(
                "%d of %d dataset actions lie outside the action box [%s, %s]; their targets are clipped",
                int(outside.any(dim=1).sum()), len(actions), cfg.action_low, cfg.action_high,
            )
        self.actions = actions.clamp(cfg.action_low, cfg.action_high).to(self.device)
        mean, std = observation_stats(episodes.observations)
        torch.manual_seed(cfg.seed)
        self.network = BCNetwork(
            self.obs_dim, self.act_dim, cfg.hidden_sizes, obs_mean=mean, obs_std=std,
            action_low=cfg.action_low, action_high=cfg.action_high,
        ).to(self.device)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def _identity(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed or used: task, dimensions, network, box."""
        return {
            "task.name": self.task,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "bc.hidden_sizes": list(self.cfg.hidden_sizes),
            "bc.action_low": float(self.cfg.action_low),
            "bc.action_high": float(self.cfg.action_high),
        }

    def save(self) -> None:
        """Write ``run_dir/checkpoint.pt`` atomically."""
        save_checkpoint(
            self.checkpoint_path,
            {
                "format": CHECKPOINT_FORMAT,
                "kind": CHECKPOINT_KIND,
                "version": __version__,
                "model": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "task": {"name": self.task, "obs_dim": self.obs_dim, "act_dim": self.act_dim},
                "network": {
                    "hidden_sizes": list(self.cfg.hidden_sizes),
                    "action_low": float(self.cfg.action_low),
                    "action_high": float(self.cfg.action_high),
                },
                "config": json.dumps(asdict(self.cfg)),
                "dataset": json.dumps(self.dataset_info),
                "step": self.step,
                "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()},
            },
        )

    def resume(self) -> bool:
        """Load ``run_dir/checkpoint.pt`` if it exists; True if training state was restored.

        Raises:
            CheckpointError: the checkpoint is not a BC checkpoint, or was trained for another
                task, other dimensions, another network or another dataset.
        """
        if not self.checkpoint_path.exists():
            return False
        payload = _load_bc_payload(self.checkpoint_path, "cpu")
        saved = _identity_of(payload)
        for key, value in self._identity().items():
            if saved[key] != value:
                raise CheckpointError(
                    f"cannot resume {self.checkpoint_path}: it was trained with {key}={saved[key]!r}, the current "
                    f"run has {value!r}; restore the setting or use a new bc.run_dir"
                )
        if json.loads(payload.get("dataset", "{}")).get("identity") and self.dataset_info.get("identity"):
            check_resume_dataset(self.checkpoint_path, payload, self.dataset_info)  # by the datasets' identities
        else:
            _check_dataset(self.checkpoint_path, payload, self.dataset_info.get("sha256"),
                           self.dataset_info.get("path"))
        self.network.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.generator.set_state(payload["rng"]["generator"])
        torch.set_rng_state(payload["rng"]["torch"])
        self.step = int(payload["step"])
        log.info("resumed %s at step %d", self.checkpoint_path, self.step)
        return True

    def train_step(self) -> float:
        """One AdamW step on a minibatch of (observation, action) pairs; returns the MSE."""
        index = torch.randint(len(self.observations), (self.cfg.batch_size,), generator=self.generator)
        index = index.to(self.device)
        predicted = self.network(self.observations[index])
        loss = (predicted - self.actions[index]).pow(2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def evaluate_mse(self) -> float:
        """Mean squared action error over the whole dataset."""
        errors = [
            (self.network(obs) - act).pow(2).sum().item()
            for obs, act in zip(self.observations.split(65536), self.actions.split(65536), strict=True)
        ]
        return float(sum(errors) / self.actions.numel())

    def train(self, *, resume: bool = True) -> BCSummary:
        """Train until ``bc.steps``, checkpointing every ``bc.ckpt_every`` steps and at the end."""
        cfg = self.cfg
        if resume:
            self.resume()
        start = self.step
        loss = float("nan")
        t0 = time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=start, desc="train-bc", disable=not cfg.progress, unit="step")
        running, n_running = 0.0, 0
        while self.step < cfg.steps:
            loss = self.train_step()
            running, n_running = running + loss, n_running + 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                bar.set_postfix(loss=f"{running / n_running:.4f}")
                running, n_running = 0.0, 0
            if self.step % cfg.ckpt_every == 0:
                self.save()
        bar.close()
        self.save()
        return TrainSummary.since(self.checkpoint_path, self.step, start, loss, t0)


def _load_bc_payload(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    payload = load_checkpoint(path, map_location=map_location)
    if payload.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(
            f"checkpoint {path} is not a behaviour-cloning checkpoint (kind {payload.get('kind', 'diffusion')!r}); "
            "train one with diffplan-train-bc"
        )
    return payload


def _identity_of(payload: dict[str, Any]) -> dict[str, Any]:
    task, network = payload["task"], payload["network"]
    return {
        "task.name": task["name"],
        "obs_dim": int(task["obs_dim"]),
        "act_dim": int(task["act_dim"]),
        "bc.hidden_sizes": list(network["hidden_sizes"]),
        "bc.action_low": float(network["action_low"]),
        "bc.action_high": float(network["action_high"]),
    }


def _check_dataset(path: Path, payload: dict[str, Any], sha256: str | None, source: str | None) -> None:
    saved = json.loads(payload.get("dataset", "{}")).get("sha256")
    if saved and sha256 and saved != sha256:
        raise CheckpointError(
            f"BC checkpoint {path} was trained on a dataset with sha256 {saved[:12]}…, but "
            f"{source or 'the given dataset'} has sha256 {sha256[:12]}…; use the original dataset or a new bc.run_dir"
        )


@dataclass
class BCModel:
    """A trained BC policy network and what its checkpoint says about it."""

    network: BCNetwork
    task: str
    obs_dim: int
    act_dim: int
    step: int
    dataset: dict[str, Any]
    path: Path


def load_bc_model(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    expected_task: str | None = None,
    expected_obs_dim: int | None = None,
    expected_act_dim: int | None = None,
    expected_dataset_sha256: str | None = None,
) -> BCModel:
    """Rebuild the BC network from a checkpoint; refuse one made for something else.

    Raises:
        CheckpointError: not a BC checkpoint, or its task name, observation or action size, or
            dataset sha256 differs from the expected one (the message names the key).
    """
    path = Path(path)
    payload = _load_bc_payload(path, device)
    identity = _identity_of(payload)
    check_identity("BC checkpoint", path, identity,
                   {"task.name": expected_task, "obs_dim": expected_obs_dim, "act_dim": expected_act_dim})
    _check_dataset(path, payload, expected_dataset_sha256, None)
    network = BCNetwork(
        identity["obs_dim"], identity["act_dim"], identity["bc.hidden_sizes"],
        action_low=identity["bc.action_low"], action_high=identity["bc.action_high"],
    )
    network.load_state_dict(payload["model"])
    network.to(device).eval()
    return BCModel(
        network=network,
        task=identity["task.name"],
        obs_dim=identity["obs_dim"],
        act_dim=identity["act_dim"],
        step=int(payload["step"]),
        dataset=json.loads(payload.get("dataset", "{}")),
        path=path,
    )


class ActionNetwork(Protocol):
    """A deterministic policy network: raw observations (N, obs_dim) -> actions (N, act_dim).

    :class:`BCNetwork` and the offline agents of :mod:`diffplan.agents` are ones.
    """

    act_dim: int

    def __call__(self, observations: Tensor) -> Tensor: ...


@dataclass
class AgentController:
    """Batched closed-loop BC policy with :class:`~diffplan.planning.controllers.PlanController`'s interface.

    Args:
        network: the trained network (any :class:`ActionNetwork`, e.g. an offline RL agent).
        device: where inference runs.
        record_times: append a :class:`PlanRecord` per call (its time, no planned states), so
            the evaluator reports inference times like plan times.
    """

    network: ActionNetwork
    device: torch.device | str = "cpu"
    record_times: bool = True
    records: list[PlanRecord] = field(default_factory=list)

    def reset(self, n_envs: int) -> None:
        """Forget the records of the previous batch (BC keeps no other state)."""
        self.records = []

    @torch.no_grad()
    def act(
        self, step: int, observations: np.ndarray, goals: np.ndarray, active: np.ndarray, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Actions (N, act_dim) for the active environments (zeros elsewhere), and a (N,) bool of
        envs whose action came out non-finite. ``goals`` and ``generator`` are unused (BC is
        deterministic and not goal-conditioned)."""
        start = time.perf_counter()
        n = len(observations)
        index = np.flatnonzero(active)
        actions = np.zeros((n, self.network.act_dim), dtype=np.float64)
        if index.size:
            obs = torch.as_tensor(observations[index], dtype=torch.float32, device=self.device)
            actions[index] = self.network(obs).cpu().numpy()
        bad = ~np.isfinite(actions).all(axis=1) & np.asarray(active, dtype=bool)
        if self.record_times:
            empty = np.zeros((index.size, 0, observations.shape[1]))
            self.records.append(PlanRecord(step, index, empty, time.perf_counter() - start))
        return actions, bad
