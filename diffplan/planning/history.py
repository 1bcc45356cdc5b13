"""The executed transitions of N environments stepped in lockstep, handed as clean history tokens
to planners that condition on what was executed (Diffusion Forcing's MPC, ``planner.mode=forcing``).

A token ``stride`` environment steps apart holds the observed state and the action executed in it
(clipped to the action box, NaN as 0), exactly like a dataset window of a model trained with
``task.stride``. At step ``s`` the history is the ``h = min(n_history, s // stride)`` tokens at steps
``s - h * stride, ..., s - stride``; the current state (step ``s``) is the planner's own input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from diffplan.data import TrajectoryLayout


@dataclass
class ExecutedHistory:
    """Records every environment step and builds the history tokens of a plan.

    Args:
        n_history: the most history tokens of a plan.
        stride: environment steps between tokens (the model's ``task.stride``).
        action_low / action_high: the action box; the history holds the executed (clipped) actions.
    """

    n_history: int
    stride: int = 1
    action_low: float = -1.0
    action_high: float = 1.0
    _observations: list[np.ndarray] = field(default_factory=list, repr=False)
    _actions: list[np.ndarray] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.n_history < 0 or self.stride < 1:
            raise ValueError(f"n_history must be >= 0 and stride >= 1, got {self.n_history} and {self.stride}")

    @property
    def steps(self) -> int:
        """Environment steps recorded so far (the current step while planning)."""
        return len(self._observations)

    def reset(self) -> None:
        """Forget every recorded step."""
        self._observations, self._actions = [], []

    def record(self, step: int, observations: np.ndarray, actions: np.ndarray) -> None:
        """Record step ``step``: the observations (N, obs_dim) the actions (N, act_dim) were chosen in.

        Raises:
            RuntimeError: steps recorded out of order (the controller was not reset).
        """
        if step != self.steps:
            raise RuntimeError(f"history of step {step} recorded after {self.steps} steps; reset first")
        self._observations.append(np.asarray(observations, dtype=np.float64).copy())
        self._actions.append(np.clip(np.nan_to_num(actions), self.action_low, self.action_high))

    def tokens(self, index: np.ndarray, layout: TrajectoryLayout) -> Tensor:
        """(len(index), h, D) raw: the history tokens of environments ``index`` at the current step."""
        step = self.steps
        n_hist = min(self.n_history, step // self.stride)
        history = torch.zeros(len(index), n_hist, layout.transition_dim)
        if n_hist:
            steps = range(step - n_hist * self.stride, step, self.stride)
            obs = np.stack([self._observations[s] for s in steps], axis=1)[index]
            act = np.stack([self._actions[s] for s in steps], axis=1)[index]
            history[..., layout.obs] = torch.as_tensor(obs, dtype=torch.float32)
            history[..., layout.act] = torch.as_tensor(act, dtype=torch.float32)
        return history
