"""Guidance kinds by name (``guidance.kind``): a registry that planners, generation, sweeps and
reports read, so a new kind is one module that calls :func:`register_guidance_kind` (plus, if
wanted, a ``conf/guidance/<kind>.yaml``) and no edit to the package.

A kind says how to build its guide from the ``guidance`` settings, whether it needs the planner's
value function, which task suites it applies to, which
setting a sweep strength sets, and which kinds it can share a batched sweep pass with. The
commands import the modules listed in the ``plugins`` setting before they run, so a kind
defined outside the package is usable from the command line
(``diffplan-evaluate plugins=[my_guides] guidance.kind=my-kind``). A guide reads each plan's goals
from the :class:`~diffplan.diffusion.guide.GuideContext` its methods receive.

Built in: ``value`` (Diffuser), ``policy`` (policy-guided diffusion), ``value_policy`` (both),
``goal`` (goal reaching on the mazes); ``none`` is unguided sampling and has no entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from diffplan.diffusion.guide import Guide
from diffplan.utils import Registry

if TYPE_CHECKING:
    from diffplan.config import GuidanceConfig
    from diffplan.models.policy import TargetPolicy
    from diffplan.training.checkpoint import TrainedModel

#: The unguided kind: no guide (``guidance.kind=none``).
UNGUIDED = "none"
#: The task suites (``maze``: goal-reaching PointMaze; ``locomotion``: ``<robot>-<level>``).
SUITES = frozenset({"maze", "locomotion"})


@dataclass
class BuildContext:
    """What a kind's builder may use.

    Attributes:
        cfg: the ``guidance`` settings.
        model: the trained diffusion model (layout, normalizer, denoiser, schedule).
        device: where the guide runs.
        value_guide: the value function's guide when the kind declares ``needs_value`` (the
            planner builds it from ``guidance.value_checkpoint``).
        goal_guide: a goal guide the planner made (``goal`` uses it rather than its own).
        goal_dims: the observation entries of the goal position (``task.goal_obs_dims``) on
            goal-reaching tasks, else empty.
        policy: a target policy given in Python (Policy-Guided Diffusion's training loop), or
            None to load ``guidance.policy``.
    """

    cfg: GuidanceConfig
    model: TrainedModel
    device: torch.device | str = "cpu"
    value_guide: Guide | None = None
    goal_guide: Guide | None = None
    goal_dims: list[int] = field(default_factory=list)
    policy: TargetPolicy | None = None


#: A builder: the context -> (the guide, the step size of the :class:`~diffplan.diffusion.guide.Guidance`).
GuideBuilder = Callable[[BuildContext], tuple[Guide, float]]


@dataclass(frozen=True)
class GuidanceKindSpec:
    """A guidance kind.

    Attributes:
        name: the ``guidance.kind`` value.
        build: makes the guide and its step size from a :class:`BuildContext`.
        strength_key: the setting a sweep strength of this kind sets (``guidance.scale``, or
            ``guidance.policy_scale`` for policy guidance).
        needs_value: the guide uses the value function of ``guidance.value_checkpoint``.
        needs_policy: the guide uses the target policy of ``guidance.policy`` (checked before
            anything runs).
        suites: the task suites it applies to.
        batch_family: kinds of one family share a batched sweep pass (per-environment
            strengths); None evaluates its cells one at a time (``sweep.batched`` still works).
        description: one line for help and errors.
    """

    name: str
    build: GuideBuilder
    strength_key: str = "guidance.scale"
    needs_value: bool = False
    needs_policy: bool = False
    suites: frozenset[str] = SUITES
    batch_family: str | None = None
    description: str = ""


_KINDS: Registry[GuidanceKindSpec] = Registry("guidance kind", "guidance.kind",
                                              "diffplan.guidance.register_guidance_kind")


def register_guidance_kind(spec: GuidanceKindSpec, *, replace: bool = False) -> GuidanceKindSpec:
    """Make ``guidance.kind=<spec.name>`` build ``spec``'s guide everywhere (planners, generation,
    sweeps, reports); returns ``spec``.

    Raises:
        ValueError: the name is ``none``, empty, or registered already and not ``replace``; a suite
            other than those of :data:`SUITES`.
    """
    if not spec.name or spec.name == UNGUIDED or any(c in spec.name for c in " =,+"):
        raise ValueError(f"a guidance kind needs a name other than {UNGUIDED!r}, free of ' =,+'; got {spec.name!r}")
    if not spec.suites or not spec.suites <= SUITES:
        raise ValueError(f"guidance kind {spec.name!r}: suites must be a non-empty subset of {sorted(SUITES)}")
    return _KINDS.add(spec.name, spec, replace=replace)


def guidance_kinds() -> list[str]:
    """Every ``guidance.kind`` value: ``none`` and the registered kinds."""
    return [UNGUIDED, *_KINDS.names()]


def guidance_kind(name: str, *, key: str = "guidance.kind") -> GuidanceKindSpec | None:
    """The spec of kind ``name``, or None for ``none``.

    Raises:
        ValueError: an unknown kind, naming ``key``, the known kinds and how to add one.
    """
    if name == UNGUIDED:
        return None
    if name not in _KINDS:
        raise ValueError(
            f"{key}={name} is not a guidance kind; use one of {', '.join(guidance_kinds())}, or register one "
            "(diffplan.guidance.register_guidance_kind) in a module listed in plugins=[...]"
        )
    return _KINDS.get(name)


def find_guidance_kind(name: str) -> GuidanceKindSpec | None:
    """The spec of kind ``name``, or None when it is ``none`` or not registered in this process."""
    return _KINDS.get(name) if name in _KINDS else None


def check_kind_for_suite(name: str, suite: str, where: str) -> GuidanceKindSpec | None:
    """The spec of ``name`` after checking it applies to ``suite``; ``where`` names the planner.

    Raises:
        ValueError: an unknown kind, or one that does not apply to the suite (naming those that do).
    """
    spec = guidance_kind(name)
    if spec is not None and suite not in spec.suites:
        fitting = [UNGUIDED, *(k for k, s in _KINDS.items() if suite in s.suites)]
        raise ValueError(f"{where} takes guidance.kind in {fitting}, got guidance.kind={name} "
                         f"(it is for {' and '.join(sorted(spec.suites))} tasks)")
    return spec


# ----------------------------------------------------------------------------- built-in kinds


def _value(ctx: BuildContext) -> tuple[Guide, float]:
    if ctx.value_guide is None:
        raise ValueError(
            f"guidance.kind={ctx.cfg.kind} needs a value guide (a value function trained with diffplan-train-value, "
            "guidance.value_checkpoint); pass value_guide"
        )
    return ctx.value_guide, ctx.cfg.scale


def _policy(ctx: BuildContext) -> tuple[Guide, float]:
    from diffplan.guidance.build import policy_guide

    return policy_guide(ctx.cfg, ctx.model, ctx.device, ctx.policy), ctx.cfg.policy_scale


def _value_policy(ctx: BuildContext) -> tuple[Guide, float]:
    from diffplan.guidance.build import policy_guide
    from diffplan.guidance.composite import CompositeGuide

    value, _ = _value(ctx)
    policy = policy_guide(ctx.cfg, ctx.model, ctx.device, ctx.policy)
    return CompositeGuide([(value, ctx.cfg.scale), (policy, ctx.cfg.policy_scale)]), 1.0


def _goal(ctx: BuildContext) -> tuple[Guide, float]:
    from diffplan.guidance.goal import GoalGuide

    if ctx.goal_guide is not None:
        return ctx.goal_guide, ctx.cfg.scale
    if not ctx.goal_dims:
        raise ValueError("guidance.kind=goal needs the goal position's entries (task.goal_obs_dims); "
                         "it is for goal-reaching tasks (pointmaze-*)")
    return GoalGuide(ctx.model.layout, ctx.model.normalizer, ctx.goal_dims), ctx.cfg.scale


register_guidance_kind(GuidanceKindSpec(
    "value", _value, needs_value=True, batch_family="composite",
    description="Diffuser: the gradient of a learned value function (goal-conditioned on the mazes)"))
register_guidance_kind(GuidanceKindSpec(
    "policy", _policy, strength_key="guidance.policy_scale", needs_policy=True, suites=frozenset({"locomotion"}),
    batch_family="composite",
    description="policy-guided diffusion: the target policy's action log-likelihood (guidance.policy)"))
register_guidance_kind(GuidanceKindSpec(
    "value_policy", _value_policy, needs_value=True, needs_policy=True, suites=frozenset({"locomotion"}),
    batch_family="composite",
    description="value gradient weighted by guidance.scale plus policy gradient by guidance.policy_scale"))
register_guidance_kind(GuidanceKindSpec(
    "goal", _goal, suites=frozenset({"maze"}), batch_family="goal",
    description="goal reaching: minus the mean distance of the planned positions to the goal"))


def import_plugins(modules: list[str] | tuple[str, ...], key: str = "plugins") -> None:
    """Import ``modules`` (e.g. ``["my_guides"]``, found on ``PYTHONPATH`` or in the current folder),
    which register guidance kinds, guidance rules or target-policy loaders.

    Raises:
        ValueError: a module that cannot be imported, naming it, ``key`` and the fix.
    """
    import importlib
    import sys

    if modules and "" not in sys.path and "." not in sys.path:
        sys.path.append("")  # modules in the current folder, as `python -c` finds them
    for index, name in enumerate(modules):
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ValueError(
                f"{key}[{index}]={name}: cannot import it ({error}); put the module on PYTHONPATH or install it"
            ) from None
