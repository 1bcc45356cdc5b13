"""Bad input to the commands: one line naming the problem and the fix, exit status 2, no
traceback, and no change to the files of an earlier successful run.

This file: config overrides and checkpoints (in process, see errors_helpers), and the real
console behaviour (subprocesses). test_errors_commands.py: evaluation, sweep, collection,
report, bench, generate, train-offline; test_errors_pickle.py: pickle safety.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from errors_helpers import Command, digest, one_line, subprocess_command


# -- configs: refused while composing, before Hydra starts or anything is read ----------------------
@pytest.mark.parametrize(
    ("module", "override", "needles"),
    [
        # unknown group option, group, key (with and without +)
        ("evaluate", "planner=nope", ("planner=nope is not an option", "use one of: actions")),
        ("train", "nope=x", ("unknown config key nope", "drop the override")),
        ("evaluate", "task=pointmaze-huge", ("task=pointmaze-huge is not an option", "pointmaze-umaze")),
        ("evaluate", "eval.nope=1", ("unknown config key eval.nope", "drop the override")),
        ("evaluate", "+eval.nope=1", ("unknown config key eval.nope", "drop the override")),
        ("train", "+nope=1", ("unknown config key nope", "drop the override")),
        # wrong type, unparsable
        ("evaluate", "eval.n_episodes=abc", ("eval.n_episodes=abc", "Integer", "give a value of the setting's type")),
        ("train", "train.steps=1.5", ("train.steps=1.5", "give a value of the setting's type")),
        ("train", "model.unet.dim_mults=abc", ("model.unet.dim_mults=abc", "give a value of the setting's type")),
        ("evaluate", "eval.seeds=[0,", ("cannot parse the override 'eval.seeds=[0,'", "each override is key=value")),
        # unknown enum values
        ("train", "train.precision=float8", ("train.precision=float8", "float32, bfloat16")),
        ("evaluate", "planner.mode=nope", ("planner.mode=nope", "tracker, actions, forcing")),
        ("train", "diffusion.sampler=nope", ("diffusion.sampler=nope", "ddim")),
        # out of range
        ("train", "train.steps=0", ("train.steps=0 is out of range", "integer >= 1", "e.g. train.steps=20000")),
        ("train", "train.batch_size=0", ("train.batch_size=0 is out of range", "e.g. train.batch_size=32")),
        ("train", "train.lr=-0.001", ("train.lr=-0.001 is out of range", "> 0", "e.g. train.lr=0.0002")),
        ("train", "train.ema_decay=1.5", ("train.ema_decay=1.5 is out of range", "in [0, 1]")),
        ("train", "diffusion.n_timesteps=0", ("diffusion.n_timesteps=0 is out of range",)),
        ("evaluate", "diffusion.sampling_steps=100",
         ("diffusion.sampling_steps=100 is more than diffusion.n_timesteps=8", "set diffusion.sampling_steps <= 8")),
        ("train", "task.horizon=31", ("task.horizon=31 does not fit the U-Net", "multiple of 2",
                                      "use task.horizon=32 or 30")),
        ("train", "model.unet.dim=12", ("model.unet.dim=12 does not fit the U-Net", "multiple of 8", "e.g. "
            "model.unet.dim=8")),
        ("train_value", "value.lr=0", ("value.lr=0.0 is out of range", "e.g. value.lr=0.0002")),
        ("evaluate", "planner.jump_ratio=0", ("planner.jump_ratio=0.0 is out of range", "> 0")),
        ("evaluate", "planner.goal_tokens=[0,7]", ("planner.goal_tokens=[0, 7]: arrival tokens must lie in [1, ",
                                                   "got [0]")),
        ("train", "run.threads=-1", ("run.threads=-1 is out of range", ">= 0")),
        ("evaluate", "planner.p_gain=2", ("planner.p_gain has moved to planner.tracker.p_gain",
                                          "write the override as planner.tracker.p_gain=<value>")),
        ("train", "model.frame_stack=2", ("model.frame_stack has moved to model.transformer.frame_stack",)),
        ("evaluate", "guidance.mc_samples=0", ("guidance.mc_samples=0 is out of range", "e.g. guidance.mc_samples=1")),
        ("train_offline", "offline.batch_size=0", ("offline.batch_size=0 is out of range",)),
        ("train", "train.schedule_independent_p=1.5", ("train.schedule_independent_p=1.5 is out of range",
                                                       "in [0, 1]")),
        ("evaluate", "task.suite=nope", ("task.suite=nope", "expected one of [maze, locomotion]")),
        ("train", "train.history_dropout=0.2", ("train.history_dropout=0.2 drops the clean history",
                                                "set train.noise_mode=schedule or train.history_dropout=0")),
        ("train", "train.history_dropout=1.5", ("train.history_dropout=1.5 is out of range", "in [0, 1]")),
        ("evaluate", "planner.forcing.history_guidance=-1", ("planner.forcing.history_guidance=-1.0 is out of range",
                                                             ">= 0")),
        ("evaluate", "eval.threads=-1", ("eval.threads=-1 is out of range", ">= 0")),
        ("collect", "collect.threads=-1", ("collect.threads=-1 is out of range", ">= 0")),
        ("train", "task.top_return_fraction=0", ("task.top_return_fraction=0.0 is out of range", "in (0, 1]")),
    ],
)
def test_bad_overrides_give_one_line_before_anything_runs(
    trained: Path, run: Command, module: str, override: str, needles: tuple[str, ...]
) -> None:
    before = digest(trained)
    one_line(run(module, override), *needles, command=f"diffplan-{module.replace('_', '-')}")
    # Refused before Hydra starts: not even its record folder is written.
    assert digest(trained) == before and not (trained / "hydra-calls" / module).exists()


def test_forcing_arrivals_after_an_arrival_not_held_give_one_line(trained: Path, run: Command) -> None:
    before = digest(trained)
    one_line(run("evaluate", "planner.mode=forcing", "planner.forcing.arrival_slack=[0,8]"),
             "planner.forcing.arrival_slack=[0, 8] plans arrivals after the held one",
             "set planner.forcing.hold_arrival=true as well", command="diffplan-evaluate")
    assert digest(trained) == before and not (trained / "hydra-calls" / "evaluate").exists()


# -- checkpoints ----------------------------------------------------------------------------------
class Evil:
    """A pickled object whose unpickling would run code (it writes a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _bad_checkpoint(kind: str, trained: Path, folder: Path) -> Path:
    good = trained / "run" / "checkpoint.pt"
    path = folder / f"{kind}.pt"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[:2000])
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "pickle":
        torch.save({"format": 1, "payload": Evil(folder / "pwned")}, path)
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "dims":
        payload = torch.load(good, weights_only=True)
        payload["layout"] = {**payload["layout"], "obs_dim": 5}
        torch.save(payload, path)
    elif kind == "newer":  # written by a version whose model section has a setting this one lacks
        payload = torch.load(good, weights_only=True)
        stored = json.loads(payload["config"])
        stored["model"]["a_newer_layer"] = True
        payload["config"] = json.dumps(stored)
        torch.save(payload, path)
    elif kind == "value":
        path = trained / "run" / "value" / "checkpoint.pt"
    elif kind == "folder":
        path = trained / "run"
    elif kind == "missing":
        path = folder / "nowhere" / "checkpoint.pt"
    return path


