"""Training an offline RL agent (TD3+BC or IQL) on real and, optionally, synthetic transitions.

:class:`OfflineTrainer` runs the package's :class:`~diffplan.training.loop.TrainingLoop`
(tqdm progress, TensorBoard scalars under ``run_dir/tb``, checkpoints every ``ckpt_every``
updates and at the end, ``max_minutes``). The checkpoint (one atomic file, read with
``weights_only=True``) holds every network and target network, the optimizers, the
normalization statistics, the RNG states, the step, the config and the dataset's sha256; a
rerun resumes bit-identically and refuses a checkpoint trained with another algorithm or
network setting, task or dataset.

Policy-guided diffusion hook: ``regenerate(policy, step) -> data`` is called with the
agent as target policy before the first update when there is no synthetic set yet, and every
``regenerate_every`` updates after that; its transitions replace the synthetic set. Each
regenerated set is saved next to the checkpoint (``synthetic-<step>.pt``, the tensors the
sampler draws from) and the checkpoint records which set is in use (a file's path and sha256,
or the regeneration step), so a resumed run trains on exactly the data the interrupted one
had; sets no checkpoint refers to any more are deleted. For bit-identical resumption the
callable must be a deterministic function of the policy and the step.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from diffplan import __version__
from diffplan.agents.common import STD_EPS, OfflineAgent
from diffplan.agents.iql import IQLAgent
from diffplan.agents.replay import (
    DataSource,
    ReplaySampler,
    TransitionData,
    Transitions,
    as_transition_data,
    reward_normalization,
)
from diffplan.agents.td3bc import TD3BCAgent
from diffplan.baselines.bc import observation_stats
from diffplan.config import OfflineConfig
from diffplan.enums import OfflineAlgo
from diffplan.models.policy import TargetPolicy
from diffplan.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    check_identity,
    load_checkpoint,
    save_checkpoint,
)
from diffplan.training.loop import (
    LoopSettings,
    TrainingLoop,
    check_intervals,
    check_resume_config,
    check_resume_dataset,
    rng_state,
)
from diffplan.utils import file_sha256, select_device, set_threads

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
#: The ``kind`` entry of an offline-agent checkpoint.
CHECKPOINT_KIND = "offline"
#: The ``kind`` entry of a saved regenerated synthetic set.
SYNTHETIC_KIND = "offline-synthetic"
#: Settings that shape the agent or its objective: resuming with another value is refused.
IDENTITY_KEYS: dict[str, tuple[str, ...]] = {
    "common": ("algo", "hidden_sizes", "max_action", "normalize_states", "normalize_reward", "reward_scale",
               "discount", "tau", "actor_cosine"),
    OfflineAlgo.td3bc: ("alpha", "policy_noise", "noise_clip", "policy_freq"),
    OfflineAlgo.iql: ("expectile", "temperature", "adv_max"),
}

#: ``regenerate(policy, step)``: a new synthetic dataset (:class:`~diffplan.agents.replay.TransitionData`,
#: :class:`~diffplan.data.episodes.Episodes` or D4RL-layout arrays) for the agent after ``step`` updates.
RegenerateFn = Callable[[TargetPolicy, int], DataSource]


def build_agent(
    cfg: OfflineConfig,
    obs_dim: int,
    act_dim: int,
    *,
    obs_mean: torch.Tensor | None = None,
    obs_std: torch.Tensor | None = None,
    reward_scale: float = 1.0,
) -> OfflineAgent:
    """The agent ``cfg.algo`` names, with ``cfg``'s hyperparameters (freshly initialized)."""
    common: dict[str, Any] = dict(hidden_sizes=list(cfg.hidden_sizes), obs_mean=obs_mean, obs_std=obs_std,
                                  max_action=cfg.max_action, reward_scale=reward_scale, lr=cfg.lr,
                                  discount=cfg.discount, tau=cfg.tau)
    algo = OfflineAlgo(cfg.algo)
    if algo is OfflineAlgo.td3bc:
        return TD3BCAgent(obs_dim, act_dim, alpha=cfg.alpha, policy_noise=cfg.policy_noise,
                          noise_clip=cfg.noise_clip, policy_freq=cfg.policy_freq, std=cfg.std, **common)
    return IQLAgent(obs_dim, act_dim, expectile=cfg.expectile, temperature=cfg.temperature, adv_max=cfg.adv_max,
                    **common)


