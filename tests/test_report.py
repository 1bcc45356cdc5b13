"""diffplan-report: results of a small guidance sweep (built with the real build_results) -> report.html,
report.md, episodes.csv, images; numbers, pairing, errors, media, and a headless Chromium look."""

from __future__ import annotations

import copy
import csv
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from diffplan.cli.report import main as report_main
from diffplan.config import as_config, register_configs, to_container
from diffplan.evaluation.episodes import save_episodes
from diffplan.evaluation.evaluator import EpisodeResult, EpisodeTrace, EvaluationOutput
from diffplan.evaluation.results import build_results, write_json
from diffplan.reporting.cells import ResultsError, derive_cell, find_results, group_cells, load_results
from diffplan.reporting.render import RenderJob, available_backend, render_gifs
from diffplan.reporting.report import CSV_COLUMNS, build_report, cell_summaries
from diffplan.reporting.summary import BootstrapSettings

ROOT = Path(__file__).resolve().parents[1]
TASK = "pointmaze-umaze"
SEEDS = (0, 1)
N_EPISODES = 4
FAST = BootstrapSettings(n_resamples=2000)
# value=0.1 adds these to the unguided scores episode by episode; value=1 adds exactly 10.
NOISE = (3.0, -1.0, 4.0, 1.0, -5.0, 9.0, 2.0, 6.0)


@pytest.fixture(scope="module")
def base_config() -> dict[str, Any]:
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = as_config(compose("config", overrides=["run_dir=runs/sweep", "guidance=value",
                                                     f"eval.seeds=[{SEEDS[0]},{SEEDS[1]}]",
                                                     f"eval.n_episodes={N_EPISODES}"]))
    return to_container(cfg)


def base_score(seed: int, episode: int) -> float:
    return 40.0 + 10.0 * seed + 5.0 * episode


def fake_output(offsets: list[float], *, seeds: tuple[int, ...] = SEEDS, failed: int = -1) -> EvaluationOutput:
    """Episodes with score base + offset (returns on the Minari scale: min 0, max 100)."""
    episodes = []
    for i, (seed, j) in enumerate((s, j) for s in seeds for j in range(N_EPISODES)):
        score = base_score(seed, j) + offsets[i]
        episodes.append(EpisodeResult(seed=seed, episode=j, reset_seed=seed * 1_000_003 + j, episode_return=score,
                                      normalized_score=score, success=score > 55, length=300, failed=i == failed,
                                      reason="planning failed: boom" if i == failed else ""))
    times = [0.01 * (1 + k % 3) for k in range(12)]
    return EvaluationOutput(episodes, times, wall_time_s=3.0, traces=[])


def write_cell(root: Path, name: str, config: dict[str, Any], kind: str, strength: float, offsets: list[float],
               **kwargs: Any) -> Path:
    cfg = copy.deepcopy(config)
    cfg["guidance"]["kind"] = kind
    cfg["guidance"]["scale"] = strength
    output = fake_output(offsets, **kwargs)
    results = build_results(
        output, task=TASK, config=cfg, trained_config={"model": {"return_condition": False}},
        dataset={"path": "/data/pointmaze-umaze.hdf5", "sha256": "d" * 64},
        checkpoint={"path": "/runs/sweep/checkpoint.pt", "sha256": "c" * 64, "step": 6000, "ema": True},
        seeds=list(kwargs.get("seeds", SEEDS)), n_episodes_per_seed=N_EPISODES,
        reference_scores={"min": 0.0, "max": 100.0, "method": "minari"},
    )
    return write_json(root / name / "results.json", results)


