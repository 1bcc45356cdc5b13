"""Where each quantity sits on the last axis of a trajectory tensor (B, H, D).

Every other module asks the layout for slices; no module hard-codes channel indices.
Channels are ordered: observations, then actions, then optional rewards and terminals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TrajectoryLayout:
    """Channel layout of one token (one timestep) of a trajectory.

    Args:
        obs_dim: number of observation channels.
        act_dim: number of action channels (0 for state-only diffusion).
        reward: whether a reward channel follows the actions.
        terminal: whether a terminal-flag channel follows.
    """

    obs_dim: int
    act_dim: int
    reward: bool = False
    terminal: bool = False

    def __post_init__(self) -> None:
        if self.obs_dim <= 0:
            raise ValueError(f"TrajectoryLayout.obs_dim must be positive, got {self.obs_dim}")
        if self.act_dim < 0:
            raise ValueError(f"TrajectoryLayout.act_dim must be >= 0, got {self.act_dim}")

    @property
    def obs(self) -> slice:
        """Observation channels."""
        return slice(0, self.obs_dim)

    @property
    def act(self) -> slice:
        """Action channels."""
        return slice(self.obs_dim, self.obs_dim + self.act_dim)

    @property
    def rew(self) -> slice:
        """Reward channel (empty slice when not modelled)."""
        start = self.obs_dim + self.act_dim
        return slice(start, start + int(self.reward))

    @property
    def term(self) -> slice:
        """Terminal channel (empty slice when not modelled)."""
        start = self.obs_dim + self.act_dim + int(self.reward)
        return slice(start, start + int(self.terminal))

    @property
    def transition_dim(self) -> int:
        """D, the size of the last axis."""
        return self.obs_dim + self.act_dim + int(self.reward) + int(self.terminal)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for checkpoints and result files."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrajectoryLayout:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


def position_channels(layout: TrajectoryLayout, goal_dims: list[int], what: str) -> list[int]:
    """The trajectory channels of the observation entries ``goal_dims`` (``task.goal_obs_dims``).

    Raises:
        ValueError: no entries, or entries outside the observation; ``what`` names the feature.
    """
    if not goal_dims:
        raise ValueError(f"{what} needs the position channels (task.goal_obs_dims), got an empty list; "
                         "it is for goal-reaching tasks (pointmaze-*)")
    bad = [d for d in goal_dims if not 0 <= d < layout.obs_dim]
    if bad:
        raise ValueError(f"task.goal_obs_dims {bad} are outside the observation (obs_dim {layout.obs_dim})")
    return [layout.obs.start + int(d) for d in goal_dims]
