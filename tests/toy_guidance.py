"""A guidance kind defined outside the package, as a user would write one: the tests run it through
diffplan-evaluate, diffplan-sweep and diffplan-report with ``plugins=[toy_guidance]`` and no edit to
the package (docs/ARCHITECTURE.md shows the same example)."""

from __future__ import annotations

import torch
from torch import Tensor

from diffplan.guidance import BuildContext, GuidanceKindSpec, GuideContext, GuideOutput, register_guidance_kind


class CenterGuide:
    """Pull the planned positions towards the middle of the normalized box: the objective is minus
    the mean squared normalized position over the plan's tokens."""

    def __init__(self, channels: list[int]) -> None:
        self.channels = channels

    def objective(self, x: Tensor, levels: Tensor, context: GuideContext) -> Tensor:
        return -x[..., self.channels].pow(2).mean(dim=(1, 2))

    def gradient(self, x: Tensor, levels: Tensor, context: GuideContext) -> GuideOutput:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            value = self.objective(x, levels, context)
            (grad,) = torch.autograd.grad(value.sum(), x)
        return GuideOutput(grad, value.detach())


def build_center(ctx: BuildContext) -> tuple[CenterGuide, float]:
    layout = ctx.model.layout
    return CenterGuide([layout.obs.start + d for d in ctx.goal_dims]), ctx.cfg.scale


register_guidance_kind(
    GuidanceKindSpec("toy-center", build_center, suites=frozenset({"maze"}),
                     description="pull planned positions towards the maze's middle"),
    replace=True,
)
