"""Shared test setup: tiny models run fastest on one thread (and CI boxes are shared)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from errors_helpers import Command, build_trained, make_runner
from locomotion_fixtures import make_hopper_file

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def hopper_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real Hopper-v5 dataset (600 steps), shared by the locomotion tests."""
    return make_hopper_file(tmp_path_factory.mktemp("hopper"))


# The bad-input tests (test_cli_errors.py, test_errors_*.py) share one tiny trained run and an
# in-process command runner (errors_helpers); a module's own `trained` fixture takes precedence.
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_trained(tmp_path_factory)


@pytest.fixture
def run(trained: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Command:
    return make_runner(trained, capsys, monkeypatch)
