"""Dynamics consistency of generated trajectories: does each generated next state follow from
the generated state and action under the simulator?

For a trajectory (s_0, a_0), (s_1, a_1), ... the simulator is put in each s_t, steps a_t once,
and its next state is compared with the generated s_{t+1}, per dimension normalized by a
reference variance (the dataset's): 0 means every generated transition is exactly what the
simulator does. Tokens several environment steps apart (a strided model) are replayed by holding
each token's action over the steps between them. Used to compare long rollouts of full-sequence
and Diffusion Forcing sampling (``scripts/forcing_consistency.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffplan.data.layout import TrajectoryLayout


@dataclass(frozen=True)
class Consistency:
    """Per-transition errors of a batch of generated trajectories.

    Attributes:
        errors: (B, T - 1) normalized squared error of each generated next state.
    """

    errors: np.ndarray

    def segment_means(self, length: int) -> list[float]:
        """Mean error over consecutive segments of ``length`` transitions (the last may be shorter)."""
        n = self.errors.shape[1]
        return [float(self.errors[:, i:i + length].mean()) for i in range(0, n, length)]

    def summary(self, segment: int) -> dict[str, object]:
        """JSON-ready: overall mean, median, per-segment means and counts."""
        return {
            "mean": float(self.errors.mean()),
            "median": float(np.median(self.errors)),
            "segment_length": segment,
            "segment_means": self.segment_means(segment),
            "n_trajectories": int(self.errors.shape[0]),
            "n_transitions": int(self.errors.size),
        }


def trajectory_consistency(
    task: str, trajectories: np.ndarray, layout: TrajectoryLayout, obs_variance: np.ndarray, *, hold: int = 1
) -> Consistency:
    """Replay every transition of ``trajectories`` (B, T, D) raw units (layout's channels) in
    ``task``'s simulator (:func:`diffplan_envs.dynamics.replay_transitions`).

    ``hold`` is the number of environment steps between consecutive tokens (a strided model's
    ``task.stride``): the simulator starts from each token's state and applies its action for
    ``hold`` steps (a zero-order hold), and the state it reaches is compared with the next token's.
    A strided model does not generate the actions between its tokens, so with ``hold > 1`` even the
    dataset's own strided windows score above 0 wherever its actions change between tokens: compare
    with that floor (``trajectory_consistency`` of real windows taken at the same stride).

    Raises:
        ValueError: fewer than 2 tokens, a channel count that is not the layout's, or ``hold < 1``.
    """
    from diffplan_envs.dynamics import replay_transitions

    if trajectories.ndim != 3 or trajectories.shape[1] < 2 or trajectories.shape[2] != layout.transition_dim:
        raise ValueError(
            f"trajectories must be (B, T >= 2, {layout.transition_dim}) in the model's layout, got {trajectories.shape}"
        )
    if hold < 1:
        raise ValueError(f"hold must be >= 1 environment step per token, got {hold}")
    batch, steps = trajectories.shape[:2]
    state = trajectories[:, :-1, layout.obs].reshape(-1, layout.obs_dim).astype(np.float64)
    act = trajectories[:, :-1, layout.act].reshape(-1, layout.act_dim).astype(np.float64)
    for _ in range(hold):
        state = replay_transitions(task, state, act).next_observations
    target = trajectories[:, 1:, layout.obs].reshape(-1, layout.obs_dim)
    variance = np.where(np.asarray(obs_variance) > 0, obs_variance, 1.0)
    errors = ((target - state) ** 2 / variance).mean(axis=1)
    return Consistency(errors.reshape(batch, steps - 1))
