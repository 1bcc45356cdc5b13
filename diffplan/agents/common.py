"""What TD3+BC and IQL share: MLPs, twin Q networks, Polyak averaging, and the agent base class.

An agent is an ``nn.Module`` whose state dict holds every network, every target network and
the normalization statistics (buffers ``obs_mean``, ``obs_std``, ``reward_scale``), so one
``state_dict()`` is the whole learned state; its optimizers travel separately
(:meth:`OfflineAgent.optimizers`). The networks see normalized observations; :meth:`act`,
:meth:`forward` and :meth:`log_prob` take raw ones.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from diffplan.models.mlp import mlp as shared_mlp

#: Added to the observation standard deviation (TD3+BC's and CORL's epsilon).
STD_EPS = 1e-3


def mlp(in_dim: int, out_dim: int, hidden_sizes: Sequence[int], output: nn.Module | None = None) -> nn.Sequential:
    """:func:`diffplan.models.mlp.mlp` with errors naming ``offline.hidden_sizes``."""
    return shared_mlp(in_dim, out_dim, hidden_sizes, output, setting="offline.hidden_sizes")


class TwinQ(nn.Module):
    """Two independent Q networks ``(obs, action) -> (B,)`` (clipped double Q).

    Args:
        obs_dim, act_dim: input sizes.
        hidden_sizes: hidden widths of each Q network.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        self.q1 = mlp(obs_dim + act_dim, 1, hidden_sizes)
        self.q2 = mlp(obs_dim + act_dim, 1, hidden_sizes)

    def forward(self, observations: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Both Q values, each (B,), of normalized observations (B, obs_dim) and actions (B, act_dim)."""
        x = torch.cat([observations, actions], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)

    def q1_value(self, observations: Tensor, actions: Tensor) -> Tensor:
        """The first Q network only (TD3's actor objective), (B,)."""
        return self.q1(torch.cat([observations, actions], dim=-1)).squeeze(-1)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (same weights) with gradients switched off: a target network."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging: target <- (1 - tau) * target + tau * source, parameter by parameter."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s, tau)


class Batch(NamedTuple):
    """One minibatch of transitions (normalized observations, scaled rewards), B rows.

    ``n_synthetic``: how many rows (the last ones) come from the synthetic set.
    """

    observations: Tensor  # (B, obs_dim)
    actions: Tensor  # (B, act_dim)
    rewards: Tensor  # (B,)
    next_observations: Tensor  # (B, obs_dim)
    dones: Tensor  # (B,) float, 1 on true terminals only
    n_synthetic: int = 0


class OfflineAgent(nn.Module):
    """Base of the offline RL agents: observation normalization, the action interface, the
    :class:`~diffplan.models.policy.TargetPolicy` interface.

    Subclasses define :meth:`mean_action` (normalized observations -> deterministic action),
    :meth:`log_prob_normalized`, :meth:`update` and :meth:`optimizers`.

    Args:
        obs_dim, act_dim: sizes.
        obs_mean, obs_std: (obs_dim,) statistics the networks' inputs are normalized with
            (default 0 and 1).
        max_action: actions lie in [-max_action, max_action].
        reward_scale: the factor rewards were multiplied by for training (recorded only).
    """

    #: ``offline.algo`` of the subclass.
    algo: str = ""
    obs_dim: int
    act_dim: int
    obs_mean: Tensor
    obs_std: Tensor
    reward_scale: Tensor
    critic: TwinQ

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        obs_mean: Tensor | None = None,
        obs_std: Tensor | None = None,
        max_action: float = 1.0,
        reward_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not max_action > 0:
            raise ValueError(f"offline.max_action must be > 0, got {max_action}")
        self.obs_dim, self.act_dim, self.max_action = int(obs_dim), int(act_dim), float(max_action)
        mean = torch.zeros(obs_dim) if obs_mean is None else torch.as_tensor(obs_mean, dtype=torch.float32)
        std = torch.ones(obs_dim) if obs_std is None else torch.as_tensor(obs_std, dtype=torch.float32)
        self.register_buffer("obs_mean", mean.clone().float().reshape(obs_dim))
        self.register_buffer("obs_std", std.clone().float().reshape(obs_dim))
        self.register_buffer("reward_scale", torch.tensor(float(reward_scale)))

    def normalize(self, observations: Tensor) -> Tensor:
        """Raw observations (..., obs_dim) -> the networks' inputs (differentiable)."""
        return (observations - self.obs_mean) / self.obs_std

    def mean_action(self, observations: Tensor) -> Tensor:
        """Deterministic action (..., act_dim) of normalized observations."""
        raise NotImplementedError

    def log_prob_normalized(self, observations: Tensor, actions: Tensor) -> Tensor:
        """log pi(actions | normalized observations), summed over action dimensions."""
        raise NotImplementedError

    def update(self, batch: Batch, step: int, generator: torch.Generator) -> dict[str, float]:
        """One training update on ``batch`` (``step``: updates done before it); returns the losses."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Name -> optimizer (their state dicts go into the checkpoint)."""
        raise NotImplementedError

    def forward(self, observations: Tensor) -> Tensor:
        """Raw observations (..., obs_dim) -> deterministic actions (..., act_dim) in the action box."""
        return self.mean_action(self.normalize(observations))

    def log_prob(self, observations: Tensor, actions: Tensor) -> Tensor:
        """log pi(action | observation) (...), raw units, differentiable w.r.t. both arguments."""
        return self.log_prob_normalized(self.normalize(observations), actions)

    def q_value(self, observations: Tensor, actions: Tensor) -> Tensor:
        """The clipped double-Q estimate ``min(Q1, Q2)`` (...) of raw observations (..., obs_dim) and
        actions (..., act_dim), differentiable w.r.t. both (every agent here has a :class:`TwinQ` ``critic``)."""
        q1, q2 = self.critic(self.normalize(observations), actions)
        return torch.minimum(q1, q2)

    @torch.no_grad()
    def act(self, observations: np.ndarray | Tensor) -> np.ndarray | Tensor:
        """Deterministic actions of raw observations (..., obs_dim), as the same type (numpy
        float64 arrays come back as float32 arrays)."""
        param = self.obs_mean
        if isinstance(observations, Tensor):
            return self(observations.to(device=param.device, dtype=torch.float32)).to(observations.device)
        obs = torch.as_tensor(np.asarray(observations), dtype=torch.float32, device=param.device)
        return self(obs).cpu().numpy()

    def set_actor_lr(self, lr: float) -> None:
        """Set the actor optimizer's learning rate (cosine schedule)."""
        for group in self.optimizers()["actor"].param_groups:
            group["lr"] = lr
