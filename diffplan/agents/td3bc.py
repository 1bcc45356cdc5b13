"""TD3+BC (Fujimoto & Gu 2021, "A Minimalist Approach to Offline Reinforcement Learning").

TD3 (twin critics, target policy smoothing, delayed actor and target updates) whose actor
loss adds a behaviour-cloning term: ``-lambda * Q(s, pi(s)) + (pi(s) - a)^2`` with
``lambda = alpha / mean|Q(s, pi(s))|``. As a :class:`~diffplan.models.policy.TargetPolicy`
the deterministic actor is a Gaussian with a fixed standard deviation (``std``) around its action.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffplan.agents.common import Batch, OfflineAgent, TwinQ, frozen_copy, mlp, soft_update
from diffplan.models.policy import gaussian_log_prob


def td3bc_critic_target(rewards: Tensor, dones: Tensor, next_q1: Tensor, next_q2: Tensor, discount: float) -> Tensor:
    """Clipped double-Q target ``r + (1 - done) * discount * min(Q1', Q2')`` (all (B,))."""
    return rewards + (1.0 - dones) * discount * torch.min(next_q1, next_q2)


def td3bc_critic_loss(q1: Tensor, q2: Tensor, target: Tensor) -> Tensor:
    """Sum of both critics' mean squared errors to the (detached) target."""
    target = target.detach()
    return F.mse_loss(q1, target) + F.mse_loss(q2, target)


def td3bc_actor_loss(q: Tensor, policy_actions: Tensor, actions: Tensor, alpha: float) -> Tensor:
    """``-lambda * mean Q(s, pi(s)) + mean (pi(s) - a)^2`` with ``lambda = alpha / mean|Q|`` (no gradient
    through lambda).

    Args:
        q: (B,) first critic's value of the actor's actions.
        policy_actions: (B, act_dim) the actor's actions pi(s).
        actions: (B, act_dim) the dataset's actions.
        alpha: the BC trade-off (2.5 in the paper).
    """
    lmbda = alpha / q.abs().mean().detach()
    return -lmbda * q.mean() + F.mse_loss(policy_actions, actions)


def smoothed_target_actions(
    target_actions: Tensor, noise: Tensor, *, policy_noise: float, noise_clip: float, max_action: float
) -> Tensor:
    """Target policy smoothing: ``clip(pi'(s') + clip(noise * policy_noise, +-noise_clip), +-max_action)``.

    ``noise`` is standard normal; ``policy_noise`` and ``noise_clip`` are in units of ``max_action``
    (as in the paper's code).
    """
    eps = (noise * policy_noise * max_action).clamp(-noise_clip * max_action, noise_clip * max_action)
    return (target_actions + eps).clamp(-max_action, max_action)


class TD3BCAgent(OfflineAgent):
    """TD3+BC: deterministic tanh actor and twin critics, each with a target copy, and Adam.

    Args:
        obs_dim, act_dim, obs_mean, obs_std, max_action, reward_scale: see :class:`OfflineAgent`.
        hidden_sizes: hidden widths of actor and critics (256, 256 in the paper).
        lr: Adam learning rate of actor and critics.
        discount, tau: TD discount and Polyak rate.
        alpha, policy_noise, noise_clip, policy_freq: the paper's 2.5, 0.2, 0.5, 2.
        std: standard deviation of the Gaussian of :meth:`log_prob` (action units).
    """

    algo = "td3bc"

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
        alpha: float = 2.5,
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        policy_freq: int = 2,
        std: float = 0.1,
    ) -> None:
        super().__init__(obs_dim, act_dim, obs_mean=obs_mean, obs_std=obs_std, max_action=max_action,
                         reward_scale=reward_scale)
        if policy_freq < 1:
            raise ValueError(f"offline.policy_freq must be >= 1, got {policy_freq}")
        if not std > 0:
            raise ValueError(f"offline.std must be > 0, got {std}")
        self.discount, self.tau, self.alpha = float(discount), float(tau), float(alpha)
        self.policy_noise, self.noise_clip, self.policy_freq = float(policy_noise), float(noise_clip), int(policy_freq)
        self.std = float(std)
        self.actor = mlp(obs_dim, act_dim, hidden_sizes, nn.Tanh())
        self.critic = TwinQ(obs_dim, act_dim, hidden_sizes)
        self.actor_target = frozen_copy(self.actor)
        self.critic_target = frozen_copy(self.critic)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=lr)
        self.last_actor_loss = float("nan")

    def mean_action(self, observations: Tensor) -> Tensor:
        """The actor's action ``max_action * tanh(net(s))`` of normalized observations."""
        return self.max_action * self.actor(observations)

    def log_prob_normalized(self, observations: Tensor, actions: Tensor) -> Tensor:
        """log N(actions; pi(s), std^2 I), summed over action dimensions."""
        mean = self.mean_action(observations)
        log_std = torch.full_like(mean, math.log(self.std))
        return gaussian_log_prob(mean, log_std, actions)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """``actor`` and ``critic`` Adam optimizers."""
        return {"actor": self.actor_optimizer, "critic": self.critic_optimizer}

    def update(self, batch: Batch, step: int, generator: torch.Generator) -> dict[str, float]:
        """Critic step; every ``policy_freq``-th update also the actor step and both target updates.

        Returns ``critic`` and ``actor`` losses (``actor``: the latest actor step's).
        """
        obs, actions, rewards, next_obs, dones = batch[:5]
        noise = torch.randn(actions.shape, generator=generator).to(actions.device)
        with torch.no_grad():
            next_actions = smoothed_target_actions(
                self.max_action * self.actor_target(next_obs), noise,
                policy_noise=self.policy_noise, noise_clip=self.noise_clip, max_action=self.max_action,
            )
            next_q1, next_q2 = self.critic_target(next_obs, next_actions)
            target = td3bc_critic_target(rewards, dones, next_q1, next_q2, self.discount)
        q1, q2 = self.critic(obs, actions)
        critic_loss = td3bc_critic_loss(q1, q2, target)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        if (step + 1) % self.policy_freq == 0:
            policy_actions = self.mean_action(obs)
            self.critic.requires_grad_(False)  # the actor's gradient flows through Q; Q's weights need none
            try:
                actor_loss = td3bc_actor_loss(self.critic.q1_value(obs, policy_actions), policy_actions, actions,
                                              self.alpha)
                self.actor_optimizer.zero_grad(set_to_none=True)
                actor_loss.backward()
            finally:
                self.critic.requires_grad_(True)
            self.actor_optimizer.step()
            soft_update(self.critic_target, self.critic, self.tau)
            soft_update(self.actor_target, self.actor, self.tau)
            self.last_actor_loss = float(actor_loss.detach())
        return {"critic": float(critic_loss.detach()), "actor": self.last_actor_loss}
