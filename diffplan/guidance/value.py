"""Value guidance: the gradient of a learned value function (Janner et al. 2022, sec. 3.3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffplan.guidance.base import GuideOutput


class ValueGuide:
    """Guide towards trajectories of high predicted value.

    Args:
        value_net: maps (x (B, H, D), levels (B, H) in [0, 1]) to values (B,), e.g. a
            :class:`diffplan.models.value.ValueNet`. Only x receives gradients; the network's
            parameters are left untouched.
    """

    def __init__(self, value_net: nn.Module) -> None:
        self.value_net = value_net

    @torch.no_grad()
    def objective(self, x: Tensor, levels: Tensor) -> Tensor:
        """Predicted values (B,)."""
        return self.value_net(x, levels)

    def gradient(self, x: Tensor, levels: Tensor) -> GuideOutput:
        """d value / d x (B, H, D) and the values (B,); works inside ``torch.no_grad()``."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            value = self.value_net(x, levels)
            (grad,) = torch.autograd.grad(value.sum(), x)
        return GuideOutput(grad.detach(), value.detach())
