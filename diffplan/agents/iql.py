"""IQL (Kostrikov et al. 2021, "Offline Reinforcement Learning with Implicit Q-Learning"), as
CORL implements it for locomotion.

Each update: expectile regression of V(s) on the target critics' min Q(s, a) (expectile 0.7),
twin Q regression on ``r + discount * (1 - done) * V(s')``, Polyak update of the target critics,
then advantage-weighted regression of the policy with weights ``exp(temperature * (Q - V))``
clipped at ``adv_max``.

The policy is CORL's ``GaussianPolicy``: mean ``max_action * tanh(net(s))``, a
state-independent ``log_std`` parameter (clamped to [-20, 2]), no tanh squashing of samples; the
likelihood of a dataset action is a plain diagonal Gaussian. CORL scales only the *executed*
mean by ``max_action``; here the mean is scaled in training and likelihood alike, which is the
same for the locomotion tasks' ``max_action = 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffplan.agents.common import Batch, OfflineAgent, TwinQ, frozen_copy, mlp, soft_update
from diffplan.models.policy import gaussian_log_prob

#: CORL's clamp of the policy's log standard deviation.
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def expectile_loss(diff: Tensor, expectile: float) -> Tensor:
    """Asymmetric squared loss ``mean(|expectile - 1[diff < 0]| * diff^2)`` (diff = target - prediction)."""
    weight = torch.abs(expectile - (diff < 0).to(diff.dtype))
    return (weight * diff.pow(2)).mean()


def iql_value_loss(target_q: Tensor, v: Tensor, expectile: float) -> Tensor:
    """Expectile regression of V(s) (B,) on the (detached) target critics' min Q(s, a) (B,)."""
    return expectile_loss(target_q.detach() - v, expectile)


def iql_q_target(rewards: Tensor, dones: Tensor, next_v: Tensor, discount: float) -> Tensor:
    """``r + (1 - done) * discount * V(s')`` (all (B,))."""
    return rewards + (1.0 - dones) * discount * next_v


def iql_q_loss(q1: Tensor, q2: Tensor, target: Tensor) -> Tensor:
    """Mean of the two critics' mean squared errors to the (detached) target."""
    target = target.detach()
    return (F.mse_loss(q1, target) + F.mse_loss(q2, target)) / 2


def iql_actor_loss(log_prob: Tensor, advantage: Tensor, temperature: float, adv_max: float = 100.0) -> Tensor:
    """Advantage-weighted regression: ``mean(-min(exp(temperature * A), adv_max) * log pi(a|s))``.

    Args:
        log_prob: (B,) log-likelihood of the dataset actions under the policy.
        advantage: (B,) Q(s, a) - V(s) (no gradient flows through it).
        temperature: inverse temperature beta (3.0 for locomotion).
        adv_max: clip of the exponentiated advantage (100).
    """
    weights = torch.exp(temperature * advantage.detach()).clamp(max=adv_max)
    return -(weights * log_prob).mean()


class GaussianActor(nn.Module):
    """CORL's IQL policy: ``N(max_action * tanh(net(s)), exp(log_std)^2)``, log_std state-independent.

    Args:
        obs_dim, act_dim: sizes.
        hidden_sizes: hidden widths.
        max_action: the action bound.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: Sequence[int], max_action: float) -> None:
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden_sizes, nn.Tanh())
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.max_action = float(max_action)

    def forward(self, observations: Tensor) -> tuple[Tensor, Tensor]:
        """Mean (..., act_dim) and clamped log std (act_dim,) for normalized observations."""
        return self.max_action * self.net(observations), self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)


class ValueNet(nn.Module):
    """State value V(s) (B,) of normalized observations."""

    def __init__(self, obs_dim: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden_sizes)

    def forward(self, observations: Tensor) -> Tensor:
        """V(s), shape (B,)."""
        return self.net(observations).squeeze(-1)


class IQLAgent(OfflineAgent):
    """IQL: value network, twin critics with a target copy, Gaussian policy, three Adam optimizers.

    Args:
        obs_dim, act_dim, obs_mean, obs_std, max_action, reward_scale: see :class:`OfflineAgent`.
        hidden_sizes: hidden widths of every network (256, 256).
        lr: Adam learning rate of all three networks (3e-4).
        discount, tau: TD discount and Polyak rate of the target critics.
        expectile, temperature, adv_max: 0.7, 3.0 and 100 (CORL's locomotion settings).
    """

    algo = "iql"

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        hidden_sizes: Sequence[int] = (256, 256),
        obs_mean: Tensor | None = None,
        obs_std: Tensor | None = None,
        max_action: float = 1.0,
        reward_scale: float = 1.0,
        lr: float = 3e-4,
        discount: float = 0.99,
        tau: float = 0.005,
        expectile: float = 0.7,
        temperature: float = 3.0,
        adv_max: float = 100.0,
    ) -> None:
        super().__init__(obs_dim, act_dim, obs_mean=obs_mean, obs_std=obs_std, max_action=max_action,
                         reward_scale=reward_scale)
        if not 0.0 < expectile < 1.0:
            raise ValueError(f"offline.expectile must lie in (0, 1), got {expectile}")
        self.discount, self.tau = float(discount), float(tau)
        self.expectile, self.temperature, self.adv_max = float(expectile), float(temperature), float(adv_max)
        self.actor = GaussianActor(obs_dim, act_dim, hidden_sizes, max_action)
        self.value = ValueNet(obs_dim, hidden_sizes)
        self.critic = TwinQ(obs_dim, act_dim, hidden_sizes)
        self.critic_target = frozen_copy(self.critic)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.value_optimizer = torch.optim.Adam(self.value.parameters(), lr=lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=lr)

    def mean_action(self, observations: Tensor) -> Tensor:
        """The policy's mean ``max_action * tanh(net(s))`` (CORL's deterministic action)."""
        return self.actor(observations)[0]

    def log_prob_normalized(self, observations: Tensor, actions: Tensor) -> Tensor:
        """log N(actions; mean(s), exp(log_std)^2), summed over action dimensions."""
        mean, log_std = self.actor(observations)
        return gaussian_log_prob(mean, log_std.expand_as(mean), actions)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """``actor``, ``value`` and ``critic`` Adam optimizers."""
        return {"actor": self.actor_optimizer, "value": self.value_optimizer, "critic": self.critic_optimizer}

    def update(self, batch: Batch, step: int, generator: torch.Generator) -> dict[str, float]:
        """Value, critic (and target critic) and policy steps, in CORL's order; returns their losses.

        ``step`` and ``generator`` are unused (IQL's update draws no noise).
        """
        obs, actions, rewards, next_obs, dones = batch[:5]
        with torch.no_grad():
            next_v = self.value(next_obs)
            target_q = torch.min(*self.critic_target(obs, actions))
        v = self.value(obs)
        advantage = (target_q - v).detach()
        value_loss = iql_value_loss(target_q, v, self.expectile)
        self.value_optimizer.zero_grad(set_to_none=True)
        value_loss.backward()
        self.value_optimizer.step()

        q1, q2 = self.critic(obs, actions)
        critic_loss = iql_q_loss(q1, q2, iql_q_target(rewards, dones, next_v, self.discount))
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        soft_update(self.critic_target, self.critic, self.tau)

        actor_loss = iql_actor_loss(self.log_prob_normalized(obs, actions), advantage, self.temperature,
                                    self.adv_max)
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()
        return {"critic": float(critic_loss.detach()), "value": float(value_loss.detach()),
                "actor": float(actor_loss.detach())}
