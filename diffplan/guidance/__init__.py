"""Guides that steer denoising: a protocol, the sampler-facing settings and schedules, the
value guide, the policy guide (PGD), the critic guide (ranking by an offline agent's Q),
weighted sums of guides, the registry of guidance kinds (:mod:`diffplan.guidance.kinds`) and
:func:`build_guidance`.

Kept free of :mod:`diffplan.config` imports at module level (the config imports
:class:`GuideTarget` and :class:`GuidanceSchedule`).
"""

from diffplan.diffusion.guide import (
    PGD_SINE_WEIGHT,
    ConstantGuide,
    Guidance,
    Guide,
    GuideContext,
    GuideOutput,
    parse_schedule,
    schedule_coefficient,
)
from diffplan.enums import GuidanceSchedule, GuideTarget
from diffplan.guidance.build import build_guidance, policy_guide
from diffplan.guidance.composite import CompositeGuide
from diffplan.guidance.critic import CriticGuide, load_critic_guide
from diffplan.guidance.goal import GoalGuide
from diffplan.guidance.kinds import (
    BuildContext,
    GuidanceKindSpec,
    check_kind_for_suite,
    guidance_kind,
    guidance_kinds,
    import_plugins,
    register_guidance_kind,
)
from diffplan.guidance.per_env import EnvStrengths
from diffplan.guidance.policy import PolicyGuide, rms_normalize
from diffplan.guidance.value import GoalValueGuide, ValueGuide

__all__ = [
    "PGD_SINE_WEIGHT",
    "CompositeGuide",
    "CriticGuide",
    "ConstantGuide",
    "EnvStrengths",
    "Guidance",
    "GuidanceSchedule",
    "Guide",
    "GuideOutput",
    "GuideTarget",
    "GoalGuide",
    "GuidanceKindSpec",
    "BuildContext",
    "GuideContext",
    "GoalValueGuide",
    "PolicyGuide",
    "ValueGuide",
    "build_guidance",
    "check_kind_for_suite",
    "guidance_kind",
    "guidance_kinds",
    "import_plugins",
    "load_critic_guide",
    "register_guidance_kind",
    "parse_schedule",
    "policy_guide",
    "rms_normalize",
    "schedule_coefficient",
]