def cosine_lr(lr: float, step: int, steps: int) -> float:
    """Cosine decay from ``lr`` at update 0 to 0 at update ``steps`` (torch's CosineAnnealingLR)."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


def config_dict(cfg: OfflineConfig) -> dict[str, Any]:
    """``cfg`` as a JSON-compatible dict (enums as strings)."""
    result: dict[str, Any] = json.loads(json.dumps(asdict(cfg)))
    return result


def config_from_dict(data: dict[str, Any]) -> OfflineConfig:
    """Inverse of :func:`config_dict` (unknown keys are ignored, missing ones take their defaults)."""
    names = {f.name for f in fields(OfflineConfig)}
    values = {key: value for key, value in data.items() if key in names}
    if "algo" in values:
        values["algo"] = OfflineAlgo(values["algo"])
    return OfflineConfig(**values)


@dataclass
class _LoopSettings:
    """The :class:`~diffplan.training.loop.LoopSettings` view of an :class:`OfflineConfig`."""

    steps: int
    batch_size: int
    lr: float
    ckpt_every: int
    log_every: int
    progress: bool
    max_minutes: float | None
    warmup_steps: int = 0
    grad_clip: float = 0.0
    ema_decay: float = 0.0


class OfflineTrainer(TrainingLoop):
    """Trains TD3+BC or IQL (``cfg.algo``) on ``episodes`` (+ synthetic transitions).

    Args:
        cfg: the ``offline`` settings.
        episodes: the real dataset (:class:`TransitionData` to pass its ``next_observations``);
            its observation mean/std (and, with ``normalize_reward``, its return range) fix the
            normalization for the whole run.
        task: the task's name, recorded in the checkpoint and checked on resume and load.
        dataset_info: provenance of ``episodes`` (``path``, ``sha256``), checked on resume.
        synthetic: a synthetic dataset in raw units (e.g. the ``offline.synthetic`` file), or None.
        synthetic_info: provenance of ``synthetic`` (``path``, ``sha256``).
        regenerate: the policy-guided diffusion hook (see the module docstring), or None.
        run_dir: overrides ``cfg.run_dir``.

    Raises:
        ValueError: inconsistent settings (a synthetic ratio without synthetic data,
            ``regenerate_every`` without a ``regenerate`` callable, bad intervals).
    """

    def __init__(
        self,
        cfg: OfflineConfig,
        episodes: DataSource,
        *,
        task: str,
        dataset_info: dict[str, Any],
        synthetic: DataSource | None = None,
        synthetic_info: dict[str, Any] | None = None,
        regenerate: RegenerateFn | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        self.cfg = cfg
        check_intervals(self.settings, "offline")
        if cfg.regenerate_every < 0:
            raise ValueError(f"offline.regenerate_every must be >= 0, got {cfg.regenerate_every}")
        if cfg.regenerate_every > 0 and regenerate is None:
            raise ValueError("offline.regenerate_every > 0 needs a regenerate callable (the synthetic-experience "
                             "generator); set offline.regenerate_every=0 to train on a fixed offline.synthetic file")
        if regenerate is not None and not cfg.synthetic_ratio > 0:
            raise ValueError("a regenerate callable is given but offline.synthetic_ratio is 0 (real data only); "
                             "set offline.synthetic_ratio in (0, 1]")
        if cfg.synthetic_ratio > 0 and synthetic is None and regenerate is None:
            raise ValueError(f"offline.synthetic_ratio={cfg.synthetic_ratio} needs synthetic data: set "
                             "offline.synthetic to a dataset file (or give a regenerate callable)")
        if synthetic is not None and not cfg.synthetic_ratio > 0:
            log.warning("offline.synthetic is set but offline.synthetic_ratio is 0: the synthetic data is not used")
        self.task = task
        self.dataset_info = dict(dataset_info)
        self.run_dir = Path(cfg.run_dir if run_dir is None else run_dir)
        self.log_prefix = f"offline-{OfflineAlgo(cfg.algo).value}"
        self.regenerate = regenerate
        set_threads(cfg.threads)
        self.device = select_device(cfg.device)
        real = as_transition_data(episodes)
        self.obs_dim, self.act_dim = real.obs_dim, real.act_dim
        if cfg.normalize_states:
            mean, std = observation_stats(real.episodes.observations)
            std = std + STD_EPS
        else:
            mean, std = torch.zeros(self.obs_dim), torch.ones(self.obs_dim)
        reward_scale = reward_normalization(real.episodes, cfg.reward_scale) if cfg.normalize_reward else 1.0
        torch.manual_seed(cfg.seed)
        self.agent = build_agent(cfg, self.obs_dim, self.act_dim, obs_mean=mean, obs_std=std,
                                 reward_scale=reward_scale).to(self.device)
        self.optimizer = self.agent.optimizers()["actor"]
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.sampler = ReplaySampler(self._prepare(real), cfg.batch_size, cfg.synthetic_ratio)
        self.synthetic_record: dict[str, Any] = {"source": "none"}
        if synthetic is not None and cfg.synthetic_ratio > 0:
            self.sampler.set_synthetic(self._prepare(as_transition_data(synthetic), "the synthetic data"))
            self.synthetic_record = {"source": "file", **dict(synthetic_info or {})}
        self.step = 0
        self.last_losses: dict[str, float] = {}

    @property
    def checkpoint_path(self) -> Path:
        """``run_dir/checkpoint.pt``."""
        return self.run_dir / CHECKPOINT_NAME

    @property
    def settings(self) -> LoopSettings:
        """The loop's view of the ``offline`` settings."""
        cfg = self.cfg
        return _LoopSettings(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, ckpt_every=cfg.ckpt_every,
                             log_every=cfg.log_every, progress=cfg.progress, max_minutes=cfg.max_minutes)

    def _prepare(self, data: TransitionData, what: str = "the dataset") -> Transitions:
        """Transitions of raw ``data``, normalized like the real data, on the training device.

        Raises:
            ValueError: ``data`` has other dimensions than the real dataset.
        """
        if data.obs_dim != self.obs_dim or data.act_dim != self.act_dim:
            raise ValueError(
                f"{what} has obs_dim={data.obs_dim}, act_dim={data.act_dim} but the dataset has "
                f"{self.obs_dim}, {self.act_dim}; generate it for this task"
            )
        agent = self.agent
        transitions = data.transitions().to(self.device)
        return transitions.normalized(agent.obs_mean, agent.obs_std, float(agent.reward_scale))

    def _synthetic_path(self, step: int) -> Path:
        return self.run_dir / f"synthetic-{step:08d}.pt"

    def regenerate_now(self) -> None:
        """Call the regenerate hook with the agent and the current step; use (and save) its data."""
        assert self.regenerate is not None
        data = as_transition_data(self.regenerate(self.agent, self.step))
        transitions = self._prepare(data, f"the data regenerate returned at update {self.step}")
        path = self._synthetic_path(self.step)
        save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "kind": SYNTHETIC_KIND, "step": self.step,
                               "transitions": transitions.state_dict()})
        self.sampler.set_synthetic(transitions)
        self.synthetic_record = {"source": "regenerated", "step": self.step, "path": path.name,
                                 "sha256": file_sha256(path), "n_transitions": len(transitions)}
        log.info("%s: regenerated %d synthetic transitions at update %d", self.log_prefix, len(transitions),
                 self.step)

    def _regeneration_due(self) -> bool:
        if self.regenerate is None:
            return False
        if self.sampler.synthetic is None:
            return True
        every = self.cfg.regenerate_every
        return (every > 0 and self.step > 0 and self.step % every == 0
                and self.synthetic_record.get("step") != self.step)

    def train_step(self) -> float:
        """One agent update (regenerating the synthetic set first when due); returns the critic loss."""
        if self._regeneration_due():
            self.regenerate_now()
        batch = self.sampler.sample(self.generator)
        if self.cfg.actor_cosine:
            self.agent.set_actor_lr(cosine_lr(self.cfg.lr, self.step, self.cfg.steps))
        self.last_losses = self.agent.update(batch, self.step, self.generator)
        self.step += 1
        return self.last_losses["critic"]

    def extra_losses(self) -> dict[str, float]:
        """The actor's (and IQL's value) loss of the last update (TD3+BC: its latest actor step's)."""
        return {name: value for name, value in self.last_losses.items()
                if name != "critic" and math.isfinite(value)}

    def _task(self) -> dict[str, Any]:
        return {"name": self.task, "obs_dim": self.obs_dim, "act_dim": self.act_dim}

    def save(self) -> None:
        """Write ``run_dir/checkpoint.pt`` atomically; delete saved synthetic sets it does not use."""
        save_checkpoint(
            self.checkpoint_path,
            {
                "format": CHECKPOINT_FORMAT,
                "kind": CHECKPOINT_KIND,
                "version": __version__,
                "algo": OfflineAlgo(self.cfg.algo).value,
                "agent": self.agent.state_dict(),
                "optimizers": {name: opt.state_dict() for name, opt in self.agent.optimizers().items()},
                "task": self._task(),
                "config": json.dumps(config_dict(self.cfg)),
                "dataset": json.dumps(self.dataset_info),
                "synthetic": json.dumps(self.synthetic_record),
                "step": self.step,
                "rng": rng_state(self.generator),
            },
        )
        keep = self.synthetic_record.get("path") if self.synthetic_record["source"] == "regenerated" else None
        for stale in self.run_dir.glob("synthetic-*.pt"):
            if stale.name != keep:
                stale.unlink(missing_ok=True)

    def resume(self) -> bool:
        """Load ``run_dir/checkpoint.pt`` if it exists; True if training state was restored.

        Raises:
            CheckpointError: not an offline-agent checkpoint; trained for another task, with
                another algorithm or network setting (the message names it), on another dataset
                or another synthetic file; or its regenerated synthetic set is missing or altered.
        """
        path = self.checkpoint_path
        if not path.exists():
            return False
        payload = _load_offline_payload(path, "cpu")
        algo = OfflineAlgo(self.cfg.algo)
        check_resume_config(
            path,
            {"task": payload["task"], "offline": json.loads(payload["config"])},
            {"task": self._task(), "offline": config_dict(self.cfg)},
            {"task": ("name", "obs_dim", "act_dim"), "offline": IDENTITY_KEYS["common"] + IDENTITY_KEYS[algo]},
        )
        check_resume_dataset(path, payload, self.dataset_info)
        self._restore_synthetic(path, json.loads(payload.get("synthetic", '{"source": "none"}')))
        self.agent.load_state_dict(payload["agent"])
        for name, optimizer in self.agent.optimizers().items():
            optimizer.load_state_dict(payload["optimizers"][name])
        self.generator.set_state(payload["rng"]["generator"])
        torch.set_rng_state(payload["rng"]["torch"])
        self.step = int(payload["step"])
        log.info("resumed %s at step %d", path, self.step)
        return True

    def _restore_synthetic(self, path: Path, record: dict[str, Any]) -> None:
        """Use the synthetic set the checkpoint recorded (see the module docstring)."""
        if record["source"] == "regenerated":
            data_path = self.run_dir / record["path"]
            if not data_path.is_file() or file_sha256(data_path) != record["sha256"]:
                raise CheckpointError(
                    f"cannot resume {path}: its synthetic set {data_path} (regenerated at update {record['step']}) "
                    "is missing or altered; use a new offline.run_dir"
                )
            stored = load_checkpoint(data_path)
            self.sampler.set_synthetic(Transitions.from_state_dict(stored["transitions"]).to(self.device))
            self.synthetic_record = record
            return
        current = self.synthetic_record
        if (current["source"], current.get("sha256")) != (record["source"], record.get("sha256")):
            saved = record.get("path") or "no synthetic data"
            raise CheckpointError(
                f"cannot resume {path}: it was trained with offline.synthetic={saved} "
                f"(sha256 {str(record.get('sha256'))[:12]}…), the current run has "
                f"{current.get('path') or 'no synthetic data'} (sha256 {str(current.get('sha256'))[:12]}…); "
                "restore the setting or use a new run_dir"
            )


