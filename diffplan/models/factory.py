"""Build a denoiser (and the optional inverse-dynamics head) from its config."""

from __future__ import annotations

from torch import nn

from diffplan.config import ModelConfig
from diffplan.enums import ModelKind
from diffplan.models.inverse_dynamics import InverseDynamics
from diffplan.models.transformer import TrajectoryTransformer
from diffplan.models.unet import TemporalUnet


def build_denoiser(cfg: ModelConfig, *, transition_dim: int, horizon: int) -> nn.Module:
    """The network named by ``cfg.name`` for tokens of ``transition_dim`` channels."""
    if ModelKind(cfg.name) is ModelKind.unet:
        return TemporalUnet(
            transition_dim=transition_dim,
            horizon=horizon,
            dim=cfg.unet.dim,
            dim_mults=tuple(cfg.unet.dim_mults),
            kernel_size=cfg.unet.kernel_size,
            return_condition=cfg.return_condition,
        )
    if ModelKind(cfg.name) is ModelKind.transformer:
        return TrajectoryTransformer(
            transition_dim=transition_dim,
            horizon=horizon,
            d_model=cfg.transformer.d_model,
            n_layers=cfg.transformer.n_layers,
            n_heads=cfg.transformer.n_heads,
            causal=cfg.transformer.causal,
            frame_stack=cfg.transformer.frame_stack,
            return_condition=cfg.return_condition,
        )
    raise ValueError(f"unknown model {cfg.name!r}; allowed: {[k.value for k in ModelKind]}")


def build_inverse_dynamics(cfg: ModelConfig, *, obs_dim: int, act_dim: int) -> InverseDynamics | None:
    """The inverse-dynamics head when ``cfg.inverse_dynamics`` is set, else None."""
    if not cfg.inverse_dynamics:
        return None
    if act_dim < 1:
        raise ValueError("model.inverse_dynamics needs actions in the dataset (act_dim >= 1)")
    return InverseDynamics(obs_dim, act_dim, tuple(cfg.inverse_dynamics_hidden))
