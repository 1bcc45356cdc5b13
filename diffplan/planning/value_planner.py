"""Value-guided planning for locomotion (Diffuser, Janner et al. 2022, sec. 3.3 and 5.3).

:class:`ValuePlanner` inpaints each environment's current observation at the first token,
samples K candidates per environment for N environments in one guided sampler call of
N x K trajectories (the value function's gradient steers every denoising step, see
:class:`diffplan.guidance.Guidance`), scores the finished candidates with the guide's value
at level 0 and returns the best one per environment. As in
:class:`diffplan.planning.planner.GoalPlanner`, a return-conditioned model
(``model.return_condition``) is sampled with classifier-free guidance towards
``planner.return_target`` and ``planner.action_source = inverse_dynamics`` replaces the
plan's actions by the inverse-dynamics head's (Decision Diffuser, ``planner=dd``).

:class:`ValuePolicy` executes the planned actions in closed loop: it replans every
``planner.replan_every`` steps (1 = every step, as Diffuser does) and executes the plan's
actions in between. With ``planner.warm_start_level = k > 0`` a replan starts from the
previous plan, shifted by the steps executed since, re-noised to level k and denoised in
``planner.warm_start_steps`` steps (:func:`diffplan.diffusion.warm_start.warm_start`);
``0`` samples every plan from pure noise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffplan.acceleration import compile_module
from diffplan.config import DiffusionConfig, GuidanceConfig, PlannerConfig
from diffplan.controllers import PlanRecord
from diffplan.diffusion.conditioning import Constraints, goal_constraints
from diffplan.guidance import EnvStrengths, GoalValueGuide, Guide, ValueGuide, build_guidance
from diffplan.planning.planner import Plan, SamplingPlanner
from diffplan.planning.policy import RecedingHorizonPolicy, check_strengths
from diffplan.training.checkpoint import TrainedModel
from diffplan.training.value_trainer import load_value_model


@dataclass
class ValuePlan(Plan):
    """A :class:`Plan` with its values.

    Attributes:
        values: (N,) the guide's value (level 0) of each selected plan.
        candidate_values: (N, K) the value of every candidate.
        normalized: (N, H, D) the selected plans, normalized (the next warm start's input).
    """

    values: Tensor | None = None
    candidate_values: Tensor | None = field(default=None, repr=False)
    normalized: Tensor | None = field(default=None, repr=False)


def value_guide(
    model: TrainedModel,
    guidance: GuidanceConfig,
    device: torch.device | str = "cpu",
    goal_dims: list[int] | None = None,
) -> ValueGuide:
    """The value guide of ``guidance.value_checkpoint``, checked against ``model`` (see
    :func:`diffplan.training.value_trainer.load_value_model`).

    Args:
        goal_dims: the goal's observation entries when planning towards goals (mazes): the
            checkpoint must then be goal-conditioned and a :class:`GoalValueGuide` is returned;
            None (locomotion): it must not be.

    Raises:
        ValueError: the checkpoint's goal conditioning does not fit the planner.
    """
    path = Path(guidance.value_checkpoint)
    net = load_value_model(path, model, device)
    if goal_dims is None and net.goal_dim:
        raise ValueError(
            f"value checkpoint {path} is goal-conditioned (value.goal_conditioned=true): it guides the maze goal "
            "planner (pointmaze-* tasks), which sets each episode's goal; use a value function trained with "
            "value.goal_conditioned=false here"
        )
    if goal_dims is not None:
        if not net.goal_dim:
            raise ValueError(
                f"value checkpoint {path} was trained without goals, but a maze's reward depends on its goal; "
                f"train a goal-conditioned one (diffplan-train-value value.goal_conditioned=true "
                f"value.diffusion_checkpoint={model.path}) and set guidance.value_checkpoint to it"
            )
        if list(goal_dims) != net.goal_dims:
            raise ValueError(
                f"value checkpoint {path} reads the goal from observation entries {net.goal_dims} "
                f"(task.goal_obs_dims of its training), but the planner gives entries {list(goal_dims)}; "
                f"set task.goal_obs_dims={net.goal_dims} or train a value function for these entries"
            )
        return GoalValueGuide(net, model.layout, model.normalizer, goal_dims)
    return ValueGuide(net)


class ValuePlanner(SamplingPlanner[ValuePlan]):
    """Plans from the current state by value-guided sampling and picks the best of K candidates.

    With ``planner.compile`` the denoiser and a :class:`ValueGuide`'s network run through
    ``torch.compile`` (the guide's ``value_net`` becomes the compiled wrapper, which shares its
    parameters; a guide already wrapped stays as it is).

    Args:
        model: the trained diffusion model (observations and actions in its layout).
        guide: scores candidates (``objective`` at level 0) and, with ``guidance.kind =
            value``, steers sampling (``gradient``); e.g. :func:`value_guide`.
        planner: ``n_candidates`` K and the warm-start settings (``selection`` is not used:
            candidates are ranked by value).
        diffusion: planning-time sampler settings (kind, steps, eta, clipping).
        guidance: scale, steps and schedule of the guidance; ``kind = none`` samples
            unguided and only ranks the candidates by value.
        device: where sampling runs.
    """

    def __init__(
        self,
        model: TrainedModel,
        guide: Guide,
        *,
        planner: PlannerConfig,
        diffusion: DiffusionConfig,
        guidance: GuidanceConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        n_timesteps = model.schedule.n_timesteps
        if not 0 <= planner.warm_start_level <= n_timesteps:
            raise ValueError(
                f"planner.warm_start_level must be in [0, diffusion.n_timesteps={n_timesteps}] (0 = off), "
                f"got {planner.warm_start_level}"
            )
        if planner.warm_start_level > 0 and not 1 <= planner.warm_start_steps <= planner.warm_start_level:
            raise ValueError(
                f"planner.warm_start_steps must be in [1, planner.warm_start_level={planner.warm_start_level}], "
                f"got {planner.warm_start_steps}"
            )
        self._setup(model, planner, diffusion, device)
        if planner.compile and isinstance(guide, ValueGuide):
            guide.value_net = compile_module(guide.value_net, True, what="the value network")
        self.guide = guide
        # Value, policy or both (guidance.kind); the value guide always ranks the candidates.
        self.guidance = build_guidance(
            guidance, model, self.device, value_guide=guide, clip_denoised=diffusion.clip_denoised
        )

    def _constraints(self, observations: Tensor, goals: Tensor | None) -> Constraints:
        """The current observation at the first token (no goal: the value function says where to go)."""
        return goal_constraints(self.model.layout, self.model.normalizer, self.model.horizon, observations, None, [])

    def _select(self, x: Tensor, n: int, k: int, start: float) -> ValuePlan:
        """The finite candidate of highest value (the guide's objective at level 0)."""
        layout, horizon = self.model.layout, self.model.horizon
        values = self.guide.objective(x, torch.zeros(n * k, horizon, device=self.device)).view(n, k)
        finite = torch.isfinite(x).all(dim=(1, 2)).view(n, k) & torch.isfinite(values)
        chosen = torch.where(finite, values, torch.full_like(values, -torch.inf)).argmax(dim=1)
        rows = torch.arange(n, device=x.device)
        normalized = x.view(n, k, horizon, layout.transition_dim)[rows, chosen]  # (N, H, D)
        raw = self.model.normalizer.unnormalize(x).view(n, k, horizon, layout.transition_dim)
        selected = raw[rows, chosen]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        return ValuePlan(
            observations=selected[..., layout.obs].cpu(),
            actions=selected[..., layout.act].cpu(),
            finite=(torch.isfinite(selected).all(dim=(1, 2)) & finite[rows, chosen]).cpu(),
            plan_time_s=elapsed,
            candidates=raw[..., layout.obs].cpu(),
            values=values[rows, chosen].cpu(),
            candidate_values=values.cpu(),
            normalized=normalized.cpu(),
        )


@dataclass
class ValuePolicy(RecedingHorizonPolicy):
    """Batched closed-loop policy executing the actions of a :class:`ValuePlanner`'s plans.

    Same interface as :class:`diffplan.planning.policy.PlanningPolicy`: ``reset(n_envs)``,
    ``act(step, observations, goals, active, generator) -> (actions, bad)`` and ``records``.
    Goals are ignored. Every ``cfg.replan_every`` steps (0 = plan once per episode) the
    active environments replan; in between each executes its plan's action at its age (the
    last action past the plan's end). When the planner warm-starts
    (``planner.cfg.warm_start_level > 0``) a replan starts from the environment's previous
    plan, shifted by its age (the steps executed since).

    Args:
        planner: the value planner (its model must have ``task.stride = 1``).
        cfg: the replanning interval (``replan_every``).
        strengths: per-environment guidance strengths of a batched guidance sweep (one row per
            environment), handed to the planner for the environments of each planner call.
    """

    planner: ValuePlanner
    cfg: PlannerConfig
    records: list[PlanRecord] = field(default_factory=list)
    strengths: EnvStrengths | None = None

    def __post_init__(self) -> None:
        self._check_replan_every()
        stride = self.planner.model.config.task.stride
        if stride != 1:
            raise ValueError(
                f"value planning executes planned actions and needs a model trained with task.stride=1 (got {stride})"
            )
        self._states: np.ndarray | None = None
        self._actions: np.ndarray | None = None
        self._age: np.ndarray | None = None
        self._normalized: Tensor | None = None

    def reset(self, n_envs: int) -> None:
        """Forget plans; the next :meth:`act` plans for every environment from noise."""
        check_strengths(self.strengths, n_envs)
        super().reset(n_envs)
        self._normalized = None

    def _plan(
        self, index: np.ndarray, observations: np.ndarray, goals: np.ndarray, generator: torch.Generator
    ) -> list[tuple[np.ndarray, Plan]]:
        """One planner call for cold starts, one per shift for warm starts (usually just one call)."""
        assert self._age is not None
        age = self._age[index]
        warm = self.planner.cfg.warm_start_level > 0 and self._normalized is not None
        groups: list[tuple[np.ndarray, int | None]] = []
        if not warm:
            groups.append((index, None))
        else:
            if (age < 0).any():
                groups.append((index[age < 0], None))
            groups.extend((index[age == shift], int(shift)) for shift in np.unique(age[age >= 0]))
        plans: list[tuple[np.ndarray, Plan]] = []
        for group, shift in groups:
            obs = torch.as_tensor(observations[group])
            extra: dict[str, Any] = {} if self.strengths is None else {"strengths": self.strengths.select(group)}
            if shift is None:
                plans.append((group, self.planner.plan(obs, generator, **extra)))
            else:
                assert self._normalized is not None
                previous = self._normalized[torch.as_tensor(group)]
                plans.append((group, self.planner.plan(obs, generator, previous=previous, shift=shift, **extra)))
        return plans

    def _store(self, index: np.ndarray, plan: Plan) -> None:
        super()._store(index, plan)
        if isinstance(plan, ValuePlan) and plan.normalized is not None:
            if self._normalized is None:
                assert self._age is not None
                self._normalized = torch.zeros(len(self._age), *plan.normalized.shape[1:])
            self._normalized[torch.as_tensor(index)] = plan.normalized

    def _actions_from_plans(self, observations: np.ndarray) -> np.ndarray:
        return self._planned_actions()
