"""Weighted sums of guides (e.g. value and policy guidance together)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffplan.guidance.base import Guide, GuideOutput


class CompositeGuide:
    """The objective ``sum_i w_i f_i``: gradient and objective are the weighted sums of the guides'.

    Inpainting is unaffected: the sampler zeros the summed gradient on inpainted entries.

    Args:
        terms: (guide, weight) pairs, at least one.
    """

    def __init__(self, terms: Sequence[tuple[Guide, float]]) -> None:
        if not terms:
            raise ValueError("CompositeGuide needs at least one (guide, weight) term")
        self.terms = [(guide, float(weight)) for guide, weight in terms]

    def gradient(self, x: Tensor, levels: Tensor) -> GuideOutput:
        """Weighted sums of the guides' gradients (B, H, D) and objectives (B,)."""
        grad, value = torch.zeros_like(x), x.new_zeros(x.shape[0])
        for guide, weight in self.terms:
            out = guide.gradient(x, levels)
            grad = grad + weight * out.gradient
            value = value + weight * out.value
        return GuideOutput(grad, value)

    def objective(self, x: Tensor, levels: Tensor) -> Tensor:
        """Weighted sum (B,) of the guides' objectives."""
        value = x.new_zeros(x.shape[0])
        for guide, weight in self.terms:
            value = value + weight * guide.objective(x, levels)
        return value
