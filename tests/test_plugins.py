"""A guidance kind from outside the package (tests/toy_guidance.py) runs through diffplan-evaluate,
diffplan-sweep and diffplan-report with ``plugins=[toy_guidance]``, with no edit to the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_commands import tiny_config, tiny_overrides

import diffplan
from diffplan.diffusion.guide import GuideContext
from diffplan.guidance import guidance_kinds
from diffplan.pipeline.collect import run_collect
from diffplan.pipeline.train import run_train

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("plugins")
    cfg = tiny_config(tmp_path)
    run_collect(cfg)
    run_train(cfg)
    return tmp_path


def _run(module: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", f"diffplan.cli.{module}", *tiny_overrides(tmp_path), *extra],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env,
    )


def test_a_plugin_kind_steers_plans(trained: Path) -> None:
    """The toy guide's objective (minus the mean squared normalized position of the plan) is higher on
    plans guided by it (through the x0 estimate) than on unguided plans from the same noise."""
    from toy_guidance import CenterGuide

    checkpoint = trained / "run" / "checkpoint.pt"
    objective = {}
    for scale in (0.0, 10.0):
        planner = diffplan.load_planner(checkpoint, seed=0, overrides={
            "plugins": ["toy_guidance"], "guidance.kind": "toy-center", "guidance.scale": scale,
            "guidance.t_stopgrad": 0, "guidance.scale_grad_by_std": False, "guidance.apply_to": "x0"})
        plan = planner.plan([1.0, 0.5, 0.0, 0.0], goal=[-1.0, -1.0])
        model = planner.controller.planner.model
        x = torch.cat([torch.as_tensor(plan.observations), torch.as_tensor(plan.actions)], dim=-1)[None]
        x = model.normalizer.normalize(x.float())
        guide = CenterGuide([model.layout.obs.start, model.layout.obs.start + 1])
        levels = torch.zeros(1, x.shape[1] - 2, dtype=torch.long)
        objective[scale] = float(guide.objective(x[:, 1:-1], levels, GuideContext(1)))
    assert "toy-center" in guidance_kinds()
    assert objective[10.0] > objective[0.0] + 0.05, objective


def test_a_plugin_kind_through_evaluate_sweep_and_report(trained: Path) -> None:
    evaluated = _run("evaluate", trained, "plugins=[toy_guidance]", "guidance.kind=toy-center",
                     "guidance.scale=0.5", f"eval.out_dir={trained / 'eval-toy'}")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    results = json.loads((trained / "eval-toy" / "results.json").read_text())
    assert results["config"]["guidance"]["kind"] == "toy-center" and results["config"]["plugins"] == ["toy_guidance"]
    assert results["n_episodes"] == 6 and results["n_failed"] == 0

    swept = _run("sweep", trained, "plugins=[toy_guidance]", "sweep.batched=true",
                 "sweep.cells=[{kind: none}, {kind: toy-center, strengths: [0.5, 2.0]}, "
                 "{kind: goal, strengths: [0.5]}]",
                 f"sweep.out_dir={trained / 'sweep'}", f"sweep.report={trained / 'sweep-report'}")
    assert swept.returncode == 0, swept.stderr[-2000:]
    cells = sorted(p.parent.name for p in (trained / "sweep").glob("*/results.json"))
    assert cells == ["goal=0.5", "none=0", "toy-center=0.5", "toy-center=2"]
    cell = json.loads((trained / "sweep" / "toy-center=2" / "results.json").read_text())["cell"]
    assert (cell["kind"], cell["strength"]) == ("toy-center", 2.0)

    report = subprocess.run([sys.executable, "-m", "diffplan.cli.report", str(trained / "sweep"), "--out",
                             str(trained / "report"), "--no-media"], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    text = (trained / "report" / "report.md").read_text()
    assert "toy-center=0.5" in text and "toy-center=2" in text


def test_an_unregistered_kind_is_one_line_naming_the_plugins_setting(trained: Path) -> None:
    proc = _run("evaluate", trained, "guidance.kind=toy-center", f"eval.out_dir={trained / 'eval-none'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("diffplan-evaluate: error: ")]
    assert len(errors) == 1 and "guidance.kind=toy-center is not a guidance kind" in errors[0]
    assert "plugins=[...]" in errors[0]
    assert not (trained / "eval-none").exists()
    proc = _run("evaluate", trained, "plugins=[no_such_plugin]")
    assert proc.returncode == 2 and "plugins[0]=no_such_plugin: cannot import it" in proc.stderr


def test_a_plugin_denoiser_trains_and_evaluates_through_the_commands(tmp_path: Path) -> None:
    """``model.name`` takes a denoiser a plugin module registers (tests/toy_model.py); an unregistered
    name is one line naming the registered ones and the fix."""
    run_collect(tiny_config(tmp_path))
    extra = ("plugins=[toy_model]", "model.name=toy-mlp")
    trained = _run("train", tmp_path, *extra)
    assert trained.returncode == 0, trained.stderr[-2000:]
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert any(key.startswith("net.") for key in checkpoint["ema"]), list(checkpoint["ema"])[:5]
    evaluated = _run("evaluate", tmp_path, *extra, "eval.out_dir=" + str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["n_episodes"] > 0
    unknown = _run("train", tmp_path, "model.name=nope", "run_dir=" + str(tmp_path / "other"))
    assert unknown.returncode == 2
    lines = [line for line in unknown.stderr.splitlines() if line.strip()]
    assert lines == ["diffplan-train: error: model.name=nope is not a registered denoiser; use one of unet, "
                     "transformer, or register it with diffplan.models.register_denoiser in a module listed in "
                     "plugins=[...]"], unknown.stderr[-2000:]
    assert not (tmp_path / "other" / "checkpoint.pt").exists()


def test_a_plugin_planner_mode_evaluates_through_the_command(trained: Path) -> None:
    """``planner.mode`` takes a mode a plugin registers (tests/toy_planner.py); an unregistered one is
    one line before Hydra writes anything."""
    out = trained / "straight"
    done = _run("evaluate", trained, "plugins=[toy_planner]", "planner.mode=toy-straight", f"eval.out_dir={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["planner"]["mode"] == "toy-straight" and results["n_episodes"] > 0
    unknown = _run("evaluate", trained, "planner.mode=toy-straight", f"eval.out_dir={trained / 'nope'}")
    assert unknown.returncode == 2
    lines = [line for line in unknown.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("diffplan-evaluate: error: planner.mode=toy-straight is not a "
                                                   "registered planner; use one of tracker, actions, forcing"), lines
    assert not (trained / "nope").exists()
