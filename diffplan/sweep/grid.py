"""The cells of a guidance sweep: validation, per-cell configs, labels and resume checks.

``sweep.cells`` lists entries ``{kind, strengths, mc_samples}``; each (entry, strength) pair is
one *cell*. A cell is the sweep's base config with a few overrides (:meth:`SweepCell.overrides`):

========================  ==================================================================
kind                      overrides
========================  ==================================================================
``none``                  ``guidance.kind=none`` (unguided; strength 0)
``goal`` / ``value``      ``guidance.kind=<kind>``, ``guidance.scale=<strength>``
``policy``                ``guidance.kind=policy``, ``guidance.policy_scale=<strength>``
``value_policy``          ``guidance.kind=value_policy``, ``guidance.scale=<strength>``
                          (the policy term keeps ``guidance.policy_scale``)
``classifier_free``                   ``guidance.kind=none``, ``planner.return_guidance.weight=<strength>``
                          (classifier-free guidance of return-conditioned models)
========================  ==================================================================

plus ``guidance.mc_samples`` when the entry sets ``mc_samples``. Every other guidance setting
(steps, ``t_stopgrad``, ``apply_to``, ...) comes from the chosen ``guidance`` group.

A cell's label is the report's (:func:`diffplan.reporting.cells.derive_cell`):
``<kind>=<strength>`` (``none=0``, ``goal=0.3``), the kind suffixed ``+mc<N>`` under Monte
Carlo guidance and value_policy labels naming the policy scale
(``value_policy=0.1,policy=0.01``). The cell writes ``<sweep.out_dir>/<label>/results.json``
with a top-level ``"cell": {"task", "kind", "strength", "label"}``.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from diffplan.config import Config, SweepConfig, to_container
from diffplan.enums import EvalController
from diffplan.guidance.kinds import guidance_kind, guidance_kinds

#: The sweep-only kind: classifier-free guidance weights of a return-conditioned model.
CLASSIFIER_FREE_KIND = "classifier_free"


def sweep_kinds() -> list[str]:
    """The kinds a sweep cell may have: the registered guidance kinds (:mod:`diffplan.guidance.kinds`,
    ``none`` first) and ``classifier_free``."""
    return [*guidance_kinds(), CLASSIFIER_FREE_KIND]


def strength_key(kind: str) -> str:
    """The config key a strength of ``kind`` sets (``classifier_free``: ``planner.return_guidance.weight``)."""
    if kind == CLASSIFIER_FREE_KIND:
        return "planner.return_guidance.weight"
    spec = guidance_kind(kind)
    return "guidance.scale" if spec is None else spec.strength_key

#: Config keys (prefixes) that do not decide whether a finished cell is still valid: where the
#: sweep is written and which cells it lists (adding a cell keeps the others), and the progress bar.
RESUME_IGNORED = (
    "sweep.name", "sweep.out_dir", "sweep.cells", "sweep.cells_index", "sweep.report", "sweep.report_title",
    "eval.progress", "plugins",
)

RESULTS_FILE = "results.json"


class SweepError(ValueError):
    """A bad sweep setting or a finished cell that does not match; the message names the key and the fix."""


@dataclass(frozen=True)
class SweepCell:
    """One cell of the expanded grid.

    Attributes:
        index: position in the expanded grid (``sweep.cells_index``).
        entry: position of its entry in ``sweep.cells``.
        kind: one of :func:`sweep_kinds`.
        strength: the strength (0 for ``none``).
        mc_samples: ``guidance.mc_samples`` of the cell, or None (the guidance config's).
    """

    index: int
    entry: int
    kind: str
    strength: float
    mc_samples: int | None = None

    def overrides(self) -> dict[str, Any]:
        """Dotted config keys and the values this cell sets."""
        out: dict[str, Any] = {"guidance.kind": "none" if self.kind in ("none", CLASSIFIER_FREE_KIND) else self.kind}
        if self.kind != "none":
            out[strength_key(self.kind)] = self.strength
        if self.mc_samples is not None:
            out["guidance.mc_samples"] = self.mc_samples
        return out


@dataclass
class PlannedCell:
    """A cell with its resolved config and where it is written.

    Attributes:
        cell: the grid cell.
        cfg: the sweep's base config with the cell's overrides and ``eval.out_dir = out_dir``.
        label: its label (also its folder name).
        key: the ``"cell"`` object of its results.json.
        out_dir: ``<sweep.out_dir>/<label>``.
    """

    cell: SweepCell
    cfg: Config
    label: str
    key: dict[str, Any]
    out_dir: Path

    @property
    def results_path(self) -> Path:
        return self.out_dir / RESULTS_FILE


def _fmt(value: float) -> str:
    return f"{value:g}"


def expand_cells(sweep: SweepConfig) -> list[SweepCell]:
    """The cells of ``sweep.cells``, entry by entry and strength by strength.

    Raises:
        SweepError: no cells, an unknown kind, missing, negative or non-finite strengths,
            strengths for ``none``, a bad ``mc_samples``; each names its key and the fix.
    """
    if not sweep.cells:
        raise SweepError(
            "sweep.cells is empty; choose a sweep (sweep=maze-goal, sweep=locomotion-value, ...) or list cells, "
            "e.g. 'sweep.cells=[{kind: none}, {kind: goal, strengths: [0.1, 1.0]}]'"
        )
    cells: list[SweepCell] = []
    for i, entry in enumerate(sweep.cells):
        key = f"sweep.cells[{i}]"
        kind = str(entry.kind)
        if kind not in sweep_kinds():
            raise SweepError(
                f"{key}.kind={kind!r} is not a sweep kind; use one of {', '.join(sweep_kinds())} (more guidance "
                "kinds: register them in a module listed in plugins=[...])"
            )
        strengths = [float(s) for s in entry.strengths]
        if kind == "none":
            if any(s != 0 for s in strengths) or len(strengths) > 1:
                raise SweepError(
                    f"{key}: kind=none is unguided and takes no strengths (got {strengths}); drop strengths or "
                    "write strengths: [0]"
                )
            strengths = [0.0]
        elif not strengths:
            raise SweepError(
                f"{key}.strengths is empty; list the {kind} strengths to evaluate, e.g. strengths: [0.1, 1.0] "
                f"(they set {strength_key(kind)})"
            )
        for j, strength in enumerate(strengths):
            if not math.isfinite(strength) or strength < 0:
                raise SweepError(
                    f"{key}.strengths[{j}]={strength} is not a strength >= 0; {strength_key(kind)} must be "
                    "a finite number >= 0 (the unguided cell is {kind: none})"
                )
        if entry.mc_samples is not None:
            if kind in ("none", CLASSIFIER_FREE_KIND):
                raise SweepError(
                    f"{key}.mc_samples={entry.mc_samples}: kind={kind} samples without a guide, so Monte Carlo "
                    "guidance does not apply; drop mc_samples from this entry"
                )
            if entry.mc_samples < 1:
                raise SweepError(f"{key}.mc_samples must be >= 1 (1: plain guidance), got {entry.mc_samples}")
        for strength in strengths:
            cells.append(SweepCell(len(cells), i, kind, strength, entry.mc_samples))
    return cells


def cell_identity(cfg: Config, cell: SweepCell) -> tuple[str, str]:
    """(reported kind, label) of ``cell`` under its resolved config ``cfg`` (see the module docstring)."""
    kind = cell.kind
    if kind not in ("none", CLASSIFIER_FREE_KIND) and cfg.guidance.mc_samples > 1:
        kind = f"{kind}+mc{cfg.guidance.mc_samples}"
    label = f"{kind}={_fmt(cell.strength)}"
    if cell.kind == "value_policy":
        label += f",policy={_fmt(cfg.guidance.policy_scale)}"
    return kind, label


def with_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with ``overrides`` (``"<section>[.<subsection>].<setting>": value``) applied, each value
    converted to the type of the setting it replaces (enums by value; a copy, not a Hydra compose,
    so that a grid of many cells plans quickly).

    Raises:
        SweepError: an unknown key or a value that does not convert.
    """
    out = copy.deepcopy(cfg)
    for key, value in overrides.items():
        *parents, name = key.split(".")
        section: Any = out
        for part in parents:
            section = getattr(section, part, None)
        if not parents or section is None or not hasattr(section, name):
            raise SweepError(f"cannot override {key}: no such setting")
        current = getattr(section, name)
        try:
            if isinstance(current, Enum):
                value = type(current)(value)
            elif isinstance(current, bool) or current is None:
                pass
            elif isinstance(current, int | float | str):
                value = type(current)(value)
        except ValueError as e:
            raise SweepError(f"cannot set {key}={value!r}: {e}") from e
        setattr(section, name, value)
    return out


def plan_cells(base: Config) -> list[PlannedCell]:
    """Every cell of ``base.sweep`` with its config, label and folder (the whole grid, whatever
    ``sweep.cells_index`` says).

    Raises:
        SweepError: a bad sweep (see :func:`expand_cells`), two cells with the same label, or a
            setting sweeps cannot vary (``eval.controller`` other than ``planner``).
    """
    if EvalController(base.eval.controller) is not EvalController.planner:
        raise SweepError(
            f"eval.controller={base.eval.controller}: a sweep varies the planner's guidance; set "
            "eval.controller=planner (evaluate the BC and offline baselines with diffplan-evaluate)"
        )
    if not str(base.sweep.name).strip():
        raise SweepError("sweep.name is empty; name the sweep, e.g. sweep.name=umaze-goal")
    root = Path(base.sweep.out_dir)
    planned: list[PlannedCell] = []
    seen: dict[str, SweepCell] = {}
    for cell in expand_cells(base.sweep):
        cfg = with_overrides(base, cell.overrides())
        kind, label = cell_identity(cfg, cell)
        if label in seen:
            first = seen[label]
            raise SweepError(
                f"sweep.cells[{cell.entry}] repeats cell {label!r} of sweep.cells[{first.entry}]; remove the duplicate "
                "strength or entry"
            )
        seen[label] = cell
        out_dir = root / label
        cfg = with_overrides(cfg, {"eval.out_dir": str(out_dir)})
        key = {"task": cfg.task.name, "kind": kind, "strength": cell.strength, "label": label}
        planned.append(PlannedCell(cell, cfg, label, key, out_dir))
    index = base.sweep.cells_index
    if index is not None and not 0 <= index < len(planned):
        raise SweepError(
            f"sweep.cells_index={index} is outside this sweep's {len(planned)} cells; use 0..{len(planned) - 1} "
            "(diffplan-sweep logs the cells with their indices) or sweep.cells_index=null for all"
        )
    return planned


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The dotted keys of a resolved config that decide a cell's results (:data:`RESUME_IGNORED` dropped),
    normalized by a JSON round trip like the stored copy."""
    flat = flatten(json.loads(json.dumps(config)))
    return {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in RESUME_IGNORED)}


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ (or exist on one side only) between two resolved configs."""
    a, b = comparable(stored), comparable(current)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<missing>") != b.get(k, "<missing>"))


def is_finished(planned: PlannedCell) -> bool:
    """True if the cell's results.json exists and was written with the same resolved config.

    Raises:
        SweepError: it exists but is unreadable or was evaluated with another config; the
            message names the differing keys and the fix.
    """
    path = planned.results_path
    if not path.exists():
        return False
    fix = f"delete {planned.out_dir} to evaluate it again, or use a new sweep.name"
    try:
        data = json.loads(path.read_text())
        stored = data["config"]
        if not isinstance(stored, dict):
            raise TypeError("config is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SweepError(f"{path} exists but holds no readable resolved config ({e}); {fix}") from e
    differ = config_differences(stored, to_container(planned.cfg))
    if differ:
        a, b = comparable(stored), comparable(to_container(planned.cfg))
        first = differ[0]
        shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
        raise SweepError(
            f"cell {planned.label!r} was already evaluated with another config ({path}): {shown} differ "
            f"({first}: stored {a.get(first, '<missing>')!r}, now {b.get(first, '<missing>')!r}); {fix}"
        )
    return True
