"""The developer scripts refuse bad inputs in one line, with a non-zero exit and before any work:
an unknown algorithm or variant of scripts/pgd_experiment.sh, counts below 1 of
scripts/forcing_consistency.py, an unknown physics backend of scripts/benchmark_sweep.py, and
unequal file lists of scripts/paired_difference.py --by-file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _run(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, check=False)


def _one_line(stderr: str, *fragments: str) -> None:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert all(fragment in lines[-1] for fragment in fragments), stderr


@pytest.mark.parametrize(("env", "variant", "fragments"), [
    ({"ALGO": "sac"}, "real", ("ALGO must be td3bc or iql", "sac")),
    ({}, "mixed", ("VARIANT must be real, unguided or guided", "mixed")),
])
def test_pgd_experiment_refuses_unknown_choices(tmp_path: Path, env: dict[str, str], variant: str,
                                                fragments: tuple[str, ...]) -> None:
    done = _run(["bash", str(SCRIPTS / "pgd_experiment.sh"), "hopper-medium", variant, "0"], tmp_path, env)
    assert done.returncode == 2
    _one_line(done.stderr, *fragments)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize(("flag", "value"), [("--n", "0"), ("--execute", "-1"), ("--hold", "0")])
def test_forcing_consistency_refuses_counts_below_one(tmp_path: Path, flag: str, value: str) -> None:
    out = tmp_path / "out.json"
    done = _run([sys.executable, str(SCRIPTS / "forcing_consistency.py"), str(tmp_path / "missing.pt"),
                 "--task", "pointmaze-umaze", flag, value, "--out", str(out)], tmp_path)
    assert done.returncode == 2 and not out.exists()
    _one_line(done.stderr, f"{flag}={value} must be >= 1")


def test_benchmark_sweep_refuses_an_unknown_physics_backend(tmp_path: Path) -> None:
    done = _run([sys.executable, str(SCRIPTS / "benchmark_sweep.py"), "--physics", "mujoco", "bullet",
                 "--out", str(tmp_path / "sweep")], tmp_path)
    assert done.returncode == 2 and not (tmp_path / "sweep").exists()
    _one_line(done.stderr, "--physics bullet", "gymnasium", "mujoco")


def test_paired_difference_by_file_refuses_unequal_lists(tmp_path: Path) -> None:
    files = []
    for name in ("a0", "a1", "b0"):
        path = tmp_path / f"{name}.json"
        path.write_text('{"normalized_score": {"mean": 1.0}, "episode_returns": [1.0]}')
        files.append(str(path))
    out = tmp_path / "paired.json"
    done = _run([sys.executable, str(SCRIPTS / "paired_difference.py"), "--by-file", "--a", files[0], files[1],
                 "--b", files[2], "--out", str(out)], tmp_path)
    assert done.returncode != 0 and not out.exists()
    _one_line(done.stderr, "--by-file pairs files in order", "--a has 2, --b 1")
