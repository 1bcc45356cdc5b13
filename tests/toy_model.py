"""A denoiser defined outside the package, as a user would add one: ``plugins=[toy_model]
model.name=toy-mlp`` trains and evaluates it with no edit to the package."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffplan.config import ModelConfig
from diffplan.models import register_denoiser


class TokenMLP(nn.Module):
    """Each token's output from its own channels and noise level (no mixing across time)."""

    def __init__(self, transition_dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(transition_dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, transition_dim))

    def forward(self, x: Tensor, levels: Tensor) -> Tensor:
        return self.net(torch.cat([x, levels.unsqueeze(-1).to(x.dtype)], dim=-1))


def build_token_mlp(cfg: ModelConfig, transition_dim: int, horizon: int) -> nn.Module:
    return TokenMLP(transition_dim)


register_denoiser("toy-mlp", build_token_mlp, replace=True)
