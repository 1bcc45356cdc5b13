"""Dataset loaders: own HDF5 format, D4RL maze2d / locomotion files, Minari, and every error."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from diffplan.data import (
    DatasetError,
    DatasetNotFoundError,
    Episodes,
    TrajectoryLayout,
    load_episodes,
    load_hdf5,
    load_minari,
    write_hdf5,
)


def _arrays(n_rows: int, obs_dim: int = 3, act_dim: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(size=(n_rows, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n_rows, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n_rows).astype(np.float32),
        "terminals": np.zeros(n_rows, dtype=bool),
        "timeouts": np.zeros(n_rows, dtype=bool),
    }


def _locomotion_arrays() -> dict[str, np.ndarray]:
    """10 rows: terminal after row 2, timeout after row 6, then 3 unfinished rows."""
    arrays = _arrays(10)
    arrays["terminals"][2] = True
    arrays["timeouts"][6] = True
    arrays["next_observations"] = np.roll(arrays["observations"], -1, axis=0)
    arrays["infos/qpos"] = np.arange(20, dtype=np.float64).reshape(10, 2)
    arrays["infos/qvel"] = np.ones((10, 2))
    return arrays


def _episodes() -> Episodes:
    arrays = _arrays(9)
    arrays["terminals"][3] = True
    arrays["timeouts"][8] = True
    return Episodes.from_arrays(**arrays, goals=np.tile([[1.0, 2.0]], (9, 1)),
                                qpos=np.zeros((9, 2)), source="<test>", metadata={"task": "toy"})


# --- Episodes -------------------------------------------------------------------------------

def test_episodes_from_arrays_boundaries_and_views() -> None:
    episodes = _episodes()
    assert episodes.n_episodes == 2 and episodes.n_transitions == 9
    assert (episodes.obs_dim, episodes.act_dim) == (3, 2)
    np.testing.assert_array_equal(episodes.starts, [0, 4])
    np.testing.assert_array_equal(episodes.lengths, [4, 5])
    np.testing.assert_array_equal(episodes.ended_by_terminal, [True, False])
    second = episodes.episode(-1)
    assert second.observations.shape == (5, 3)
    assert np.shares_memory(second.observations, episodes.observations)
    assert second.qvel is None and second.goals is not None
    with pytest.raises(IndexError):
        episodes.episode(2)


def test_episodes_transitions_follow_layout() -> None:
    episodes = _episodes()
    layout = TrajectoryLayout(obs_dim=3, act_dim=2, reward=True, terminal=True)
    table = episodes.transitions(layout)
    assert table.shape == (9, 7) and table.dtype == np.float32
    np.testing.assert_array_equal(table[:, layout.act], episodes.actions)
    np.testing.assert_array_equal(table[:, layout.rew][:, 0], episodes.rewards)
    np.testing.assert_array_equal(table[:, layout.term][:, 0], episodes.terminals)
    assert episodes.transitions(TrajectoryLayout(obs_dim=3, act_dim=0)).shape == (9, 3)
    with pytest.raises(DatasetError, match=r"layout has obs_dim=4.*dataset has obs_dim=3"):
        episodes.transitions(TrajectoryLayout(obs_dim=4, act_dim=2))


def test_trailing_segment_becomes_timeout_episode() -> None:
    episodes = Episodes.from_arrays(**_arrays(5))
    np.testing.assert_array_equal(episodes.lengths, [5])
    assert episodes.timeouts[-1] and not episodes.ended_by_terminal[0]


# --- HDF5 -----------------------------------------------------------------------------------

def test_own_format_round_trip(tmp_path: Path) -> None:
    episodes = _episodes()
    path = write_hdf5(tmp_path / "sub" / "own.hdf5", episodes, {"seed": 3})
    assert not list(path.parent.glob(".*tmp*")), "temporary file left behind"
    loaded = load_hdf5(path)
    assert loaded.metadata["layout_kind"] == "diffplan"
    assert loaded.metadata["task"] == "toy" and loaded.metadata["seed"] == 3
    for name in ("observations", "actions", "rewards", "terminals", "timeouts", "starts",
                 "lengths", "goals", "qpos"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(episodes, name))
    assert loaded.qvel is None
    assert load_episodes(str(path)).n_episodes == 2


def test_d4rl_maze2d_splits_where_goal_changes(tmp_path: Path) -> None:
    arrays = _arrays(12)
    goals = np.zeros((12, 2))
    goals[4:9] = [1.0, 0.0]
    goals[9:] = [2.0, 2.0]
    arrays["infos/goal"] = goals
    arrays["terminals"][1] = True  # unreliable flags must be ignored
    arrays["timeouts"][6] = True
    path = write_hdf5(tmp_path / "maze2d-umaze-v1.hdf5", arrays)
    episodes = load_hdf5(path)
    assert episodes.metadata["layout_kind"] == "maze2d"
    np.testing.assert_array_equal(episodes.lengths, [4, 5, 3])
    assert not episodes.terminals.any()
    np.testing.assert_array_equal(np.flatnonzero(episodes.timeouts), [3, 8, 11])
    np.testing.assert_array_equal(episodes.episode(1).goals, np.tile([[1.0, 0.0]], (5, 1)))


def test_d4rl_locomotion_splits_on_terminals_and_timeouts(tmp_path: Path) -> None:
    path = write_hdf5(tmp_path / "hopper-medium-v2.hdf5", _locomotion_arrays())
    episodes = load_hdf5(path, expected_obs_dim=3, expected_act_dim=2)
    assert episodes.metadata["layout_kind"] == "locomotion"
    np.testing.assert_array_equal(episodes.lengths, [3, 4, 3])
    np.testing.assert_array_equal(episodes.ended_by_terminal, [True, False, False])
    assert episodes.timeouts[-1]
    assert episodes.qpos is not None and episodes.qpos.dtype == np.float32


def test_layout_kind_can_be_forced(tmp_path: Path) -> None:
    arrays = _locomotion_arrays()
    del arrays["next_observations"]
    arrays["infos/goal"] = np.zeros((10, 2))
    path = write_hdf5(tmp_path / "goal.hdf5", arrays)
    assert load_hdf5(path).n_episodes == 1  # auto: maze2d, constant goal
    assert load_hdf5(path, layout_kind="locomotion").n_episodes == 3


# --- Minari ---------------------------------------------------------------------------------

def _record_minari(root: Path, monkeypatch: pytest.MonkeyPatch, env_id: str, dataset_id: str,
                   n_episodes: int = 3, steps: int = 12) -> None:
    """Roll out random actions and write a dataset with minari.create_dataset_from_buffers.

    (minari.DataCollector would need jax, the ``minari[create]`` extra.)
    """
    minari = pytest.importorskip("minari")
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    if env_id.startswith("PointMaze"):
        gymnasium_robotics = pytest.importorskip("gymnasium_robotics")
        gym.register_envs(gymnasium_robotics)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    env = gym.make(env_id, max_episode_steps=steps)
    env.action_space.seed(0)
    buffers = []
    for episode in range(n_episodes):
        first, _ = env.reset(seed=episode)
        observations = [first]
        actions, rewards, terminations, truncations = [], [], [], []
        done = False
        while not done:
            action = env.action_space.sample()
            observation, reward, terminated, truncated, _ = env.step(action)
            observations.append(observation)
            actions.append(action)
            rewards.append(reward)
            terminations.append(terminated)
            truncations.append(truncated)
            done = terminated or truncated
        if isinstance(first, dict):
            stacked = {key: np.stack([o[key] for o in observations]) for key in first}
        else:
            stacked = np.stack(observations)
        buffers.append(EpisodeBuffer(id=episode, observations=stacked, actions=np.stack(actions),
                                     rewards=rewards, terminations=terminations,
                                     truncations=truncations, infos={}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # minari warns about unset author/permalink/eval_env
        minari.create_dataset_from_buffers(dataset_id, buffers, env=env, algorithm_name="random")
    env.close()


def test_minari_pointmaze_dict_observations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _record_minari(tmp_path, monkeypatch, "PointMaze_UMaze-v3", "pointmaze/random-v0")
    episodes = load_minari("pointmaze/random-v0", expected_obs_dim=4, expected_act_dim=2)
    assert episodes.source == "minari:pointmaze/random-v0"
    np.testing.assert_array_equal(episodes.lengths, [12, 12, 12])  # L, not L + 1
    assert episodes.goals is not None and episodes.goals.shape == (36, 2)
    assert episodes.timeouts[[11, 23, 35]].all() and not episodes.terminals.any()
    assert episodes.metadata["env_id"] == "PointMaze_UMaze-v3"
    by_path = load_episodes(tmp_path / "pointmaze" / "random-v0")
    by_id = load_episodes("minari:pointmaze/random-v0")
    np.testing.assert_array_equal(by_path.observations, episodes.observations)
    np.testing.assert_array_equal(by_id.actions, episodes.actions)


def test_minari_box_observations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _record_minari(tmp_path, monkeypatch, "Pendulum-v1", "pendulum/random-v0", n_episodes=2, steps=5)
    episodes = load_minari(tmp_path / "pendulum" / "random-v0" / "data")
    assert (episodes.obs_dim, episodes.act_dim, episodes.n_episodes) == (3, 1, 2)
    assert episodes.goals is None


def test_minari_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match=r"minari:nothing/here-v0.*MINARI_DATASETS_PATH"):
        load_episodes("minari:nothing/here-v0")
    _record_minari(tmp_path, monkeypatch, "Pendulum-v1", "pendulum/random-v0", n_episodes=1, steps=3)
    with pytest.raises(DatasetError, match=r"'actions' has dimension 1.*expected_act_dim=2"):
        load_minari("pendulum/random-v0", expected_act_dim=2)
    monkeypatch.setitem(sys.modules, "minari", None)
    with pytest.raises(ImportError, match=r'pip install "diffplan\[minari\]"'):
        load_minari("pendulum/random-v0")


# --- Errors ---------------------------------------------------------------------------------

def test_missing_and_non_hdf5_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"absent\.hdf5: no such file"):
        load_hdf5(tmp_path / "absent.hdf5")
    fake = tmp_path / "fake.hdf5"
    fake.write_text("not hdf5")
    with pytest.raises(DatasetError, match=r"fake\.hdf5: not an HDF5 file"):
        load_episodes(fake)
    with pytest.raises(DatasetError, match=r"layout_kind='d4rl'.*'auto', 'diffplan', 'maze2d'"):
        load_hdf5(fake, layout_kind="d4rl")  # type: ignore[arg-type]


def test_empty_files(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "nothing.hdf5", "w"):
        pass
    with pytest.raises(DatasetError, match=r"nothing\.hdf5: the file is empty"):
        load_hdf5(tmp_path / "nothing.hdf5")
    path = write_hdf5(tmp_path / "zero.hdf5", _arrays(0))
    with pytest.raises(DatasetError, match=r"zero\.hdf5: the dataset is empty.*'observations'"):
        load_hdf5(path)


def test_missing_key_names_key_present_keys_and_layout(tmp_path: Path) -> None:
    arrays = _locomotion_arrays()
    del arrays["timeouts"]
    path = write_hdf5(tmp_path / "walker.hdf5", arrays)
    with pytest.raises(DatasetError, match=r"missing key\(s\) \['timeouts'\].*present keys: "
                       r"\['actions', .*'locomotion' layout needs"):
        load_hdf5(path)
    with pytest.raises(DatasetError, match=r"layout_kind='diffplan' needs a root attribute"):
        load_hdf5(path, layout_kind="diffplan")


@pytest.mark.parametrize(
    ("key", "bad", "pattern"),
    [
        ("actions", np.zeros((9, 2)), r"key 'actions' has 9 rows but 'observations' has 10"),
        ("infos/qpos", np.zeros((11, 2)), r"key 'infos/qpos' has 11 rows"),
        ("rewards", np.where(np.arange(10) == 3, np.nan, 0.0),
         r"'rewards' holds NaN or inf, first at index 3"),
        ("observations", np.where(np.arange(30).reshape(10, 3) == 20, np.inf, 0.0),
         r"'observations' holds NaN or inf, first at index 6"),
        ("observations", np.zeros(10), r"'observations' must be 2-D"),
    ],
)
def test_invalid_arrays(tmp_path: Path, key: str, bad: np.ndarray, pattern: str) -> None:
    arrays = _locomotion_arrays()
    arrays[key] = bad
    path = write_hdf5(tmp_path / "bad.hdf5", arrays)
    with pytest.raises(DatasetError, match=rf"bad\.hdf5: .*{pattern}"):
        load_hdf5(path)


def test_dimension_mismatch_names_file_and_both_dims(tmp_path: Path) -> None:
    path = write_hdf5(tmp_path / "hopper.hdf5", _locomotion_arrays())
    with pytest.raises(DatasetError, match=r"hopper\.hdf5: key 'observations' has dimension 3 but the "
                       r"task expects expected_obs_dim=11"):
        load_episodes(path, expected_obs_dim=11)


def test_unknown_sources(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(DatasetError, match=r"notes\.txt: unrecognised dataset source.*minari:<dataset id>"):
        load_episodes(notes)
    with pytest.raises(DatasetNotFoundError, match=r"nowhere: no such file or folder"):
        load_episodes(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"fmt='csv'.*\['auto', 'hdf5', 'minari'\]"):
        load_episodes(notes, fmt="csv")  # type: ignore[arg-type]


def test_reference_scores_from_metadata_or_a_clear_error(tmp_path: Path) -> None:
    from diffplan.data.hdf5 import read_metadata, reference_scores

    plain = write_hdf5(tmp_path / "d4rl.hdf5", _arrays(6))
    assert read_metadata(plain) == {}
    with pytest.raises(DatasetError, match="no ref_scores"):
        reference_scores(plain)
    ref = {"method": "minari", "min": 1.0, "max": 9.0}
    own = write_hdf5(tmp_path / "own.hdf5", _arrays(6), {"ref_scores": ref})
    assert reference_scores(own) == {**ref, "source": "own.hdf5 metadata"}
    with pytest.raises(DatasetError, match="diffplan-collect"):
        reference_scores(tmp_path / "missing.hdf5")
