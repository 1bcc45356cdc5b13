"""Goal-conditioned planning by inpainting, for N environments in one sampler call.

The planner turns current observations (N, obs_dim) and goals (N, goal_dim) into plans:
it inpaints the observation at the first token and the goal at the last, samples K
candidates per environment as one batch of N x K trajectories, picks one per environment
and returns it in raw (un-normalized) units.

A return-conditioned model (``model.return_condition``) is sampled with classifier-free
guidance towards ``planner.return_target`` with weight ``planner.guidance_weight``. With
``planner.action_source = inverse_dynamics`` the plan's actions are read off the
checkpoint's inverse-dynamics head from consecutive planned states (token 0 is the
inpainted current observation, so the first action is ``f(s_now, s_1)`` as in Decision
Diffuser) instead of the diffused action channels.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import torch
from torch import Tensor

from diffplan.acceleration import compile_module
from diffplan.config import DiffusionConfig, GuidanceConfig, PlannerConfig
from diffplan.diffusion.cfg import ClassifierFreeGuidance
from diffplan.diffusion.conditioning import Constraints, goal_constraints
from diffplan.diffusion.sampler import Denoiser, Sampler, check_clip, make_sampler
from diffplan.diffusion.warm_start import warm_start
from diffplan.enums import ActionSource, NoiseMode, Precision, ScheduleMatrixKind, Selection
from diffplan.guidance import EnvStrengths, GoalTargets, Guidance, build_guided, check_kind_for_suite
from diffplan.guidance.per_env import for_candidates
from diffplan.models.inverse_dynamics import plan_actions
from diffplan.training.checkpoint import TrainedModel

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """A batch of selected plans in raw units.

    Attributes:
        observations: (N, H, obs_dim) planned states, token 0 = the state planned from.
        actions: (N, H, act_dim) planned actions (diffused, or from inverse dynamics).
        finite: (N,) bool, False where sampling produced NaN/inf.
        plan_time_s: wall time of the sampler call.
        candidates: (N, K, H, obs_dim) all candidates' states (for plots), or None.
    """

    observations: Tensor
    actions: Tensor
    finite: Tensor
    plan_time_s: float
    candidates: Tensor | None = field(default=None, repr=False)


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
    model: TrainedModel, planner: PlannerConfig, batch: int, device: torch.device, weight: Tensor | None = None
) -> Denoiser:
    """The model's denoiser (compiled with ``planner.compile``), wrapped in classifier-free
    guidance towards ``planner.return_target`` (weight ``planner.guidance_weight``, or the
    per-sample weights ``weight`` (batch,) of a batched guidance sweep) when the model is
    return-conditioned.

    Raises:
        ValueError: per-sample weights for a model that is not return-conditioned.
    """
    denoiser = compile_module(model.denoiser, planner.compile, what=f"the denoiser of {model.path}")
    if not model.config.model.return_condition:
        if weight is not None:
            raise ValueError(
                f"classifier-free guidance weights (sweep kind=cfg, planner.guidance_weight) need a model trained "
                f"with model.return_condition=true; {model.path} is not return-conditioned"
            )
        return denoiser
    target = torch.full((batch,), float(planner.return_target), device=device)
    return ClassifierFreeGuidance(denoiser, target, planner.guidance_weight if weight is None else weight)


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
    """What controllers (:mod:`diffplan.planning.policy`) need from a planner: one call that plans
    for N environments (goals for goal-reaching planners, a previous plan to warm-start from,
    per-environment guidance strengths). :class:`GoalPlanner` and :class:`ValuePlanner
    <diffplan.planning.value_planner.ValuePlanner>` implement it through :class:`SamplingPlanner`."""

    def plan(
        self, observations: Tensor, generator: torch.Generator, *, goals: Tensor | None = None,
        previous: Tensor | None = None, shift: int = 0, strengths: EnvStrengths | None = None,
    ) -> Plan: ...


#: The plan type a planner returns (:class:`Plan` or a subclass with more fields).
PlanT = TypeVar("PlanT", bound="Plan")


class SamplingPlanner(Generic[PlanT]):
    """The planning sequence every sampling planner shares, with the steps that differ as hooks.

    :meth:`plan`: condition (inpaint the current observation, and the goal where the planner
    takes one: :meth:`_constraints`), optionally warm-start from the previous plan, build the
    guidance for K candidates per environment (per-environment strengths of a batched sweep
    included), give goal-taking guides their goals, sample N x K trajectories, read actions off
    the inverse-dynamics head if asked, then select one candidate per environment
    (:meth:`_select`, which also builds the returned :class:`Plan`).

    Subclasses set :attr:`guidance` and :attr:`goal_guide` and implement the two hooks.
    """

    model: TrainedModel
    cfg: PlannerConfig
    device: torch.device
    sampler: Sampler
    matrix: Tensor
    action_source: ActionSource
    guidance: Guidance | None = None
    #: The guide that takes each plan's goals (goal or goal-conditioned value guidance), or None.
    goal_guide: GoalTargets | None = None

    def _setup(self, model: TrainedModel, planner: PlannerConfig, diffusion: DiffusionConfig,
               device: torch.device | str) -> None:
        self.action_source = check_planner(model, planner)
        self.model = model
        self.cfg = planner
        self.device = torch.device(device)
        self.sampler, self.matrix = planning_sampler(model, diffusion, precision=planner.precision)

    def _constraints(self, observations: Tensor, goals: Tensor | None) -> Constraints:
        """The inpainted entries of N plans (one per environment), normalized."""
        raise NotImplementedError

    def _select(self, x: Tensor, n: int, k: int, start: float) -> PlanT:
        """The plan of each environment from its K normalized candidates ``x`` (N x K, H, D);
        ``start`` is the ``perf_counter`` at the start of the call (the plan's time)."""
        raise NotImplementedError

    @torch.no_grad()
    def plan(
        self, observations: Tensor, generator: torch.Generator, *, goals: Tensor | None = None,
        previous: Tensor | None = None, shift: int = 0, strengths: EnvStrengths | None = None,
    ) -> PlanT:
        """Plans for N environments from ``observations`` (N, obs_dim), raw units.

        Args:
            generator: source of all sampling randomness.
            goals: (N, goal_dim) each environment's goal, raw units (goal-reaching planners).
            previous: (N, H, D) each environment's previous normalized plan, to warm-start from
                (used when ``planner.warm_start_level > 0``); None samples from noise.
            shift: environment steps executed since ``previous`` was planned.
            strengths: per-environment guidance strengths of these N environments (a batched
                guidance sweep, :class:`~diffplan.guidance.per_env.EnvStrengths`), repeated over
                each environment's K candidates the way the environments are.
        """
        layout, horizon = self.model.layout, self.model.horizon
        k = self.cfg.n_candidates
        n = observations.shape[0]
        start = time.perf_counter()
        observations = observations.to(self.device, torch.float32)
        if goals is not None:
            goals = goals.to(self.device, torch.float32)
        constraints = self._constraints(observations, goals).repeat_interleave(k)
        matrix, x_init = self.matrix, None
        if previous is not None and self.cfg.warm_start_level > 0:
            x_init, matrix = warm_start(
                previous.to(self.device, torch.float32).repeat_interleave(k, dim=0),
                shift=shift,
                schedule=self.model.schedule,
                level=self.cfg.warm_start_level,
                steps=self.cfg.warm_start_steps,
                generator=generator,
            )
        guidance, cfg_weight = for_candidates(self.guidance, strengths, n, k)
        if self.goal_guide is not None and goals is not None:
            self.goal_guide.set_goals(goals)
        x = self.sampler.sample(
            planning_denoiser(self.model, self.cfg, n * k, self.device, cfg_weight),
            (n * k, horizon, layout.transition_dim),
            matrix,
            constraints=constraints,
            generator=generator,
            device=self.device,
            x_init=x_init,
            guidance=guidance,
        )
        if self.action_source is ActionSource.inverse_dynamics:
            assert self.model.inverse_dynamics is not None
            x = x.clone()
            x[..., layout.act] = plan_actions(self.model.inverse_dynamics, x[..., layout.obs])
        return self._select(x, n, k, start)


class GoalPlanner(SamplingPlanner[Plan]):
    """Plans from the current state to a goal by inpainting both into the trajectory.

    With ``guidance.kind = goal`` the sampler is also steered by goal guidance
    (:class:`~diffplan.guidance.goal.GoalGuide`: minus the mean distance of the planned
    positions to each environment's goal, set before every plan), built by
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
        self._setup(model, planner, diffusion, device)
        self.goal_dims = list(goal_dims)
        self.goal_guide = None
        self.guidance = None
        spec = None if guidance is None else check_kind_for_suite(guidance.kind, "maze", "the maze goal planner")
        if guidance is not None and spec is not None:
            value = None
            if spec.needs_value:
                from diffplan.planning.value_planner import value_guide  # it imports this module

                value = value_guide(model, guidance, self.device, goal_dims=self.goal_dims)
            self.guidance, built = build_guided(guidance, model, self.device, value_guide=value,
                                                clip_denoised=diffusion.clip_denoised, goal_dims=self.goal_dims)
            for candidate in (built, value):  # the guide that takes each plan's goals, if any
                if isinstance(candidate, GoalTargets) and self.goal_guide is None:
                    self.goal_guide = candidate

    def _constraints(self, observations: Tensor, goals: Tensor | None) -> Constraints:
        if goals is None:
            raise ValueError("the goal planner plans to a goal: pass goals (N, goal_dim)")
        return goal_constraints(self.model.layout, self.model.normalizer, self.model.horizon, observations, goals,
                                self.goal_dims)

    def _select(self, x: Tensor, n: int, k: int, start: float) -> Plan:
        """The candidate ``planner.selection`` picks (:func:`select_candidates`)."""
        layout, horizon = self.model.layout, self.model.horizon
        raw = self.model.normalizer.unnormalize(x).view(n, k, horizon, layout.transition_dim)
        states = raw[..., layout.obs]
        chosen = select_candidates(states, self.cfg.selection)
        rows = torch.arange(n, device=raw.device)
        selected = raw[rows, chosen]  # (N, H, D)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        return Plan(
            observations=selected[..., layout.obs].cpu(),
            actions=selected[..., layout.act].cpu(),
            finite=torch.isfinite(selected).all(dim=(1, 2)).cpu(),
            plan_time_s=elapsed,
            candidates=states.cpu(),
        )
