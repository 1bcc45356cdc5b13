"""Bad input to diffplan-evaluate, -sweep, -collect, -report, -bench, -generate and
-train-offline: one line naming the value, the key or file and the fix, exit status 2, no
traceback, the earlier run's files unchanged (in process, see errors_helpers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from errors_helpers import Command, digest, one_line, read_only_folder


# -- evaluation -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("eval.seeds=[]", ("eval.seeds is empty", "eval.seeds=[0,1,2]")),
        ("eval.seeds=[-1]", ("eval.seeds must be integers >= 0", "[-1]")),
        ("eval.seeds=[0.5]", ("eval.seeds=[0.5]", "give a value of the setting's type")),
        ("eval.n_episodes=0", ("eval.n_episodes must be >= 1", "got 0")),
        ("eval.n_envs=0", ("eval.n_envs must be >= 1", "got 0")),
        ("task.episode_steps=-1", ("task.episode_steps=-1 is out of range", "e.g. task.episode_steps=300")),
        ("planner.critic=agent.pt", ("planner.critic=agent.pt ranks locomotion plans", "drop planner.critic")),
        ("planner.agent_candidate=true", ("planner.agent_candidate=true", "the maze planners do not use it",
                                          "drop planner.agent_candidate")),
    ],
)
def test_bad_evaluation_settings_keep_the_results(
    trained: Path, run: Command, override: str, needles: tuple[str, ...]
) -> None:
    before = digest(trained / "run")
    one_line(run("evaluate", override), *needles, command="diffplan-evaluate")
    assert digest(trained / "run") == before


def test_an_output_folder_that_is_a_file_is_refused_before_any_episode(trained: Path, run: Command) -> None:
    blocker = trained / "blocker"
    blocker.write_text("keep me")
    for out_dir in (blocker, blocker / "sub"):
        line = one_line(run("evaluate", f"eval.out_dir={out_dir}"), "eval.out_dir", str(out_dir),
                        command="diffplan-evaluate")
        assert "choose another eval.out_dir" in line or "choose a writable eval.out_dir" in line
    assert blocker.read_text() == "keep me"


def test_a_read_only_output_folder_is_refused_before_any_episode(trained: Path, run: Command, tmp_path: Path) -> None:
    folder = read_only_folder(tmp_path)
    before = digest(trained / "run")
    one_line(run("evaluate", f"eval.out_dir={folder / 'eval'}"), "eval.out_dir=", "cannot be written",
             "choose a writable eval.out_dir", command="diffplan-evaluate")
    assert digest(trained / "run") == before


def test_an_evaluation_whose_every_episode_failed_exits_2_and_keeps_results_json(
    trained: Path, run: Command, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffplan.planning.controllers import PlanController

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(PlanController, "act", boom)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text('{"earlier": true}')
    line = one_line(run("evaluate", f"eval.out_dir={out}"), "every one of the 6 episodes failed", "boom",
                    "results.failed.json", command="diffplan-evaluate")
    assert str(out / "results.json") in line
    assert (out / "results.json").read_text() == '{"earlier": true}'
    assert json.loads((out / "results.failed.json").read_text())["n_failed"] == 6


def test_a_dataset_with_nan_values_is_refused_before_any_episode(trained: Path, run: Command, tmp_path: Path) -> None:
    import h5py
    import numpy as np

    data = tmp_path / "nan.hdf5"
    data.write_bytes((trained / "umaze.hdf5").read_bytes())
    with h5py.File(data, "r+") as handle:
        observations = handle["observations"][:]
        observations[10, 0] = np.nan
        handle["observations"][:] = observations
    before = digest(trained / "run")
    one_line(run("evaluate", f"task.dataset={data}", f"eval.out_dir={tmp_path / 'eval'}"), str(data),
             "'observations' holds NaN or inf", command="diffplan-evaluate")
    assert digest(trained / "run") == before and not (tmp_path / "eval" / "results.json").exists()


# -- sweeps ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["sweep.cells=[]"], ("sweep.cells is empty", "sweep=maze-goal")),
        (["sweep.cells=[{kind: nope}]"], ("sweep.cells[0].kind='nope' is not a sweep kind", "use one of none,")),
        (["sweep.cells=[{kind: goal, strengths: [1.0], scale: 2}]"],
         ("sweep.cells: unknown key 'scale'", "kind, strengths, mc_samples", "drop 'scale'")),
        (["sweep.cells=[{kind: none}]", "sweep.cells_index=5"],
         ("sweep.cells_index=5 is outside this sweep's 1 cells", "use 0..0")),
        (["sweep.cells=[{kind: none}]", "sweep.cells_index=-1"],
         ("sweep.cells_index=-1 is out of range", "index >= 0")),
    ],
)
def test_bad_sweeps_give_one_line(trained: Path, run: Command, tmp_path: Path, overrides: list[str],
                                  needles: tuple[str, ...]) -> None:
    before = digest(trained / "run")
    one_line(run("sweep", f"sweep.out_dir={tmp_path / 'sweep'}", *overrides), *needles, command="diffplan-sweep")
    assert digest(trained / "run") == before and not list(tmp_path.rglob("results.json"))


# -- collection -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("collect.n_steps=0", ("collect.n_steps=0 is out of range", "an integer >= 1, or null")),
        ("collect.n_steps=-5", ("collect.n_steps=-5 is out of range",)),
        ("task.name=nope", ("no collector for task 'nope'", "pointmaze-umaze")),
        ("task=nope", ("task=nope is not an option of the config group task", "pointmaze-umaze")),
    ],
)
def test_bad_collection_settings_leave_the_dataset(trained: Path, run: Command, override: str,
                                                   needles: tuple[str, ...]) -> None:
    before = digest(trained)
    one_line(run("collect", override), *needles, command="diffplan-collect")
    assert {k: v for k, v in digest(trained).items() if not k.startswith("hydra-calls")} == \
        {k: v for k, v in before.items() if not k.startswith("hydra-calls")}


def test_collecting_into_a_folder_gives_one_line(run: Command, tmp_path: Path) -> None:
    folder = tmp_path / "data.hdf5"
    folder.mkdir()
    line = one_line(run("collect", f"task.dataset={folder}"), "is a folder", "pointmaze-umaze.hdf5",
                    command="diffplan-collect")
    assert f"task.dataset={folder}" in line and list(folder.iterdir()) == []


def test_bad_expert_snapshot_gives_one_line(run: Command, tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    line = one_line(run("collect", "task=hopper-medium", "collect.levels=[expert]",
                        "collect.agents.hopper.expert_snapshot=bestest", f"collect.agent_dir={agents}"),
                    "collect.agents.hopper.expert_snapshot='bestest'", "['last', 'best']", command="diffplan-collect")
    assert "Traceback" not in line and not agents.exists()


# -- diffplan-report ------------------------------------------------------------------------------
def test_report_errors(trained: Path, run: Command, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line(run("report", str(empty), "--out", str(tmp_path / "r1")), str(empty), command="diffplan-report")
    corrupt = tmp_path / "corrupt" / "results.json"
    corrupt.parent.mkdir()
    corrupt.write_text('{"task": "pointmaze-umaze", "episodes": [')
    one_line(run("report", str(corrupt), "--out", str(tmp_path / "r2")), str(corrupt), command="diffplan-report")
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    one_line(run("report", str(trained / "run" / "eval"), "--out", str(blocker)), str(blocker), "--out",
             command="diffplan-report")
    assert blocker.read_text() == "keep me"
    one_line(run("report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r3")), str(tmp_path / "nowhere"),
             command="diffplan-report")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


# -- diffplan-bench -------------------------------------------------------------------------------
def test_bench_errors(run: Command, tmp_path: Path) -> None:
    one_line(run("bench", "--presets", "nope", "--list"), "nope", command="diffplan-bench")
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    one_line(run("bench", "--quick", "--out", str(blocker / "bench.json")), "--out", str(blocker),
             command="diffplan-bench")
    one_line(run("bench", "--repeats", "0"), "--repeats must be >= 1, got 0", command="diffplan-bench")
    assert blocker.read_text() == "keep me"


# -- diffplan-generate and diffplan-train-offline -------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["eval.checkpoint=nowhere/checkpoint.pt"], ("nowhere/checkpoint.pt does not exist", "eval.checkpoint")),
        (["guidance=policy", "guidance.policy=nope:agent.zip"],
         ("policy spec 'nope:agent.zip' has unknown kind 'nope'", "sb3-sac, sb3-td3, bc")),
        (["guidance=policy", "guidance.policy=bc:nowhere/checkpoint.pt"],
         ("policy spec 'bc:nowhere/checkpoint.pt': no file nowhere/checkpoint.pt", "point '<kind>:<path>'")),
        (["guidance=policy"], ("guidance.kind=policy needs guidance.policy='<kind>:<path>'",)),
        (["generate.n_trajectories=0"], ("generate.n_trajectories=0 is out of range",)),
    ],
)
def test_bad_generation_settings_give_one_line(trained: Path, run: Command, tmp_path: Path, overrides: list[str],
                                               needles: tuple[str, ...]) -> None:
    before = digest(trained / "run")
    out = tmp_path / "synthetic.hdf5"
    one_line(run("generate", f"generate.out={out}", *overrides), *needles, command="diffplan-generate")
    assert digest(trained / "run") == before and not out.exists()


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["eval.checkpoint=nowhere/checkpoint.pt"], ("nowhere/checkpoint.pt does not exist", "eval.checkpoint")),
        (["guidance.policy=nope:agent.zip"], ("guidance.policy='nope:agent.zip' is not read", "drop guidance.policy")),
        (["guidance.policy=bc:nowhere.pt"], ("guidance.policy='bc:nowhere.pt' is not read", "drop guidance.policy")),
    ],
)
def test_bad_offline_regeneration_settings_give_one_line(
    trained: Path, run: Command, tmp_path: Path, overrides: list[str], needles: tuple[str, ...]
) -> None:
    before = digest(trained / "run")
    one_line(run("train_offline", "guidance=policy", "offline.regenerate_every=2", "offline.steps=4",
                 f"offline.run_dir={tmp_path / 'offline'}", *overrides), *needles, command="diffplan-train-offline")
    assert digest(trained / "run") == before and not (tmp_path / "offline" / "checkpoint.pt").exists()


# -- settings checked when the planner is built (registries), before any episode ---------------------
@pytest.mark.parametrize(
    ("module", "overrides", "needles"),
    [
        ("evaluate", ["guidance=goal", "guidance.apply_to=sideways"],
         ("guidance.apply_to='sideways' is not a guidance rule", "use one of ['x_t', 'x0'", "register_guidance_rule")),
        ("evaluate", ["guidance.kind=nope"], ("guidance.kind=nope is not a guidance kind", "plugins=[...]")),
        ("evaluate", ["plugins=[no_such_module]"], ("plugins[0]=no_such_module: cannot import it", "PYTHONPATH")),
        ("train", ["train.noise_mode=schedule", "planner.forcing.execute=40"],
         ("train.noise_mode=schedule trains for the forcing planner", "planner.forcing.n_history + "
             "planner.forcing.execute")),
    ],
)
def test_bad_registered_names_and_planner_settings_give_one_line(
    trained: Path, run: Command, tmp_path: Path, module: str, overrides: list[str], needles: tuple[str, ...]
) -> None:
    before = digest(trained / "run")
    out = tmp_path / "eval"
    extra = [f"eval.out_dir={out}"] if module == "evaluate" else [f"run_dir={tmp_path / 'run'}"]
    one_line(run(module, *overrides, *extra), *needles, command=f"diffplan-{module}")
    assert digest(trained / "run") == before
    assert not (out / "results.json").exists()
