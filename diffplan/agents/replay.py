"""Transitions (s, a, r, s', done) from :class:`~diffplan.data.episodes.Episodes`, and a sampler
that mixes real and synthetic transitions at a set ratio per batch.

``done`` is 1 only on true terminals: a timeout is not a terminal, the value of its next
state is bootstrapped. Next observations come from the data's ``next_observations`` when the
source has them (D4RL files and the synthetic-experience files do; :class:`TransitionData`
carries them beside the :class:`Episodes`, which do not). Otherwise they are
``observations[t + 1]`` inside an episode, the last step of every episode cut by a timeout is
dropped (its next state is unknown; D4RL's ``qlearning_dataset`` does the same) and the last
step of an episode ending in a terminal keeps its own observation as a placeholder (masked by
``done``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor

from diffplan.agents.common import Batch
from diffplan.data.episodes import Episodes
from diffplan.data.errors import DatasetError
from diffplan.data.loading import HDF5_SUFFIXES, load_episodes
from diffplan.data.returns import best_episode_rows, episodes_at_rows


@dataclass
class Transitions:
    """N transitions as tensors on one device.

    Attributes:
        observations, next_observations: (N, obs_dim) float32.
        actions: (N, act_dim) float32.
        rewards, dones: (N,) float32 (dones 0/1).
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    next_observations: Tensor
    dones: Tensor

    def __len__(self) -> int:
        return len(self.observations)

    def to(self, device: torch.device | str) -> Transitions:
        """The same transitions on ``device``."""
        return Transitions(*(t.to(device) for t in self.tensors()))

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(observations, actions, rewards, next_observations, dones)."""
        return self.observations, self.actions, self.rewards, self.next_observations, self.dones

    def normalized(self, obs_mean: Tensor, obs_std: Tensor, reward_scale: float) -> Transitions:
        """Observations and next observations normalized, rewards multiplied by ``reward_scale``."""
        mean, std = obs_mean.to(self.observations.device), obs_std.to(self.observations.device)
        return Transitions((self.observations - mean) / std, self.actions, self.rewards * reward_scale,
                           (self.next_observations - mean) / std, self.dones)

    def state_dict(self) -> dict[str, Tensor]:
        """Plain tensors on the CPU (for a ``weights_only`` file)."""
        names = ("observations", "actions", "rewards", "next_observations", "dones")
        return {name: t.cpu() for name, t in zip(names, self.tensors(), strict=True)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> Transitions:
        """Inverse of :meth:`state_dict`."""
        return cls(state["observations"], state["actions"], state["rewards"], state["next_observations"],
                   state["dones"])


def transitions_from_episodes(episodes: Episodes, next_observations: np.ndarray | None = None) -> Transitions:
    """Every usable transition of ``episodes`` (see the module docstring), raw units, CPU tensors.

    Args:
        episodes: the data.
        next_observations: (T, obs_dim) the next observation of every row, if known (default:
            the Episodes' own ``next_observations`` attribute, if they have one).

    Raises:
        DatasetError: ``next_observations`` has the wrong shape or non-finite entries, or no
            transition is left (e.g. only one-step episodes cut by timeouts).
    """
    obs = episodes.observations
    ends = episodes.starts + episodes.lengths - 1
    given = next_observations if next_observations is not None else getattr(episodes, "next_observations", None)
    keep = np.ones(len(obs), dtype=bool)
    if given is not None:
        next_obs = np.ascontiguousarray(given, dtype=np.float32)
        if next_obs.shape != obs.shape or not np.isfinite(next_obs).all():
            raise DatasetError(
                f"{episodes.source}: next_observations must be finite with the observations' shape {obs.shape}, "
                f"got shape {next_obs.shape}; fix or drop the key"
            )
    else:
        next_obs = np.empty_like(obs)
        next_obs[:-1] = obs[1:]
        next_obs[ends] = obs[ends]
        keep[ends[~episodes.ended_by_terminal]] = False
    if not keep.any():
        raise DatasetError(
            f"{episodes.source}: no transition has a known next observation (every episode is one step long "
            "and cut by a timeout); offline RL needs episodes of two or more steps or next_observations"
        )
    return Transitions(
        observations=torch.from_numpy(np.ascontiguousarray(obs[keep])),
        actions=torch.from_numpy(np.ascontiguousarray(episodes.actions[keep])),
        rewards=torch.from_numpy(np.ascontiguousarray(episodes.rewards[keep])),
        next_observations=torch.from_numpy(np.ascontiguousarray(next_obs[keep])),
        dones=torch.from_numpy(episodes.terminals[keep].astype(np.float32)),
    )


def read_next_observations(path: str | Path) -> np.ndarray | None:
    """The ``next_observations`` array of a D4RL-layout HDF5 file, or None (other sources, or no such key)."""
    path = Path(path)
    if path.suffix.lower() not in HDF5_SUFFIXES or not h5py.is_hdf5(path):
        return None
    with h5py.File(path, "r") as handle:
        if "next_observations" not in handle:
            return None
        return np.asarray(handle["next_observations"][()], dtype=np.float32)


@dataclass(frozen=True)
class TransitionData:
    """Episodes and, when the source has them, the next observation of each row.

    Attributes:
        episodes: the data (episode boundaries, terminals, rewards).
        next_observations: (T, obs_dim) or None (then the last step of each episode cut by a
            timeout is dropped).
    """

    episodes: Episodes
    next_observations: np.ndarray | None = None

    @classmethod
    def from_file(
        cls, path: str | Path, *, expected_obs_dim: int | None = None, expected_act_dim: int | None = None,
        top_return_fraction: float = 1.0,
    ) -> TransitionData:
        """Load a dataset (any :func:`~diffplan.data.loading.load_episodes` source) and its
        ``next_observations`` (HDF5 files that have the key); with ``top_return_fraction`` < 1, only
        that share of its episodes, best returns first (:func:`~diffplan.data.returns.best_episodes`)."""
        episodes = load_episodes(path, expected_obs_dim=expected_obs_dim, expected_act_dim=expected_act_dim)
        next_observations = read_next_observations(path)
        rows = best_episode_rows(episodes, top_return_fraction)
        if rows is None or (next_observations is not None and len(next_observations) != len(rows)):
            return cls(episodes, next_observations)  # (a length mismatch is refused when transitions are built)
        return cls(episodes_at_rows(episodes, rows, top_return_fraction),
                   None if next_observations is None else next_observations[rows])

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], source: str = "<arrays>") -> TransitionData:
        """D4RL-layout arrays (observations, actions, rewards, terminals, timeouts and optionally
        next_observations), e.g. what :func:`diffplan.synthetic.generate` returns."""
        episodes = Episodes.from_arrays(arrays["observations"], arrays["actions"], arrays["rewards"],
                                        arrays["terminals"], arrays["timeouts"], source=source)
        return cls(episodes, arrays.get("next_observations"))

    @property
    def obs_dim(self) -> int:
        """Size of one observation."""
        return self.episodes.obs_dim

    @property
    def act_dim(self) -> int:
        """Size of one action."""
        return self.episodes.act_dim

    def transitions(self) -> Transitions:
        """The usable transitions, raw units, CPU tensors (:func:`transitions_from_episodes`)."""
        return transitions_from_episodes(self.episodes, self.next_observations)


#: What the trainer accepts as a dataset (and a ``regenerate`` hook may return).
DataSource = TransitionData | Episodes | Mapping[str, np.ndarray]


def as_transition_data(data: DataSource) -> TransitionData:
    """Wrap :class:`Episodes` or D4RL-layout arrays as :class:`TransitionData` (which passes through)."""
    if isinstance(data, TransitionData):
        return data
    if isinstance(data, Episodes):
        return TransitionData(data)
    return TransitionData.from_arrays(data)


def reward_normalization(episodes: Episodes, scale: float = 1000.0) -> float:
    """IQL's locomotion reward factor ``scale / (max episode return - min episode return)``.

    CORL splits the data at terminals and at every ``max_episode_steps`` (1000) steps; here the
    dataset's own episodes are used (the same split for the project's locomotion files).

    Raises:
        DatasetError: every episode has the same return (the factor would be infinite).
    """
    returns = np.add.reduceat(episodes.rewards.astype(np.float64), episodes.starts)
    spread = float(returns.max() - returns.min())
    if not spread > 0:
        raise DatasetError(
            f"{episodes.source}: every episode has the same return ({returns.max():.4g}); reward normalization "
            "needs a spread of returns; set offline.normalize_reward=false"
        )
    return scale / spread


def synthetic_count(batch_size: int, ratio: float) -> int:
    """Synthetic rows per batch: ``round(ratio * batch_size)`` (240 of 256 for PGD's 0.9375)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"offline.synthetic_ratio must lie in [0, 1], got {ratio}")
    return int(round(ratio * batch_size))


class ReplaySampler:
    """Uniform minibatches from real transitions mixed with synthetic ones at a fixed count per batch.

    Every batch holds ``batch_size - n_synthetic`` real rows, then ``n_synthetic =
    round(synthetic_ratio * batch_size)`` synthetic rows, each drawn uniformly with replacement
    from its set with ``generator`` (nothing else), so the batches are a function of the
    generator's state.

    Args:
        real: the real transitions (already normalized; on the training device).
        batch_size: rows per batch.
        synthetic_ratio: share of synthetic rows in [0, 1].
        synthetic: the synthetic transitions (may be set later with :meth:`set_synthetic`).
    """

    def __init__(
        self, real: Transitions, batch_size: int, synthetic_ratio: float = 0.0, synthetic: Transitions | None = None
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"offline.batch_size must be >= 1, got {batch_size}")
        self.real = real
        self.batch_size = batch_size
        self.n_synthetic = synthetic_count(batch_size, synthetic_ratio)
        self.n_real = batch_size - self.n_synthetic
        self.synthetic = synthetic

    def set_synthetic(self, synthetic: Transitions) -> None:
        """Replace the synthetic set."""
        self.synthetic = synthetic

    def sample(self, generator: torch.Generator) -> Batch:
        """One batch: real rows first, then synthetic rows.

        Raises:
            ValueError: synthetic rows are asked for but there is no synthetic set.
        """
        parts: list[list[Tensor]] = []
        if self.n_real:
            parts.append(_rows(self.real, self.n_real, generator))
        if self.n_synthetic:
            if self.synthetic is None:
                raise ValueError("offline.synthetic_ratio > 0 but no synthetic transitions were given")
            parts.append(_rows(self.synthetic, self.n_synthetic, generator))
        columns = parts[0] if len(parts) == 1 else [torch.cat(pair) for pair in zip(*parts, strict=True)]
        obs, actions, rewards, next_obs, dones = columns
        return Batch(obs, actions, rewards, next_obs, dones, n_synthetic=self.n_synthetic)


def _rows(transitions: Transitions, n: int, generator: torch.Generator) -> list[Tensor]:
    index = torch.randint(len(transitions), (n,), generator=generator).to(transitions.observations.device)
    return [t[index] for t in transitions.tensors()]
