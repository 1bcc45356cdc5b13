"""Train a trajectory diffusion model on dataset windows.

One loop, top to bottom: sample windows, draw noise levels and noise from one generator,
take an AdamW step with warmup and gradient clipping, update the EMA, log, checkpoint.
Every random draw comes from one ``torch.Generator`` whose state is saved in the
checkpoint, so ``resume`` continues bit-identically on the same machine.

Noise levels are drawn by ``train.noise_mode`` (full-sequence by default, or per token as in
Diffusion Forcing) and each token's loss may be weighted by its level (``train.level_weighting``).

Options: ``model.return_condition`` feeds each window's normalized return-to-go (at its
first token) to the denoiser, replaced by the null condition with probability
``train.cond_dropout`` per sample (classifier-free guidance); ``model.inverse_dynamics``
trains an inverse-dynamics head on the clean consecutive states of the same windows, with
its own AdamW and EMA, saved in the same checkpoint.
"""

from __future__ import annotations

import copy
import functools
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffplan.acceleration import autocast, compile_module
from diffplan.config import Config, timesteps_per_token, to_container
from diffplan.data.episodes import Episodes
from diffplan.data.layout import TrajectoryLayout
from diffplan.data.normalizer import fit_normalizer
from diffplan.data.returns import normalized_returns_to_go
from diffplan.data.windows import TrajectoryBatch, WindowSampler
from diffplan.diffusion.conditioning import conditioning_mask
from diffplan.diffusion.levels import (
    check_mixture_p,
    drop_history,
    planner_history_lengths,
    planner_level_patterns,
    resolve_history,
    schedule_levels_and_history,
    training_levels,
)
from diffplan.diffusion.loss import diffusion_loss
from diffplan.diffusion.sampler import Denoiser, check_clip
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.enums import NoiseMode, NormalizerKind
from diffplan.models.factory import build_denoiser, build_inverse_dynamics
from diffplan.models.inverse_dynamics import InverseDynamics, inverse_dynamics_loss
from diffplan.training import distributed
from diffplan.training.checkpoint import (
    CheckpointError,
    checkpoint_payload,
    config_from_checkpoint,
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
    update_ema,
    warmup_lr,
)
from diffplan.training.loop import TrainSummary as TrainSummary  # re-exported
from diffplan.utils import select_device, set_threads

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
#: Settings that shape the trained model: they must match to resume a run. Everything else
#: (train.steps, planning-time sampler settings, evaluation) may change between runs.
RESUME_KEYS: dict[str, tuple[str, ...] | None] = {
    "model": None,
    "task": ("name", "horizon", "stride", "continuous_stream", "goal_obs_dims", "return_scale", "return_discount"),
    "diffusion": ("n_timesteps", "schedule", "prediction", "normalizer", "clean_condition_tokens"),
    "train": ("condition_start", "condition_goal", "pad", "action_weight", "cond_dropout", "model_rewards",
              "model_terminals", "reward_weight", "terminal_weight", "noise_mode", "noise_mixture_p",
              "level_weighting"),
}


#: Task settings only a return-conditioned model (``model.return_condition``) reads.
RETURN_KEYS = ("return_scale", "return_discount")


def resume_keys(cfg: Config) -> dict[str, tuple[str, ...] | None]:
    """:data:`RESUME_KEYS` for ``cfg``'s model: without ``model.return_condition`` the returns'
    scale and discount shape nothing, so a run resumes when only they changed (``model.return_condition``
    itself is compared with the rest of the model section)."""
    if cfg.model.return_condition:
        return RESUME_KEYS
    task = RESUME_KEYS["task"] or ()
    return {**RESUME_KEYS, "task": tuple(key for key in task if key not in RETURN_KEYS)}


def layout_for(episodes: Episodes, *, rewards: bool = False, terminals: bool = False) -> TrajectoryLayout:
    """States and actions of the dataset (and optionally rewards and terminal flags), in the project's order."""
    return TrajectoryLayout(obs_dim=episodes.obs_dim, act_dim=episodes.act_dim, reward=rewards, terminal=terminals)


def loss_weights(
    layout: TrajectoryLayout, horizon: int, action_weight: float, *, reward_weight: float = 1.0,
    terminal_weight: float = 1.0,
) -> torch.Tensor:
    """(H, D) weights: 1 on observations and actions, ``action_weight`` on the first token's actions
    (Diffuser), ``reward_weight`` / ``terminal_weight`` on every token's reward / terminal channel."""
    weights = torch.ones(horizon, layout.transition_dim)
    weights[0, layout.act] = action_weight
    weights[:, layout.rew] = reward_weight
    weights[:, layout.term] = terminal_weight
    return weights


