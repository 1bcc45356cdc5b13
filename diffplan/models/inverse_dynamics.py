"""Inverse dynamics: the action that leads from one state to the next (Decision Diffuser).

Decision Diffuser diffuses states only and reads the action to execute off an inverse
dynamics model ``a_t = f(s_t, s_t+1)`` applied to the current state and the next planned
state. diffplan keeps its states-and-actions layout (the diffused actions stay available)
and trains this head next to the denoiser on the same windows: clean normalized consecutive
states in, normalized actions out (mean squared error). ``planner.action_source`` picks
which actions a plan executes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class InverseDynamics(nn.Module):
    """MLP ``(s_t, s_t+1) -> a_t`` on normalized states and actions.

    Args:
        obs_dim: state size.
        act_dim: action size.
        hidden_sizes: widths of the hidden layers (ReLU between layers).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f"inverse dynamics needs obs_dim >= 1 and act_dim >= 1, got {obs_dim} and {act_dim}")
        if any(width < 1 for width in hidden_sizes):
            raise ValueError(f"model.inverse_dynamics_hidden widths must be >= 1, got {list(hidden_sizes)}")
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        layers: list[nn.Module] = []
        width = 2 * obs_dim
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, act_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, state: Tensor, next_state: Tensor) -> Tensor:
        """state, next_state (..., obs_dim) -> action (..., act_dim), all normalized."""
        return self.net(torch.cat([state, next_state], dim=-1))


def inverse_dynamics_loss(
    model: InverseDynamics, states: Tensor, actions: Tensor, valid: Tensor | None = None
) -> Tensor:
    """Mean squared error of the actions predicted between consecutive tokens.

    Args:
        states: (B, H, obs_dim) clean normalized states.
        actions: (B, H, act_dim) clean normalized actions; token t's action leads to token t + 1.
        valid: (B, H - 1) bool, pairs to train on (both tokens real data); None: all.
    """
    predicted = model(states[:, :-1], states[:, 1:])  # (B, H - 1, act_dim)
    error = (predicted - actions[:, :-1]).pow(2).mean(dim=-1)  # (B, H - 1)
    if valid is None:
        return error.mean()
    keep = valid.to(error.dtype)
    return (error * keep).sum() / keep.sum().clamp(min=1.0)


def plan_actions(model: InverseDynamics, states: Tensor) -> Tensor:
    """Actions (B, H, act_dim) for planned normalized states (B, H, obs_dim): token t gets
    ``f(s_t, s_t+1)``; the last token, which has no successor, repeats the one before."""
    actions = model(states[:, :-1], states[:, 1:])
    if actions.shape[1] == 0:
        return torch.zeros(*states.shape[:2], model.act_dim, device=states.device, dtype=states.dtype)
    return torch.cat([actions, actions[:, -1:]], dim=1)
