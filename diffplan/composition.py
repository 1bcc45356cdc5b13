"""Composing the shipped configs (``conf/``) with overrides, as the commands and the Python API do.

One line per mistake: an unknown option of a config group, an unknown key, a value of the wrong
type or an override that does not parse raises a ``ValueError`` that names it and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from diffplan.config import CONF_DIR, Config, as_config, register_configs


def overrides_of(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """Hydra override strings from ``{"train.steps": 100}`` or ``["train.steps=100"]``.

    Mapping values are written as Hydra values: lists as ``[a,b]``, None as ``null``, strings as
    they are (quoted when they hold characters Hydra's grammar reserves).
    """
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={_hydra_value(value)}" for key, value in overrides.items()]
    return [str(o) for o in overrides]


def _hydra_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if any(c in text for c in " ,[]{}()='\"\\:$*?") and not text.startswith("'"):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, composed as the command would compose it.

    Raises:
        ValueError: an override Hydra cannot apply, in one line naming it and the fix.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    # Inside an initialized Hydra (a running command, a notebook or test that initialized one), compose
    # with our own configs and put the caller's Hydra back afterwards.
    instance = GlobalHydra.instance()
    saved = instance.hydra if instance.is_initialized() else None
    instance.clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        raise ValueError(_override_error(error, overrides)) from None
    finally:
        if saved is not None:
            instance.clear()
            instance.initialize(saved)


def preflight(config_name: str, overrides: list[str]) -> Config:
    """Compose and validate the command's config without running anything; the typed config."""
    return as_config(compose_config(config_name, overrides))


def _override_error(error: Exception, overrides: list[str]) -> str:
    """One line for a Hydra composition error: the override, what is wrong, the fix."""
    from hydra.errors import MissingConfigException, OverrideParseException

    text = str(error)
    if isinstance(error, MissingConfigException) and "Could not find '" in text:
        group, option = text.split("Could not find '", 1)[1].split("'", 1)[0].rsplit("/", 1)
        options = config_options(group)
        if options:
            return f"{group}={option} is not an option of the config group {group}; use one of: {', '.join(options)}"
        return f"{group} is not a config group; the groups are: {', '.join(config_groups())}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if text.startswith("Could not override '"):
        key = text.split("'", 2)[1]
        reason = str(error.__cause__ or "")
        inner_key = reason.split("'")[1] if reason.startswith("Key '") and "' not in '" in reason else None
        if inner_key is not None and inner_key != key.rsplit(".", 1)[-1]:  # a key inside the value (a sweep cell's)
            import dataclasses

            from diffplan import config as schemas

            inner, schema = inner_key, reason.split("'")[3]
            node = getattr(schemas, schema, None)
            fields = ", ".join(f.name for f in dataclasses.fields(node)) if dataclasses.is_dataclass(node) else "?"
            return (f"{key}: unknown key {inner!r} in an entry ({schema}); an entry takes only {fields}: check the "
                    f"spelling or drop {inner!r}")
        from diffplan.config import LEGACY_KEYS

        if key in LEGACY_KEYS:
            return f"{key} has moved to {LEGACY_KEYS[key]}; write the override as {LEGACY_KEYS[key]}=<value>"
        return f"unknown config key {key}; check the spelling (the keys are listed by --cfg job) and drop the override"
    if text.startswith("Error merging override "):
        cause = str(error.__cause__ or "").strip().splitlines()
        detail = cause[0] if cause else (lines[1] if len(lines) > 1 else "a value the setting does not take")
        return f"{lines[0].removeprefix('Error merging override ')}: {detail}; give a value of the setting's type"
    if isinstance(error, OverrideParseException):
        bad = next((o for o in overrides if not _parses(o)), " ".join(overrides))
        detail = next((line for line in lines if not line.startswith(("Error parsing", "See https"))), "")
        return (f"cannot parse the override {bad!r}: {detail}; each override is key=value, e.g. train.steps=1000 "
                "or task=pointmaze-medium (quote values with brackets or spaces for the shell)")
    kept = [line for line in lines if not line.startswith(("full_key", "reference_type", "object_type", "See https"))]
    return "; ".join(kept) or type(error).__name__


def _parses(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        OverridesParser.create().parse_overrides([override])
    except OverrideParseException:
        return False
    return True


def config_groups() -> list[str]:
    """The config groups under ``conf/`` (Hydra's own excepted)."""
    return sorted(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir() and p.name != "hydra")


def config_options(group: str) -> list[str]:
    """The options of config group ``group`` (the YAML files of ``conf/<group>/``)."""
    folder = Path(CONF_DIR) / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


