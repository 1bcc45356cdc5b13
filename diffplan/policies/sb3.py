"""stable-baselines3 agents as target policies: SAC (its own squashed Gaussian) and TD3 (a
Gaussian of fixed std around its deterministic action).

Both are loaded from the zip ``model.save`` writes (``SAC.load(path, device="cpu")``) and
evaluated on raw environment observations and actions:

- Observations: SB3 agents trained inside ``VecNormalize`` see normalized observations
  ``clip((obs - mean) / sqrt(var + epsilon), -clip_obs, clip_obs)``. Pass the pickle
  ``VecNormalize.save`` wrote (``vecnormalize``) and the policy applies that frozen
  normalization itself. No file is loaded that was not named: a ``<stem>_vecnorm.pkl`` next to
  the zip (the layout of :mod:`diffplan_envs.collect_locomotion` snapshots) is only pointed out
  in a warning. Box observations are otherwise used as float tensors, as SB3's preprocessing does.
- Actions: SB3 acts in [-1, 1] and rescales to the action box ``[low, high]`` of
  ``policy.action_space`` as ``low + (scaled + 1) (high - low) / 2``; densities here are over
  the rescaled (environment) actions, Jacobian included.

stable-baselines3 is imported only when an agent is loaded. Its files are pickles, which run code
when loaded: load only files you trust. :func:`diffplan.policies.load_target_policy` (the
``guidance.policy`` setting) loads them only with ``trust_pickle=True`` (``guidance.trust_pickle=true``).
``diffplan-collect`` resumes from and replays its own agent snapshots (``collect.agent_dir``, written by
:mod:`diffplan_envs.collect_locomotion` in the same folder) without the opt-in: those are files the
project wrote itself, not input from elsewhere; do not put files from elsewhere in ``collect.agent_dir``.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diffplan.extras import require
from diffplan.models.gaussian_policy import GaussianPolicy
from diffplan.models.policy import tanh_gaussian_log_prob

log = logging.getLogger(__name__)


class ObservationNormalizer(nn.Module):
    """VecNormalize's frozen observation normalization, ``clip((obs - mean) / sqrt(var + eps), +-clip_obs)``.

    Args:
        mean, var: (obs_dim,) running statistics.
        epsilon: VecNormalize's ``epsilon``.
        clip_obs: VecNormalize's ``clip_obs``.
    """

    mean: Tensor
    scale: Tensor

    def __init__(self, mean: Tensor | np.ndarray, var: Tensor | np.ndarray, epsilon: float, clip_obs: float) -> None:
        super().__init__()
        mean64 = torch.as_tensor(np.asarray(mean), dtype=torch.float64)
        var64 = torch.as_tensor(np.asarray(var), dtype=torch.float64)
        self.register_buffer("mean", mean64.float())
        self.register_buffer("scale", torch.sqrt(var64 + epsilon).float())
        self.clip_obs = float(clip_obs)

    @classmethod
    def from_pickle(cls, path: str | Path) -> ObservationNormalizer | None:
        """The normalization stored by ``VecNormalize.save`` at ``path``; None if it does not
        normalize observations (``norm_obs=False``).

        Raises:
            ValueError: the file is not a VecNormalize pickle of Box observations.
        """
        with open(path, "rb") as handle:
            vecnorm = pickle.load(handle)  # noqa: S301 - SB3's own format (a pickle)
        if not all(hasattr(vecnorm, key) for key in ("obs_rms", "epsilon", "clip_obs", "norm_obs")):
            raise ValueError(f"{path} is not a stable-baselines3 VecNormalize pickle (VecNormalize.save)")
        if not vecnorm.norm_obs:
            return None
        if isinstance(vecnorm.obs_rms, dict):
            raise ValueError(f"{path} normalizes dict observations; only Box observations are supported")
        return cls(vecnorm.obs_rms.mean, vecnorm.obs_rms.var, float(vecnorm.epsilon), float(vecnorm.clip_obs))

    def forward(self, observations: Tensor) -> Tensor:
        """Raw observations (..., obs_dim) -> what the agent saw (..., obs_dim)."""
        return ((observations - self.mean) / self.scale).clamp(-self.clip_obs, self.clip_obs)


class _SB3Actor(nn.Module):
    """An SB3 actor with its observation normalization and action box, on any leading shape."""

    low: Tensor
    high: Tensor
    actor: Any  # an SB3 Actor (SB3 is untyped here)

    def __init__(self, actor: nn.Module, low: np.ndarray, high: np.ndarray,
                 obs_normalizer: ObservationNormalizer | None, obs_dim: int) -> None:
        super().__init__()
        self.actor = actor.eval().requires_grad_(False)
        self.obs_normalizer = obs_normalizer
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32).flatten())
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32).flatten())
        self.obs_dim, self.act_dim = int(obs_dim), int(self.low.numel())

    def actor_input(self, observations: Tensor) -> Tensor:
        """Raw observations (..., obs_dim) -> the actor's input (N, obs_dim): normalized, flattened
        (SB3's Flatten extractor would merge every axis after the first)."""
        obs = observations.reshape(-1, self.obs_dim).float()
        return obs if self.obs_normalizer is None else self.obs_normalizer(obs)

    def unscale(self, scaled: Tensor) -> Tensor:
        """[-1, 1] actions -> the action box, as SB3's ``unscale_action``."""
        return self.low + 0.5 * (scaled + 1.0) * (self.high - self.low)


class SB3SACPolicy(_SB3Actor):
    """A stable-baselines3 SAC actor: a ``tanh``-squashed Gaussian rescaled to the action box.

    ``log_prob`` is the density of environment actions (change of variables through ``tanh``
    and the affine rescale, :func:`diffplan.models.policy.tanh_gaussian_log_prob`); actions on
    or beyond the box are clamped just inside it.

    Args:
        actor: ``model.policy.actor`` (without gSDE).
        low, high: the action box (``model.action_space``).
        obs_normalizer: VecNormalize's normalization, if the agent was trained inside one.
        obs_dim: observation size.
    """

    def distribution(self, observations: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-std (..., act_dim) of the Gaussian before ``tanh`` (SB3 clamps the log-std)."""
        mean, log_std, _ = self.actor.get_action_dist_params(self.actor_input(observations))
        shape = (*observations.shape[:-1], self.act_dim)
        return mean.reshape(shape), log_std.reshape(shape)

    def log_prob(self, observations: Tensor, actions: Tensor) -> Tensor:
        """log pi(actions | observations) (...), environment units, summed over action dimensions."""
        mean, log_std = self.distribution(observations)
        return tanh_gaussian_log_prob(mean, log_std, actions, low=self.low, high=self.high)


class SB3DeterministicActor(_SB3Actor):
    """A stable-baselines3 TD3 (or DDPG) actor as a module: raw observations -> environment actions."""

    def forward(self, observations: Tensor) -> Tensor:
        """Actions (..., act_dim) in the action box."""
        scaled = self.actor(self.actor_input(observations))
        return self.unscale(scaled).reshape(*observations.shape[:-1], self.act_dim)


def vecnormalize_sibling(path: Path) -> Path:
    """Where :mod:`diffplan_envs.collect_locomotion` saves the VecNormalize pickle of the agent at ``path``."""
    return path.with_name(f"{path.stem}_vecnorm.pkl")


def resolve_vecnormalize(path: Path, vecnormalize: Path | None) -> Path | None:
    """``vecnormalize`` as given: a pickle is never loaded without being named. When none is given
    and ``<stem>_vecnorm.pkl`` lies next to ``path``, a warning says how to use it."""
    sibling = vecnormalize_sibling(path)
    if vecnormalize is None and sibling.exists():
        log.warning(
            "%s lies next to %s but is not loaded (no file is loaded without being named): the agent sees raw "
            "observations; if it was trained with them normalized, pass guidance.policy_vecnormalize=%s "
            "(and guidance.trust_pickle=true)", sibling, path, sibling,
        )
    return vecnormalize


def _load_sb3(algo: str, path: Path, vecnormalize: Path | None) -> tuple[Any, ObservationNormalizer | None]:
    """The SB3 model of class ``algo`` at ``path`` (CPU) and its observation normalization."""
    from gymnasium import spaces

    stable_baselines3 = require("stable_baselines3", f"loading {path} as an SB3 target policy")

    try:
        model = getattr(stable_baselines3, algo).load(str(path), device="cpu")
    except Exception as e:  # SB3 raises many kinds of errors for a foreign or broken zip
        raise ValueError(f"cannot load {path} as a stable-baselines3 {algo} model ({type(e).__name__}: {e})") from e
    for name, space in (("observation", model.observation_space), ("action", model.action_space)):
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"{path}: only flat Box {name} spaces are supported, got {space}")
    if not (np.isfinite(model.action_space.low).all() and np.isfinite(model.action_space.high).all()):
        raise ValueError(f"{path}: the action box must be finite, got {model.action_space}")
    resolved = resolve_vecnormalize(path, vecnormalize)
    obs_normalizer = None if resolved is None else ObservationNormalizer.from_pickle(resolved)
    if obs_normalizer is not None and obs_normalizer.mean.numel() != model.observation_space.shape[0]:
        raise ValueError(
            f"{resolved} normalizes {obs_normalizer.mean.numel()} observation dimensions, but {path} takes "
            f"{model.observation_space.shape[0]}; pass the VecNormalize pickle saved with this agent"
        )
    return model, obs_normalizer


def load_sb3_sac(path: Path, std: float, vecnormalize: Path | None) -> SB3SACPolicy:
    """A saved SB3 SAC agent as a target policy (``std`` is unused: SAC has its own)."""
    model, obs_normalizer = _load_sb3("SAC", path, vecnormalize)
    actor = model.policy.actor
    if getattr(actor, "use_sde", False):
        raise ValueError(f"{path}: SAC with gSDE (use_sde=True) is not supported as a target policy")
    space = model.action_space
    return SB3SACPolicy(actor, space.low, space.high, obs_normalizer, model.observation_space.shape[0])


def load_sb3_td3(path: Path, std: float, vecnormalize: Path | None) -> GaussianPolicy:
    """A saved SB3 TD3 agent as a Gaussian of standard deviation ``std`` (action units) around its action."""
    model, obs_normalizer = _load_sb3("TD3", path, vecnormalize)
    space = model.action_space
    mean = SB3DeterministicActor(model.policy.actor, space.low, space.high, obs_normalizer,
                                 model.observation_space.shape[0])
    return GaussianPolicy(mean, mean.obs_dim, mean.act_dim, std)
