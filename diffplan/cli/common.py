"""Shared plumbing of the command-line entry points (Hydra apps)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from diffplan.config import Config, as_config, register_configs
from diffplan.training.distributed import env_rank

#: The repository's conf/ folder (the package is installed in editable mode from the repo).
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
#: Hydra overrides of the ranks > 0 of a torchrun job: no copy of the config (``hydra/``) and no
#: log file in the run folder, which rank 0 writes; their console output is kept.
SECONDARY_RANK_OVERRIDES = ("hydra.output_subdir=null", "hydra/job_logging=stdout")


def hydra_entry(run: Callable[[Config], Any], config_name: str = "config") -> Callable[[], None]:
    """Wrap ``run(cfg)`` as a Hydra command reading ``conf/<config_name>.yaml``.

    Under torchrun the ranks > 0 log warnings and errors only and write no Hydra files.
    """
    register_configs()

    @hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        if env_rank() == 0:
            logging.getLogger("diffplan").setLevel(logging.INFO)
        else:  # a torchrun rank > 0: rank 0 reports
            for name in ("", "diffplan"):
                logging.getLogger(name).setLevel(logging.WARNING)
        run(as_config(cfg))

    def entry() -> None:
        if env_rank() > 0:
            given = {arg.split("=", 1)[0].lstrip("+~") for arg in sys.argv[1:]}
            sys.argv += [o for o in SECONDARY_RANK_OVERRIDES if o.split("=", 1)[0] not in given]
        _main()  # type: ignore[call-arg]  # hydra.main parses sys.argv

    return entry
