"""Shared plumbing of the command-line entry points (Hydra apps)."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from diffplan.composition import compose_config, config_groups, config_options, preflight
from diffplan.config import CONF_DIR, Config, as_config, register_configs
from diffplan.extras import MissingExtraError
from diffplan.guidance.kinds import guidance_kind, import_plugins
from diffplan.models.factory import DENOISERS
from diffplan.planning.modes import PLANNERS
from diffplan.training.distributed import env_rank

#: Hydra overrides of the ranks > 0 of a torchrun job: no record folder, no copy of the config and
#: no log file (rank 0 writes them); their console output is kept.
SECONDARY_RANK_OVERRIDES = ("hydra.output_subdir=null", "hydra/job_logging=stdout", "hydra.run.dir=.")


@dataclass(frozen=True)
class CommandHelp:
    """What ``<command> --help`` prints besides the summary (the first paragraph of the command
    module's docstring): the main settings, shown with their values after the user's overrides,
    and examples."""

    options: tuple[str, ...]
    examples: tuple[str, ...]
    #: The command module's docstring; its first paragraph is the summary.
    doc: str | None = None


def hydra_entry(
    run: Callable[[Config], Any], config_name: str = "config", help: CommandHelp | None = None
) -> Callable[[], None]:
    """Wrap ``run(cfg)`` as a Hydra command reading ``conf/<config_name>.yaml``.

    Before Hydra starts (and writes its record folder), the overrides are composed and validated:
    a bad override (unknown key or option, unparsable value, out-of-range setting) gives one line
    and exit status 2. ``--help`` prints :func:`command_help`; ``--hydra-help`` Hydra's own.
    Under torchrun the ranks > 0 log warnings and errors only and write no Hydra files.
    """
    register_configs()
    summary = _summary(help.doc if help is not None and help.doc else inspect.getdoc(sys.modules[run.__module__]))

    @hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        if env_rank() == 0:
            logging.getLogger("diffplan").setLevel(logging.INFO)
        else:  # a torchrun rank > 0: rank 0 reports
            for name in ("", "diffplan"):
                logging.getLogger(name).setLevel(logging.WARNING)
        with error_boundary():
            config = as_config(cfg)
            import_plugins(config.plugins)
            run(config)

    def entry() -> None:
        args = sys.argv[1:]
        if "--help" in args or "-h" in args:
            with error_boundary():
                print(command_help(command_name(), summary, config_name, help, _config_overrides(args)))
            return
        if not _is_multirun(args):  # (or a flag that only prints)
            with error_boundary():
                check_registered(preflight(config_name, _config_overrides(args)))
        given = {arg.split("=", 1)[0].lstrip("+~") for arg in args}
        if "hydra.job.name" not in given:  # names each invocation's record folder under run_dir/logs/
            sys.argv.append(f"hydra.job.name={command_name()}")
        if env_rank() > 0:
            sys.argv += [o for o in SECONDARY_RANK_OVERRIDES if o.split("=", 1)[0] not in given]
        _main()  # type: ignore[call-arg]  # hydra.main parses sys.argv

    return entry


def check_registered(config: Config) -> None:
    """Import the config's ``plugins`` and check the names they may register: ``planner.mode``,
    ``model.name`` and ``guidance.kind`` (before Hydra writes anything).

    Raises:
        ValueError: a name no built-in or plugin registers (naming those that are and how to add one).
    """
    import_plugins(config.plugins)
    PLANNERS.get(str(config.planner.mode))
    DENOISERS.get(str(config.model.name))
    guidance_kind(config.guidance.kind)


def _summary(doc: str | None) -> str:
    """The first paragraph of a command module's docstring, without its ````command````: prefix."""
    first = " ".join(inspect.cleandoc(doc or "").split("\n\n", 1)[0].split())
    return first.split(": ", 1)[1] if first.startswith("``") and ": " in first else first


#: Hydra flags that take a value (``--cfg job``), and flags after which the preflight check is left to
#: Hydra: multiruns (their overrides are sweeps), another config, and the flags that only print.
_VALUED_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                 "--config-dir", "-cd", "--experimental-rerun", "--info", "-i", "--shell-completion", "-sc"}
_HYDRA_HANDLES = {"-m", "--multirun", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                  "--cfg", "-c", "--info", "-i", "--hydra-help", "--version", "--shell-completion", "-sc",
                  "--experimental-rerun"}


def _is_multirun(args: list[str]) -> bool:
    """Whether Hydra, not the preflight check, deals with these arguments (see ``_HYDRA_HANDLES``)."""
    return any(a.split("=", 1)[0] in _HYDRA_HANDLES for a in args)


def _config_overrides(args: list[str]) -> list[str]:
    """The overrides of the run's config: not flags or their values, not Hydra's own settings."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in _VALUED_FLAGS
        elif not arg.lstrip("+~").startswith(("hydra.", "hydra/")):
            kept.append(arg)
    return kept


def command_help(
    command: str, summary: str, config_name: str, help: CommandHelp | None, overrides: list[str]
) -> str:
    """``<command> --help``: what it does, its main settings with their values (after ``overrides``),
    the config groups and their options, examples, and where the complete config is shown."""
    cfg = compose_config(config_name, overrides)
    lines = [f"{command}: {summary}", "", f"usage: {command} [key=value ...] [group=option ...] [+experiment=<name>]"]
    if help is not None and help.options:
        lines += ["", "Main settings (current value):"]
        width = max(len(key) for key in help.options)
        for key in help.options:
            value = OmegaConf.select(cfg, key, default="?")
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            lines.append(f"  {key.ljust(width)}  {shown}")
    lines += ["", "Config groups (group=option):"]
    for group in config_groups():
        lines.append(f"  {group}: {', '.join(config_options(group))}")
    if help is not None and help.examples:
        lines += ["", "Examples:", *(f"  {example}" for example in help.examples)]
    lines += ["", f"Every setting: {command} --cfg job [overrides]. Hydra's flags: {command} --hydra-help.",
              "HYDRA_FULL_ERROR=1 shows the traceback of an error."]
    return "\n".join(lines)


def command_name() -> str:
    """The name the user typed: ``diffplan-evaluate`` for the console script and for
    ``python -m diffplan.cli.evaluate`` alike."""
    stem = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "diffplan"
    return stem if stem.startswith("diffplan") else "diffplan-" + stem.replace("_", "-")


@contextlib.contextmanager
def error_boundary() -> Iterator[None]:
    """Turn the package's own errors (``ValueError`` and its subclasses: bad settings, datasets,
    checkpoints), expected OS errors (a missing file, a read-only folder) and a missing optional
    dependency into one line on
    stderr, ``<command>: error: <message>``, and exit status 2, with no traceback.

    ``HYDRA_FULL_ERROR=1`` lets the exception through with its traceback (for debugging), as it
    does for Hydra's own errors. Anything else (a bug) is not caught.
    """
    try:
        yield
    except (ValueError, OSError, MissingExtraError) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
            message = f"{message} ({error.filename})"
        print(f"{command_name()}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