class Trainer(TrainingLoop):
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
        check_intervals(cfg.train, "train")
        check_clip(cfg.diffusion.normalizer.value, cfg.diffusion.clip_denoised)
        set_threads(cfg.train.threads)
        self.device = distributed.place(select_device(cfg.train.device))
        #: This rank's slice of each global batch under torchrun (None in one process).
        self.part = distributed.batch_part(cfg.train.batch_size, "train.batch_size")
        self.horizon = cfg.task.horizon
        if NoiseMode(cfg.train.noise_mode) is NoiseMode.mixture:
            check_mixture_p(cfg.train.noise_mixture_p)
        if cfg.task.continuous_stream:
            # One uninterrupted recording: windows may cross goal changes (not env resets).
            episodes = episodes.joined()
        self.layout = layout_for(episodes, rewards=cfg.train.model_rewards, terminals=cfg.train.model_terminals)
        self.normalizer_kind = NormalizerKind(cfg.diffusion.normalizer).value
        self.normalizer = fit_normalizer(self.normalizer_kind, episodes.transitions(self.layout))
        self.windows = WindowSampler(
            episodes, self.layout, self.horizon, self.normalizer, pad=cfg.train.pad, stride=cfg.task.stride
        )
        # (T,) normalized return-to-go of every transition, gathered at each window's first step.
        self.returns: torch.Tensor | None = None
        if cfg.model.return_condition:
            if not 0.0 <= cfg.train.cond_dropout <= 1.0:
                raise ValueError(f"train.cond_dropout must be in [0, 1], got {cfg.train.cond_dropout}")
            self.returns = torch.from_numpy(
                normalized_returns_to_go(episodes, cfg.task.return_discount, cfg.task.return_scale)
            )
        self.schedule = NoiseSchedule(
            cfg.diffusion.n_timesteps, kind=cfg.diffusion.schedule, prediction=cfg.diffusion.prediction
        ).to(self.device)
        #: The level patterns of train.noise_mode=schedule (the forcing planner's) and their history
        #: lengths, else None.
        self.level_patterns = schedule_patterns(cfg, self.horizon) if NoiseMode(cfg.train.noise_mode) is \
            NoiseMode.schedule else None
        torch.manual_seed(cfg.train.seed)
        self.model = build_denoiser(cfg.model, transition_dim=self.layout.transition_dim, horizon=self.horizon)
        self.model.to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = make_adamw(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        # Built after the denoiser, so the denoiser's initialisation does not depend on the option.
        self.inverse_dynamics = build_inverse_dynamics(
            cfg.model, obs_dim=self.layout.obs_dim, act_dim=self.layout.act_dim
        )
        self.inverse_dynamics_ema: nn.Module | None = None
        self.inverse_dynamics_optimizer: torch.optim.Optimizer | None = None
        if self.inverse_dynamics is not None:
            self.inverse_dynamics.to(self.device)
            self.inverse_dynamics_ema = copy.deepcopy(self.inverse_dynamics).requires_grad_(False)
            self.inverse_dynamics_optimizer = make_adamw(
                self.inverse_dynamics.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
            )
        #: The latest losses by name (``diffusion``, and ``inverse_dynamics`` when trained).
        self.last_losses: dict[str, float] = {}
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        goal_dims = cfg.task.goal_obs_dims if cfg.train.condition_goal else []
        self.condition_mask = conditioning_mask(
            self.layout, self.horizon, start=cfg.train.condition_start, goal_dims=goal_dims
        ).to(self.device)
        self.weights = loss_weights(
            self.layout, self.horizon, cfg.train.action_weight, reward_weight=cfg.train.reward_weight,
            terminal_weight=cfg.train.terminal_weight,
        ).to(self.device)
        # The forward passes of training: in DistributedDataParallel under torchrun (gradients
        # averaged over the ranks in backward), else the networks themselves.
        self.train_model = compile_module(
            distributed.wrap(self.model), cfg.train.compile, what="the denoiser's training step"
        )
        self.train_inverse_dynamics = (
            distributed.wrap(self.inverse_dynamics) if self.inverse_dynamics is not None else None
        )
        self.step = 0

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    @property
    def settings(self) -> LoopSettings:
        return self.cfg.train

    def resume(self) -> bool:
        """Load ``run_dir/checkpoint.pt`` if it exists; True if training state was restored."""
        if not self.checkpoint_path.exists():
            return False
        # RNG states must stay CPU byte tensors; load_state_dict copies weights onto the model's device.
        payload = load_checkpoint(self.checkpoint_path, map_location="cpu")
        # Through the schema, so settings added since the checkpoint was written take their defaults.
        saved = to_container(config_from_checkpoint(payload, self.checkpoint_path))
        current = to_container(self.cfg)
        check_resume_config(self.checkpoint_path, saved, current, resume_keys(self.cfg))
        check_resume_dataset(self.checkpoint_path, payload, self.dataset_info)
        self.step = restore_training_state(
            payload, model=self.model, ema=self.ema, optimizer=self.optimizer, generator=self.generator
        )
        if self.inverse_dynamics is not None:
            assert self.inverse_dynamics_ema is not None and self.inverse_dynamics_optimizer is not None
            if "inverse_dynamics" not in payload:
                raise CheckpointError(f"cannot resume {self.checkpoint_path}: it holds no inverse-dynamics head")
            head = payload["inverse_dynamics"]
            self.inverse_dynamics.load_state_dict(head["model"])
            self.inverse_dynamics_ema.load_state_dict(head["ema"])
            self.inverse_dynamics_optimizer.load_state_dict(head["optimizer"])
        self.normalizer.load_state_dict(payload["normalizer"]["state"])
        log.info("resumed %s at step %d", self.checkpoint_path, self.step)
        return True

    def save(self) -> None:
        head = None
        if self.inverse_dynamics is not None:
            assert self.inverse_dynamics_ema is not None and self.inverse_dynamics_optimizer is not None
            head = {
                "model": self.inverse_dynamics.state_dict(),
                "ema": self.inverse_dynamics_ema.state_dict(),
                "optimizer": self.inverse_dynamics_optimizer.state_dict(),
            }
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
                inverse_dynamics=head,
                world_size=distributed.world_size(),
            ),
        )

    def train_step(self) -> float:
        """One optimizer step; returns the loss."""
        tc = self.cfg.train
        batch = self.windows.sample(tc.batch_size, self.generator)
        size, horizon = batch.x.shape[:2]
        # Full-sequence diffusion (one level per window, shared by its H tokens) by default;
        # per-token levels (Diffusion Forcing) with train.noise_mode=independent or mixture.
        condition_mask = self.condition_mask
        if self.level_patterns is None:
            levels = training_levels(
                tc.noise_mode, size, horizon, self.schedule.n_timesteps, self.generator, mixture_p=tc.noise_mixture_p
            )
        else:
            # Schedule-matched: the planner's patterns; its current state (given clean) sits after the
            # history, and level-0 tokens (clean history, finished tokens) are inputs, not predicted.
            patterns, lengths = self.level_patterns
            levels, history = schedule_levels_and_history(
                size, patterns, lengths, self.generator, n_timesteps=self.schedule.n_timesteps,
                independent_p=tc.schedule_independent_p,
            )
            if tc.history_dropout > 0:
                levels = drop_history(levels, history, tc.history_dropout, self.generator,
                                      n_timesteps=self.schedule.n_timesteps)
            batch = batch._replace(valid=batch.valid & (levels > 0))
            condition_mask = current_state_mask(self.condition_mask, history, self.layout, tc.condition_start)
        noise = torch.randn(batch.x.shape, generator=self.generator)
        # Return conditioning: each sample's condition is dropped to the null one at random.
        drop = torch.rand(size, generator=self.generator) < tc.cond_dropout if self.returns is not None else None
        scale, id_scale = 1.0, 1.0
        if self.part is not None:
            # Under torchrun every rank drew the global batch above (one process's draws) and
            # trains on its slice; the scales make the ranks' averaged gradient the global one's.
            kept = (batch.valid.unsqueeze(-1) & ~condition_mask.cpu().expand(batch.x.shape)).sum(dim=(1, 2))
            scale = distributed.loss_scale(kept, self.part)
            if self.inverse_dynamics is not None:
                id_scale = distributed.loss_scale(self._pairs(batch).sum(dim=1), self.part)
            batch = TrajectoryBatch(*(field[self.part] for field in batch))
            levels, noise = levels[self.part], noise[self.part]
            if condition_mask.dim() == 3:
                condition_mask = condition_mask[self.part]
            drop = drop[self.part] if drop is not None else None
        x0 = batch.x.to(self.device)
        levels, noise = levels.to(self.device), noise.to(self.device)
        denoiser: Denoiser = self.train_model
        if self.returns is not None:
            assert drop is not None
            # Return-to-go at each window's first step.
            condition = self.returns[self.windows.episode_starts[batch.episode] + batch.start].to(self.device)
            denoiser = functools.partial(self.train_model, condition=condition, drop=drop.to(self.device))
        with autocast(tc.precision, self.device):
            loss = diffusion_loss(
                denoiser,
                self.schedule,
                x0,
                levels,
                noise,
                condition_mask=condition_mask,
                valid=batch.valid.to(self.device),
                weights=self.weights,
                clean_condition_tokens=self.cfg.diffusion.clean_condition_tokens,
                level_weighting=tc.level_weighting,
            )
        if self.part is not None:
            loss = loss * scale
        lr = warmup_lr(tc.lr, self.step, tc.warmup_steps, decay=tc.lr_decay, total_steps=tc.steps)
        optimizer_step(self.model, self.optimizer, loss, lr=lr, grad_clip=tc.grad_clip)
        update_ema(self.ema, self.model, tc.ema_decay)
        self.last_losses = {"diffusion": float(loss.detach())}
        if self.inverse_dynamics is not None:
            self.last_losses["inverse_dynamics"] = self._inverse_dynamics_step(batch, x0, lr, id_scale)
        self.step += 1
        return self.last_losses["diffusion"]

    def _pairs(self, batch: TrajectoryBatch) -> torch.Tensor:
        """(B, H - 1) bool: the pairs of consecutive tokens that both hold real steps (not padding past the end)."""
        steps = batch.start[:, None] + self.windows.stride * torch.arange(batch.x.shape[1])
        inside = steps < self.windows.episode_lengths[batch.episode][:, None]  # (B, H)
        return inside[:, :-1] & inside[:, 1:]

    def _inverse_dynamics_step(self, batch: TrajectoryBatch, x0: torch.Tensor, lr: float, scale: float) -> float:
        """One step of the inverse-dynamics head on the clean states of ``batch``; returns its loss
        (times ``scale``, the :func:`~diffplan.training.distributed.loss_scale` of this rank's slice)."""
        assert self.inverse_dynamics is not None and self.inverse_dynamics_optimizer is not None
        assert self.inverse_dynamics_ema is not None and self.train_inverse_dynamics is not None
        tc = self.cfg.train
        head: InverseDynamics = self.train_inverse_dynamics  # type: ignore[assignment]  # or its DDP wrapper
        loss = inverse_dynamics_loss(
            head, x0[..., self.layout.obs], x0[..., self.layout.act], self._pairs(batch).to(self.device)
        )
        if self.part is not None:
            loss = loss * scale
        optimizer_step(self.inverse_dynamics, self.inverse_dynamics_optimizer, loss, lr=lr, grad_clip=tc.grad_clip)
        update_ema(self.inverse_dynamics_ema, self.inverse_dynamics, tc.ema_decay)
        return float(loss.detach())

    def extra_losses(self) -> dict[str, float]:
        """The inverse-dynamics head's loss of the last step, when it is trained."""
        return {name: value for name, value in self.last_losses.items() if name != "diffusion"}


