"""Value network for value-guided planning (Janner et al. 2022, the Diffuser ``ValueFunction``).

The network reads a (noisy) normalized trajectory x (B, H, D) and the per-token noise levels
(B, H), normalized to [0, 1] like the denoiser's, and predicts one scalar per sample: the
discounted return from the trajectory's first step (:mod:`diffplan.training.value_targets`).

It is the downsampling half of the temporal U-Net (:class:`diffplan.models.unet.DownPath`,
with the same per-token level embedding), whose output features (B, C, H / f) and pooled
level embedding (B, H / f, E) are flattened into an MLP head. The head predicts the
*standardized* value; the target mean and standard deviation of the training set are
buffers of the module (they travel in its state dict), and :meth:`ValueNet.forward` returns
values on the raw return scale.

A goal-conditioned network (``goal_dim > 0``, the mazes) also reads a goal (B, G), normalized
like the position channels it refers to, appended to every token as G constant channels: the
first convolution can then compare each token's position with the goal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from diffplan.models.unet import DownPath, check_horizon, make_level_embedding, shared_levels, to_features

if TYPE_CHECKING:
    from diffplan.config import ValueConfig


class ValueNet(nn.Module):
    """Predicts the value (discounted return) of trajectories with per-token noise levels.

    Args:
        transition_dim: D, channels per token.
        horizon: H; fixed, because the head flattens the features over the horizon.
        dim: base channel width (a multiple of 8, GroupNorm with 8 groups).
        dim_mults: channel multipliers per resolution; each but the last halves the horizon.
        kernel_size: temporal convolution width.
        goal_dim: G, goal channels appended to every token (0: no goal input).
    """

    target_mean: Tensor
    target_std: Tensor
    #: Observation entries of the goal input (``task.goal_obs_dims`` of its training); set by the loader.
    goal_dims: list[int]

    def __init__(
        self,
        *,
        transition_dim: int,
        horizon: int,
        dim: int = 32,
        dim_mults: Sequence[int] = (1, 2, 4, 8),
        kernel_size: int = 5,
        goal_dim: int = 0,
    ) -> None:
        super().__init__()
        if dim % 8:
            raise ValueError(f"value.dim must be a multiple of 8 (GroupNorm with 8 groups), got {dim}")
        if not dim_mults:
            raise ValueError("value.dim_mults must hold at least one multiplier")
        self.transition_dim = transition_dim
        self.horizon = horizon
        # 2-D channels-last convolutions (diffplan.models.planar.planar_copy; planning only).
        self.planar = False
        if goal_dim < 0:
            raise ValueError(f"goal_dim must be >= 0, got {goal_dim}")
        self.goal_dim = goal_dim
        self.goal_dims = []
        self.level_embedding = make_level_embedding(dim)
        self.downs = DownPath(transition_dim + goal_dim, dim, dim_mults, dim, kernel_size)
        check_horizon(horizon, self.downs.downsample_factor)
        tokens = horizon // self.downs.downsample_factor
        fc_dim = (self.downs.out_channels + dim) * tokens
        self.head = nn.Sequential(nn.Linear(fc_dim, fc_dim // 2), nn.Mish(), nn.Linear(fc_dim // 2, 1))
        self.register_buffer("target_mean", torch.zeros((), dtype=torch.float32))
        self.register_buffer("target_std", torch.ones((), dtype=torch.float32))

    def set_target_stats(self, mean: float, std: float) -> None:
        """Set the raw-scale mean and standard deviation the head's output is scaled by."""
        if not std > 0:
            raise ValueError(f"target std must be > 0, got {std}")
        self.target_mean.fill_(float(mean))
        self.target_std.fill_(float(std))

    def standardized(self, x: Tensor, levels: Tensor, goals: Tensor | None = None) -> Tensor:
        """The head's output (B,): the value in units of the training targets' standard deviation.

        Args:
            x: (B, H, D) normalized trajectories.
            levels: (B, H) noise levels normalized to [0, 1].
            goals: (B, G) normalized goals; required by (and only by) a goal-conditioned network.
        """
        if x.dim() != 3 or x.shape[1] != self.horizon or x.shape[2] != self.transition_dim:
            raise ValueError(
                f"the value network takes x of shape (B, {self.horizon}, {self.transition_dim}), "
                f"got {tuple(x.shape)}; use the horizon and layout it was trained with"
            )
        if levels.shape != x.shape[:2]:
            raise ValueError(f"levels must have shape {tuple(x.shape[:2])} (B, H), got {tuple(levels.shape)}")
        if self.goal_dim:
            if goals is None or goals.shape != (x.shape[0], self.goal_dim):
                got = None if goals is None else tuple(goals.shape)
                raise ValueError(
                    f"this value network is goal-conditioned: it takes goals of shape ({x.shape[0]}, {self.goal_dim}) "
                    f"(observation entries {self.goal_dims or '?'}), got {got}; plan with the maze goal planner, "
                    "whose task.goal_obs_dims must be those it was trained with"
                )
            x = torch.cat([x, goals[:, None, :].to(x.dtype).expand(-1, x.shape[1], -1)], dim=-1)
        elif goals is not None:
            raise ValueError("this value network was trained without goals (value.goal_conditioned=false); pass none")
        embedding = self.level_embedding(shared_levels(levels))  # (B, H, E), or (B, 1, E) when shared
        h, embedding, _, _ = self.downs(to_features(x, self.planar), embedding)  # (B, C, [1,] H / f), (B, H / f, E)
        embedding = embedding.expand(-1, h.shape[-1], -1)  # a shared (B, 1, E) embedding onto the H / f tokens
        features = torch.cat([h.flatten(1), embedding.flatten(1)], dim=1)
        return self.head(features).squeeze(-1)

    def forward(self, x: Tensor, levels: Tensor, goals: Tensor | None = None) -> Tensor:
        """x (B, H, D), levels (B, H) in [0, 1] (and goals (B, G)) -> values (B,) on the raw return scale."""
        # In the statistics' float32 even when the network runs in bfloat16 (a planar copy): values
        # near one another keep their order.
        return self.standardized(x, levels, goals).to(self.target_std.dtype) * self.target_std + self.target_mean


def build_value_net(cfg: ValueConfig, *, transition_dim: int, horizon: int, goal_dim: int = 0) -> ValueNet:
    """The value network of ``cfg`` (``value.dim``, ``value.dim_mults``, ``value.kernel_size``);
    ``goal_dim`` goal channels when ``value.goal_conditioned``."""
    return ValueNet(
        transition_dim=transition_dim,
        horizon=horizon,
        dim=cfg.dim,
        dim_mults=tuple(cfg.dim_mults),
        kernel_size=cfg.kernel_size,
        goal_dim=goal_dim if cfg.goal_conditioned else 0,
    )
