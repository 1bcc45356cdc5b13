"""Bad input to the commands: one line naming the problem and the fix, exit status 2, no
traceback, and no change to the files of an earlier successful run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_commands import tiny_config, tiny_overrides

from diffplan.evaluation.evaluator import EpisodeResult, EvaluationOutput
from diffplan.pipeline.collect import run_collect
from diffplan.pipeline.evaluate import run_evaluate, write_evaluation
from diffplan.pipeline.train import run_train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny collected, trained and evaluated umaze run; returns its folder."""
    tmp_path = tmp_path_factory.mktemp("cli-errors")
    cfg = tiny_config(tmp_path)
    run_collect(cfg)
    run_train(cfg)
    run_evaluate(cfg)
    return tmp_path


def _digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the run's dataset, checkpoint, results, Hydra record) by content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _command(
    module: str, tmp_path: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # Hydra's record of each call goes to a fresh folder, so the run's own record stays as it was.
    args = [*tiny_overrides(tmp_path), f"hydra.run.dir={tmp_path / 'hydra-calls' / module}", *extra]
    return subprocess.run(
        [sys.executable, "-m", f"diffplan.cli.{module}", *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, env={**os.environ, **(env or {})},
    )


def _evaluate(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return _command("evaluate", tmp_path, *extra, env=env)


def _one_line(proc: subprocess.CompletedProcess[str], *needles: str, command: str = "diffplan-evaluate") -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{command}: error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("eval.seeds=[]", ("eval.seeds is empty", "eval.seeds=[0,1,2]")),
        ("eval.seeds=[-1]", ("eval.seeds must be integers >= 0", "[-1]")),
        ("eval.n_episodes=0", ("eval.n_episodes must be >= 1",)),
        ("eval.n_envs=0", ("eval.n_envs must be >= 1",)),
        ("eval.checkpoint=nowhere/checkpoint.pt", ("nowhere/checkpoint.pt", "eval.checkpoint")),
        ("task.episode_steps=-1", ("task.episode_steps must be >= 1", "-1")),
        ("+eval.foo=1", ("unknown config key eval.foo",)),
    ],
)
def test_bad_evaluation_settings_give_one_line_and_keep_the_results(
    trained: Path, override: str, needles: tuple[str, ...]
) -> None:
    before = _digest(trained / "run")
    _one_line(_evaluate(trained, override), *needles)
    assert _digest(trained / "run") == before


def test_an_output_folder_that_is_a_file_is_refused_before_any_episode(trained: Path) -> None:
    blocker = trained / "blocker"
    blocker.write_text("keep me")
    line = _one_line(_evaluate(trained, f"eval.out_dir={blocker}"), "eval.out_dir", "is a file")
    assert "choose another eval.out_dir" in line
    assert blocker.read_text() == "keep me"


def test_full_error_shows_the_traceback(trained: Path) -> None:
    proc = _evaluate(trained, "eval.seeds=[]", env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "eval.seeds is empty" in proc.stderr


def test_an_evaluation_whose_every_episode_failed_is_an_error_and_writes_nothing(trained: Path) -> None:
    cfg = tiny_config(trained)
    results = Path(cfg.eval.out_dir) / "results.json"
    before = results.read_bytes()
    failed = [EpisodeResult(seed=0, episode=i, reset_seed=i, episode_return=0.0, normalized_score=0.0, success=False,
                            length=0, failed=True, reason="planner raised: boom") for i in range(2)]
    from diffplan.pipeline.evaluate import prepare_evaluation

    setup = prepare_evaluation(cfg)
    output = EvaluationOutput(episodes=failed, traces=[], plan_times_s=[], wall_time_s=0.1)
    with pytest.raises(ValueError, match=r"every one of the 2 episodes failed \(first: planner raised: boom\)"):
        write_evaluation(cfg, setup, output, refuse_all_failed=True)
    assert results.read_bytes() == before
    assert json.loads(before)["n_failed"] == 0
    record = json.loads((results.parent / "results.failed.json").read_text())
    assert record["n_failed"] == 2 and record["episodes"][0]["reason"] == "planner raised: boom"
    # A sweep's cell (the default) is written as it is: a failed cell is a result of the sweep.
    cell = write_evaluation(dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, out_dir=str(trained / "cell"))),
                            setup, output)
    assert json.loads(cell.read_text())["n_failed"] == 2


def _training_inputs(trained: Path) -> dict[str, str]:
    return {**_digest(trained / "run"), "dataset": hashlib.sha256((trained / "umaze.hdf5").read_bytes()).hexdigest()}


@pytest.mark.parametrize(
    ("module", "override", "needles"),
    [
        ("train", "+train.foo=1", ("unknown config key train.foo",)),
        ("train", "task=hopper-medium", ("key 'observations' has dimension 4", "11")),
        ("train", "train.steps=0", ("train.steps must be >= 1",)),
        ("train_value", "value.diffusion_checkpoint=nowhere/checkpoint.pt", ("nowhere", "value.diffusion_checkpoint")),
    ],
)
def test_bad_training_input_gives_one_line_and_keeps_the_run(
    trained: Path, module: str, override: str, needles: tuple[str, ...]
) -> None:
    before = _training_inputs(trained)
    command = "diffplan-" + module.replace("_", "-")
    _one_line(_command(module, trained, override), *needles, command=command)
    assert _training_inputs(trained) == before


def test_a_truncated_or_missing_dataset_gives_one_line(trained: Path) -> None:
    truncated = trained / "truncated.hdf5"
    truncated.write_bytes((trained / "umaze.hdf5").read_bytes()[:4096])
    _one_line(_command("train", trained, f"task.dataset={truncated}", f"run_dir={trained / 'r1'}"),
              str(truncated), command="diffplan-train")
    folder = trained / "a-folder.hdf5"
    folder.mkdir()
    _one_line(_command("train", trained, f"task.dataset={folder}", f"run_dir={trained / 'r2'}"),
              str(folder), command="diffplan-train")
    assert not (trained / "r1" / "checkpoint.pt").exists() and not (trained / "r2" / "checkpoint.pt").exists()


def test_collecting_into_a_folder_gives_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "data.hdf5"
    folder.mkdir()
    proc = _command("collect", tmp_path, f"task.dataset={folder}")
    line = _one_line(proc, "is a folder", "pointmaze-umaze.hdf5", command="diffplan-collect")
    assert f"task.dataset={folder}" in line
    assert list(folder.iterdir()) == []
