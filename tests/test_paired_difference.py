"""scripts/paired_difference.py on results files: episodes paired by start state, several files of one
side on the same start states averaged there (the mean of three BC agents), stored expected values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paired_difference.py"


def _results(path: Path, scores: dict[int, float]) -> Path:
    episodes = [{"seed": 3, "episode": i, "reset_seed": seed, "normalized_score": score}
                for i, (seed, score) in enumerate(scores.items())]
    path.write_text(json.dumps({"episodes": episodes}))
    return path


def test_files_on_the_same_start_states_count_with_their_mean(tmp_path: Path) -> None:
    planner = _results(tmp_path / "planner.json", {10: 52.0, 11: 50.0, 12: 54.0})
    bc = [_results(tmp_path / f"bc{i}.json", scores) for i, scores in enumerate((
        {10: 47.0, 11: 48.0, 12: 46.0}, {10: 49.0, 11: 47.0, 12: 48.0}, {10: 48.0, 11: 46.0, 12: 50.0}))]
    out = tmp_path / "paired.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--a", str(planner), "--b", *map(str, bc), "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    record = json.loads(out.read_text())
    # BC per start state: 48, 47, 48 -> differences 4, 3, 6.
    assert record["n_pairs"] == 3
    assert record["mean_b"] == pytest.approx(143 / 3) and record["mean_a"] == pytest.approx(52.0)
    assert record["mean_difference"] == pytest.approx(13 / 3)
    assert record["stderr"] == pytest.approx(1.5275252316519468 / 3 ** 0.5)
