"""Guides that steer denoising: a protocol, the sampler-facing settings, the value guide.

Kept free of :mod:`diffplan.config` imports (the config imports :class:`GuideTarget`).
"""

from diffplan.guidance.base import ConstantGuide, Guidance, Guide, GuideOutput, GuideTarget
from diffplan.guidance.value import ValueGuide

__all__ = ["ConstantGuide", "Guidance", "Guide", "GuideOutput", "GuideTarget", "ValueGuide"]
