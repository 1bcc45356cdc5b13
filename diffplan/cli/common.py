"""Shared plumbing of the command-line entry points (Hydra apps)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from diffplan.config import Config, as_config, register_configs

#: The repository's conf/ folder (the package is installed in editable mode from the repo).
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def hydra_entry(run: Callable[[Config], Any], config_name: str = "config") -> Callable[[], None]:
    """Wrap ``run(cfg)`` as a Hydra command reading ``conf/<config_name>.yaml``."""
    register_configs()

    @hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        logging.getLogger("diffplan").setLevel(logging.INFO)
        run(as_config(cfg))

    return _main  # type: ignore[return-value]