def _load_offline_payload(path: Path, map_location: str | torch.device, key: str = "eval.checkpoint") -> dict[str, Any]:
    payload = load_checkpoint(path, map_location=map_location, key=key)
    if payload.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(
            f"checkpoint {path} ({key}) is not an offline RL agent checkpoint (kind "
            f"{payload.get('kind', 'diffusion')!r}); point {key} at one written by diffplan-train-offline"
        )
    return payload


@dataclass
class OfflineModel:
    """A trained offline agent and what its checkpoint says about it."""

    agent: OfflineAgent
    config: OfflineConfig
    task: str
    obs_dim: int
    act_dim: int
    step: int
    dataset: dict[str, Any]
    synthetic: dict[str, Any]
    path: Path


def load_offline_agent(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    expected_task: str | None = None,
    expected_obs_dim: int | None = None,
    expected_act_dim: int | None = None,
    expected_dataset_sha256: str | None = None,
    std: float | None = None,
    key: str = "eval.checkpoint",
) -> OfflineModel:
    """Rebuild the agent of an offline checkpoint (in eval mode); refuse one made for something else.

    Args:
        std: TD3+BC only: the log_prob standard deviation (default: the checkpoint's ``offline.std``).
        key: the setting that names ``path``, for the message when it does not exist.

    Raises:
        CheckpointError: not an offline checkpoint, or its task, observation or action size or
            dataset sha256 differs from the expected one (the message names the key).
    """
    path = Path(path)
    payload = _load_offline_payload(path, device, key)
    task = payload["task"]
    check_identity(f"offline checkpoint ({key})", path, {f"task.{name}": value for name, value in task.items()},
                   {"task.name": expected_task, "task.obs_dim": expected_obs_dim, "task.act_dim": expected_act_dim})
    saved = json.loads(payload.get("dataset", "{}")).get("sha256")
    if saved and expected_dataset_sha256 and saved != expected_dataset_sha256:
        raise CheckpointError(
            f"offline checkpoint {path} was trained on a dataset with sha256 {saved[:12]}…, not "
            f"{expected_dataset_sha256[:12]}…; use the checkpoint trained on this dataset"
        )
    cfg = config_from_dict(json.loads(payload["config"]))
    if std is not None:
        cfg.std = std
    agent = build_agent(cfg, int(task["obs_dim"]), int(task["act_dim"]))
    agent.load_state_dict(payload["agent"])
    agent.to(device).eval()
    return OfflineModel(
        agent=agent, config=cfg, task=task["name"], obs_dim=int(task["obs_dim"]), act_dim=int(task["act_dim"]),
        step=int(payload["step"]), dataset=json.loads(payload.get("dataset", "{}")),
        synthetic=json.loads(payload.get("synthetic", "{}")), path=path,
    )


def offline_policy_loader(path: Path, std: float, vecnormalize: Path | None = None) -> TargetPolicy:
    """An offline checkpoint as a target policy on the CPU, in the signature of
    :data:`diffplan.policies.loading.PolicyLoader` (register it with
    ``register_policy_loader("offline", offline_policy_loader)``).

    ``std`` sets TD3+BC's log_prob standard deviation; IQL uses its own learned one.

    Raises:
        ValueError: a VecNormalize pickle is given (the agents normalize observations themselves).
    """
    if vecnormalize is not None:
        raise ValueError("offline agents normalize observations with their own statistics; "
                         "drop guidance.policy_vecnormalize")
    return load_offline_agent(path, std=std).agent
