"""diffplan: planning with trajectory diffusion models for offline reinforcement learning."""

__version__ = "0.1.0"
