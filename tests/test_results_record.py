"""The typed results record (diffplan.evaluation.results.EvaluationRecord): every committed results file
loads and writes back unchanged, the evaluator's JSON keeps its keys and order, bad or old files fail with
one line naming the file, the key and the fix; the report templates escape HTML and ship with the package."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from diffplan.evaluation.evaluator import EpisodeResult, EvaluationOutput
from diffplan.evaluation.results import (
    FIX,
    RESULTS_FORMAT,
    CellRecord,
    EvaluationRecord,
    ResultsError,
    build_record,
    read_record,
    write_record,
)
from diffplan.reporting.cells import load_results, parse_results
from diffplan.reporting.markdown import eval_report

ROOT = Path(__file__).resolve().parents[1]

#: results.json's keys in the order the evaluator has always written them (then a sweep's).
KEYS = ["format", "task", "created_at", "diffplan_version", "git_revision", "hardware", "packages", "config",
        "trained_config", "dataset", "checkpoint", "seeds", "n_episodes_per_seed", "n_episodes", "n_failed",
        "reference_scores", "normalized_score", "success_rate", "return", "plan_time_s", "wall_time_s",
        "episode_returns", "episodes"]


def committed_results() -> list[Path]:
    """Every committed evaluation file: what the report reader takes from a folder (results.json, or
    a JSON object with an "episodes" key)."""
    found = []
    for path in sorted((ROOT / "results").rglob("*.json")):
        data = json.loads(path.read_text())
        if path.name == "results.json" or (isinstance(data, dict) and "episodes" in data):
            found.append(path)
    return found


COMMITTED = committed_results()


def test_the_committed_results_are_found() -> None:
    assert len(COMMITTED) >= 97, len(COMMITTED)  # sweeps, locomotion, forcing, offline, synthetic, demo runs


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT / "results")))
def test_committed_results_load_and_round_trip(path: Path, tmp_path: Path) -> None:
    text = path.read_text()
    data = json.loads(text)
    record = EvaluationRecord.from_json(data, source=path)
    assert record.task and record.episodes and record.n_episodes == len(record.episodes)
    again = record.to_json()
    # Same keys, same order, same values (NaN included: compared as JSON text), integers still integers.
    assert json.dumps(again) == json.dumps(data)
    assert EvaluationRecord.from_json(again, source=path) == record
    written = write_record(tmp_path / "results.json", record)
    if text == json.dumps(data, indent=1) + "\n":  # written by the evaluator (not reformatted by hand)
        assert written.read_text() == text
    assert load_results(path).record == record


def fake_output(n: int = 3) -> EvaluationOutput:
    episodes = [EpisodeResult(seed=0, episode=j, reset_seed=j, episode_return=10.0 * j, normalized_score=5.0 * j,
                              success=j > 0, length=100, failed=j == 2, reason="boom" if j == 2 else "")
                for j in range(n)]
    return EvaluationOutput(episodes, [0.25, 0.5], wall_time_s=1.5, traces=[])


def build(output: EvaluationOutput | None = None, **overrides: Any) -> EvaluationRecord:
    config = json.loads((ROOT / "results" / "pointmaze-umaze-demo.json").read_text())["config"]
    kwargs: dict[str, Any] = dict(
        task="pointmaze-umaze", config=config, trained_config={"model": {"return_condition": False}},
        dataset={"path": "/data/umaze.hdf5", "identity": "i" * 64, "sha256": None, "layout": "minari",
                 "n_transitions": 400, "n_episodes": 4, "matches_checkpoint": None, "note": "no identity recorded"},
        checkpoint={"path": "/runs/c.pt", "sha256": "c" * 64, "step": 6000, "ema": True},
        seeds=[0], n_episodes_per_seed=3,
        reference_scores={"method": "minari", "min": 0.5, "max": 41, "min_policy": "random", "source": "file"},
    )
    return build_record(output or fake_output(), **{**kwargs, **overrides})


def test_a_built_record_is_the_evaluators_json() -> None:
    record = build(has_success=False, extra={"cell": {"task": "pointmaze-umaze", "kind": "goal", "strength": 1,
                                                      "label": "goal=1"},
                                             "batched": {"n_envs": 6, "cells_in_batch": ["goal=1", "goal=2"]}})
    data = record.to_json()
    assert list(data) == [*KEYS, "cell", "batched"]
    assert data["format"] == RESULTS_FORMAT and data["success_rate"] is None
    assert list(data["dataset"]) == ["path", "identity", "sha256", "layout", "n_transitions", "n_episodes",
                                     "matches_checkpoint", "note"]  # as given, nulls kept
    assert data["dataset"]["sha256"] is None and data["dataset"]["matches_checkpoint"] is None
    assert data["reference_scores"] == {"method": "minari", "min": 0.5, "max": 41, "min_policy": "random",
                                        "source": "file"}
    assert data["plan_time_s"] == {"mean": 0.375, "median": 0.375, "n_plans": 2, "per_plan": [0.25, 0.5]}
    assert data["episodes"][2] == {"seed": 0, "episode": 2, "reset_seed": 2, "episode_return": 20.0,
                                   "normalized_score": 10.0, "success": True, "length": 100, "failed": True,
                                   "reason": "boom"}
    assert data["episode_returns"] == [0.0, 10.0, 20.0] and data["n_failed"] == 1
    assert data["cell"] == {"task": "pointmaze-umaze", "kind": "goal", "strength": 1, "label": "goal=1"}
    assert "ema" in data["checkpoint"] and "value" not in data["checkpoint"]  # optional keys only when given
    assert EvaluationRecord.from_json(json.loads(json.dumps(data))) == record
    assert build().to_json()["success_rate"] == pytest.approx(2 / 3) and "cell" not in build().to_json()
    assert record.reference_scores.label == "Minari-style scale" and record.cell == CellRecord(
        task="pointmaze-umaze", kind="goal", strength=1, label="goal=1")


def test_unknown_keys_are_kept(tmp_path: Path) -> None:
    data = build().to_json()
    data["dynamics_error"] = {"mean": 0.1, "stderr": 0.01}
    data["hardware"]["gpu_memory"] = "141 GiB"
    data["episodes"][0]["note"] = "hand-checked"
    record = EvaluationRecord.from_json(data)
    assert record.extra == {"dynamics_error": {"mean": 0.1, "stderr": 0.01}}
    assert record.to_json() == data
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    assert load_results(path).cell.label == "none=0"


BAD = [
    (lambda d: d.pop("episodes"), "missing key 'episodes'"),
    (lambda d: d.pop("created_at"), "missing key 'created_at'"),
    (lambda d: d["checkpoint"].pop("sha256"), "missing key 'checkpoint.sha256'"),
    (lambda d: d["episodes"][1].pop("reset_seed"), "missing key 'episodes[1].reset_seed'"),
    (lambda d: d["episodes"][0].update(success="yes"), "key 'episodes[0].success' must be true or false, got 'yes'"),
    (lambda d: d["normalized_score"].update(mean="high"), "key 'normalized_score.mean' must be a number"),
    (lambda d: d.update(seeds=[0, 1.5]), "key 'seeds[1]' must be an integer, got 1.5"),
    (lambda d: d.update(config=[]), "key 'config' must be an object, got []"),
    (lambda d: d.update(cell={"kind": "value"}), "missing key 'cell.strength'"),
    (lambda d: d.update(cell={"kind": "value", "strength": True}), "key 'cell.strength' must be a number"),
    (lambda d: d["plan_time_s"].update(per_plan="fast"), "key 'plan_time_s.per_plan' must be a list"),
]


@pytest.mark.parametrize(("spoil", "message"), BAD)
def test_bad_files_name_the_file_the_key_and_the_fix(spoil: Any, message: str, tmp_path: Path) -> None:
    data = build().to_json()
    spoil(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ResultsError) as error:
        read_record(path)
    text = str(error.value)
    assert text.startswith(f"{path}: ") and message in text and text.endswith(FIX) and "\n" not in text
    with pytest.raises(ValueError, match=re.escape(message)):  # the report reads through the same record
        load_results(path)


def test_old_or_foreign_files(tmp_path: Path) -> None:
    data = build().to_json()
    newer = {**data, "format": RESULTS_FORMAT + 1}
    with pytest.raises(ResultsError, match=r"key 'format' is 2, this diffplan reads format 1; .*upgrade diffplan"):
        EvaluationRecord.from_json(newer, source="x.json")
    with pytest.raises(ResultsError, match=r"^x.json: not a results object \(got list\)"):
        EvaluationRecord.from_json([data], source="x.json")
    old = copy.deepcopy(data)
    del old["packages"]  # written before package versions were recorded: still a results file
    assert EvaluationRecord.from_json(old).packages is None and "packages" not in EvaluationRecord.from_json(
        old).to_json()
    with pytest.raises(ResultsError, match="no such file"):
        read_record(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ResultsError, match="not valid JSON"):
        read_record(tmp_path / "broken.json")
    with pytest.raises(ResultsError, match=r"repeated \(seed, reset_seed\)"):
        parse_results({**data, "episodes": [data["episodes"][0]] * 2}, tmp_path / "dup.json")


def test_nan_scores_survive() -> None:
    data = json.loads(json.dumps(build(fake_output(1)).to_json()))  # one episode: no standard error
    assert math.isnan(data["normalized_score"]["stderr"])
    assert math.isnan(EvaluationRecord.from_json(data).normalized_score.stderr)


def test_eval_report_reads_a_record_or_its_json() -> None:
    record = build()
    text = eval_report(record, image="eval/paths.png", commands=["diffplan-demo"])
    assert text == eval_report(record.to_json(), image="eval/paths.png", commands=["diffplan-demo"])
    assert text.startswith("# diffplan evaluation: pointmaze-umaze\n\n- normalized score: **5.0 ± 2.9** "
                           "(Minari-style scale; mean ± standard error over 3 episodes, seeds [0]; 1 failed)\n")
    assert "(random and expert policy). These are not D4RL's maze2d" in text
    assert "\n```bash\ndiffplan-demo\n```\n\nPer-episode returns" in text and text.endswith("`results.json`.\n")
    with pytest.raises(ResultsError, match="missing key 'task'"):
        eval_report({k: v for k, v in record.to_json().items() if k != "task"})


def test_report_templates_escape_html_and_markdown_tables(tmp_path: Path) -> None:
    from diffplan.reporting.report import build_report
    from diffplan.reporting.summary import BootstrapSettings

    label = 'x<b>|"y\'s'
    write_record(tmp_path / "none" / "results.json", build())
    write_record(tmp_path / "odd" / "results.json",
                 build(extra={"cell": {"kind": "goal", "strength": 2.0, "label": label}}))
    report = build_report([tmp_path], tmp_path / "out", media=False, settings=BootstrapSettings(n_resamples=200))
    html = report.html.read_text()
    assert "x&lt;b&gt;|&#34;y&#39;s" in html and label not in html and "<b>|" not in html
    markdown = report.markdown.read_text()
    assert "| x<b>\\|\"y's |" in markdown  # raw in Markdown, its | escaped inside a table


def test_templates_are_package_data() -> None:
    from importlib.resources import files

    names = {p.name for p in files("diffplan.reporting").joinpath("templates").iterdir()}
    assert {"report.html.j2", "report.md.j2", "evaluation.md.j2", "report.css"} <= names
