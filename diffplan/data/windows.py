"""Fixed-length windows (B, H, D) of normalized transitions for training.

All transitions are normalized once into one (T, D) table, followed by one padding token per
episode, so a batch is a single gather by index arithmetic. Randomness comes only from the
``torch.Generator`` passed to :meth:`WindowSampler.sample`; saving that generator's state is
enough to resume training bit-identically.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from diffplan.data.episodes import Episodes
from diffplan.data.errors import DatasetError
from diffplan.data.layout import TrajectoryLayout
from diffplan.data.normalizer import Normalizer


class TrajectoryBatch(NamedTuple):
    """One training batch.

    Attributes:
        x: (B, H, D) float32 normalized transitions in the layout's channel order.
        valid: (B, H) bool, False for padded tokens whose content is unknown (after a timeout).
        episode: (B,) int64 episode index of each window.
        start: (B,) int64 time step within the episode where each window starts.
    """

    x: Tensor
    valid: Tensor
    episode: Tensor
    start: Tensor


class WindowSampler:
    """Samples windows of ``horizon`` consecutive transitions uniformly over all windows.

    Without padding only windows fully inside an episode exist, and episodes shorter than
    ``horizon`` contribute none. With padding a window may start at any step and run past the
    episode end; padded tokens repeat the episode's last observation with zero action (zero
    in raw units, then normalized), zero reward and terminal flag = "ended by terminal". They
    are valid after a true terminal (absorbing state) and invalid after a timeout (unknown
    future).

    Args:
        episodes: the dataset.
        layout: channel layout of D; must match the dataset's dimensions.
        horizon: H, tokens per window (>= 1).
        normalizer: fitted on ``episodes.transitions(layout)``; its dim must equal D.
        pad: allow windows that run past the episode end.
        stride: environment steps between consecutive tokens (1 = every step). A window
            spans ``(horizon - 1) * stride + 1`` steps; each token holds the observation and
            action of its own step. Strided plans suit trackers that follow the planned
            states (the actions between tokens are not modelled).

    Raises:
        DatasetError: no window fits (names the horizon and the longest episode).
        ValueError: ``horizon`` < 1 or a normalizer of the wrong size.
    """

    def __init__(
        self,
        episodes: Episodes,
        layout: TrajectoryLayout,
        horizon: int,
        normalizer: Normalizer,
        *,
        pad: bool = False,
        stride: int = 1,
    ) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}; set task.stride to a positive integer")
        if normalizer.dim != layout.transition_dim:
            raise ValueError(
                f"normalizer has dim {normalizer.dim} but the layout's transition dim is "
                f"{layout.transition_dim}; fit it on episodes.transitions(layout)."
            )
        self.layout = layout
        self.horizon = horizon
        self.stride = stride
        self.pad = pad
        span = (horizon - 1) * stride + 1
        self.n_transitions = episodes.n_transitions
        raw = episodes.transitions(layout)  # (T, D)
        ends = episodes.starts + episodes.lengths  # (E,) exclusive
        terminal = episodes.ended_by_terminal  # (E,)
        pad_tokens = np.zeros((episodes.n_episodes, layout.transition_dim), dtype=np.float32)
        pad_tokens[:, layout.obs] = episodes.observations[ends - 1]
        pad_tokens[:, layout.term] = terminal[:, None][:, : int(layout.terminal)]
        table = torch.from_numpy(np.concatenate([raw, pad_tokens]))  # (T + E, D)
        with torch.no_grad():
            self.table = normalizer.normalize(table).to(torch.float32).contiguous()

        counts = episodes.lengths if pad else np.maximum(episodes.lengths - span + 1, 0)
        if counts.sum() == 0:
            raise DatasetError(
                f"{episodes.source}: no window of horizon {horizon} (stride {stride}, {span} steps) fits inside any "
                "episode "
                f"(longest episode has {int(episodes.lengths.max())} steps); lower the horizon "
                "or enable padding (pad=True)."
            )
        window_episode = np.repeat(np.arange(episodes.n_episodes), counts)  # (W,)
        first_window = np.cumsum(counts) - counts  # (E,) index of each episode's first window
        window_offset = np.arange(int(counts.sum())) - first_window[window_episode]  # (W,)
        self.window_episode = torch.from_numpy(window_episode.astype(np.int64))
        self.window_start = torch.from_numpy(window_offset.astype(np.int64))  # within episode
        self.episode_starts = torch.from_numpy(episodes.starts.astype(np.int64))
        self.episode_lengths = torch.from_numpy(episodes.lengths.astype(np.int64))
        self.ended_by_terminal = torch.from_numpy(terminal.copy())

    @property
    def n_windows(self) -> int:
        """W, the number of distinct windows."""
        return int(self.window_episode.shape[0])

    def __len__(self) -> int:
        return self.n_windows

    def sample(self, batch_size: int, generator: torch.Generator) -> TrajectoryBatch:
        """Draw ``batch_size`` windows uniformly with replacement using only ``generator``."""
        choice = torch.randint(self.n_windows, (batch_size,), generator=generator)  # (B,)
        episode = self.window_episode[choice]  # (B,)
        start = self.window_start[choice]  # (B,)
        return self.windows(episode, start)

    def windows(self, episode: Tensor, start: Tensor) -> TrajectoryBatch:
        """Deterministic batch of windows given (B,) episode indices and (B,) start steps."""
        steps = start[:, None] + self.stride * torch.arange(self.horizon)  # (B, H) step within the episode
        inside = steps < self.episode_lengths[episode][:, None]  # (B, H)
        rows = torch.where(
            inside,
            self.episode_starts[episode][:, None] + steps,
            self.n_transitions + episode[:, None],  # the episode's padding token
        )  # (B, H)
        x = self.table[rows]  # (B, H, D)
        valid = inside | self.ended_by_terminal[episode][:, None]  # (B, H)
        return TrajectoryBatch(x=x, valid=valid, episode=episode, start=start)
