"""Planning for N environments in one sampler call: the :class:`Planner` protocol and the one
composed planner every planner kind is a configuration of.

:class:`SamplingPlanner` is assembled from parts: a *conditioner* (what is inpainted and with which
scheduling matrix: the start and goal, :class:`StartConditioner`, or Diffusion Forcing's clean
history, :class:`diffplan.planning.forcing.HistoryConditioner`), the sampler, the guidance (with
each plan's goals in its :class:`~diffplan.diffusion.guide.GuideContext` and a batched sweep's
per-environment strengths), an optional warm start, an action source (the diffused actions or an
inverse-dynamics head) and a *candidate selector* (first, smoothest, or highest objective). It
samples K candidates per environment as one batch of N x K trajectories, picks one per
environment and returns it in raw units. :class:`GoalPlanner` (maze goal inpainting),
:class:`~diffplan.planning.value_planner.ValuePlanner` (value-guided locomotion) and
:class:`~diffplan.planning.forcing.ForcingPlanner` (Diffusion Forcing MPC) only choose the parts.

A return-conditioned model (``model.return_condition``) is sampled with classifier-free
guidance towards ``planner.return_guidance.target`` with weight ``planner.return_guidance.weight``. With
``planner.action_source = inverse_dynamics`` the plan's actions are read off the
checkpoint's inverse-dynamics head from consecutive planned states (token 0 is the
inpainted current observation, so the first action is ``f(s_now, s_1)`` as in Decision
Diffuser) instead of the diffused action channels.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from diffplan.acceleration import compile_module
from diffplan.config import DiffusionConfig, GuidanceConfig, PlannerConfig
from diffplan.diffusion.classifier_free import ClassifierFreeGuidance
from diffplan.diffusion.conditioning import Constraints, goal_constraints, hold_goal_per_candidate
from diffplan.diffusion.guide import Guide, GuideContext
from diffplan.diffusion.sampler import Denoiser, Sampler, check_clip, make_sampler
from diffplan.diffusion.warm_start import warm_start
from diffplan.enums import ActionSource, NoiseMode, Precision, ScheduleMatrixKind, Selection
from diffplan.guidance import EnvStrengths, Guidance, build_guidance, check_kind_for_suite
from diffplan.guidance.per_env import for_candidates
from diffplan.guidance.value import load_value_guide
from diffplan.models.inverse_dynamics import plan_actions
from diffplan.models.planar import planning_network
from diffplan.training.checkpoint import TrainedModel

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """A batch of selected plans in raw units, from the current token on.

    Attributes:
        observations: (N, H', obs_dim) planned states, token 0 = the state planned from (a window
            with h history tokens has H' = H - h).
        actions: (N, H', act_dim) planned actions (diffused, or from inverse dynamics).
        finite: (N,) bool, False where sampling produced NaN/inf.
        plan_time_s: wall time of the sampler call.
        candidates: (N, K, H', obs_dim) all candidates' states (for plots; K includes the candidates a
            planner's ``proposer`` added), or None.
        normalized: (N, H, D) the selected windows (history included), normalized, as sampled or as a
            ``proposer`` made them: the next warm start's input.
        values: (N,) the ranking objective of each selected plan (planners that rank), or None.
        candidate_values: (N, K) the objective of every candidate, or None.
        proposed: (N,) bool, True where the selected plan is one a ``proposer`` added (e.g. the agent's
            own action, ``planner.agent_candidate``), or None (no proposer).
        arrival: (N,) int, the tokens after the current one by which each selected plan reaches its
            goal, where the conditioner placed the goal per candidate (:attr:`Conditioning.arrivals`: the
            goal tokens of the goal planner, the forcing planner with ``planner.forcing.arrival_slack``), or None.
    """

    observations: Tensor
    actions: Tensor
    finite: Tensor
    plan_time_s: float
    candidates: Tensor | None = field(default=None, repr=False)
    normalized: Tensor | None = field(default=None, repr=False)
    values: Tensor | None = None
    candidate_values: Tensor | None = field(default=None, repr=False)
    arrival: Tensor | None = None
    proposed: Tensor | None = None


def select_candidates(observations: Tensor, selection: Selection) -> Tensor:
    """Index (N,) of the candidate to execute among K per environment.

    Args:
        observations: (N, K, H, obs_dim) raw planned states.
        selection: ``first`` takes candidate 0; ``smoothest`` takes the one with the
            smallest sum of squared state jumps between consecutive tokens (the most
            dynamically plausible plan).
    """
    n, k = observations.shape[:2]
    if selection is Selection.first or k == 1:
        return torch.zeros(n, dtype=torch.long, device=observations.device)
    jumps = (observations[:, :, 1:] - observations[:, :, :-1]).pow(2).sum(dim=(-1, -2))  # (N, K)
    jumps = torch.nan_to_num(jumps, nan=float("inf"))
    return jumps.argmin(dim=1)


def planning_sampler(
    model: TrainedModel, diffusion: DiffusionConfig, *, precision: Precision | str = Precision.float32
) -> tuple[Sampler, Tensor]:
    """The sampler of the planning-time settings ``diffusion`` for ``model``, and its scheduling
    matrix (``diffusion.schedule_matrix``, ``diffusion.uncertainty``; full-sequence by default,
    see :func:`diffplan.diffusion.sampler.scheduling_matrix`); clean-condition tokens follow
    the checkpoint; the networks run at ``precision`` (``planner.precision``)."""
    check_clip(model.config.diffusion.normalizer.value, diffusion.clip_denoised)
    kind = ScheduleMatrixKind(diffusion.schedule_matrix)
    trained_full_sequence = NoiseMode(model.config.train.noise_mode) is NoiseMode.full_sequence
    if kind is not ScheduleMatrixKind.full_sequence and trained_full_sequence:
        log.warning(
            "diffusion.schedule_matrix=%s gives tokens different levels, but %s was trained with one level per window "
            "(train.noise_mode=full_sequence); train with train.noise_mode=independent or mixture for it",
            kind.value, model.path,
        )
    if NoiseMode(model.config.train.noise_mode) is NoiseMode.schedule:
        trained = model.config.diffusion
        had = (ScheduleMatrixKind(trained.schedule_matrix).value, float(trained.uncertainty), trained.sampling_steps)
        asked = (kind.value, float(diffusion.uncertainty), diffusion.sampling_steps)
        if asked != had:
            log.warning(
                "%s was trained on the level patterns of schedule_matrix=%s, uncertainty=%s, sampling_steps=%s "
                "(train.noise_mode=schedule) but is asked for schedule_matrix=%s, uncertainty=%s, sampling_steps=%s; "
                "plan with the trained settings or train for these", model.path, *had, *asked,
            )
    return make_sampler(
        model.schedule,
        diffusion.sampler,
        sampling_steps=diffusion.sampling_steps,
        horizon=model.horizon,
        eta=diffusion.eta,
        clip_denoised=diffusion.clip_denoised,
        # A training-time choice: taken from the checkpoint, not from the planning config.
        clean_condition_tokens=model.config.diffusion.clean_condition_tokens,
        matrix=diffusion.schedule_matrix,
        uncertainty=diffusion.uncertainty,
        precision=precision,
    )


def planning_denoiser(
    model: TrainedModel, planner: PlannerConfig, batch: int, device: torch.device, weight: Tensor | None = None,
    network: nn.Module | None = None,
) -> Denoiser:
    """The model's denoiser (its planning form, :func:`~diffplan.models.planar.planning_network`, or
    ``network`` when the caller resolved it once; compiled with ``planner.compile``), wrapped in classifier-free
    guidance towards ``planner.return_guidance.target`` (weight ``planner.return_guidance.weight``, or the
    per-sample weights ``weight`` (batch,) of a batched guidance sweep) when the model is
    return-conditioned.

    Raises:
        ValueError: per-sample weights for a model that is not return-conditioned.
    """
    if network is None:
        network = planning_network(model.denoiser, planner.precision, device)
    denoiser = compile_module(network, planner.compile, what=f"the denoiser of {model.path}")
    if not model.config.model.return_condition:
        if weight is not None:
            raise ValueError(
                f"classifier-free guidance weights (sweep kind=classifier_free, planner.return_guidance.weight) need a "
                f"model trained "
                f"with model.return_condition=true; {model.path} is not return-conditioned"
            )
        return denoiser
    target = torch.full((batch,), float(planner.return_guidance.target), device=device)
    return ClassifierFreeGuidance(denoiser, target, planner.return_guidance.weight if weight is None else weight)


def check_planner(model: TrainedModel, planner: PlannerConfig) -> ActionSource:
    """Validate the planner settings every planner shares against the model; returns the action source.

    Raises:
        ValueError: ``planner.n_candidates < 1``, or inverse-dynamics actions asked of a
            checkpoint that has no inverse-dynamics head.
    """
    if planner.n_candidates < 1:
        raise ValueError(f"planner.n_candidates must be >= 1, got {planner.n_candidates}")
    source = ActionSource(planner.action_source)
    if source is ActionSource.inverse_dynamics and model.inverse_dynamics is None:
        raise ValueError(
            f"planner.action_source=inverse_dynamics needs a checkpoint trained with model.inverse_dynamics=true; "
            f"{model.path} has no inverse-dynamics head (use planner.action_source=diffused)"
        )
    return source


class Planner(Protocol):
    """What controllers (:mod:`diffplan.planning.controllers`) need from a planner: the model it plans
    with and one call that plans for N environments.

    ``plan`` keywords: ``goals`` (N, goal_dim) for goal-reaching planners; ``history`` (N, h, D)
    the executed transitions, raw units, for planners that condition on history; ``arrival`` (N,)
    int, the tokens after the current one by which each plan should reach its goal (planners that
    hold a plan's arrival, ``planner.forcing.hold_arrival``); ``previous``
    (N, H, D) the environments' previous normalized plans and ``shift`` the steps executed since,
    for planners that warm-start; ``strengths`` a batched sweep's per-environment guidance
    strengths. A planner ignores what its configuration does not use, and refuses what it needs
    and did not get. ``warm_start`` says whether (and how) it replans from ``previous``."""

    model: TrainedModel
    warm_start: WarmStart | None

    def plan(
        self, observations: Tensor, generator: torch.Generator, *, goals: Tensor | None = None,
        history: Tensor | None = None, previous: Tensor | None = None, shift: int = 0,
        strengths: EnvStrengths | None = None, arrival: Tensor | None = None,
    ) -> Plan: ...


# ----------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class Conditioning:
    """What a conditioner makes of one planning call.

    Attributes:
        constraints: (N, H, D) the inpainted entries, normalized; with ``per_candidate``, (N x K, H, D):
            each candidate's own (an environment's K candidates contiguous).
        matrix: the scheduling matrix (rows, H) to sample along.
        current: index of the current token (the first planned one); tokens before it are history.
        per_candidate: the constraints differ between an environment's candidates.
        arrivals: (N x K,) int, the tokens after the current one by which each candidate is to reach
            its goal (conditioners that place the goal per candidate), or None.
    """

    constraints: Constraints
    matrix: Tensor
    current: int = 0
    per_candidate: bool = False
    arrivals: Tensor | None = None


class Conditioner(Protocol):
    """Turns a planning call's observations, goals and history (raw units) into :class:`Conditioning`;
    ``arrival`` (N,) the tokens after the current one by which to reach the goal, for conditioners
    that place it per environment (others refuse it)."""

    def condition(self, observations: Tensor, goals: Tensor | None, history: Tensor | None,
                  arrival: Tensor | None = None) -> Conditioning: ...


def refuse_arrival(arrival: Tensor | None) -> None:
    """Conditioners that place the goal themselves refuse per-environment arrival tokens.

    Raises:
        ValueError: ``arrival`` is given.
    """
    if arrival is not None:
        raise ValueError("this planner places the goal itself; per-environment arrival tokens "
                         "(planner.forcing.hold_arrival) need planner.mode=forcing")


class StartConditioner:
    """Inpaints the current observation at token 0 and, when ``goal_dims`` is given, the goal's
    entries at the last token; one fixed scheduling matrix.

    Args:
        model: the trained model (layout, normalizer, horizon).
        matrix: the scheduling matrix of every plan.
        goal_dims: the observation entries of the goal (goal-reaching planners), or None (no goal).
    """

    def __init__(self, model: TrainedModel, matrix: Tensor, goal_dims: list[int] | None = None) -> None:
        self.model = model
        self.matrix = matrix
        self.goal_dims = goal_dims

    def condition(self, observations: Tensor, goals: Tensor | None, history: Tensor | None,
                  arrival: Tensor | None = None) -> Conditioning:
        refuse_arrival(arrival)
        if history is not None and history.shape[1]:
            raise ValueError("this planner does not condition on history; use planner.mode=forcing for that")
        if self.goal_dims is None:
            goals, dims = None, []
        elif goals is None:
            raise ValueError("the goal planner plans to a goal: pass goals (N, goal_dim)")
        else:
            dims = self.goal_dims
        constraints = goal_constraints(self.model.layout, self.model.normalizer, self.model.horizon, observations,
                                       goals, dims)
        return Conditioning(constraints, self.matrix)


class GoalTokensConditioner:
    """Goal inpainting at several plan lengths: for each token t of ``goal_tokens``, ``per_token``
    candidates with the goal's entries inpainted at token t and held at every token after it (the plan
    arrives by t and stays), and the current observation at token 0.

    Args:
        model: the trained model (layout, normalizer, horizon).
        matrix: the scheduling matrix of every plan.
        goal_dims: the observation entries of the goal.
        goal_tokens: the arrival tokens to try, each in [1, H - 1].
        per_token: candidates per arrival token (``planner.n_candidates``).

    Raises:
        ValueError: an arrival token outside [1, H - 1].
    """

    def __init__(self, model: TrainedModel, matrix: Tensor, goal_dims: list[int], goal_tokens: list[int],
                 per_token: int) -> None:
        horizon = model.horizon
        bad = [t for t in goal_tokens if not 1 <= t <= horizon - 1]
        if bad:
            raise ValueError(f"planner.goal_tokens={list(goal_tokens)}: arrival tokens must lie in [1, "
                             f"task.horizon - 1 = {horizon - 1}], got {bad}")
        self.model, self.matrix, self.goal_dims = model, matrix, list(goal_dims)
        self.goal_tokens, self.per_token = list(goal_tokens), per_token

    def condition(self, observations: Tensor, goals: Tensor | None, history: Tensor | None,
                  arrival: Tensor | None = None) -> Conditioning:
        refuse_arrival(arrival)
        if goals is None:
            raise ValueError("the goal planner plans to a goal: pass goals (N, goal_dim)")
        if history is not None and history.shape[1]:
            raise ValueError("this planner does not condition on history; use planner.mode=forcing for that")
        layout, horizon = self.model.layout, self.model.horizon
        base = goal_constraints(layout, self.model.normalizer, horizon, observations, goals, self.goal_dims)
        channels = [layout.obs.start + d for d in self.goal_dims]
        # An environment's rows: arrival tokens, then candidates.
        first = torch.tensor(self.goal_tokens, device=base.mask.device).repeat_interleave(self.per_token)
        first = first[None, :].expand(observations.shape[0], -1)
        held = hold_goal_per_candidate(base, first, channels, base.values[:, horizon - 1, channels])
        return Conditioning(held, self.matrix, per_candidate=True, arrivals=first.reshape(-1))


class CandidateSelector(Protocol):
    """Picks one of K candidates per environment.

    ``select(x, raw, context)`` gets the normalized candidates ``x`` and raw ones ``raw`` (both
    (N, K, H, D), K including a proposer's candidates) and the guide context of the N x K samples (of
    the sampled ones only); returns the chosen index (N,) and
    each candidate's objective (N, K), or None when it does not score them."""

    def select(self, x: Tensor, raw: Tensor, context: GuideContext) -> tuple[Tensor, Tensor | None]: ...


class CandidateProposer(Protocol):
    """Adds candidates that were not sampled: ``propose(x)`` gets the normalized candidates x (N, K, H, D)
    and returns them followed by its own (N, K + m, H, D), for the selector to rank with them (e.g.
    :meth:`diffplan.guidance.critic.CriticGuide.propose`, ``planner.agent_candidate``)."""

    def propose(self, x: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class PlausibilitySelector:
    """``first`` takes candidate 0; ``smoothest`` the one whose states jump least (:func:`select_candidates`)."""

    selection: Selection
    obs: slice

    def select(self, x: Tensor, raw: Tensor, context: GuideContext) -> tuple[Tensor, Tensor | None]:
        return select_candidates(raw[..., self.obs], self.selection), None


@dataclass(frozen=True)
class EarliestArrivalSelector:
    """Of plans that arrive at the goal by different tokens (:class:`GoalTokensConditioner`, or the forcing
    planner's held arrival plus ``planner.forcing.arrival_slack``), the earliest arrival whose largest step
    between consecutive positions of the window (history tokens included) is at most ``jump_ratio`` times
    the largest step of the latest arrival's plan (a plan squeezed into too few tokens jumps); within an
    arrival token, the smoothest of its candidates. Plans with non-finite entries are never feasible.

    Attributes:
        goal_tokens: the arrival tokens (or offsets: only their order is read), in the candidates' group order.
        per_token: candidates per arrival token.
        positions: the position channels (the goal's) in the transition.
        jump_ratio: how much larger a step than the latest arrival's largest one stays feasible.
    """

    goal_tokens: tuple[int, ...]
    per_token: int
    positions: tuple[int, ...]
    jump_ratio: float

    def select(self, x: Tensor, raw: Tensor, context: GuideContext) -> tuple[Tensor, Tensor | None]:
        n, k = raw.shape[:2]
        pos = raw[..., list(self.positions)]
        jumps = (pos[:, :, 1:] - pos[:, :, :-1]).norm(dim=-1)  # (N, K, H - 1)
        largest = torch.nan_to_num(jumps.amax(dim=-1), nan=float("inf"))  # (N, K)
        smooth = torch.nan_to_num(jumps.pow(2).sum(dim=-1), nan=float("inf"))
        groups = len(self.goal_tokens)
        largest, smooth = largest.view(n, groups, self.per_token), smooth.view(n, groups, self.per_token)
        best = smooth.argmin(dim=-1)  # (N, groups): the smoothest candidate of each arrival token
        rows = torch.arange(n, device=raw.device)[:, None]
        group_largest = largest[rows, torch.arange(groups, device=raw.device)[None, :], best]  # (N, groups)
        latest = int(torch.tensor(self.goal_tokens).argmax())
        limit = self.jump_ratio * group_largest[:, latest:latest + 1]
        order = torch.tensor(self.goal_tokens, device=raw.device).argsort()
        feasible = (torch.isfinite(group_largest) & (group_largest <= limit))[:, order]  # arrivals in increasing order
        first = torch.where(feasible.any(dim=1), feasible.float().argmax(dim=1),
                            torch.full((n,), int((order == latest).nonzero()[0, 0]), device=raw.device))
        group = order[first]
        return group * self.per_token + best[torch.arange(n, device=raw.device), group], None


def earliest_arrival(model: TrainedModel, goal_dims: list[int], groups: list[int],
                     planner: PlannerConfig) -> EarliestArrivalSelector:
    """The :class:`EarliestArrivalSelector` of ``groups`` (arrival tokens or offsets, one group of
    ``planner.n_candidates`` per entry) over the goal's position channels, with ``planner.jump_ratio``."""
    positions = tuple(model.layout.obs.start + d for d in goal_dims)
    return EarliestArrivalSelector(tuple(groups), planner.n_candidates, positions, float(planner.jump_ratio))


@dataclass(frozen=True)
class ObjectiveSelector:
    """The finite candidate of highest ``guide`` objective at level 0 (Diffuser's value ranking)."""

    guide: Guide

    def select(self, x: Tensor, raw: Tensor, context: GuideContext) -> tuple[Tensor, Tensor | None]:
        n, k, horizon, width = x.shape
        flat = x.reshape(n * k, horizon, width)
        levels = torch.zeros(n * k, horizon, dtype=torch.long, device=x.device)
        values = self.guide.objective(flat, levels, context).view(n, k)
        finite = torch.isfinite(flat).all(dim=(1, 2)).view(n, k) & torch.isfinite(values)
        return torch.where(finite, values, torch.full_like(values, -torch.inf)).argmax(dim=1), values


@dataclass(frozen=True)
class WarmStart:
    """Start a replan from the previous plan, shifted by the steps executed since, re-noised to
    ``level`` and denoised in ``steps`` DDIM steps (:func:`diffplan.diffusion.warm_start.warm_start`)."""

    level: int
    steps: int

    @staticmethod
    def of(planner: PlannerConfig, n_timesteps: int) -> WarmStart | None:
        """The warm start of ``planner.warm_start.level``/``warm_start_steps`` (None when the level is 0).

        Raises:
            ValueError: a level outside [0, n_timesteps] or steps outside [1, level].
        """
        level, steps = planner.warm_start.level, planner.warm_start.steps
        if not 0 <= level <= n_timesteps:
            raise ValueError(f"planner.warm_start.level must be in [0, diffusion.n_timesteps={n_timesteps}] "
                             f"(0 = off), got {level}")
        if level == 0:
            return None
        if not 1 <= steps <= level:
            raise ValueError(f"planner.warm_start.steps must be in [1, planner.warm_start.level={level}], got {steps}")
        return WarmStart(level, steps)


# ----------------------------------------------------------------------------- the composed planner


class SamplingPlanner:
    """The one planner: condition, warm-start, guide, sample N x K, read actions, select.

    Args:
        model: the trained model.
        planner: ``n_candidates`` K, the action source, return target and guidance weight of
            return-conditioned models, precision and compilation.
        diffusion: the planning-time sampler settings.
        device: where sampling runs.
        conditioner: what is inpainted and the matrix (None: the current observation at token 0,
            no goal, the full-sequence matrix of ``diffusion``).
        guidance: steers every plan (None: unguided).
        selector: picks a candidate per environment (None: ``planner.selection``).
        warm_start: replans from the previous plan (None: every plan from noise).
        horizon: tokens per plan (None: the model's).
        proposer: adds candidates after the K sampled ones, ranked with them by the selector (None: none).
    """

    def __init__(
        self,
        model: TrainedModel,
        *,
        planner: PlannerConfig,
        diffusion: DiffusionConfig,
        device: torch.device | str = "cpu",
        conditioner: Conditioner | None = None,
        guidance: Guidance | None = None,
        selector: CandidateSelector | None = None,
        warm_start: WarmStart | None = None,
        horizon: int | None = None,
        proposer: CandidateProposer | None = None,
    ) -> None:
        self.action_source = check_planner(model, planner)
        self.model = model
        self.cfg = planner
        self.diffusion = diffusion
        self.device = torch.device(device)
        self.horizon = int(horizon) if horizon is not None else model.horizon
        self.sampler, self.matrix = planning_sampler(model, diffusion, precision=planner.precision)
        # Resolved once per planner (checking the weights for a fresh planar copy walks every tensor).
        self.network = planning_network(model.denoiser, planner.precision, self.device)
        self.conditioner: Conditioner = conditioner or StartConditioner(model, self.matrix)
        self.guidance = guidance
        self.selector: CandidateSelector = selector or PlausibilitySelector(Selection(planner.selection),
                                                                            model.layout.obs)
        self.warm_start = warm_start
        self.candidates_per_env = planner.n_candidates
        self.proposer = proposer

    @property
    def n_candidates(self) -> int:
        """K, the samples per environment (``planner.n_candidates``, times the arrivals a goal planner or
        a forcing planner with ``planner.forcing.arrival_slack`` tries)."""
        return self.candidates_per_env

    def context(self, goals: Tensor | None, batch: int) -> GuideContext:
        """The guide context of ``batch`` samples planned for N environments with ``goals`` (N, G)
        (each environment's candidates contiguous, as :meth:`Constraints.repeat_interleave`)."""
        if goals is None:
            return GuideContext(self.model.schedule.n_timesteps)
        return GuideContext(self.model.schedule.n_timesteps, goals.repeat_interleave(batch // goals.shape[0], dim=0))

    def denoiser(self, conditioning: Conditioning, batch: int, weight: Tensor | None,
                 generator: torch.Generator) -> Denoiser:
        """The denoiser of one planning call of ``batch`` samples (:func:`planning_denoiser`); planners
        that guide on their conditioning wrap it (drawing from ``generator`` only when they do)."""
        return planning_denoiser(self.model, self.cfg, batch, self.device, weight, network=self.network)

    def sample(
        self, conditioning: Conditioning, n: int, k: int, generator: torch.Generator, *,
        goals: Tensor | None = None, previous: Tensor | None = None, shift: int = 0,
        strengths: EnvStrengths | None = None,
    ) -> tuple[Tensor, GuideContext]:
        """K normalized samples per environment (N x K, H, D) under ``conditioning`` (N plans), and
        the guide context they were sampled with."""
        constraints = conditioning.constraints if conditioning.per_candidate else \
            conditioning.constraints.repeat_interleave(k)
        matrix, x_init = conditioning.matrix, None
        if previous is not None and self.warm_start is not None:
            x_init, matrix = warm_start(
                previous.to(self.device, torch.float32).repeat_interleave(k, dim=0),
                shift=shift,
                schedule=self.model.schedule,
                level=self.warm_start.level,
                steps=self.warm_start.steps,
                generator=generator,
            )
        context = self.context(goals, n * k)
        guidance, weight = for_candidates(self.guidance, strengths, n, k)
        if guidance is not None:
            guidance = guidance.with_context(context)
        x = self.sampler.sample(
            self.denoiser(conditioning, n * k, weight, generator),
            (n * k, self.horizon, self.model.layout.transition_dim),
            matrix,
            constraints=constraints,
            generator=generator,
            device=self.device,
            x_init=x_init,
            guidance=guidance,
        )
        if self.action_source is ActionSource.inverse_dynamics:
            assert self.model.inverse_dynamics is not None
            layout = self.model.layout
            x = x.clone()
            x[..., layout.act] = plan_actions(self.model.inverse_dynamics, x[..., layout.obs])
        return x, context

    @torch.no_grad()
    def plan(
        self, observations: Tensor, generator: torch.Generator, *, goals: Tensor | None = None,
        history: Tensor | None = None, previous: Tensor | None = None, shift: int = 0,
        strengths: EnvStrengths | None = None, arrival: Tensor | None = None,
    ) -> Plan:
        """Plans for N environments from ``observations`` (N, obs_dim), raw units (see :class:`Planner`)."""
        layout, horizon = self.model.layout, self.horizon
        k = self.n_candidates
        n = observations.shape[0]
        start = time.perf_counter()
        observations = observations.to(self.device, torch.float32)
        if goals is not None:
            goals = goals.to(self.device, torch.float32)
        if history is not None:
            history = history.to(self.device, torch.float32)
        conditioning = self.conditioner.condition(observations, goals, history, arrival=arrival)
        if self.proposer is not None and (goals is not None or conditioning.arrivals is not None
                                          or conditioning.current != 0):
            raise ValueError("a candidate proposer (planner.agent_candidate) serves planning from the current "
                             "state at token 0 without goals or history; this planner does not: drop it")
        x, context = self.sample(conditioning, n, k, generator, goals=goals, previous=previous, shift=shift,
                                 strengths=strengths)
        normalized = x.view(n, k, horizon, layout.transition_dim)
        if self.proposer is not None:  # candidates that were not sampled join the K (after them)
            normalized = self.proposer.propose(normalized)
        raw = self.model.normalizer.unnormalize(normalized)
        chosen, values = self.selector.select(normalized, raw, context)
        rows = torch.arange(n, device=raw.device)
        now = conditioning.current
        selected = raw[rows, chosen][:, now:]  # (N, H', D)
        finite = torch.isfinite(selected).all(dim=(1, 2))
        if values is not None:
            finite = finite & torch.isfinite(values[rows, chosen])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        return Plan(
            observations=selected[..., layout.obs].cpu(),
            actions=selected[..., layout.act].cpu(),
            finite=finite.cpu(),
            plan_time_s=elapsed,
            candidates=raw[:, :, now:, layout.obs].cpu(),
            normalized=normalized[rows, chosen].cpu(),
            values=None if values is None else values[rows, chosen].cpu(),
            candidate_values=None if values is None else values.cpu(),
            arrival=None if conditioning.arrivals is None else conditioning.arrivals.view(n, k)[rows, chosen].cpu(),
            proposed=None if self.proposer is None else (chosen >= k).cpu(),
        )


class GoalPlanner(SamplingPlanner):
    """Plans from the current state to a goal by inpainting both into the trajectory (a
    :class:`SamplingPlanner` with a goal-inpainting :class:`StartConditioner`).

    With ``guidance.kind = goal`` the sampler is also steered by goal guidance
    (:class:`~diffplan.guidance.goal.GoalGuide`: minus the mean distance of the planned
    positions to each environment's goal, from the plan's guide context), built by
    :func:`~diffplan.guidance.build.build_guidance` with the ``guidance`` settings (scale,
    steps, ``through_denoiser``, ``mc_samples``). ``guidance.kind = value`` steers it by a
    goal-conditioned value function instead (``guidance.value_checkpoint`` trained with
    ``value.goal_conditioned=true``, :class:`~diffplan.guidance.value.GoalValueGuide`: the
    predicted discounted number of plan tokens within the goal radius); ``none`` (or no
    ``guidance``) plans unguided.

    Args:
        model: a trained model (denoiser, schedule, normalizer, layout).
        planner: K candidates and the selection rule.
        diffusion: sampler kind, steps, eta and clipping used at planning time.
        goal_dims: observation channels that hold the goal (e.g. x, y).
        device: where sampling runs.
        guidance: the ``guidance`` settings (a kind for maze tasks: ``none``, ``goal``, ``value``
            or a registered one, :mod:`diffplan.guidance.kinds`), or None (unguided).

    Raises:
        ValueError: a guidance kind that is not for maze tasks, or a value checkpoint that is not
            goal-conditioned.
    """

    def __init__(
        self,
        model: TrainedModel,
        *,
        planner: PlannerConfig,
        diffusion: DiffusionConfig,
        goal_dims: list[int],
        device: torch.device | str = "cpu",
        guidance: GuidanceConfig | None = None,
    ) -> None:
        built: Guidance | None = None
        spec = None if guidance is None else check_kind_for_suite(guidance.kind, "maze", "the maze goal planner")
        if guidance is not None and spec is not None:
            value = load_value_guide(model, guidance, device, goal_dims=list(goal_dims)) if spec.needs_value else None
            built = build_guidance(guidance, model, device, value_guide=value, clip_denoised=diffusion.clip_denoised,
                                   goal_dims=list(goal_dims))
        super().__init__(model, planner=planner, diffusion=diffusion, device=device, guidance=built)
        self.goal_dims = list(goal_dims)
        self.conditioner = StartConditioner(model, self.matrix, self.goal_dims)
        if planner.goal_tokens:
            tokens = [int(t) for t in planner.goal_tokens]
            self.conditioner = GoalTokensConditioner(model, self.matrix, self.goal_dims, tokens, planner.n_candidates)
            self.selector = earliest_arrival(model, self.goal_dims, tokens, planner)
            self.candidates_per_env = planner.n_candidates * len(tokens)
