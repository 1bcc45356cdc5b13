"""``diffplan-bench``: the smoke run's JSON record, preset selection, and argument errors.

No timed assertions: only structure, and that measured values are positive and finite.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffplan.bench import PresetError, all_presets, select_presets, time_runs
from diffplan.bench.runner import check_targets, compare, format_table
from diffplan.cli.bench import main

METRIC_KEYS = {"unit", "values", "median", "min", "max", "repeats"}


def _positive_finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_quick_demo_writes_a_complete_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["--quick", "--presets", "demo", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("command", "timestamp", "git_revision", "hardware", "torch_version", "threads", "device", "settings",
                "presets", "targets", "reference_figures", "load_average"):
        assert key in result, key
    assert result["command"].startswith("diffplan-bench --quick")
    assert result["device"]["type"] == "cpu" and result["device"]["name"]
    assert result["torch_version"] == torch.__version__
    assert result["settings"]["repeats"] == 1 and result["settings"]["quick"] is True
    assert result["settings"]["precision"] == "float32" and result["settings"]["compile"] is False
    assert list(result["presets"]) == ["demo"]
    demo = result["presets"]["demo"]
    assert "error" not in demo, demo.get("traceback")
    assert demo["n_envs"] == min(demo["n_envs_config"], 16)
    assert set(demo["metrics"]) == {"train_step", "train_samples_per_s", "denoise_step", "plan"}
    for name, metric in demo["metrics"].items():
        assert set(metric) >= METRIC_KEYS, name
        assert metric["repeats"] == len(metric["values"]) == 1
        for key in ("median", "min", "max"):
            assert _positive_finite(metric[key]), (name, key, metric[key])
        assert metric["min"] <= metric["median"] <= metric["max"]
    assert demo["metrics"]["train_step"]["unit"] == "ms" and demo["metrics"]["train_step"]["batch"] == 32
    assert demo["metrics"]["plan"]["unit"] == "s" and demo["metrics"]["plan"]["n_envs"] == demo["n_envs"]
    # The headline targets are listed even when their preset was not run.
    assert {(t["preset"], t["metric"]) for t in result["targets"]} == {
        ("reference-hopper", "plan_guided"), ("reference-hopper", "train_step")}
    assert all(t["met"] is None for t in result["targets"])
    printed = capsys.readouterr().out
    assert "train_step" in printed and f"wrote {out}" in printed


def test_bad_preset_exits_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--presets", "no-such-shape", "--out", "unused.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'no-such-shape'" in err and "reference-hopper" in err and "demo" in err


def test_bad_preset_through_the_command_has_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "diffplan.cli.bench", "--presets", "nope"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "'nope'" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_exits_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--device", "cuda", "--quick", "--presets", "demo", "--out", "unused.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA" in err and "--device cuda" in err


def test_preset_selection() -> None:
    names = [p.name for p in all_presets()]
    assert names[:2] == ["reference-hopper", "reference-umaze"]
    # One preset per shipped experiment.
    shipped = {path.stem for path in (Path(__file__).resolve().parents[1] / "conf" / "experiment").glob("*.yaml")}
    assert shipped <= set(names)
    assert [p.name for p in select_presets(["demo"])] == ["demo"]
    assert [p.name for p in select_presets(["-df"])] == ["medium-df", "large-df"]
    assert [p.name for p in select_presets(["hopper,large-ref"])] == ["reference-hopper", "large-ref"]
    assert all(p.tiny for p in select_presets(None, quick=True))
    with pytest.raises(PresetError, match="tiny presets only"):
        select_presets(["reference-hopper"], quick=True)


def test_time_runs_counts_warmup_and_calls() -> None:
    calls = []
    times = time_runs(lambda: calls.append(1), repeats=3, warmup=2, device=torch.device("cpu"), calls=4)
    assert len(times) == 3 and len(calls) == 2 + 3 * 4
    assert all(t >= 0 for t in times)


def _metric(unit: str, value: float) -> dict[str, object]:
    return {"unit": unit, "values": [value], "median": value, "min": value, "max": value, "repeats": 1}


def test_reference_comparison_and_targets() -> None:
    presets: dict[str, dict] = {"reference-hopper": {"metrics": {
        "plan_guided": _metric("s", 1.0), "plan_unguided": _metric("s", 0.5), "train_step": _metric("ms", 50.0)}}}
    compare(presets, torch.device("cpu"))
    vs = presets["reference-hopper"]["vs_reference"]
    assert vs["plan_guided"]["speedup"] == pytest.approx(2.2)
    assert vs["train_step"]["speedup"] == pytest.approx(83 / 50)
    targets = {t["metric"]: t for t in check_targets(presets, torch.device("cpu"))}
    assert targets["plan_guided"]["met"] is True and targets["train_step"]["met"] is False
    result = {"presets": presets, "targets": list(targets.values()), "threads": 2,
              "device": {"type": "cpu", "name": "test"}, "load_average": {"start": 0.0},
              "settings": {"precision": "float32", "compile": False, "repeats": 1}}
    table = format_table(result)
    assert "MET" in table and "MISSED" in table and "2.20x" in table


def test_an_unwritable_output_is_refused_before_any_timing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffplan.bench

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the presets ran before the output folder was checked")

    monkeypatch.setattr(diffplan.bench, "run_benchmark", must_not_run)
    blocker = tmp_path / "results"
    blocker.write_text("keep me")
    assert main(["--quick", "--presets", "demo", "--out", str(blocker / "bench.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file, not a folder" in err and str(blocker) in err
    assert blocker.read_text() == "keep me"


def test_alternating_timing_calls_each_run_in_turn() -> None:
    from diffplan.bench.timing import time_alternating

    calls: list[str] = []
    rows = time_alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1,
                            device=torch.device("cpu"), scale=1e3)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-up per run, then one call of each per repeat
    assert set(rows) == {"a", "b"} and all(r["n"] == 3 and r["min"] <= r["median"] <= r["max"] for r in rows.values())
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        time_alternating({}, repeats=0, warmup=0, device=torch.device("cpu"))
