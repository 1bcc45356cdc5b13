"""Shared plumbing of the bad-input tests (test_cli_errors.py, test_errors_*.py).

Each case runs a command the way its console script does, but in this process (imports cost
~3-4 s per subprocess): ``diffplan.cli.<module>.main()`` with ``sys.argv`` set, ``SystemExit``
caught, stdout and stderr read from ``capsys``, Hydra's global state cleared afterwards. A few
cases in test_cli_errors.py run real subprocesses to prove the console behaviour.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
from hydra.core.global_hydra import GlobalHydra
from test_commands import tiny_config, tiny_overrides


@dataclass
class Outcome:
    """What a command left: exit status and its output."""

    returncode: int
    stdout: str
    stderr: str


class Command(Protocol):
    def __call__(self, module: str, *args: str, tiny: bool = True) -> Outcome: ...


_TRAINED: dict[str, Path] = {}


def build_trained(factory: pytest.TempPathFactory) -> Path:
    """A tiny collected, trained, evaluated umaze run with a value function; its folder (built
    once per test session, shared by the bad-input test files, which must leave ``run/`` as it is)."""
    if "root" not in _TRAINED:
        from diffplan.pipeline.collect import run_collect
        from diffplan.pipeline.evaluate import run_evaluate
        from diffplan.pipeline.train import run_train
        from diffplan.pipeline.train_value import run_train_value

        root = factory.mktemp("bad-input")
        cfg = tiny_config(root)
        run_collect(cfg)
        run_train(cfg)
        run_evaluate(cfg)
        run_train_value(tiny_config(root, [
            "value.steps=2", "value.batch_size=4", "value.dim=8", "value.dim_mults=[1,2]", "value.progress=false",
            "value.threads=1", "value.ckpt_every=2"]))
        _TRAINED["root"] = root
    return _TRAINED["root"]


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the run's dataset, checkpoint, results, Hydra record) by content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def command_name(module: str) -> str:
    return "diffplan-" + module.replace("_", "-")


def make_runner(root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Command:
    """``run(module, *overrides)``: the command in this process. Hydra commands get the tiny run's
    overrides first (``tiny=False``: none) and their Hydra record goes outside ``run/``;
    diffplan-report and diffplan-bench get ``args`` only."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def run(module: str, *args: str, tiny: bool = True) -> Outcome:
        cli = importlib.import_module(f"diffplan.cli.{module}")
        argparse_command = module in ("report", "bench")
        if not argparse_command:
            args = (*(tiny_overrides(root) if tiny else ()), f"hydra.run.dir={root / 'hydra-calls' / module}", *args)
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", [command_name(module), *args])
        try:
            code = cli.main(list(args)) if argparse_command else cli.main()
        except SystemExit as stop:
            code = stop.code
        finally:
            GlobalHydra.instance().clear()
        captured = capsys.readouterr()
        return Outcome(code if isinstance(code, int) else (0 if code is None else 1), captured.out, captured.err)

    return run


def one_line(outcome: Outcome | subprocess.CompletedProcess[str], *needles: str, command: str) -> str:
    """The single ``<command>: error: `` line of a failed run (exit status 2, no traceback),
    checked to contain each of ``needles``."""
    assert outcome.returncode == 2, (outcome.returncode, outcome.stderr[-2000:])
    assert "Traceback" not in outcome.stderr, outcome.stderr[-2000:]
    errors = [line for line in outcome.stderr.splitlines() if line.startswith(f"{command}: error: ")]
    assert len(errors) == 1, outcome.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def subprocess_command(
    module: str, root: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m diffplan.cli.<module>`` with the tiny run's overrides (the real console behaviour)."""
    args = [*tiny_overrides(root), f"hydra.run.dir={root / 'hydra-calls' / module}", *extra]
    return subprocess.run(
        [sys.executable, "-m", f"diffplan.cli.{module}", *args],
        capture_output=True, text=True, cwd=root, timeout=300, env={**os.environ, **(env or {})},
    )


def read_only_folder(tmp_path: Path) -> Path:
    """A folder nothing can be written into (root ignores permissions: a read-only mount then)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    for candidate in (Path("/sys/diffplan-read-only"), Path("/proc/diffplan-read-only")):
        try:
            candidate.mkdir()
        except OSError:
            return candidate
        candidate.rmdir()
    pytest.skip("no read-only location for root here")

