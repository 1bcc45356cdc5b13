"""Bring your own data: D4RL-layout files (maze2d and locomotion keys only, no project metadata) and
Minari datasets (by id and by folder) through ``diffplan-train`` and ``diffplan-evaluate`` on the
command line; the reference scale results.json records; dataset identity; and bad datasets, each
refused with one line that names the value and the fix."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from errors_helpers import digest as _digest
from errors_helpers import one_line
from test_commands import tiny_config, tiny_overrides

from diffplan.data import load_episodes, write_hdf5
from diffplan.data.errors import DatasetError
from diffplan.data.identity import check_same_dataset, dataset_record
from diffplan.pipeline.train import run_train
from diffplan.reporting.markdown import eval_report

#: D4RL's published reference returns for hopper (d4rl/infos.py).
HOPPER_REF = (-20.272305, 3234.3)
#: Identities (diffplan.data.identity) of the arrays below: a change to the hashing or the loaders shows here.
MAZE_IDENTITY = "c954fd330de0"
HOPPER_IDENTITY = "f0b7ba88ebec"
MINARI_IDENTITY = "14a0db686eac"

TINY_LOCOMOTION = [
    "+experiment=locomotion", "task=hopper-medium", "task.horizon=8", "task.episode_steps=12",
    "model.unet.dim=8", "model.unet.dim_mults=[1,2]", "diffusion.n_timesteps=8", "diffusion.sampling_steps=4",
    "train.steps=4", "train.batch_size=4", "train.ckpt_every=2", "train.progress=false", "train.threads=1",
    "guidance=none", "planner.n_candidates=1", "planner.warm_start.level=2", "planner.warm_start.steps=1",
    "eval.n_episodes=2", "eval.n_envs=2", "eval.seeds=[0]", "eval.progress=false",
]
#: Two 60-step episodes instead of tiny_overrides' six of 300.
TINY_MAZE_EVALUATION = ["task.episode_steps=60", "eval.n_episodes=2", "eval.seeds=[0]", "eval.progress=false"]


def _pattern(n_rows: int, n_cols: int, period: int, scale: float = 8.0) -> np.ndarray:
    """(n_rows, n_cols) float32 of exact binary fractions in [-1, 1): the same bytes on every machine."""
    rows, cols = np.arange(n_rows)[:, None], np.arange(n_cols)[None, :]
    return (((rows * (cols + 1) + 3 * cols) % period) / scale - 1.0).astype(np.float32)


def _write(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """A file with the given keys and nothing else (no root attributes), as D4RL writes them."""
    with h5py.File(path, "w") as handle:
        for key, value in arrays.items():
            handle.create_dataset(key, data=value)
    return path


def _maze2d_arrays(n_rows: int = 400) -> dict[str, np.ndarray]:
    """D4RL maze2d's keys: no next_observations; the goal changes every 100 steps; flags all False."""
    observations = _pattern(n_rows, 4, 16)
    goals = np.repeat(_pattern(n_rows // 100, 2, 5, 2.0), 100, axis=0).astype(np.float64)
    return {
        "observations": observations, "actions": _pattern(n_rows, 2, 15),
        "rewards": (np.arange(n_rows) % 7 == 0).astype(np.float32),
        "terminals": np.zeros(n_rows, dtype=bool), "timeouts": np.zeros(n_rows, dtype=bool),
        "infos/goal": goals, "infos/qpos": observations[:, :2].astype(np.float64),
        "infos/qvel": observations[:, 2:].astype(np.float64),
    }


def _hopper_arrays(n_rows: int = 240) -> dict[str, np.ndarray]:
    """D4RL locomotion's keys: next_observations, terminals and timeouts, infos/*, metadata/*."""
    observations = _pattern(n_rows + 1, 11, 13)
    terminals, timeouts = np.zeros(n_rows, dtype=bool), np.zeros(n_rows, dtype=bool)
    terminals[[n_rows // 5 - 1, 3 * n_rows // 4 - 1]] = True
    timeouts[[n_rows // 2 - 1, n_rows - 1]] = True
    return {
        "observations": observations[:-1], "next_observations": observations[1:], "actions": _pattern(n_rows, 3, 9),
        "rewards": ((np.arange(n_rows) % 5) / 4).astype(np.float32), "terminals": terminals, "timeouts": timeouts,
        "infos/action_log_probs": np.zeros(n_rows, dtype=np.float32),
        "infos/qpos": _pattern(n_rows, 6, 11).astype(np.float64),
        "infos/qvel": _pattern(n_rows, 6, 7).astype(np.float64),
        "metadata/algorithm": np.array(b"SAC"), "metadata/iteration": np.array(1000),
    }


def _write_minari(root: Path, dataset_id: str = "own/umaze-v0") -> Path:
    """Three 40-step PointMaze episodes written through Minari's own API, with reference returns."""
    import gymnasium as gym
    import gymnasium_robotics
    import minari
    from minari.data_collector import EpisodeBuffer

    gym.register_envs(gymnasium_robotics)  # MINARI_DATASETS_PATH=root is the caller's
    buffers = []
    for episode in range(3):
        steps = 40
        position = _pattern(steps + 1, 4, 12 + episode).astype(np.float64)
        goal = np.tile(_pattern(1, 2, 5 + episode, 2.0).astype(np.float64), (steps + 1, 1))
        observations = {"observation": position, "achieved_goal": position[:, :2], "desired_goal": goal}
        buffers.append(EpisodeBuffer(
            id=episode, observations=observations, actions=_pattern(steps, 2, 9 + episode),
            rewards=[float(t % 4 == 0) for t in range(steps)], terminations=[False] * steps,
            truncations=[False] * (steps - 1) + [True], infos={}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # minari warns about unset author/permalink/eval_env
        minari.create_dataset_from_buffers(dataset_id, buffers, env="PointMaze_UMaze-v3", algorithm_name="test",
                                           ref_min_score=1.5, ref_max_score=41.5)
    return root / dataset_id


_CALLS = itertools.count()


def _one_line(proc: subprocess.CompletedProcess[str], *needles: str, command: str = "diffplan-evaluate") -> str:
    return one_line(proc, *needles, command=command)


def _command(module: str, folder: Path, *overrides: str, locomotion: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m diffplan.cli.<module>`` with the tiny settings; its Hydra record goes to a folder of its
    own under folder/hydra, so the run's files stay as they were."""
    base = TINY_LOCOMOTION if locomotion else [*(o for o in tiny_overrides(folder) if not o.startswith("task.dataset")),
                                               *TINY_MAZE_EVALUATION]
    record = folder / "hydra" / f"{next(_CALLS)}-{module}"
    args = [*base, f"run_dir={folder / 'run'}", f"hydra.run.dir={record}", *overrides]
    return subprocess.run([sys.executable, "-m", f"diffplan.cli.{module}", *args], capture_output=True, text=True,
                          cwd=folder, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _train_and_evaluate(folder: Path, *overrides: str, locomotion: bool = False) -> dict:
    for module in ("train", "evaluate"):
        proc = _command(module, folder, *overrides, locomotion=locomotion)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((folder / "run" / "eval" / "results.json").read_text())


def _check_scores(results: dict, low: float, high: float) -> None:
    """Every episode's normalized score is its return on the (low, high) scale."""
    returns = np.array([e["episode_return"] for e in results["episodes"]])
    scores = np.array([e["normalized_score"] for e in results["episodes"]])
    np.testing.assert_allclose(scores, 100 * (returns - low) / (high - low), rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def maze_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a D4RL maze2d-layout file (maze2d-umaze.hdf5) and a model trained on it by diffplan-train."""
    folder = tmp_path_factory.mktemp("own-maze")
    data = _write(folder / "maze2d-umaze.hdf5", _maze2d_arrays())
    proc = _command("train", folder, f"task.dataset={data}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


def test_d4rl_maze_file_trains_and_evaluates_with_reference_returns_from_the_config(maze_run: Path) -> None:
    data = maze_run / "maze2d-umaze.hdf5"
    proc = _command("evaluate", maze_run, f"task.dataset={data}", "task.ref_min=0", "task.ref_max=200")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((maze_run / "run" / "eval" / "results.json").read_text())
    assert results["reference_scores"] == {"method": "config", "min": 0.0, "max": 200.0,
                                           "source": "task.ref_min / task.ref_max"}
    _check_scores(results, 0.0, 200.0)
    assert "(task.ref_min/ref_max scale; mean ± standard error" in eval_report(results)
    dataset = results["dataset"]
    assert dataset["path"] == str(data) and dataset["layout"] == "maze2d"
    assert dataset["identity"].startswith(MAZE_IDENTITY) and dataset["matches_checkpoint"] is True
    assert dataset["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert (dataset["n_transitions"], dataset["n_episodes"]) == (400, 4)


def test_d4rl_locomotion_file_is_normalized_with_d4rl_reference_returns(tmp_path: Path) -> None:
    data = _write(tmp_path / "hopper-medium-v2.hdf5", _hopper_arrays())
    results = _train_and_evaluate(tmp_path, f"task.dataset={data}", locomotion=True)
    ref = results["reference_scores"]
    assert (ref["method"], ref["min"], ref["max"]) == ("d4rl", *HOPPER_REF) and "hopper" in ref["source"]
    _check_scores(results, *HOPPER_REF)
    assert "(D4RL scale; mean ± standard error" in eval_report(results)
    assert results["dataset"]["identity"].startswith(HOPPER_IDENTITY)
    assert (results["dataset"]["layout"], results["dataset"]["n_episodes"]) == ("locomotion", 4)


def test_minari_dataset_by_id_and_by_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("minari")
    pytest.importorskip("gymnasium_robotics")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    folder = _write_minari(tmp_path / "minari")
    # Trained by id, evaluated by folder: the same data, so the identities match.
    proc = _command("train", tmp_path, "task.dataset=minari:own/umaze-v0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _command("evaluate", tmp_path, f"task.dataset={folder}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert results["reference_scores"] == {"method": "minari", "min": 1.5, "max": 41.5,
                                           "source": f"{folder} metadata (ref_min_score, ref_max_score)"}
    _check_scores(results, 1.5, 41.5)
    assert "(Minari-style scale; mean ± standard error" in eval_report(results)
    dataset = results["dataset"]
    assert dataset["path"] == str(folder) and dataset["layout"] == "minari" and dataset["sha256"] is None
    assert dataset["identity"].startswith(MINARI_IDENTITY) and dataset["matches_checkpoint"] is True
    assert (dataset["n_transitions"], dataset["n_episodes"]) == (120, 3)


def test_identity_is_the_arrays_and_recipe_not_the_files_bytes(tmp_path: Path) -> None:
    arrays = _maze2d_arrays()
    recipe = {"task": "pointmaze-umaze", "seed": 0, "ref_scores": {"method": "minari", "min": 0.0, "max": 200.0}}
    first = write_hdf5(tmp_path / "first.hdf5", arrays, {**recipe, "created_at": "2024-01-01T00:00:00"})
    again = write_hdf5(tmp_path / "again.hdf5", arrays, {**recipe, "created_at": "2025-06-30T12:00:00",
                                                          "package_versions": {"torch": "9"}})
    other = write_hdf5(tmp_path / "other.hdf5", arrays, {**recipe, "seed": 1, "created_at": "2024-01-01T00:00:00"})
    records = {path.name: dataset_record(path, load_episodes(path)) for path in (first, again, other)}
    assert records["first.hdf5"]["sha256"] != records["again.hdf5"]["sha256"]
    assert records["first.hdf5"]["identity"] == records["again.hdf5"]["identity"]
    assert records["first.hdf5"]["identity"] != records["other.hdf5"]["identity"]
    # Evaluation's check: the same data passes; other data at the trained-on path is named as changed;
    # a checkpoint that records only a file hash (written before identities) is let through with a note.
    check = {"what": "checkpoint c.pt", "key": "task.dataset", "fix": "retrain"}
    assert check_same_dataset(records["first.hdf5"], records["again.hdf5"], **check) is None
    moved = {**records["other.hdf5"], "path": records["first.hdf5"]["path"]}
    with pytest.raises(DatasetError, match=r"first\.hdf5, identity .*changed since training: restore it there, or"):
        check_same_dataset(records["first.hdf5"], moved, **check)
    legacy = {"path": records["first.hdf5"]["path"], "sha256": records["first.hdf5"]["sha256"]}
    assert check_same_dataset(legacy, records["first.hdf5"], **check) is None
    assert "records only the file hash" in str(check_same_dataset(legacy, records["again.hdf5"], **check))

    # Training resumes on an identical re-collection (other bytes), and refuses other data.
    cfg = tiny_config(tmp_path, [f"task.dataset={first}"])
    assert run_train(cfg).steps == 4
    cfg.task.dataset, cfg.train.steps = str(again), 6
    assert run_train(cfg).resumed_from == 4
    cfg.task.dataset = str(other)
    # (The checkpoint records the dataset of its latest training, the re-collection.)
    with pytest.raises(ValueError, match=r"cannot resume .*again\.hdf5 \(identity .*other\.hdf5 has identity"):
        run_train(cfg)


# --- bad datasets: one line, exit status 2, nothing written ------------------------------------------


def _bad_files(folder: Path) -> dict[str, Path]:
    hopper = _hopper_arrays(40)
    no_actions = {k: v for k, v in hopper.items() if k != "actions"}
    return {"hopper": _write(folder / "hopper.hdf5", hopper),
            "no-actions": _write(folder / "no-actions.hdf5", no_actions)}


@pytest.mark.parametrize(
    ("task", "dataset", "needles"),
    [
        ("pointmaze-umaze", "hopper", ("task.dataset=", "hopper.hdf5", "key 'observations' has dimension 11",
                                       "task pointmaze-umaze needs 4", "pass a dataset recorded for pointmaze-umaze")),
        ("hopper-medium", "no-actions", ("no-actions.hdf5", "missing key(s) ['actions']", "re-export the file")),
        ("hopper-medium", "minari:nothing/here-v0", ("minari:nothing/here-v0", "MINARI_DATASETS_PATH",
                                                     "minari download nothing/here-v0")),
    ],
)
def test_a_bad_dataset_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str, dataset: str, needles: tuple[str, ...]
) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    files = _bad_files(tmp_path)
    source = str(files.get(dataset, dataset))
    before = _digest(tmp_path)
    proc = _command("train", tmp_path, f"task={task}", f"task.dataset={source}")
    _one_line(proc, *needles, command="diffplan-train")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert {k: v for k, v in _digest(tmp_path).items() if not k.startswith(("hydra", "run"))} == before


def test_evaluating_on_another_dataset_than_the_checkpoints_is_refused(maze_run: Path) -> None:
    trained_on = maze_run / "maze2d-umaze.hdf5"
    arrays = _maze2d_arrays()
    arrays["rewards"][0] += 1
    changed = _write(maze_run / "changed.hdf5", arrays)
    before = _digest(maze_run / "run")
    line = _one_line(_command("evaluate", maze_run, f"task.dataset={changed}", "task.ref_min=0", "task.ref_max=200"),
                     f"task.dataset={changed}", f"({trained_on}, identity", f"pass task.dataset={trained_on}",
                     "eval.checkpoint")
    assert "checkpoint.pt was trained on" in line
    assert _digest(maze_run / "run") == before


def test_a_maze_dataset_without_reference_returns_names_the_keys_to_set(maze_run: Path) -> None:
    data = maze_run / "maze2d-umaze.hdf5"
    before = _digest(maze_run / "run")
    _one_line(_command("evaluate", maze_run, f"task.dataset={data}"),
              f"task.dataset={data} holds no reference returns", "task pointmaze-umaze has no published ones",
              "task.ref_min=", "task.ref_max=", "diffplan-collect")
    assert _digest(maze_run / "run") == before
