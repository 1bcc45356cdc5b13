"""Shared test setup: tiny models run fastest on one thread (and CI boxes are shared)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from locomotion_fixtures import make_hopper_file

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def hopper_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real Hopper-v5 dataset (600 steps), shared by the locomotion tests."""
    return make_hopper_file(tmp_path_factory.mktemp("hopper"))
