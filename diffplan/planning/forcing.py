"""Model-predictive control with Diffusion Forcing (Chen et al. 2024): sliding-window plans
with clean history.

Each plan is one window of the model's horizon H. Its first ``h`` tokens are *history*:
tokens already executed (state and action), written into the sample exactly (inpainting,
:class:`~diffplan.diffusion.sampler.Constraints`) and kept at level 0 for the whole
scheduling matrix (their columns are zero, :func:`history_matrix`), so the sampler never
changes them and the denoiser always sees them as clean. Token ``h`` is the *current* token:
its observation channels are inpainted with the current state (like
:class:`~diffplan.planning.planner.GoalPlanner`'s first token) and its action is generated.
Tokens ``h .. H - 1`` are generated along the chosen matrix (``diffusion.schedule_matrix``,
``diffusion.uncertainty``; for a pyramid, nearer tokens are never noisier than farther ones).

:meth:`ForcingPlanner.rollout` generates a trajectory longer than the horizon: after each
plan the first ``execute`` generated tokens are appended to the trajectory (they become
history), the state of the token after them is the next current state, and the window
slides so that its history is the last ``min(n_history, executed)`` trajectory tokens.
Executed tokens are never changed by later plans.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffplan.config import Config, DiffusionConfig, PlannerConfig, timesteps_per_token
from diffplan.diffusion.classifier_free import HistoryGuidance
from diffplan.diffusion.conditioning import hold_goal, hold_goal_per_candidate
from diffplan.diffusion.guide import Guidance
from diffplan.diffusion.levels import planner_history_lengths, resolve_history
from diffplan.diffusion.sampler import Constraints, Denoiser, history_matrix
from diffplan.enums import NoiseMode
from diffplan.guidance.build import build_guidance
from diffplan.guidance.kinds import check_kind_for_suite
from diffplan.planning.planner import Conditioning, SamplingPlanner, earliest_arrival
from diffplan.training.checkpoint import TrainedModel

log = logging.getLogger(__name__)


def _trained_history(cfg: Config, horizon: int, group: int) -> int:
    """The history length a schedule-matched model was trained for (``planner.forcing.n_history`` or its default)."""
    return resolve_history(horizon, cfg.planner.forcing.execute, cfg.planner.forcing.n_history, group)


def model_frame_stack(model: TrainedModel) -> int:
    """Timesteps per token of ``model``: ``model.transformer.frame_stack`` for the transformer, else 1."""
    return timesteps_per_token(model.config.model)


@dataclass
class ForcingRollout:
    """A generated trajectory and the windows that produced it.

    Attributes:
        trajectory: (B, n_steps, D) raw units; token 0's observation is the start state.
        normalized: (B, n_steps, D) the same in normalized units (exactly what was sampled).
        windows: per plan, the sampled window (B, H, D), normalized.
        offsets: per plan, the trajectory index of the window's first token.
        n_history: per plan, how many history tokens the window held.
        plan_times_s: per plan, the sampler's wall time.
    """

    trajectory: Tensor
    normalized: Tensor
    windows: list[Tensor] = field(default_factory=list, repr=False)
    offsets: list[int] = field(default_factory=list)
    n_history: list[int] = field(default_factory=list)
    plan_times_s: list[float] = field(default_factory=list)


class HistoryConditioner:
    """Diffusion Forcing's conditioning: the executed history on every channel of the window's first
    h tokens (kept at level 0 by the matrix, :func:`history_matrix`) and the current observation on
    token h; optionally the goal's entries from the last token, or from a given arrival token (and,
    with ``arrival_slack``, from later ones, one group of candidates each); the scheduling matrix
    depends on h (cached per h).

    Args:
        model: the trained model (layout, normalizer, schedule).
        diffusion: the planning-time settings (``schedule_matrix``, ``uncertainty``, ``sampling_steps``).
        horizon: tokens per window.
        n_history: the most history tokens a window holds.
        group: timesteps per denoiser token (the transformer's ``frame_stack``).
        device: where the constraints are built.
        goal_dims: the observation entries of the goal to inpaint at the last token (None: no goal
            inpainting; goals then reach only the guidance).
        arrival_slack: with goal inpainting, plan candidates whose goal is inpainted this many tokens
            after the arrival as well (``planner.forcing.arrival_slack``; negative: before it), ``per_arrival``
            each; empty: one arrival, the candidates repeated by the planner.
        per_arrival: candidates per arrival (``planner.n_candidates``).
    """

    def __init__(self, model: TrainedModel, diffusion: DiffusionConfig, horizon: int, n_history: int, group: int,
                 device: torch.device, goal_dims: list[int] | None = None, arrival_slack: list[int] | None = None,
                 per_arrival: int = 1) -> None:
        slack = [int(t) for t in arrival_slack or []]
        self.model = model
        self.goal_dims = list(goal_dims) if goal_dims is not None else None
        self.arrival_slack, self.per_arrival = slack, int(per_arrival)
        self.diffusion = diffusion
        self.horizon = horizon
        self.n_history = n_history
        self.group = group
        self.device = device
        self._matrices: dict[int, Tensor] = {}

    def matrix(self, n_history: int) -> Tensor:
        """The scheduling matrix (rows, H) of a window with ``n_history`` history tokens (cached)."""
        if n_history not in self._matrices:
            self._matrices[n_history] = history_matrix(
                self.diffusion.schedule_matrix,
                n_history,
                n_timesteps=self.model.schedule.n_timesteps,
                sampling_steps=self.diffusion.sampling_steps,
                horizon=self.horizon,
                uncertainty=self.diffusion.uncertainty,
                group=self.group,
            )
        return self._matrices[n_history]

    def constraints(self, history: Tensor, current: Tensor) -> Constraints:
        """Inpainting of one window: ``history`` (B, h, D) on every channel of tokens 0..h-1 and
        ``current`` (B, obs_dim) on the observation channels of token h; both normalized.

        Raises:
            ValueError: more history tokens than the planner holds.
        """
        layout, horizon = self.model.layout, self.horizon
        batch, n_hist = history.shape[0], history.shape[1]
        if n_hist > self.n_history:
            raise ValueError(f"got {n_hist} history tokens, the planner holds at most {self.n_history}")
        mask = torch.zeros(batch, horizon, layout.transition_dim, dtype=torch.bool, device=self.device)
        values = torch.zeros(batch, horizon, layout.transition_dim, device=self.device)
        mask[:, :n_hist] = True
        values[:, :n_hist] = history.to(self.device, torch.float32)
        mask[:, n_hist, layout.obs] = True
        values[:, n_hist, layout.obs] = current.to(self.device, torch.float32)
        return Constraints(mask, values)

    def normalized(self, history: Tensor, current: Tensor, goal: Tensor | None = None,
                   arrival: Tensor | None = None) -> Conditioning:
        """The conditioning of normalized ``history`` (B, h, D) and ``current`` (B, obs_dim), and the
        normalized ``goal`` (B, obs_dim; only the goal entries are read) when the goal is inpainted:
        at the window's last token, or with ``arrival`` (B,) int at window token ``arrival`` (clamped
        to the tokens after the current one) and every token after it; with ``arrival_slack``, one group
        of ``per_arrival`` candidates per slack, the goal that many tokens later (clamped alike)."""
        n_hist = history.shape[1]
        constraints = self.constraints(history, current)
        if goal is None or not self.goal_dims:
            return Conditioning(constraints, self.matrix(n_hist), current=n_hist)
        low, high = min(n_hist + 1, self.horizon - 1), self.horizon - 1
        first = torch.full((history.shape[0],), high, device=self.device) if arrival is None \
            else arrival.to(self.device).clamp(low, high)
        channels = [self.model.layout.obs.start + d for d in self.goal_dims]
        if not self.arrival_slack:
            return Conditioning(hold_goal(constraints, first, channels, goal[:, self.goal_dims]), self.matrix(n_hist),
                                current=n_hist)
        slack = torch.tensor(self.arrival_slack, device=self.device).repeat_interleave(self.per_arrival)
        firsts = (first[:, None] + slack[None, :]).clamp(low, high)  # (B, slack x per_arrival)
        held = hold_goal_per_candidate(constraints, firsts, channels, goal[:, self.goal_dims])
        return Conditioning(held, self.matrix(n_hist), current=n_hist, per_candidate=True,
                            arrivals=firsts.reshape(-1) - n_hist)

    def condition(self, observations: Tensor, goals: Tensor | None, history: Tensor | None,
                  arrival: Tensor | None = None) -> Conditioning:
        """The conditioning of the current ``observations`` (B, obs_dim) after the executed ``history``
        (B, h, D) (None: no history), raw units; ``arrival`` (B,) int: the goal is inpainted this many
        tokens after the current one (within the window) and held after it.

        Raises:
            ValueError: ``arrival`` without goal inpainting (``planner.forcing.inpaint_goal``).
        """
        if arrival is not None and not self.goal_dims:
            raise ValueError("planner.forcing.hold_arrival places the inpainted goal: set "
                             "planner.forcing.inpaint_goal=true")
        layout, normalizer = self.model.layout, self.model.normalizer
        batch = observations.shape[0]
        if history is None:
            history = torch.zeros(batch, 0, layout.transition_dim)
        history = history.to(self.device, torch.float32)
        raw_current = torch.zeros(batch, 1, layout.transition_dim, device=self.device)
        raw_current[:, 0, layout.obs] = observations.to(self.device, torch.float32)
        current = normalizer.normalize(raw_current)[:, 0, layout.obs]
        norm_history = normalizer.normalize(history) if history.shape[1] else history
        goal = None
        if self.goal_dims:
            if goals is None:
                raise ValueError("planner.forcing.inpaint_goal plans to a goal: pass goals (N, goal_dim)")
            raw_goal = torch.zeros(batch, 1, layout.transition_dim, device=self.device)
            raw_goal[:, 0, [layout.obs.start + d for d in self.goal_dims]] = goals.to(self.device, torch.float32)
            goal = normalizer.normalize(raw_goal)[:, 0, layout.obs]
        return self.normalized(norm_history, current, goal,
                               arrival=None if arrival is None else arrival.to(self.device) + history.shape[1])


class ForcingPlanner(SamplingPlanner):
    """Diffusion Forcing MPC: plans windows of the model's horizon conditioned on clean history (a
    :class:`~diffplan.planning.planner.SamplingPlanner` with a :class:`HistoryConditioner`).

    :meth:`plan` takes the executed ``history`` (raw units) and returns the plan from the current
    token on (the window, history included, in :attr:`Plan.normalized`).

    Args:
        model: a trained model (ideally trained with per-token levels, ``train.noise_mode``
            ``independent`` or ``mixture``, and a causal or bidirectional denoiser).
        diffusion: planning-time sampler settings; ``schedule_matrix`` and ``uncertainty``
            choose the matrix over the generated tokens.
        execute: generated tokens executed (appended to the trajectory) per plan, >= 1.
        n_history: most history tokens per window; None: ``horizon - 1 - execute`` (the
            most that still leaves the token after the executed ones in the window), rounded
            down to a multiple of the model's ``frame_stack``. ``n_history + execute`` must be
            at most ``horizon - 1``; with a frame-stacked transformer both must be multiples of
            its ``frame_stack`` (windows then start on token boundaries).
        planner: candidates, return target and guidance weight for return-conditioned models,
            precision; None: the defaults (one candidate).
        guidance: optional guidance for every plan (history and inpainted entries are never
            moved by it).
        device: where sampling runs.
        horizon: tokens per window (None: the model's training horizon). Other lengths need a
            denoiser that accepts them (the transformer: any multiple of its ``frame_stack``).
        goal_dims: inpaint the goal's entries (these observation entries) at the window's last token,
            or from the arrival :meth:`plan` is given (None: goals reach only the guidance).
        arrival_slack: with ``goal_dims``, candidates that arrive this many tokens after the held
            arrival as well (``planner.forcing.arrival_slack``; negative: before it); the earliest
            arrival whose plan does not jump runs (:class:`~diffplan.planning.planner.EarliestArrivalSelector`,
            ``planner.jump_ratio``); None: ``planner.forcing.arrival_slack``.
    """

    def __init__(
        self,
        model: TrainedModel,
        *,
        diffusion: DiffusionConfig,
        execute: int,
        n_history: int | None = None,
        planner: PlannerConfig | None = None,
        guidance: Guidance | None = None,
        device: torch.device | str = "cpu",
        horizon: int | None = None,
        goal_dims: list[int] | None = None,
        arrival_slack: list[int] | None = None,
    ) -> None:
        horizon = int(horizon) if horizon is not None else model.horizon
        if horizon < 2:
            raise ValueError(f"the planning window must hold at least 2 tokens, got horizon={horizon}")
        group = model_frame_stack(model)
        n_history = resolve_history(horizon, execute, n_history, group)
        trained = model.config
        if NoiseMode(trained.train.noise_mode) is NoiseMode.schedule:
            # With the same matrix settings, the patterns depend on the history lengths a rollout meets
            # (execute, n_history), not on execute itself; stall replans can meet others (not checked).
            trained_n = _trained_history(trained, horizon, group)
            had = planner_history_lengths(trained_n, trained.planner.forcing.execute)
            asked = planner_history_lengths(n_history, execute)
            if not set(asked) <= set(had):
                log.warning(
                    "%s was trained on the histories of planner.forcing.execute=%s, planner.forcing.n_history=%s "
                    "(train.noise_mode=schedule; history lengths %s) but plans with execute=%s, n_history=%s "
                    "(lengths %s); plan with settings whose history lengths it was trained on, or train for these",
                    model.path, trained.planner.forcing.execute, trained_n, had, execute, n_history, asked,
                )
        super().__init__(model, planner=planner if planner is not None else PlannerConfig(), diffusion=diffusion,
                         device=device, guidance=guidance, horizon=horizon)
        self.group = group
        self.execute = int(execute)
        self.n_history = int(n_history)
        slack = list(self.cfg.forcing.arrival_slack if arrival_slack is None else arrival_slack)
        if slack and not goal_dims:
            raise ValueError("planner.forcing.arrival_slack places the inpainted goal: set "
                             "planner.forcing.inpaint_goal=true and planner.forcing.hold_arrival=true")
        self.history = HistoryConditioner(model, diffusion, horizon, self.n_history, group, self.device,
                                          goal_dims=goal_dims, arrival_slack=slack, per_arrival=self.cfg.n_candidates)
        self.conditioner = self.history
        if slack:
            assert goal_dims is not None
            self.selector = earliest_arrival(model, goal_dims, slack, self.cfg)
            self.candidates_per_env = self.cfg.n_candidates * len(slack)
        self.history_guidance = float(self.cfg.forcing.history_guidance)
        if self.history_guidance != 1.0 and not trained.train.history_dropout:
            log.warning("planner.forcing.history_guidance=%s guides on the history, but %s was trained without "
                        "dropping it (train.history_dropout=0): its history-free prediction is untrained",
                        self.history_guidance, model.path)

    def denoiser(self, conditioning: Conditioning, batch: int, weight: Tensor | None,
                 generator: torch.Generator) -> Denoiser:
        """:meth:`SamplingPlanner.denoiser`, with classifier-free guidance on the window's history
        (:class:`~diffplan.diffusion.classifier_free.HistoryGuidance`, weight
        ``planner.forcing.history_guidance``) when the window holds history and the weight is not 1."""
        denoiser = super().denoiser(conditioning, batch, weight, generator)
        n_hist = conditioning.current
        if self.history_guidance == 1.0 or n_hist == 0:
            return denoiser
        shape = (batch, n_hist, self.model.layout.transition_dim)
        noise = torch.randn(shape, generator=generator, device=generator.device).to(self.device)
        return HistoryGuidance(denoiser, n_hist, self.history_guidance, self.model.schedule, noise)

    @torch.no_grad()
    def plan_normalized(self, history: Tensor, current: Tensor, generator: torch.Generator, *,
                        goals: Tensor | None = None) -> Tensor:
        """One window (B, H, D), normalized: history (B, h, D) with h <= ``n_history`` and
        the current state (B, obs_dim), both normalized (goals (B, G) raw, for goal guidance).
        Tokens 0..h-1 equal ``history`` exactly; token h's observation equals ``current``."""
        x, _ = self.sample(self.history.normalized(history, current), history.shape[0], 1, generator, goals=goals)
        return x

    @torch.no_grad()
    def rollout(self, start_obs: Tensor, n_steps: int, generator: torch.Generator) -> ForcingRollout:
        """Generate ``n_steps`` tokens (B, n_steps, D) from ``start_obs`` (B, obs_dim), raw units,
        by sliding the window ``execute`` tokens per plan (the model acts as its own simulator:
        the next current state is the planned state after the executed tokens).

        Raises:
            ValueError: ``n_steps < 1``.
        """
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        layout, normalizer = self.model.layout, self.model.normalizer
        batch = start_obs.shape[0]
        raw_start = torch.zeros(batch, 1, layout.transition_dim, device=self.device)
        raw_start[:, 0, layout.obs] = start_obs.to(self.device, torch.float32)
        current = normalizer.normalize(raw_start)[:, 0, layout.obs]
        executed = torch.zeros(batch, 0, layout.transition_dim, device=self.device)
        result = ForcingRollout(trajectory=executed, normalized=executed)
        while executed.shape[1] < n_steps:
            n_hist = min(self.n_history, executed.shape[1])
            history = executed[:, executed.shape[1] - n_hist:]
            start = time.perf_counter()
            window = self.plan_normalized(history, current, generator)
            result.plan_times_s.append(time.perf_counter() - start)
            result.windows.append(window)
            result.offsets.append(executed.shape[1] - n_hist)
            result.n_history.append(n_hist)
            take = min(self.execute, n_steps - executed.shape[1])
            executed = torch.cat([executed, window[:, n_hist:n_hist + take]], dim=1)
            current = window[:, n_hist + take, layout.obs]
        result.normalized = executed
        result.trajectory = normalizer.unnormalize(executed)
        return result


def maze_forcing_planner(cfg: Config, model: TrainedModel, device: torch.device | str) -> ForcingPlanner:
    """The Diffusion Forcing planner of ``cfg`` on a maze (``planner.mode=forcing``), guided by a maze
    kind (``guidance=goal`` or a registered one; goals reach it with each plan). Used by
    ``diffplan-evaluate`` and ``diffplan-bench``.

    Raises:
        ValueError: a guidance kind that is not for mazes or needs a value function (the forcing
            planner has none).
    """
    spec = check_kind_for_suite(cfg.guidance.kind, "maze", "planner.mode=forcing on a maze")
    if spec is not None and spec.needs_value:
        raise ValueError(f"planner.mode=forcing on a maze takes guidance kinds without a value function, got "
                         f"guidance.kind={cfg.guidance.kind}; use guidance=goal or guidance=none")
    guidance = build_guidance(cfg.guidance, model, device, clip_denoised=cfg.diffusion.clip_denoised,
                              goal_dims=list(cfg.task.goal_obs_dims))
    return ForcingPlanner(
        model, diffusion=cfg.diffusion, execute=cfg.planner.forcing.execute, n_history=cfg.planner.forcing.n_history,
        planner=cfg.planner, guidance=guidance, device=device,
        goal_dims=list(cfg.task.goal_obs_dims) if cfg.planner.forcing.inpaint_goal else None,
    )
