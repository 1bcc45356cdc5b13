"""The target-policy interface and the two action distributions every policy reduces to."""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

_LOG_2PI = math.log(2.0 * math.pi)


@runtime_checkable
class TargetPolicy(Protocol):
    """A policy whose action log-likelihood can be differentiated.

    ``observations`` (..., obs_dim) and ``actions`` (..., act_dim) are raw environment units
    (not normalized); the result (...) is log pi(action | observation), summed over action
    dimensions, differentiable with respect to ``actions`` (and ``observations``).
    """

    obs_dim: int
    act_dim: int

    def log_prob(self, observations: Tensor, actions: Tensor) -> Tensor: ...


def gaussian_log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """log N(actions; mean, diag(exp(log_std))^2) summed over the last axis."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * _LOG_2PI).sum(-1)


def tanh_gaussian_log_prob(
    mean: Tensor, log_std: Tensor, actions: Tensor, *, low: Tensor | float = -1.0, high: Tensor | float = 1.0,
    eps: float = 1e-6,
) -> Tensor:
    """Log-density of ``actions`` under a = low + (tanh(u) + 1) (high - low) / 2, u ~ N(mean, std^2).

    The change of variables: log p(a) = log N(u) - sum log(1 - tanh(u)^2) - sum log((high - low) / 2),
    with u = atanh of the action rescaled to (-1, 1), clamped to (-1 + eps, 1 - eps) so that
    actions on the bound (and dataset actions clipped to it) stay finite.
    """
    half_range = (torch.as_tensor(high, dtype=actions.dtype, device=actions.device)
                  - torch.as_tensor(low, dtype=actions.dtype, device=actions.device)) / 2
    squashed = ((actions - low) / half_range - 1.0).clamp(-1.0 + eps, 1.0 - eps)
    u = torch.atanh(squashed)
    log_det = torch.log1p(-squashed.pow(2)) + torch.log(half_range).expand_as(squashed)
    return gaussian_log_prob(mean, log_std, u) - log_det.sum(-1)
