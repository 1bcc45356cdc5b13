"""Shared plumbing of the command-line entry points (Hydra apps)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from diffplan.config import CONF_DIR, Config, as_config, register_configs
from diffplan.training.distributed import env_rank

#: Hydra overrides of the ranks > 0 of a torchrun job: no record folder, no copy of the config and
#: no log file (rank 0 writes them); their console output is kept.
SECONDARY_RANK_OVERRIDES = ("hydra.output_subdir=null", "hydra/job_logging=stdout", "hydra.run.dir=.")


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
        with error_boundary():
            run(as_config(cfg))

    def entry() -> None:
        given = {arg.split("=", 1)[0].lstrip("+~") for arg in sys.argv[1:]}
        if "hydra.job.name" not in given:  # names each invocation's record folder under run_dir/logs/
            sys.argv.append(f"hydra.job.name={command_name()}")
        if env_rank() > 0:
            sys.argv += [o for o in SECONDARY_RANK_OVERRIDES if o.split("=", 1)[0] not in given]
        _main()  # type: ignore[call-arg]  # hydra.main parses sys.argv

    return entry


def command_name() -> str:
    """The name the user typed: ``diffplan-evaluate`` for the console script and for
    ``python -m diffplan.cli.evaluate`` alike."""
    stem = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "diffplan"
    return stem if stem.startswith("diffplan") else "diffplan-" + stem.replace("_", "-")


@contextlib.contextmanager
def error_boundary() -> Iterator[None]:
    """Turn the package's own errors (``ValueError`` and its subclasses: bad settings, datasets,
    checkpoints) and expected OS errors (a missing file, a read-only folder) into one line on
    stderr, ``<command>: error: <message>``, and exit status 2, with no traceback.

    ``HYDRA_FULL_ERROR=1`` lets the exception through with its traceback (for debugging), as it
    does for Hydra's own errors. Anything else (a bug) is not caught.
    """
    try:
        yield
    except (ValueError, OSError) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
            message = f"{message} ({error.filename})"
        print(f"{command_name()}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
