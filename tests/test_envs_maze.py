"""Tests of the PointMaze suite: geometry, Q-iteration controller, lockstep batch, collector."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from diffplan_envs import (
    MAZE_TASKS,
    MazeBatch,
    WaypointController,
    collect_maze_dataset,
    compute_maze_reference_scores,
    get_maze_task,
    maze_geometry,
    normalized_score,
)
from diffplan_envs.collect_maze import DATASET_KEYS

UMAZE = "pointmaze-umaze"


def test_task_table_matches_registered_episode_lengths() -> None:
    import gymnasium
    from diffplan_envs.maze import _register_envs

    _register_envs()
    for task in MAZE_TASKS.values():
        assert gymnasium.spec(task.env_id).max_episode_steps == task.episode_steps
    with pytest.raises(ValueError, match="pointmaze-umaze"):
        get_maze_task("pointmaze-tiny")


@pytest.mark.parametrize("task", sorted(MAZE_TASKS))
def test_xy_cell_round_trip(task: str) -> None:
    geometry = maze_geometry(task)
    cells = geometry.free_cells()
    centers = geometry.cell_to_xy(cells)  # (F, 2)
    np.testing.assert_array_equal(geometry.xy_to_cell(centers), cells)
    jitter = np.random.default_rng(0).uniform(-0.49, 0.49, size=centers.shape) * geometry.scaling
    np.testing.assert_array_equal(geometry.xy_to_cell(centers + jitter), cells)
    assert set(np.unique(geometry.maze_map)) <= {0, 1}
    assert len(geometry.wall_rectangles()) == int((geometry.maze_map == 1).sum())


@pytest.mark.parametrize("task", sorted(MAZE_TASKS))
def test_greedy_path_reaches_goal_from_every_cell(task: str) -> None:
    geometry = maze_geometry(task)
    controller = WaypointController(geometry)
    free = {tuple(int(v) for v in cell) for cell in geometry.free_cells()}
    for goal in free:
        for start in free:
            path = controller.greedy_path(start, goal)
            assert path[-1] == goal
            assert all(cell in free for cell in path)
            steps = np.abs(np.diff(np.array(path), axis=0)).sum(axis=1)
            assert np.all(steps == 1)


def test_controller_reaches_goal_within_episode() -> None:
    batch = MazeBatch(UMAZE, 4)
    controller = WaypointController(batch.geometry)
    obs, goal = batch.reset([0, 1, 2, 3])
    reached = np.zeros(4, dtype=bool)
    for _ in range(batch.task.episode_steps):
        result = batch.step(controller.act(obs, goal))
        obs = result.obs
        reached |= result.success
    batch.close()
    assert reached.all()
    assert result.success.all()  # and it stays there


def test_maze_batch_steps_only_active_envs() -> None:
    batch = MazeBatch(UMAZE, 3)
    obs0, goal0 = batch.reset([5, 6, 7])
    assert obs0.shape == (3, 4) and goal0.shape == (3, 2)
    active = np.array([True, False, True])
    result = batch.step(np.ones((3, 2)), active)
    np.testing.assert_array_equal(result.obs[1], obs0[1])
    assert not np.allclose(result.obs[[0, 2], 2:], 0.0)
    np.testing.assert_array_equal(batch.qpos, result.obs[:, :2])
    np.testing.assert_array_equal(batch.qvel, result.obs[:, 2:])
    assert result.reward[1] == 0.0
    with pytest.raises(ValueError, match="shape"):
        batch.step(np.ones((2, 2)))
    with pytest.raises(ValueError, match="seed"):
        batch.reset([1])
    batch.close()


def test_reference_scores_order_and_normalization() -> None:
    scores = compute_maze_reference_scores(UMAZE, n_episodes=4, seed=0, n_envs=4)
    assert scores["max"] > scores["min"] >= 0.0
    np.testing.assert_allclose(
        normalized_score(np.array([scores["min"], scores["max"]]), scores["min"], scores["max"]), [0.0, 100.0]
    )
    with pytest.raises(ValueError, match="ref_max"):
        normalized_score(1.0, 5.0, 5.0)


class _Interrupt(Exception):
    pass


def _collect(path: Path, **kwargs: object) -> Path:
    args: dict = {"n_steps": 3000, "seed": 7, "chunk_steps": 1000, "ref_episodes": 2, "progress": False}
    args.update(kwargs)
    return collect_maze_dataset(UMAZE, path=path, **args)


def _read(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as file:
        return {key: file[key][:] for key, _, _ in DATASET_KEYS}


def test_collector_writes_d4rl_layout(tmp_path: Path) -> None:
    path = _collect(tmp_path / "umaze.hdf5")
    data = _read(path)
    for key, shape, dtype in DATASET_KEYS:
        assert data[key].shape == (3000, *shape) and data[key].dtype == dtype, key
    assert not data["terminals"].any() and data["timeouts"][-1]
    goal_changes = np.any(data["infos/goal"][1:] != data["infos/goal"][:-1], axis=1)
    np.testing.assert_array_equal(goal_changes, data["timeouts"][:-1])
    assert goal_changes.sum() >= 5
    assert np.all(data["rewards"][data["timeouts"][:-1].nonzero()[0]] == 1.0)
    np.testing.assert_array_equal(data["observations"][:, :2], data["infos/qpos"])
    assert np.abs(data["actions"]).max() <= 1.0
    with h5py.File(path, "r") as file:
        meta = json.loads(file.attrs["metadata"])
        assert file.attrs["ref_max_score"] == meta["ref_scores"]["max"]
    assert meta["format"] == "diffplan-d4rl" and meta["task"] == UMAZE and meta["n_steps"] == 3000
    assert meta["recipe"]["p_gain"] == 10.0 and meta["ref_scores"]["method"] == "minari"
    assert not (tmp_path / "umaze.hdf5.partial").exists()
    assert _collect(path) == path  # finished file: returned as is
    with pytest.raises(ValueError, match="already exists"):
        _collect(path, seed=8)


def test_collector_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    full = _read(_collect(tmp_path / "full.hdf5"))

    def stop_after_first_chunk(steps: int) -> None:
        raise _Interrupt

    path = tmp_path / "resumed.hdf5"
    with pytest.raises(_Interrupt):
        _collect(path, on_chunk=stop_after_first_chunk)
    partial = tmp_path / "resumed.hdf5.partial"
    assert partial.exists() and not path.exists()
    with pytest.raises(ValueError, match="delete"):
        _collect(path, seed=8)
    resumed = _read(_collect(path, chunk_steps=700))
    for key in full:
        np.testing.assert_array_equal(resumed[key], full[key], err_msg=key)


def test_plans_through_walls_are_flagged_from_the_map() -> None:
    """umaze (scaling 1): free cells at y = 1 (x -1..1), (1, 0), and y = -1 (x -1..1); (-1, 0) and (0, 0) are walls."""
    from diffplan_envs import maze_geometry

    geometry = maze_geometry("pointmaze-umaze")
    along_the_u = [[-1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, -1.0], [0.0, -1.0], [-1.0, -1.0]]
    straight_down = [[-1.0, 1.0], [-1.0, -1.0]]  # the segment passes through the wall cell at (-1, 0)
    off_the_map = [[1.0, 1.0], [2.6, 1.0]]
    corner = [[0.0, 1.0], [1.0, 0.0]]  # touches the wall cell around (0, 0) only at its corner (0.5, 0.5)
    flags = geometry.crosses_walls(np.array([along_the_u[:2], straight_down, off_the_map, corner]))
    assert flags.tolist() == [False, True, True, False]
    assert geometry.crosses_walls(np.array(along_the_u)).item() is False
    assert geometry.crosses_walls(np.array([[0.0, 0.0]])).item() is True  # a single point inside a wall
    with pytest.raises(ValueError, match=r"paths must be \(\.\.\., H, 2\)"):
        geometry.crosses_walls(np.zeros((3, 4)))
