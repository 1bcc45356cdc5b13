"""episodes.npz (eval.save_episodes): every episode's observations and plans, through the evaluator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_evaluator import FakeBatch, _evaluate, _policy

from diffplan.evaluation.episodes import load_episodes, save_episodes


def test_evaluator_traces_every_episode_and_round_trips(tmp_path: Path) -> None:
    out = _evaluate(_policy(), FakeBatch, n_episodes=3, n_envs=2, seeds=[0, 7], n_traces=6)
    assert len(out.traces) == 6
    assert [t.reset_seed for t in out.traces] == [e.reset_seed for e in out.episodes]
    path = save_episodes(tmp_path / "episodes.npz", out.traces)
    saved = load_episodes(path)
    assert len(saved) == 6
    assert saved.seed.tolist() == [0, 0, 0, 7, 7, 7]
    assert saved.reset_seed.tolist() == [e.reset_seed for e in out.episodes]
    assert saved.lengths.tolist() == [e.length for e in out.episodes]
    for row, trace in enumerate(out.traces):
        np.testing.assert_allclose(saved.executed(row), trace.observations, rtol=1e-6)
        assert np.isnan(saved.observations[row, saved.lengths[row] + 1:]).all()  # padding
        assert len(saved.trace(row).plans) == len(trace.plans) == 1
    assert saved.index(7, 2) == 5
    with pytest.raises(KeyError, match="no episode with seed 3"):
        saved.index(3, 0)


def test_without_plans_and_default_trace_count(tmp_path: Path) -> None:
    out = _evaluate(_policy(), FakeBatch, n_episodes=3, n_envs=3, seeds=[0, 1], n_traces=6, trace_plans=False)
    assert all(not t.plans for t in out.traces)
    saved = load_episodes(save_episodes(tmp_path / "e.npz", out.traces, include_plans=False))
    assert saved.plans.shape[0] == 0 and saved.plan_episode.size == 0
    assert len(_evaluate(_policy(), FakeBatch, n_episodes=3, n_envs=3, seeds=[0, 1, 2]).traces) == 6  # default


def test_load_names_missing_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", observations=np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match=r"missing array\(s\) \['lengths'.*eval.save_episodes=true"):
        load_episodes(tmp_path / "bad.npz")
