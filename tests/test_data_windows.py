"""Training windows: placement inside episodes, padding semantics, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffplan.data import (
    DatasetError,
    Episodes,
    GaussianNormalizer,
    TrajectoryLayout,
    WindowSampler,
)

LAYOUT = TrajectoryLayout(obs_dim=1, act_dim=1, reward=True, terminal=True)


def _episodes() -> Episodes:
    """Episodes of length 4 (terminal), 3 (timeout), 2 (timeout); observation = row index."""
    n_rows = 9
    terminals = np.zeros(n_rows, dtype=bool)
    timeouts = np.zeros(n_rows, dtype=bool)
    terminals[3] = True
    timeouts[[6, 8]] = True
    return Episodes.from_arrays(
        observations=np.arange(n_rows, dtype=np.float32)[:, None],
        actions=np.full((n_rows, 1), 5.0, dtype=np.float32),
        rewards=np.ones(n_rows, dtype=np.float32),
        terminals=terminals,
        timeouts=timeouts,
    )


def _identity() -> GaussianNormalizer:
    return GaussianNormalizer(torch.zeros(LAYOUT.transition_dim), torch.ones(LAYOUT.transition_dim))


def test_windows_lie_inside_episodes() -> None:
    sampler = WindowSampler(_episodes(), LAYOUT, horizon=3, normalizer=_identity())
    assert len(sampler) == sampler.n_windows == 2 + 1  # episode 2 is shorter than H
    batch = sampler.sample(64, torch.Generator().manual_seed(0))
    assert batch.x.shape == (64, 3, 4) and batch.x.dtype == torch.float32
    assert batch.valid.all()
    obs = batch.x[..., LAYOUT.obs][..., 0]  # (B, H) row indices
    torch.testing.assert_close(obs[:, 1:] - obs[:, :-1], torch.ones(64, 2))
    starts = torch.tensor([0, 4])[batch.episode] + batch.start
    torch.testing.assert_close(obs[:, 0], starts.float())
    assert set(batch.episode.tolist()) <= {0, 1}


def test_padding_repeats_last_observation_with_zero_action() -> None:
    normalizer = GaussianNormalizer(torch.tensor([1.0, 2.0, 0.5, 0.0]), torch.tensor([2.0, 4.0, 1.0, 1.0]))
    sampler = WindowSampler(_episodes(), LAYOUT, horizon=4, normalizer=normalizer, pad=True)
    assert sampler.n_windows == 9
    batch = sampler.windows(torch.tensor([0, 1, 2]), torch.tensor([2, 1, 0]))
    raw = normalizer.unnormalize(batch.x)  # (3, 4, D)
    expected_obs = torch.tensor([[2.0, 3.0, 3.0, 3.0], [5.0, 6.0, 6.0, 6.0], [7.0, 8.0, 8.0, 8.0]])
    torch.testing.assert_close(raw[..., LAYOUT.obs][..., 0], expected_obs)
    expected_act = torch.tensor([[5.0, 5.0, 0.0, 0.0], [5.0, 5.0, 0.0, 0.0], [5.0, 5.0, 0.0, 0.0]])
    torch.testing.assert_close(raw[..., LAYOUT.act][..., 0], expected_act)
    torch.testing.assert_close(raw[..., LAYOUT.rew][..., 0], (expected_act != 0).float())
    # absorbing state after a terminal keeps the terminal flag; after a timeout it is 0
    torch.testing.assert_close(raw[0, :, LAYOUT.term][:, 0], torch.tensor([0.0, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(raw[1, :, LAYOUT.term][:, 0], torch.zeros(4))
    expected_valid = torch.tensor([[True] * 4, [True, True, False, False], [True, True, False, False]])
    assert torch.equal(batch.valid, expected_valid)


def test_padded_sampling_covers_every_start() -> None:
    sampler = WindowSampler(_episodes(), LAYOUT, horizon=6, normalizer=_identity(), pad=True)
    batch = sampler.sample(500, torch.Generator().manual_seed(1))
    pairs = set(zip(batch.episode.tolist(), batch.start.tolist(), strict=True))
    assert pairs == {(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)}
    assert batch.valid[batch.episode == 0].all()
    assert not batch.valid[batch.episode == 2][:, 2:].any()


def test_same_generator_seed_same_batches() -> None:
    sampler = WindowSampler(_episodes(), LAYOUT, horizon=2, normalizer=_identity(), pad=True)
    first, second = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    a = [sampler.sample(16, first) for _ in range(3)]
    torch.manual_seed(123)  # the global RNG must not matter
    b = [sampler.sample(16, second) for _ in range(3)]
    for batch_a, batch_b in zip(a, b, strict=True):
        for field_a, field_b in zip(batch_a, batch_b, strict=True):
            assert torch.equal(field_a, field_b)
    resumed = torch.Generator()
    resumed.set_state(first.get_state())
    assert torch.equal(sampler.sample(16, resumed).x, sampler.sample(16, first).x)


def test_horizon_longer_than_every_episode() -> None:
    with pytest.raises(DatasetError, match=r"no window of horizon 5 .*longest episode has 4 steps.*pad=True"):
        WindowSampler(_episodes(), LAYOUT, horizon=5, normalizer=_identity())
    assert WindowSampler(_episodes(), LAYOUT, horizon=5, normalizer=_identity(), pad=True).n_windows == 9


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"horizon must be >= 1, got 0"):
        WindowSampler(_episodes(), LAYOUT, horizon=0, normalizer=_identity())
    small = GaussianNormalizer(torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match=r"normalizer has dim 2 but the layout's transition dim is 4"):
        WindowSampler(_episodes(), LAYOUT, horizon=2, normalizer=small)


def test_stride_spaces_tokens_and_counts_windows_by_span() -> None:
    # Horizon 2 with stride 2 spans 3 steps: episode 0 (4 steps) has 2 windows, episode 1 (3) has 1.
    sampler = WindowSampler(_episodes(), LAYOUT, horizon=2, normalizer=_identity(), stride=2)
    assert sampler.n_windows == 3
    batch = sampler.windows(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0]))
    obs = batch.x[..., LAYOUT.obs][..., 0]
    torch.testing.assert_close(obs, torch.tensor([[0.0, 2.0], [1.0, 3.0], [4.0, 6.0]]))
    with pytest.raises(ValueError, match="task.stride"):
        WindowSampler(_episodes(), LAYOUT, horizon=2, normalizer=_identity(), stride=0)
    with pytest.raises(DatasetError, match="stride 4"):
        WindowSampler(_episodes(), LAYOUT, horizon=2, normalizer=_identity(), stride=4)


def test_joined_keeps_only_terminal_boundaries() -> None:
    joined = _episodes().joined()
    # Episode 0 ends by terminal at row 3; rows 4-8 (two timeout episodes) become one.
    assert joined.starts.tolist() == [0, 4] and joined.lengths.tolist() == [4, 5]
    assert joined.terminals[3] and not joined.timeouts[6] and joined.timeouts[8]
    sampler = WindowSampler(joined, LAYOUT, horizon=5, normalizer=_identity())
    assert sampler.n_windows == 1  # only the joined 5-step stream fits H = 5