def current_state_mask(mask: torch.Tensor, history: torch.Tensor, layout: TrajectoryLayout, start: bool
                       ) -> torch.Tensor:
    """The condition mask (B, H, D) of schedule-matched windows: ``mask`` (H, D) with the current
    state's observation (given clean, as the forcing planner inpaints it) moved from token 0 to the
    token after each window's ``history`` (B,) tokens (with ``train.condition_start``)."""
    batch = history.shape[0]
    out = mask.unsqueeze(0).expand(batch, *mask.shape).clone()
    if start:
        rows = torch.arange(batch, device=out.device)
        out[:, 0, layout.obs] = False
        out[rows, history.to(out.device), layout.obs.start:layout.obs.stop] = True
    return out


def schedule_patterns(cfg: Config, horizon: int) -> tuple[list[torch.Tensor], list[int]]:
    """The level patterns ``train.noise_mode=schedule`` trains on, and their history lengths: those
    the forcing planner of ``cfg`` (``diffusion.schedule_matrix``, ``uncertainty``, ``sampling_steps``;
    ``planner.forcing.execute`` and ``planner.forcing.n_history``) asks for over a window of ``horizon`` tokens.

    Raises:
        ValueError: planner settings that do not fit the window (as the forcing planner would).
    """
    group = timesteps_per_token(cfg.model)
    execute = int(cfg.planner.forcing.execute)
    try:
        n_history = resolve_history(horizon, execute, cfg.planner.forcing.n_history, group)
    except ValueError as error:
        raise ValueError(f"train.noise_mode=schedule trains for the forcing planner: {error}") from None
    lengths = planner_history_lengths(n_history, execute)
    patterns = planner_level_patterns(
        str(cfg.diffusion.schedule_matrix), n_timesteps=cfg.diffusion.n_timesteps,
        sampling_steps=cfg.diffusion.sampling_steps, horizon=horizon, uncertainty=cfg.diffusion.uncertainty,
        history_lengths=lengths, group=group,
    )
    return patterns, lengths