def maze_traces(offset: float) -> list[EpisodeTrace]:
    """Short straight paths inside the U-maze's bottom corridor, with a plan each."""
    traces = []
    for seed in SEEDS:
        for j in range(N_EPISODES):
            n = 10 + j
            x = np.linspace(-1.0, 1.0, n + 1)
            obs = np.stack([x, np.full_like(x, -1.0 + 0.05 * seed), np.gradient(x), np.zeros_like(x)], axis=1)
            plan = obs[:: 2] + np.array([0.0, 0.1 * offset, 0.0, 0.0])
            traces.append(EpisodeTrace(seed=seed, episode=j, goal=np.array([1.0, 1.0]), observations=obs,
                                       plans=[plan], reset_seed=seed * 1_000_003 + j))
    return traces


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, base_config: dict[str, Any]) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    write_cell(root, "none", base_config, "none", 0.1, [0.0] * 8)  # scale is ignored for kind none
    write_cell(root, "value-0.1", base_config, "value", 0.1, list(NOISE), failed=2)
    best = write_cell(root, "value-1", base_config, "value", 1.0, [10.0] * 8)
    save_episodes(best.parent / "episodes.npz", maze_traces(1.0))
    (root / "value-1" / "metrics.json").write_text(json.dumps({"note": "not a results file"}))
    return root


