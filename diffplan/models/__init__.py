"""The networks: denoisers (registered by ``model.name``), value networks, inverse dynamics, target-policy
distributions. Add a denoiser with :func:`register_denoiser` in a plugin module."""

from diffplan.models.factory import build_denoiser, denoiser_names, register_denoiser

__all__ = ["build_denoiser", "denoiser_names", "register_denoiser"]
