"""Baselines that the diffusion planners are compared with."""

from diffplan.baselines.bc import (
    BCModel,
    BCNetwork,
    BCPolicy,
    BCSummary,
    BCTrainer,
    load_bc_model,
)

__all__ = ["BCModel", "BCNetwork", "BCPolicy", "BCSummary", "BCTrainer", "load_bc_model"]
