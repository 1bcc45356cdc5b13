"""Inpainting conditions: which entries of a (B, H, D) trajectory are given.

Goal-conditioned planning inpaints the current observation at the first token and the goal
at the last token (on the observation channels that hold the goal, for example the x, y
position in a maze). Training applies the same mask, so the model learns to fill in the
rest, and the loss ignores the given entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffplan.data.layout import TrajectoryLayout
from diffplan.data.normalizer import Normalizer
from diffplan.diffusion.sampler import Constraints


def conditioning_mask(
    layout: TrajectoryLayout,
    horizon: int,
    *,
    start: bool = True,
    goal_dims: Sequence[int] = (),
) -> Tensor:
    """Bool mask (H, D): all observation channels of token 0 (if ``start``) and the
    observation channels ``goal_dims`` of token H - 1."""
    mask = torch.zeros(horizon, layout.transition_dim, dtype=torch.bool)
    if start:
        mask[0, layout.obs] = True
    for dim in goal_dims:
        if not 0 <= dim < layout.obs_dim:
            raise ValueError(
                f"goal dim {dim} is not an observation channel (obs_dim={layout.obs_dim}); "
                "fix task.goal_obs_dims"
            )
        mask[horizon - 1, layout.obs.start + dim] = True
    return mask


def goal_constraints(
    layout: TrajectoryLayout,
    normalizer: Normalizer,
    horizon: int,
    observations: Tensor,
    goals: Tensor | None,
    goal_dims: Sequence[int],
) -> Constraints:
    """Constraints for B plans starting at ``observations`` (B, obs_dim), raw units, and
    ending at ``goals`` (B, len(goal_dims)), raw units (None: start only)."""
    batch = observations.shape[0]
    raw = torch.zeros(batch, horizon, layout.transition_dim, device=observations.device)
    raw[:, 0, layout.obs] = observations.float()
    dims = list(goal_dims) if goals is not None else []
    if goals is not None:
        if goals.shape[-1] != len(dims):
            raise ValueError(f"goals have {goals.shape[-1]} entries but task.goal_obs_dims has {len(dims)}")
        raw[:, horizon - 1, [layout.obs.start + d for d in dims]] = goals.float()
    mask = conditioning_mask(layout, horizon, start=True, goal_dims=dims).to(observations.device)
    return Constraints(mask.expand(batch, -1, -1), normalizer.normalize(raw))


def hold_goal_per_candidate(constraints: Constraints, first: Tensor, channels: Sequence[int],
                            goals: Tensor) -> Constraints:
    """:func:`hold_goal` for R candidates per row: ``constraints`` (N, H, D) and ``goals`` (N, G) are
    repeated R times (each row's candidates contiguous) and candidate j of row i holds the goal from
    token ``first[i, j]`` ((N, R) int). Returns (N x R, H, D) constraints."""
    repeats = first.shape[1]
    return hold_goal(constraints.repeat_interleave(repeats), first.reshape(-1), channels,
                     goals.repeat_interleave(repeats, dim=0))


def hold_goal(constraints: Constraints, first: Tensor, channels: Sequence[int], goals: Tensor) -> Constraints:
    """``constraints`` (B, H, D) with the goal's ``channels`` inpainted with ``goals`` (B, len(channels)),
    normalized, at token ``first`` (B,) int of each sample and every token after it: the plan arrives
    by that token and stays. Returns new tensors; ``constraints`` is not changed."""
    horizon = constraints.mask.shape[1]
    channels = list(channels)
    token = torch.arange(horizon, device=constraints.mask.device)
    held = (token[None, :] >= first.to(token.device)[:, None])[..., None]  # (B, H, 1)
    mask, values = constraints.mask.clone(), constraints.values.clone()
    mask[..., channels] |= held
    values[..., channels] = torch.where(held, goals.to(values)[:, None, :], values[..., channels])
    return Constraints(mask, values)
