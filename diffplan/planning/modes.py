"""Planners by name (``planner.mode``): how each builds the controller the evaluator drives, per task
suite. ``tracker`` and ``actions`` (goal inpainting on the mazes, value-guided planning on locomotion)
and ``forcing`` (Diffusion Forcing MPC on the mazes) are built in; a plugin module adds a mode with
:func:`register_planner`, and ``diffplan-evaluate plugins=[my_planners] planner.mode=<name>`` runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from diffplan.config import Config, PlannerConfig
from diffplan.controllers import Controller
from diffplan.enums import ExecutionMode
from diffplan.guidance import ConstantGuide, check_kind_for_suite, guidance_kind
from diffplan.guidance.critic import load_critic_guide
from diffplan.guidance.per_env import EnvStrengths
from diffplan.guidance.value import load_value_guide
from diffplan.planning.controllers import PlanController
from diffplan.planning.forcing import maze_forcing_planner
from diffplan.planning.history import ExecutedHistory
from diffplan.planning.planner import GoalPlanner
from diffplan.planning.value_planner import ValueController, ValuePlanner
from diffplan.training.checkpoint import TrainedModel
from diffplan.utils import Registry


@dataclass(frozen=True)
class BuiltController:
    """A controller and whether it read ``guidance.value_checkpoint`` (recorded with the results)."""

    controller: Controller
    uses_value_checkpoint: bool = False


#: (the config, the trained model, the device, a batched sweep's per-environment strengths or None).
ControllerBuilder = Callable[[Config, TrainedModel, torch.device, EnvStrengths | None], BuiltController]


@dataclass(frozen=True)
class PlannerSpec:
    """A ``planner.mode``.

    Attributes:
        name: the mode's name.
        builders: task suite (``maze``, ``locomotion``) -> the builder of its controller.
        batchable: whether it takes per-environment guidance strengths (a batched sweep pass).
        description: one line for messages and docs.
    """

    name: str
    builders: Mapping[str, ControllerBuilder] = field(default_factory=dict)
    batchable: bool = True
    description: str = ""


PLANNERS: Registry[PlannerSpec] = Registry("planner", "planner.mode", "diffplan.planning.modes.register_planner")


def register_planner(spec: PlannerSpec, *, replace: bool = False) -> PlannerSpec:
    """Make ``planner.mode=<spec.name>`` build ``spec``'s controllers.

    Raises:
        ValueError: the name is registered already and not ``replace``, or the spec serves no suite.
    """
    if not spec.builders:
        raise ValueError(f"planner {spec.name!r} needs a builder for at least one task suite (maze, locomotion)")
    return PLANNERS.add(spec.name, spec, replace=replace)


def planner_spec(mode: str, suite: str) -> PlannerSpec:
    """The spec of ``planner.mode=mode`` after checking it serves ``suite``.

    Raises:
        ValueError: an unregistered mode, or one without a builder for the suite (naming those that have one).
    """
    spec = PLANNERS.get(str(mode))
    if suite not in spec.builders:
        serving = [name for name, s in PLANNERS.items() if suite in s.builders]
        raise ValueError(f"planner.mode={mode} plans {' and '.join(sorted(spec.builders))} tasks, not {suite} "
                         f"tasks; use planner.mode in {serving} (e.g. planner=value for locomotion)")
    return spec


def check_critic_settings(planner: PlannerConfig, suite: str) -> None:
    """Refuse ``planner.critic`` for a suite whose planners rank no candidates by it (only locomotion's do),
    and ``planner.agent_candidate`` outside locomotion, without a critic to rank the agent's candidate, or
    with plans executed for more than one step (only the agent's first action is its own).

    Raises:
        ValueError: naming the setting and the fix.
    """
    critic = planner.critic
    if planner.agent_candidate:
        if suite != "locomotion":
            raise ValueError("planner.agent_candidate=true adds an offline agent's action to the locomotion "
                             f"planner's candidates; the {suite} planners do not use it: drop planner.agent_candidate")
        if not critic:
            raise ValueError("planner.agent_candidate=true adds the critic's agent's action as a candidate, but "
                             "planner.critic is not set: set planner.critic=<diffplan-train-offline checkpoint> "
                             "or drop planner.agent_candidate")
        if planner.replan_every != 1:
            raise ValueError(f"planner.agent_candidate=true proposes one action per plan, but planner.replan_every="
                             f"{planner.replan_every} executes more of each plan: set planner.replan_every=1 "
                             "or drop planner.agent_candidate")
    if critic and suite != "locomotion":
        raise ValueError(f"planner.critic={critic} ranks locomotion plans by an offline agent's critic; "
                         f"the {suite} planners do not use it: drop planner.critic")


def build_controller(cfg: Config, suite: str, model: TrainedModel, device: torch.device,
                     strengths: EnvStrengths | None) -> BuiltController:
    """The controller ``planner.mode`` builds for ``suite``.

    Raises:
        ValueError: see :func:`planner_spec`; per-environment strengths for a mode that takes none.
    """
    spec = planner_spec(cfg.planner.mode, suite)
    check_critic_settings(cfg.planner, suite)
    if strengths is not None and not spec.batchable:
        raise ValueError(f"planner.mode={spec.name} takes no per-environment guidance strengths; evaluate its sweep "
                         "cells with sweep.batched=false")
    return spec.builders[suite](cfg, model, device, strengths)


# ----------------------------------------------------------------------------- built-in planners


def _goal(cfg: Config, model: TrainedModel, device: torch.device, strengths: EnvStrengths | None) -> BuiltController:
    """Goal inpainting on the mazes, its plan followed by the tracker (``tracker``) or run (``actions``)."""
    planner = GoalPlanner(model, planner=cfg.planner, diffusion=cfg.diffusion, goal_dims=cfg.task.goal_obs_dims,
                          device=device, guidance=cfg.guidance)
    controller = PlanController(planner, cfg.planner, position_dims=cfg.task.goal_obs_dims,
                                velocity_dims=cfg.task.velocity_obs_dims, stride=model.config.task.stride,
                                strengths=strengths)
    spec = guidance_kind(cfg.guidance.kind)
    return BuiltController(controller, uses_value_checkpoint=spec is not None and spec.needs_value)


def _value(cfg: Config, model: TrainedModel, device: torch.device, strengths: EnvStrengths | None) -> BuiltController:
    """Value-guided planning on locomotion (Diffuser): K candidates ranked by the value function, or by
    an offline agent's critic (``planner.critic``), with the agent's own action as one more candidate
    (``planner.agent_candidate``)."""
    spec = check_kind_for_suite(cfg.guidance.kind, "locomotion", "the locomotion planner (planner=value)")
    ranker = load_critic_guide(cfg.planner.critic, model, device) if cfg.planner.critic else None
    needs_value = (spec is not None and spec.needs_value) or (cfg.planner.n_candidates > 1 and ranker is None)
    guide: Any = load_value_guide(model, cfg.guidance, device) if needs_value else ConstantGuide()
    planner = ValuePlanner(model, guide, planner=cfg.planner, diffusion=cfg.diffusion, guidance=cfg.guidance,
                           device=device, ranker=ranker,
                           proposer=ranker if ranker is not None and cfg.planner.agent_candidate else None)
    controller = ValueController(planner, cfg.planner, strengths=strengths)
    return BuiltController(controller, uses_value_checkpoint=needs_value)


def _forcing(cfg: Config, model: TrainedModel, device: torch.device, strengths: EnvStrengths | None) -> BuiltController:
    """Diffusion Forcing MPC on the mazes: every ``execute`` tokens a new window after the executed
    history, goal-guided (and goal-inpainted with ``planner.forcing.inpaint_goal``); its own actions
    run, or its states followed by the tracker (``planner.forcing.track_states``, ``planner.tracker``)."""
    stride = model.config.task.stride
    forcing = cfg.planner.forcing
    if stride != 1 and not forcing.track_states:
        raise ValueError(
            f"planner.mode=forcing runs the plan's own actions, which needs a model trained with task.stride=1; "
            f"{model.path} has stride {stride}: set planner.forcing.track_states=true to follow its states instead"
        )
    if forcing.hold_arrival and not forcing.inpaint_goal:
        raise ValueError("planner.forcing.hold_arrival=true places the inpainted goal; set "
                         "planner.forcing.inpaint_goal=true as well")
    planner = maze_forcing_planner(cfg, model, device)
    mode = ExecutionMode.tracker if forcing.track_states else ExecutionMode.actions
    execution = replace(cfg.planner, mode=mode.value, replan_every=planner.execute * stride)
    controller = PlanController(planner, execution, position_dims=list(cfg.task.goal_obs_dims),
                                velocity_dims=list(cfg.task.velocity_obs_dims), stride=stride,
                                history=ExecutedHistory(planner.n_history, stride))
    return BuiltController(controller)


for _mode in (ExecutionMode.tracker, ExecutionMode.actions):
    register_planner(PlannerSpec(_mode.value, {"maze": _goal, "locomotion": _value},
                                 description="goal inpainting (mazes) or value-guided planning (locomotion)"))
register_planner(PlannerSpec(ExecutionMode.forcing.value, {"maze": _forcing}, batchable=False,
                             description="Diffusion Forcing MPC with clean history (mazes)"))
