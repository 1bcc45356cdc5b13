"""Weighted sums of guides (e.g. value and policy guidance together)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffplan.diffusion.guide import Guide, GuideContext, GuideOutput


class CompositeGuide:
    """The objective ``sum_i w_i f_i``: gradient and objective are the weighted sums of the guides'.

    Inpainting is unaffected: the sampler zeros the summed gradient on inpainted entries.

    A weight is a float, or a per-sample tensor (B,) for a batch of B samples (broadcast as
    (B, 1, 1) on the gradient); guidance sweeps use per-sample weights to evaluate value,
    policy and combined guidance in one batch (:class:`diffplan.guidance.per_env.EnvStrengths`).
    Where a per-sample weight is 0 the term contributes exactly nothing (its gradient and
    objective are not added, even if non-finite).

    Args:
        terms: (guide, weight) pairs, at least one.
    """

    def __init__(self, terms: Sequence[tuple[Guide, float | Tensor]]) -> None:
        if not terms:
            raise ValueError("CompositeGuide needs at least one (guide, weight) term")
        self.terms: list[tuple[Guide, float | Tensor]] = []
        for guide, weight in terms:
            if isinstance(weight, Tensor):
                if weight.dim() != 1 or not weight.is_floating_point():
                    raise ValueError(
                        f"a per-sample CompositeGuide weight must be a float tensor of shape (B,), got "
                        f"{weight.dtype} {tuple(weight.shape)}"
                    )
                self.terms.append((guide, weight))
            else:
                self.terms.append((guide, float(weight)))

    def with_weights(self, weights: Sequence[float | Tensor]) -> CompositeGuide:
        """The same guides with other weights (one per term, floats or per-sample tensors (B,))."""
        if len(weights) != len(self.terms):
            raise ValueError(f"CompositeGuide has {len(self.terms)} terms but {len(weights)} weights were given")
        return CompositeGuide([(guide, weight) for (guide, _), weight in zip(self.terms, weights, strict=True)])

    @staticmethod
    def _weighted(weight: float | Tensor, term: Tensor) -> Tensor:
        """``weight * term`` for a term (B, ...) with a float or per-sample (B,) weight; exactly 0
        where a per-sample weight is 0."""
        if not isinstance(weight, Tensor):
            return weight * term
        if weight.shape[0] != term.shape[0]:
            raise ValueError(
                f"a per-sample CompositeGuide weight has {weight.shape[0]} entries but the batch has "
                f"{term.shape[0]} samples"
            )
        w = weight.to(term.device, term.dtype).view(-1, *([1] * (term.dim() - 1)))
        return torch.where(w != 0, w * term, torch.zeros_like(term))

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
        """Weighted sums of the guides' gradients (B, H, D) and objectives (B,)."""
        grad, value = torch.zeros_like(x), x.new_zeros(x.shape[0])
        for guide, weight in self.terms:
            out = guide.gradient(x, levels, context)
            grad = grad + self._weighted(weight, out.gradient)
            value = value + self._weighted(weight, out.value)
        return GuideOutput(grad, value)

    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        """Weighted sum (B,) of the guides' objectives."""
        value = x.new_zeros(x.shape[0])
        for guide, weight in self.terms:
            value = value + self._weighted(weight, guide.objective(x, levels, context))
        return value
