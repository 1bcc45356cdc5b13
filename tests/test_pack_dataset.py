"""scripts/pack_dataset.py: a packed copy loads back with the same episodes, float16-rounded floats."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from diffplan.data import Episodes, load_hdf5, write_hdf5

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pack_dataset.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_pack_then_unpack_keeps_episodes_and_rounds_floats(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 50
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    terminals[19], timeouts[49] = True, True
    source = write_hdf5(tmp_path / "tiny.hdf5", Episodes.from_arrays(
        observations=rng.normal(0, 3, (n, 5)).astype(np.float32), actions=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        rewards=rng.normal(0, 1, n).astype(np.float32), terminals=terminals, timeouts=timeouts,
    ), {"task": "tiny-medium", "ref_min_score": -1.0})
    packed, unpacked = tmp_path / "tiny.pack.npz", tmp_path / "copy" / "tiny.hdf5"
    assert _run("pack", str(source), str(packed)).returncode == 0
    assert _run("unpack", str(packed), str(unpacked)).returncode == 0
    original, copy = load_hdf5(source), load_hdf5(unpacked)
    assert np.array_equal(original.terminals, copy.terminals) and np.array_equal(original.timeouts, copy.timeouts)
    for key in ("observations", "actions", "rewards"):
        a, b = getattr(original, key), getattr(copy, key)
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, a.astype(np.float16).astype(np.float32), rtol=0, atol=0)
        assert np.abs(b - a).max() <= 5e-4 * np.abs(a).max()
    assert copy.metadata["task"] == "tiny-medium" and copy.metadata["ref_min_score"] == -1.0
    assert copy.metadata["packed"]["float_dtype"] == "float16"
    assert len(copy.metadata["packed"]["source_sha256"]) == 64


def test_pack_refuses_a_file_without_the_training_keys(tmp_path: Path) -> None:
    path = tmp_path / "partial.hdf5"
    with h5py.File(path, "w") as handle:
        handle["observations"] = np.zeros((4, 2), np.float32)
    result = _run("pack", str(path), str(tmp_path / "out.npz"))
    assert result.returncode != 0
    assert "missing keys" in result.stderr and "actions" in result.stderr
    assert not (tmp_path / "out.npz").exists()
