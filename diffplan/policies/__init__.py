"""Target policies with a differentiable action log-likelihood (policy-guided diffusion).

Every policy here implements :class:`TargetPolicy`: ``log_prob(observations, actions)`` in
raw (un-normalized) units, differentiable with respect to both arguments.
:func:`load_target_policy` loads one from ``"<kind>:<path>"`` (kinds ``sb3-sac``,
``sb3-td3``, ``bc``, and any added with :func:`register_policy_loader`).
"""

from diffplan.models.gaussian_policy import GaussianPolicy, LinearGaussianPolicy
from diffplan.models.policy import TargetPolicy, gaussian_log_prob, tanh_gaussian_log_prob
from diffplan.policies.bc import load_bc_policy
from diffplan.policies.loading import (
    PolicyLoader,
    load_target_policy,
    parse_policy_spec,
    policy_kinds,
    register_policy_loader,
)
from diffplan.policies.sb3 import (
    ObservationNormalizer,
    SB3DeterministicActor,
    SB3SACPolicy,
    load_sb3_sac,
    load_sb3_td3,
)

__all__ = [
    "GaussianPolicy",
    "LinearGaussianPolicy",
    "ObservationNormalizer",
    "PolicyLoader",
    "SB3DeterministicActor",
    "SB3SACPolicy",
    "TargetPolicy",
    "gaussian_log_prob",
    "load_bc_policy",
    "load_sb3_sac",
    "load_sb3_td3",
    "load_target_policy",
    "parse_policy_spec",
    "policy_kinds",
    "register_policy_loader",
    "tanh_gaussian_log_prob",
]
