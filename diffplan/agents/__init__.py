"""Offline RL agents for policy-guided diffusion experiments: TD3+BC and IQL.

Each agent is a :class:`~diffplan.models.policy.TargetPolicy` (``log_prob`` in raw units) with a
deterministic ``act`` for evaluation; :class:`OfflineTrainer` trains one on real transitions,
optionally mixed with synthetic ones that a ``regenerate`` hook refreshes during training.
"""

from diffplan.agents.common import Batch, OfflineAgent, TwinQ, mlp, soft_update
from diffplan.agents.iql import (
    GaussianActor,
    IQLAgent,
    expectile_loss,
    iql_actor_loss,
    iql_q_loss,
    iql_q_target,
    iql_value_loss,
)
from diffplan.agents.replay import (
    DataSource,
    ReplaySampler,
    TransitionData,
    Transitions,
    as_transition_data,
    read_next_observations,
    reward_normalization,
    synthetic_count,
    transitions_from_episodes,
)
from diffplan.agents.td3bc import (
    TD3BCAgent,
    smoothed_target_actions,
    td3bc_actor_loss,
    td3bc_critic_loss,
    td3bc_critic_target,
)
from diffplan.agents.trainer import (
    OfflineModel,
    OfflineTrainer,
    RegenerateFn,
    build_agent,
    cosine_lr,
    load_offline_agent,
    offline_policy_loader,
)

__all__ = [
    "Batch", "DataSource", "GaussianActor", "IQLAgent", "OfflineAgent", "OfflineModel", "OfflineTrainer",
    "RegenerateFn", "ReplaySampler", "TD3BCAgent", "TransitionData", "Transitions", "TwinQ", "as_transition_data",
    "build_agent", "cosine_lr", "expectile_loss", "iql_actor_loss", "iql_q_loss", "iql_q_target", "iql_value_loss",
    "load_offline_agent", "mlp", "offline_policy_loader", "read_next_observations", "reward_normalization",
    "smoothed_target_actions", "soft_update", "synthetic_count", "td3bc_actor_loss", "td3bc_critic_loss",
    "td3bc_critic_target", "transitions_from_episodes",
]
