"""Build a denoiser from its config."""

from __future__ import annotations

from torch import nn

from diffplan.config import ModelConfig, ModelKind
from diffplan.models.unet import TemporalUnet


def build_denoiser(cfg: ModelConfig, *, transition_dim: int, horizon: int) -> nn.Module:
    """The network named by ``cfg.name`` for tokens of ``transition_dim`` channels."""
    if ModelKind(cfg.name) is ModelKind.unet:
        return TemporalUnet(
            transition_dim=transition_dim,
            horizon=horizon,
            dim=cfg.dim,
            dim_mults=tuple(cfg.dim_mults),
            kernel_size=cfg.kernel_size,
        )
    raise ValueError(f"unknown model {cfg.name!r}; allowed: {[k.value for k in ModelKind]}")