@pytest.mark.parametrize(
    ("kind", "needles"),
    [
        ("missing", ("does not exist", "train first (diffplan-train) or set eval.checkpoint")),
        ("folder", ("is a folder", "set eval.checkpoint to the file", "/run/checkpoint.pt")),
        ("truncated", ("cannot be read as a PyTorch checkpoint", "truncated", "point eval.checkpoint at")),
        ("text", ("cannot be read as a PyTorch checkpoint", "point eval.checkpoint at")),
        ("pickle", ("holds pickled Python objects", "system", "weights_only=True", "point eval.checkpoint at")),
        ("foreign", ("has format None, expected 1", "point eval.checkpoint at")),
        ("dims", ("has layout", "'obs_dim': 5", "point eval.checkpoint at")),
        ("value", ("holds a 'value' model, not a trajectory diffusion model", "guidance.value_checkpoint")),
        ("newer", ("was written by another diffplan version with settings this one does not have: "
                   "model.a_newer_layer", "load it with the diffplan version that wrote it")),
    ],
)
def test_bad_checkpoints_give_one_line_naming_the_file(
    trained: Path, run: Command, tmp_path: Path, kind: str, needles: tuple[str, ...]
) -> None:
    path = _bad_checkpoint(kind, trained, tmp_path)
    before = digest(trained / "run")
    line = one_line(run("evaluate", f"eval.checkpoint={path}", f"eval.out_dir={tmp_path / 'eval'}"), *needles,
                    command="diffplan-evaluate")
    assert str(path) in line
    assert digest(trained / "run") == before
    assert not (tmp_path / "pwned").exists()  # nothing in the pickle ran
    assert not (tmp_path / "eval" / "results.json").exists()


def test_a_checkpoint_of_another_task_names_both_tasks(trained: Path, run: Command) -> None:
    medium = trained / "medium.hdf5"  # the umaze data under medium's name reaches the checkpoint check
    medium.write_bytes((trained / "umaze.hdf5").read_bytes())
    before = digest(trained / "run")
    one_line(run("evaluate", "task=pointmaze-medium", f"task.dataset={medium}", "task.horizon=32"),
             "trained on task 'pointmaze-umaze', not 'pointmaze-medium'", "set task=pointmaze-umaze",
             command="diffplan-evaluate")
    assert digest(trained / "run") == before


@pytest.mark.parametrize("kind", ["truncated", "value"])
def test_bad_diffusion_checkpoints_of_train_value_name_their_key(
    trained: Path, run: Command, tmp_path: Path, kind: str
) -> None:
    path = _bad_checkpoint(kind, trained, tmp_path)
    before = digest(trained / "run")
    one_line(run("train_value", f"value.diffusion_checkpoint={path}", f"value.run_dir={tmp_path / 'value'}"),
             str(path), "value.diffusion_checkpoint", command="diffplan-train-value")
    assert digest(trained / "run") == before and not (tmp_path / "value" / "checkpoint.pt").exists()


# -- the real console behaviour (subprocesses) ----------------------------------------------------
def test_console_error_is_one_line_with_exit_status_2(trained: Path) -> None:
    before = digest(trained / "run")
    one_line(subprocess_command("evaluate", trained, "eval.seeds=[]"), "eval.seeds is empty", "eval.seeds=[0,1,2]",
             command="diffplan-evaluate")
    assert digest(trained / "run") == before


def test_console_config_error_comes_before_hydra_writes_anything(trained: Path) -> None:
    before = digest(trained)
    one_line(subprocess_command("train", trained, "train.steps=0"), "train.steps=0 is out of range",
             command="diffplan-train")
    assert digest(trained) == before  # no Hydra record either


def test_full_error_shows_the_traceback(trained: Path) -> None:
    proc = subprocess_command("evaluate", trained, "eval.seeds=[]", env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "eval.seeds is empty" in proc.stderr
