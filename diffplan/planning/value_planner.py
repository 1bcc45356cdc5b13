"""Value-guided planning for locomotion (Diffuser, Janner et al. 2022, sec. 3.3 and 5.3).

:class:`ValuePlanner` inpaints each environment's current observation at the first token,
samples K candidates per environment for N environments in one guided sampler call of
N x K trajectories (the value function's gradient steers every denoising step, see
:class:`diffplan.guidance.Guidance`), scores the finished candidates with the guide's value
at level 0 (or with a ``ranker``, e.g. an offline agent's critic, ``planner.critic``; a
``proposer`` may add candidates first, e.g. the agent's own action, ``planner.agent_candidate``) and
returns the best one per environment. As in
:class:`diffplan.planning.planner.GoalPlanner`, a return-conditioned model
(``model.return_condition``) is sampled with classifier-free guidance towards
``planner.return_guidance.target`` and ``planner.action_source = inverse_dynamics`` replaces the
plan's actions by the inverse-dynamics head's (Decision Diffuser, ``planner=dd``).

:class:`ValueController` executes the planned actions in closed loop: it replans every
``planner.replan_every`` steps (1 = every step, as Diffuser does) and executes the plan's
actions in between. With ``planner.warm_start.level = k > 0`` a replan starts from the
previous plan, shifted by the steps executed since, re-noised to level k and denoised in
``planner.warm_start.steps`` steps (:func:`diffplan.diffusion.warm_start.warm_start`);
``0`` samples every plan from pure noise.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffplan.acceleration import compile_module
from diffplan.config import DiffusionConfig, GuidanceConfig, PlannerConfig
from diffplan.controllers import PlanRecord
from diffplan.guidance import EnvStrengths, Guide, ValueGuide, build_guidance
from diffplan.models.planar import planning_network
from diffplan.planning.controllers import RecedingHorizonController, check_strengths
from diffplan.planning.planner import CandidateProposer, ObjectiveSelector, Plan, Planner, SamplingPlanner, WarmStart
from diffplan.training.checkpoint import TrainedModel


class ValuePlanner(SamplingPlanner):
    """Plans from the current state by value-guided sampling and picks the best of K candidates, and of
    a ``proposer``'s (e.g. an offline agent's own action): a
    :class:`~diffplan.planning.planner.SamplingPlanner` with the start inpainted, the value guide's
    :class:`~diffplan.planning.planner.ObjectiveSelector` and an optional warm start.

    With ``planner.compile`` the denoiser and a :class:`ValueGuide`'s network run through
    ``torch.compile`` (the guide's ``value_net`` becomes the compiled wrapper, which shares its
    parameters; a guide already wrapped stays as it is).

    Args:
        model: the trained diffusion model (observations and actions in its layout).
        guide: scores candidates (``objective`` at level 0; unless ``ranker`` is given) and, with ``guidance.kind =
            value``, steers sampling (``gradient``); e.g. :func:`~diffplan.guidance.value.load_value_guide`.
        planner: ``n_candidates`` K and the warm-start settings (``selection`` is not used:
            candidates are ranked by value, or by ``ranker``).
        diffusion: planning-time sampler settings (kind, steps, eta, clipping).
        guidance: scale, steps and schedule of the guidance; ``kind = none`` samples
            unguided and only ranks the candidates by value.
        device: where sampling runs.
        ranker: ranks the candidates in the guide's place (e.g. a
            :class:`~diffplan.guidance.critic.CriticGuide`; None: the guide ranks).
        proposer: adds candidates to the K sampled ones before ranking (e.g. the critic's agent's own
            action, ``planner.agent_candidate``; None: only the sampled ones are ranked).
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
        ranker: Guide | None = None,
        proposer: CandidateProposer | None = None,
    ) -> None:
        warm = WarmStart.of(planner, model.schedule.n_timesteps)
        if isinstance(guide, ValueGuide):
            # A copy of the guide runs the planning network; the caller's guide keeps its own.
            network = planning_network(guide.value_net, planner.precision, device)
            network = compile_module(network, planner.compile, what="the value network")
            if network is not guide.value_net:
                guide = copy.copy(guide)
                guide.value_net = network
        self.guide = guide
        # Value, policy or both (guidance.kind); the value guide ranks the candidates unless a ranker is given.
        built = build_guidance(guidance, model, device, value_guide=guide, clip_denoised=diffusion.clip_denoised)
        self.ranker = guide if ranker is None else ranker
        super().__init__(model, planner=planner, diffusion=diffusion, device=device, guidance=built,
                         selector=ObjectiveSelector(self.ranker), warm_start=warm, proposer=proposer)


@dataclass
class ValueController(RecedingHorizonController):
    """Batched closed-loop policy executing the actions of a :class:`ValuePlanner`'s plans.

    Same interface as :class:`diffplan.planning.controllers.PlanController`: ``reset(n_envs)``,
    ``act(step, observations, goals, active, generator) -> (actions, bad)`` and ``records``.
    Goals are ignored. Every ``cfg.replan_every`` steps (0 = plan once per episode) the
    active environments replan; in between each executes its plan's action at its age (the
    last action past the plan's end). When the planner warm-starts (its ``warm_start``) a
    replan starts from the environment's previous plan, shifted by its age (the steps
    executed since).

    Args:
        planner: the planner (e.g. a :class:`ValuePlanner`; its model must have ``task.stride = 1``).
        cfg: the replanning interval (``replan_every``).
        strengths: per-environment guidance strengths of a batched guidance sweep (one row per
            environment), handed to the planner for the environments of each planner call.
    """

    planner: Planner
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
        warm = self.planner.warm_start is not None and self._normalized is not None
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
        if plan.normalized is not None:
            if self._normalized is None:
                assert self._age is not None
                self._normalized = torch.zeros(len(self._age), *plan.normalized.shape[1:])
            self._normalized[torch.as_tensor(index)] = plan.normalized

    def _actions_from_plans(self, observations: np.ndarray) -> np.ndarray:
        return self._planned_actions()
