"""Gaussian target policies: a fixed standard deviation around a deterministic action.

:class:`GaussianPolicy` turns any deterministic policy (a module mapping raw observations to
raw actions: a TD3 actor, the BC network) into a density, ``N(a; mu(s), diag(std^2))``;
:class:`LinearGaussianPolicy` is the special case ``mu(s) = A s + b`` whose log-likelihood
gradient is known in closed form (tests, simple targets).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from diffplan.models.policy import gaussian_log_prob


def _log_std(std: float | Sequence[float] | Tensor, act_dim: int) -> Tensor:
    """(act_dim,) float32 log of ``std`` (a scalar or one value per action dimension)."""
    value = torch.as_tensor(std, dtype=torch.float64).flatten()
    if value.numel() == 1:
        value = value.expand(act_dim)
    if value.numel() != act_dim:
        raise ValueError(f"policy std must be a scalar or have act_dim={act_dim} entries, got {value.numel()}")
    if not (torch.isfinite(value).all() and (value > 0).all()):
        raise ValueError(f"policy std must be positive and finite, got {value.tolist()}")
    return value.log().float()


class GaussianPolicy(nn.Module):
    """pi(a | s) = N(a; mean(s), diag(std^2)) in raw environment units.

    Args:
        mean: module mapping raw observations (..., obs_dim) to raw actions (..., act_dim);
            used as given (freeze its parameters beforehand if they are not to be trained).
        obs_dim, act_dim: sizes of observations and actions.
        std: the standard deviation, a scalar or (act_dim,), in action units.
    """

    log_std: Tensor

    def __init__(self, mean: nn.Module, obs_dim: int, act_dim: int, std: float | Sequence[float] | Tensor) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.mean = mean
        self.register_buffer("log_std", _log_std(std, self.act_dim))

    def mean_action(self, observations: Tensor) -> Tensor:
        """The deterministic action (..., act_dim) the Gaussian is centred on."""
        return self.mean(observations)

    def log_prob(self, observations: Tensor, actions: Tensor) -> Tensor:
        """log pi(actions | observations) (...), summed over action dimensions."""
        return gaussian_log_prob(self.mean_action(observations), self.log_std, actions)


class LinearGaussianPolicy(GaussianPolicy):
    """pi(a | s) = N(a; A s + b, diag(std^2)) with fixed A (act_dim, obs_dim) and b (act_dim,).

    Its gradient with respect to the action is :meth:`grad_log_prob`, ``-(a - A s - b) / std^2``.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None, std: float | Sequence[float] | Tensor = 0.1) -> None:
        weight = torch.as_tensor(weight, dtype=torch.float32)
        if weight.dim() != 2:
            raise ValueError(f"weight must be (act_dim, obs_dim), got shape {tuple(weight.shape)}")
        act_dim, obs_dim = weight.shape
        linear = nn.Linear(obs_dim, act_dim)
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(torch.zeros(act_dim) if bias is None else torch.as_tensor(bias, dtype=torch.float32))
        linear.requires_grad_(False)
        super().__init__(linear, obs_dim, act_dim, std)

    def grad_log_prob(self, observations: Tensor, actions: Tensor) -> Tensor:
        """d log pi(actions | observations) / d actions (..., act_dim), in closed form."""
        return -(actions - self.mean_action(observations)) * torch.exp(-2 * self.log_std)