@pytest.fixture(scope="module")
def report(sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_report([sweep], tmp_path_factory.mktemp("report"), title="Test sweep", media=False, settings=FAST)


def _md_table(text: str, heading: str) -> list[dict[str, str]]:
    block = text.split(heading, 1)[1].strip().split("\n\n", 1)[0].splitlines()
    headers = [h.strip() for h in block[0].strip("|").split("|")]
    return [dict(zip(headers, [c.strip() for c in row.strip("|").split("|")], strict=True)) for row in block[2:]]


def test_files_and_cells(report: Any) -> None:
    out = report.html.parent
    assert {p.name for p in out.iterdir()} >= {"report.html", "report.md", "episodes.csv", "images"}
    cells = cell_summaries(report)
    assert sorted(cells) == [f"{TASK}/none=0", f"{TASK}/value=0.1", f"{TASK}/value=1"]
    assert report.sections[0].summary.baseline.label == "none=0"
    for image in report.images:
        assert image.exists() and image.parent == out / "images"
    names = {p.name for p in report.images}
    assert {f"{TASK}-score.png", f"{TASK}-success.png", f"{TASK}-plan_time.png", f"{TASK}-paired.png"} <= names


def test_csv_names_results_files_relative_to_the_working_directory(
    report: Any, sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report made in a checkout names its results files as the checkout sees them (no machine paths);
    a file outside the working directory keeps its absolute path."""
    from diffplan.reporting.cells import find_results, group_cells, load_results
    from diffplan.reporting.report import write_episodes_csv

    with open(report.csv) as handle:  # the sweep lies outside the tests' working directory
        assert all(Path(r["source"]).is_absolute() for r in csv.DictReader(handle))
    monkeypatch.chdir(sweep.parent)
    cells, _ = group_cells([load_results(p) for p in find_results([sweep])])
    with open(write_episodes_csv(tmp_path / "episodes.csv", cells)) as handle:
        sources = {r["source"] for r in csv.DictReader(handle)}
    assert sources == {f"{sweep.name}/{cell}/results.json" for cell in ("none", "value-0.1", "value-1")}


def test_csv_has_every_episode_and_the_table_its_mean(report: Any) -> None:
    with open(report.csv) as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 3 * len(SEEDS) * N_EPISODES
    table = _md_table(report.markdown.read_text(), "### Cells")
    assert len(table) == 3
    for row in table:
        label = row["cell"].replace(" (baseline)", "")
        scores = [float(r["normalized_score"]) for r in rows if r["cell"] == label]
        assert len(scores) == int(row["episodes"]) == 8
        assert float(row["mean [95% CI]"].split()[0]) == pytest.approx(np.mean(scores), abs=0.05)
        success = np.mean([int(r["success"]) for r in rows if r["cell"] == label])
        assert float(row["success [95% CI]"].split()[0]) == pytest.approx(success, abs=0.005)
    by_label = {r["cell"].replace(" (baseline)", ""): r for r in table}
    assert by_label["none=0"]["mean [95% CI]"].startswith("52.5 [")
    assert by_label["value=1"]["mean [95% CI]"] .startswith("62.5 [")
    assert by_label["value=0.1"]["failed"] == "1"
    assert by_label["none=0"]["seeds"] == "0,1"


def test_paired_differences(report: Any) -> None:
    comparisons = {c.cell.label: c for c in report.sections[0].summary.comparisons}
    exact = comparisons["value=1"].result
    # value=1 adds exactly 10 to every paired episode: the interval collapses on 10.
    assert (exact.difference.estimate, exact.difference.low, exact.difference.high) == (10.0, 10.0, 10.0)
    assert exact.n_pairs == 8
    noisy = comparisons["value=0.1"].result
    assert noisy.difference.estimate == pytest.approx(np.mean(NOISE))
    assert noisy.difference.low < np.mean(NOISE) < noisy.difference.high
    table = {r["cell"]: r for r in _md_table(report.markdown.read_text(), "### Paired differences vs none=0")}
    assert table["value=1"]["difference [95% CI]"] == "10.0 [10.0, 10.0]"
    assert table["value=1"]["verdict"].startswith("higher")
    assert table["value=1"]["pairs"] == "8"


def test_html_is_self_contained_and_complete(report: Any) -> None:
    text = report.html.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<style>" in text and "Test sweep" in text
    assert "<script" not in text and "<link" not in text and not re.search(r'src="(?!data:)', text)
    assert text.count('src="data:image/png;base64,') >= 5  # 4 figures + the maze paths
    for needle in ("Paired differences vs none=0", "IQM [95% CI]", "Provenance", "c" * 64, "d" * 64,
                   "Report environment", "mujoco", "gymnasium", "episode renders skipped (--no-media)"):
        assert needle in text, needle
    assert text.count("<details>") == 3  # one resolved config per results file
    assert "value=0.1" in text and "value=1" in text


def test_markdown_links_images_and_media(report: Any) -> None:
    text = report.markdown.read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (report.markdown.parent / link).exists(), link
    media = report.sections[0].media
    assert media.cell == "value=1"  # the best cell, which has an episodes.npz
    assert media.items and media.items[0].path.name == f"{TASK}-value=1-paths.png"
    assert "best: seed 1 episode 3" in media.items[0].caption  # 40 + 10 + 15 + 10 = 75, the best score


def test_directory_search_skips_other_json(sweep: Path, tmp_path: Path) -> None:
    found = find_results([sweep])
    assert len(found) == 3 and all(p.name == "results.json" for p in found)
    other = tmp_path / "renamed.json"
    shutil.copy(sweep / "none" / "results.json", other)
    assert find_results([tmp_path]) == [other.resolve()]
    with pytest.raises(ResultsError, match="no such file or directory"):
        find_results([tmp_path / "nope"])


def test_malformed_results_name_the_file_and_key(sweep: Path, tmp_path: Path) -> None:
    data = json.loads((sweep / "none" / "results.json").read_text())
    broken = copy.deepcopy(data)
    del broken["episodes"][1]["reset_seed"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(ResultsError, match=re.escape(f"{path}: missing key 'episodes[1].reset_seed'")):
        load_results(path)
    no_config = {k: v for k, v in data.items() if k != "config"}
    path.write_text(json.dumps(no_config))
    with pytest.raises(ResultsError, match="missing key 'config'"):
        load_results(path)
    path.write_text(json.dumps({**data, "cell": {"kind": "value"}}))
    with pytest.raises(ResultsError, match="missing key 'cell.strength'"):
        load_results(path)
    path.write_text("{not json")
    with pytest.raises(ResultsError, match="not valid JSON"):
        load_results(path)


def test_cli(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert report_main([str(sweep), "--out", str(out), "--no-media", "--title", "CLI sweep", "--baseline",
                        "value=0.1", "--n-resamples", "500"]) == 0
    text = (out / "report.md").read_text()
    assert text.startswith("# CLI sweep") and "### Paired differences vs value=0.1" in text
    broken = tmp_path / "broken" / "results.json"
    broken.parent.mkdir()
    broken.write_text(json.dumps({"task": TASK}))
    assert report_main([str(broken), "--out", str(out)]) == 2
    assert f"{broken}: missing key 'episodes'" in capsys.readouterr().err
    assert report_main([str(sweep), "--out", str(out), "--baseline", "value=7"]) == 2
    assert "is not a cell label; the labels are ['none=0', 'value=0.1', 'value=1']" in capsys.readouterr().err


def test_cell_derivation(base_config: dict[str, Any]) -> None:
    cfg = copy.deepcopy(base_config)
    data: dict[str, Any] = {"task": TASK, "config": cfg, "trained_config": {"model": {"return_condition": False}}}
    cfg["guidance"].update(kind="none", scale=0.3)
    assert derive_cell(data).label == "none=0"
    cfg["guidance"].update(kind="value", scale=0.3)
    assert (derive_cell(data).kind, derive_cell(data).strength, derive_cell(data).label) == ("value", 0.3, "value=0.3")
    cfg["guidance"].update(kind="policy", policy_scale=3.0)
    assert derive_cell(data).label == "policy=3"
    cfg["guidance"].update(kind="value", mc_samples=4)
    assert derive_cell(data).label == "value+mc4=0.3"
    cfg["planner"]["critic"] = "runs/td3/checkpoint.pt"  # ranked by a critic: not pooled with value ranking
    assert derive_cell(data).label == "value+mc4+critic=0.3"
    cfg["planner"]["agent_candidate"] = True  # and the agent's own action among the candidates
    assert derive_cell(data).label == "value+mc4+critic+agent=0.3"
    cfg["planner"]["critic"] = None
    cfg["planner"]["agent_candidate"] = False
    cfg["guidance"].update(kind="none", mc_samples=1)
    data["trained_config"]["model"]["return_condition"] = True
    cfg["planner"]["return_guidance"]["weight"] = 1.8
    assert derive_cell(data).label == "classifier_free=1.8"
    cfg["planner"]["return_guidance"]["weight"] = 1.0
    assert derive_cell(data).label == "none=0"
    # Results written before the planner's sections held the weight at planner.guidance_weight.
    old_planner = cfg["planner"].pop("return_guidance")
    cfg["planner"]["guidance_weight"] = 1.5
    assert derive_cell(data).label == "classifier_free=1.5"
    del cfg["planner"]["guidance_weight"]
    cfg["planner"]["return_guidance"] = old_planner
    cfg["eval"]["label"] = "schedule / MPC"  # eval.label names the cell, kind and strength unchanged
    assert (derive_cell(data).kind, derive_cell(data).strength, derive_cell(data).label) == (
        "none", 0.0, "schedule / MPC")
    cfg["eval"]["label"] = None
    cfg["eval"]["controller"] = "bc"
    assert derive_cell(data).label == "bc"
    data["cell"] = {"task": "hopper-medium", "kind": "value", "strength": 0.5}
    assert derive_cell(data) == derive_cell({"cell": {**data["cell"], "label": "value=0.5"}})
    assert derive_cell(data).task == "hopper-medium"


def test_pooling_splitting_and_unpaired_cells(base_config: dict[str, Any], tmp_path: Path) -> None:
    # The same setting evaluated on more seeds later pools into one cell ...
    write_cell(tmp_path, "none-a", base_config, "none", 0.0, [0.0] * 8)
    write_cell(tmp_path, "none-b", base_config, "none", 0.0, [1.0] * 8, seeds=(2, 3))
    # ... two files holding the same episodes stay separate cells, with a note ...
    write_cell(tmp_path, "value-a", base_config, "value", 0.5, [2.0] * 8)
    write_cell(tmp_path, "value-b", base_config, "value", 0.5, [4.0] * 8)
    # ... and a cell on other seeds cannot be paired with the baseline.
    path = write_cell(tmp_path, "goal", base_config, "goal", 2.0, [0.0] * 8, seeds=(8, 9))
    cells, notes = group_cells([load_results(p) for p in find_results([tmp_path])])
    labels = [c.label for c in cells]
    assert labels == ["none=0", "goal=2", "value=0.5 [value-a]", "value=0.5 [value-b]"]
    assert len(cells[0].episodes) == 16 and cells[0].seeds == [0, 1, 2, 3]
    assert len(notes) == 1 and "the same episodes" in notes[0]
    result = build_report([tmp_path], tmp_path / "out", media=False, settings=FAST)
    comparisons = {c.cell.label: c for c in result.sections[0].summary.comparisons}
    assert comparisons["goal=2"].result is None
    assert "share no episode key" in comparisons["goal=2"].note
    partial = comparisons["value=0.5 [value-a]"]
    assert partial.result is not None and partial.result.n_pairs == 8 and partial.result.n_unmatched_b == 8
    assert "shared episodes only" in partial.note
    assert "not paired" in result.html.read_text()
    del path


def test_optional_metrics_are_plotted(base_config: dict[str, Any], tmp_path: Path) -> None:
    for name, strength, err in (("a", 0.1, 0.05), ("b", 1.0, 0.2)):
        path = write_cell(tmp_path, name, base_config, "policy", 0.0, [0.0] * 8)
        data = json.loads(path.read_text())
        data["config"]["guidance"]["policy_scale"] = strength
        data["dynamics_error"] = err
        data["target_log_likelihood"] = {"mean": -5.0 * strength, "stderr": 0.1}
        path.write_text(json.dumps(data))
    result = build_report([tmp_path], tmp_path / "out", media=False, settings=FAST)
    names = {p.name for p in result.images}
    assert {f"{TASK}-dynamics_error.png", f"{TASK}-target_log_likelihood.png"} <= names
    cells = cell_summaries(result)
    assert cells[f"{TASK}/policy=1"].target_log_likelihood == (-5.0, 0.1)
    assert cells[f"{TASK}/policy=0.1"].dynamics_error == (0.05, pytest.approx(float("nan"), nan_ok=True))
    # No none cell: the baseline is the lowest strength.
    assert result.sections[0].summary.baseline.label == "policy=0.1"


def test_report_renders_pointmaze_gifs(sweep: Path, tmp_path: Path) -> None:
    from PIL import Image, ImageSequence

    result = build_report([sweep], tmp_path / "out", media=True, settings=FAST)
    media = result.sections[0].media
    if not any(item.mime == "image/gif" for item in media.items) and available_backend() is None:
        pytest.skip(f"no OpenGL backend for MuJoCo here: {media.notes}")
    gifs = [item for item in media.items if item.mime == "image/gif"]
    assert [g.path.name for g in gifs] == [f"{TASK}-value=1-{tag}.gif" for tag in ("best", "median", "worst")]
    assert not media.notes, media.notes
    best = next(e for e in result.sections[0].summary.best.cell.episodes if (e.seed, e.episode) == (1, 3))
    with Image.open(gifs[0].path) as gif:
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]
    assert len(frames) == 10 + best.episode + 1 and frames[0].shape == (240, 240, 3)  # every step of the episode
    assert len(np.unique(frames[0].reshape(-1, 3), axis=0)) > 20  # a scene, not a blank frame
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).sum() > 0  # the ball moved
    assert result.html.read_text().count('src="data:image/gif;base64,') == 3
    assert f"images/{gifs[0].path.name}" in result.markdown.read_text()


def test_rendering_failure_degrades_to_a_note(monkeypatch: pytest.MonkeyPatch, sweep: Path, tmp_path: Path) -> None:
    monkeypatch.setenv("MUJOCO_GL", "no-such-backend")
    outcome = render_gifs([RenderJob(TASK, str(sweep / "value-1" / "episodes.npz"), 0, str(tmp_path / "ep.gif"))],
                          timeout_s=60)
    assert outcome.backend is None and outcome.written == [None]
    assert "MUJOCO_GL=no-such-backend" in outcome.error and "--no-media" in outcome.error
    result = build_report([sweep], tmp_path / "out", media=True, settings=FAST)
    assert "episode renders unavailable: MUJOCO_GL=no-such-backend" in result.html.read_text()
    assert result.sections[0].media.items[0].path.name.endswith("-paths.png")  # the path plot needs no GL


def test_report_in_headless_chromium(report: Any, tmp_path: Path) -> None:
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("/usr/bin/chromium is absent (Debian: apt-get install chromium); .ci/run installs it")
    from PIL import Image

    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900", f"--screenshot={shot}",
         report.html.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (900, 1280)
    colors = len(np.unique(pixels.reshape(-1, 3), axis=0))
    non_white = float((pixels.min(axis=2) < 245).mean())
    assert colors > 200, f"only {colors} distinct colors: the page looks blank"
    assert non_white > 0.03, f"{non_white:.1%} non-white pixels: the page looks blank"
