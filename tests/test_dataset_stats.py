"""scripts/dataset_stats.py records each file's sha256 and its dataset identity (the hash of its
arrays and recipe that checkpoints record): two collections that wrote the same data at different
times share the identity and differ in the sha256. Expected identity stored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from diffplan.data.hdf5 import write_hdf5

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "dataset_stats.py"
# dataset_identity of _arrays() with the metadata below; changes only if the identity's definition does.
EXPECTED = "8f2adbf843d74edae94598f302f24875a9d8069b6e9faff690a7b79068cd78a6"


def _arrays() -> dict[str, np.ndarray]:
    steps = np.arange(12, dtype=np.float32)
    return {"observations": np.stack([steps, -steps], axis=1), "actions": (steps / 12.0)[:, None],
            "rewards": steps * 0.5, "terminals": np.zeros(12, dtype=bool), "timeouts": steps % 6 == 5}


def _stats(tmp_path: Path, files: list[Path]) -> list[dict[str, object]]:
    out = tmp_path / "stats.json"
    done = subprocess.run([sys.executable, str(SCRIPT), *map(str, files), "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())


def test_dataset_stats_records_the_identity_and_the_file_hash(tmp_path: Path) -> None:
    changed = _arrays()
    changed["rewards"][7] += 1e-3
    files = [write_hdf5(tmp_path / name, arrays, {"task": "hopper-medium", "created": created})
             for name, arrays, created in (("a.hdf5", _arrays(), "2026-12-05T00:20:27+00:00"),
                                           ("b.hdf5", _arrays(), "2026-12-05T00:20:38+00:00"),
                                           ("c.hdf5", changed, "2026-12-05T00:20:27+00:00"))]
    rows = _stats(tmp_path, files)
    assert [row["identity"] for row in rows[:2]] == [EXPECTED, EXPECTED]
    assert rows[0]["sha256"] != rows[1]["sha256"]  # the creation time differs
    assert rows[2]["identity"] != EXPECTED
    assert [row["created"] for row in rows] == ["2026-12-05T00:20:27+00:00", "2026-12-05T00:20:38+00:00",
                                               "2026-12-05T00:20:27+00:00"]
