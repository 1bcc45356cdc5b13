"""Baselines that the diffusion planners are compared with."""

from diffplan.baselines.bc import (
    AgentController,
    BCModel,
    BCNetwork,
    BCSummary,
    BCTrainer,
    load_bc_model,
)

__all__ = ["BCModel", "BCNetwork", "AgentController", "BCSummary", "BCTrainer", "load_bc_model"]
