"""The arrays' digest of a dataset file (``arrays_sha256``) and scripts/dataset_stats.py, which
records it beside the file's own sha256: two collections that wrote the same data at different
times share the first and differ in the second. Expected digests stored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from diffplan.data.hdf5 import arrays_sha256, write_hdf5

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "dataset_stats.py"
# The digest of _arrays() below; changes only if the digest's definition (or h5py's dtypes) does.
EXPECTED = "57b0fea4575da0ebb16ed53d4201b1e46801d6ba11bfb2425e024015bbd6d3b0"


def _arrays() -> dict[str, np.ndarray]:
    steps = np.arange(12, dtype=np.float32)
    return {"observations": np.stack([steps, -steps], axis=1), "actions": (steps / 12.0)[:, None],
            "rewards": steps * 0.5, "terminals": np.zeros(12, dtype=bool), "timeouts": steps % 6 == 5,
            "infos/goal": np.ones((12, 2), dtype=np.float64)}


def _file(path: Path, created: str, arrays: dict[str, np.ndarray] | None = None) -> Path:
    return write_hdf5(path, arrays or _arrays(), {"task": "hopper-medium", "created": created})


def test_the_digest_covers_the_arrays_and_not_the_metadata(tmp_path: Path) -> None:
    first = _file(tmp_path / "a.hdf5", "2026-12-05T00:20:27+00:00")
    again = _file(tmp_path / "b.hdf5", "2026-12-05T00:20:38+00:00")
    assert arrays_sha256(first) == arrays_sha256(again) == EXPECTED
    changed = _arrays()
    changed["rewards"][7] += 1e-3
    assert arrays_sha256(_file(tmp_path / "c.hdf5", "2026-12-05T00:20:27+00:00", changed)) != EXPECTED
    # The dtype counts apart from the bytes: the same bytes read as int32 are other data.
    reread = {**_arrays(), "rewards": _arrays()["rewards"].view(np.int32)}
    assert arrays_sha256(_file(tmp_path / "d.hdf5", "2026-12-05T00:20:27+00:00", reread)) != EXPECTED
    # Read in chunks of any size, the digest is the same.
    assert arrays_sha256(first, chunk_rows=5) == EXPECTED


def _with_extras(path: Path, name: str) -> str:
    """The digest of a file holding a scalar dataset and a variable-length string dataset."""
    with h5py.File(path, "w") as handle:
        handle["scalar"] = np.float32(2.5)
        handle.create_dataset("names", data=[name, "walker2d"], dtype=h5py.string_dtype())
    return arrays_sha256(path)


def test_scalar_and_variable_length_datasets_hash_their_values(tmp_path: Path) -> None:
    first = _with_extras(tmp_path / "a.hdf5", "hopper")
    assert _with_extras(tmp_path / "b.hdf5", "hopper") == first == arrays_sha256(tmp_path / "a.hdf5")
    assert _with_extras(tmp_path / "c.hdf5", "hoppeR") != first


def test_dataset_stats_records_both_digests(tmp_path: Path) -> None:
    files = [_file(tmp_path / "a.hdf5", "2026-12-05T00:20:27+00:00"),
             _file(tmp_path / "b.hdf5", "2026-12-05T00:20:38+00:00")]
    out = tmp_path / "stats.json"
    done = subprocess.run([sys.executable, str(SCRIPT), *map(str, files), "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert [row["arrays_sha256"] for row in rows] == [EXPECTED, EXPECTED]
    assert rows[0]["sha256"] != rows[1]["sha256"]
    assert [row["created"] for row in rows] == ["2026-12-05T00:20:27+00:00", "2026-12-05T00:20:38+00:00"]
