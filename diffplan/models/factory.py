"""Build a denoiser (and the optional inverse-dynamics head) from its config.

Denoisers are registered by name (``model.name``): ``unet`` (Diffuser's temporal U-Net, settings in
``model.unet``) and ``transformer`` (Diffusion Forcing's trajectory transformer, ``model.transformer``)
are built in; a plugin module (``plugins=[my_models]``) adds its own with :func:`register_denoiser`.
A denoiser maps ``(x (B, H, D), levels (B, H) in [0, 1])`` (and, when ``model.return_condition``,
``condition``/``drop`` keywords) to an output of x's shape.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from diffplan.config import ModelConfig
from diffplan.enums import ModelKind
from diffplan.models.inverse_dynamics import InverseDynamics
from diffplan.models.transformer import TrajectoryTransformer
from diffplan.models.unet import TemporalUnet
from diffplan.utils import Registry

#: A builder: (the ``model`` settings, channels per token, tokens per window) -> the denoiser.
DenoiserBuilder = Callable[[ModelConfig, int, int], nn.Module]

DENOISERS: Registry[DenoiserBuilder] = Registry("denoiser", "model.name", "diffplan.models.register_denoiser")


def register_denoiser(name: str, builder: DenoiserBuilder, *, replace: bool = False) -> None:
    """Make ``model.name=<name>`` build its denoiser with ``builder``.

    Raises:
        ValueError: ``name`` is registered already and not ``replace``.
    """
    DENOISERS.add(name, builder, replace=replace)


def denoiser_names() -> list[str]:
    """The registered ``model.name`` values."""
    return DENOISERS.names()


def build_denoiser(cfg: ModelConfig, *, transition_dim: int, horizon: int) -> nn.Module:
    """The network named by ``cfg.name`` for tokens of ``transition_dim`` channels.

    Raises:
        ValueError: no denoiser is registered under ``cfg.name`` (the message lists those that are).
    """
    return DENOISERS.get(str(cfg.name))(cfg, transition_dim, horizon)


def _unet(cfg: ModelConfig, transition_dim: int, horizon: int) -> nn.Module:
    return TemporalUnet(
        transition_dim=transition_dim,
        horizon=horizon,
        dim=cfg.unet.dim,
        dim_mults=tuple(cfg.unet.dim_mults),
        kernel_size=cfg.unet.kernel_size,
        return_condition=cfg.return_condition,
    )


def _transformer(cfg: ModelConfig, transition_dim: int, horizon: int) -> nn.Module:
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


register_denoiser(ModelKind.unet.value, _unet)
register_denoiser(ModelKind.transformer.value, _transformer)


def build_inverse_dynamics(cfg: ModelConfig, *, obs_dim: int, act_dim: int) -> InverseDynamics | None:
    """The inverse-dynamics head when ``cfg.inverse_dynamics`` is set, else None."""
    if not cfg.inverse_dynamics:
        return None
    if act_dim < 1:
        raise ValueError("model.inverse_dynamics needs actions in the dataset (act_dim >= 1)")
    return InverseDynamics(obs_dim, act_dim, tuple(cfg.inverse_dynamics_hidden))
