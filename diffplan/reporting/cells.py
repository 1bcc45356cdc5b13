"""Evaluation results grouped into sweep cells: (task, guidance kind, strength).

A *cell* is one setting of a sweep. Its identity comes from the results file's optional
top-level ``"cell"`` object (``{"task", "kind", "strength", "label"}``, written by sweep
commands) or, when absent, from the resolved config (:func:`derive_cell`). Files of the same
task and label are pooled into one cell when they come from the same checkpoint and hold
different episodes (e.g. the same setting evaluated on more seeds later); otherwise each such
file becomes its own cell, its label suffixed with the file name.

Files are read through their typed record (:class:`diffplan.evaluation.results.EvaluationRecord`),
which checks every key; a bad or old file fails with one line naming the file, the key and the fix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffplan.config import migrate_legacy
from diffplan.evaluation.episodes import EPISODES_FILE
from diffplan.evaluation.results import FIX, CellRecord, EvaluationRecord, ResultsError, read_record
from diffplan.guidance.kinds import find_guidance_kind

REFERENCE_POLICIES = ("bc", "offline")
"""``eval.controller`` values that are baselines of their own rather than guided planners."""


@dataclass(frozen=True)
class CellId:
    """Which sweep cell a results file belongs to.

    Attributes:
        task: the task name (e.g. ``hopper-medium``).
        kind: the guidance kind (``none``, ``value``, ``policy``, ``goal``, ``classifier_free``, ...).
        strength: the guidance strength (0 for ``none``).
        label: the cell's display name, unique within a task (``"value=0.3"``).
    """

    task: str
    kind: str
    strength: float
    label: str


@dataclass(frozen=True)
class Episode:
    """One evaluation episode, with the file it came from."""

    seed: int
    episode: int
    reset_seed: int
    episode_return: float
    normalized_score: float
    success: bool
    length: int
    failed: bool
    reason: str
    source: Path

    @property
    def key(self) -> tuple[int, int]:
        """(seed, reset_seed): the same key means the same start state."""
        return (self.seed, self.reset_seed)


@dataclass
class ResultsFile:
    """One evaluator results.json, read through its record.

    Attributes:
        path: where it was read from.
        record: the checked record (:class:`~diffplan.evaluation.results.EvaluationRecord`).
        cell: its cell (from the record's ``cell`` or derived from the config).
        episodes: its episodes.
        episodes_npz: ``episodes.npz`` next to it, if that exists.
    """

    path: Path
    record: EvaluationRecord
    cell: CellId
    episodes: list[Episode]
    episodes_npz: Path | None = None

    @property
    def checkpoint_sha256(self) -> str:
        return self.record.checkpoint.sha256

    @property
    def dataset_sha256(self) -> str | None:
        return self.record.dataset.sha256

    @property
    def plan_times(self) -> list[float]:
        return [float(t) for t in self.record.plan_time_s.per_plan]

    @property
    def has_success(self) -> bool:
        """False where the evaluator wrote ``success_rate: null`` (locomotion)."""
        return self.record.has_success


@dataclass
class Cell:
    """Every episode of one sweep cell, pooled over its results files."""

    id: CellId
    files: list[ResultsFile] = field(default_factory=list)

    @property
    def task(self) -> str:
        return self.id.task

    @property
    def label(self) -> str:
        return self.id.label

    @property
    def kind(self) -> str:
        return self.id.kind

    @property
    def strength(self) -> float:
        return self.id.strength

    @property
    def episodes(self) -> list[Episode]:
        return [e for f in self.files for e in f.episodes]

    @property
    def seeds(self) -> list[int]:
        return sorted({e.seed for e in self.episodes})

    @property
    def plan_times(self) -> list[float]:
        return [t for f in self.files for t in f.plan_times]

    @property
    def has_success(self) -> bool:
        return all(f.has_success for f in self.files)

    def metric(self, key: str) -> tuple[float, float] | None:
        """(mean, stderr) of an optional per-cell metric (``dynamics_error``, ``target_log_likelihood``),
        averaged over the cell's files that carry it (stderr NaN when unknown); None when none does."""
        values = [v for f in self.files if (v := read_metric(f.record.extra, key, f.path)) is not None]
        if not values:
            return None
        mean = sum(v[0] for v in values) / len(values)
        errs = [v[1] for v in values]
        stderr = math.sqrt(sum(e * e for e in errs)) / len(errs) if not any(math.isnan(e) for e in errs) else math.nan
        return mean, stderr


def _missing(path: Path | str, key: str) -> ResultsError:
    return ResultsError(f"{path}: missing key {key!r}; {FIX}")


def read_metric(data: Mapping[str, Any], key: str, path: Path | str = "<results>") -> tuple[float, float] | None:
    """An optional scalar metric of a results file as (mean, stderr); None when absent.

    Accepted forms: a number; ``{"mean", "stderr"?}``; the generation-metrics forms of
    ``diffplan-generate`` (``dynamics_error: {"next_obs_mse"}``, ``{"generated_mean",
    "generated_stderr"}``).

    Raises:
        ResultsError: the key holds something else.
    """
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), math.nan
    if isinstance(value, dict):
        for mean_key, err_key in (("mean", "stderr"), ("generated_mean", "generated_stderr"), ("next_obs_mse", "")):
            if isinstance(value.get(mean_key), int | float):
                err = value.get(err_key)
                return float(value[mean_key]), float(err) if isinstance(err, int | float) else math.nan
    raise ResultsError(f"{path}: key {key!r} must be a number or {{'mean': ..., 'stderr': ...}}, got {value!r}")


def _format_strength(strength: float) -> str:
    return f"{strength:g}"


def derive_cell(data: EvaluationRecord | Mapping[str, Any], path: Path | str = "<results>") -> CellId:
    """The sweep cell of a results file (its record, or the parsed JSON, of which only ``task``,
    ``cell``, ``config`` and ``trained_config`` are read).

    With a top-level ``"cell"`` object, its ``task`` (default: the file's task), ``kind``,
    ``strength`` and ``label`` (default ``"kind=strength"``) are used as they are. Otherwise,
    from the resolved config:

    - ``eval.controller=bc`` or ``offline``: kind ``bc`` / ``offline``, strength 0 (baselines);
    - kind = ``guidance.kind`` (``none`` when the config has no guidance section); when it is
      ``none`` and the trained model is return-conditioned (``trained_config.model.
      return_condition``) with ``planner.return_guidance.weight`` set and != 1, kind ``classifier_free``
      (classifier-free guidance);
    - strength: the setting the guidance-kind registry names as the kind's strength
      (``guidance.policy_scale`` for ``policy``; ``guidance.scale`` for kinds not registered in
      this process), ``planner.return_guidance.weight`` for ``classifier_free``, 0 for ``none`` (``value_policy``'s
      label also names its policy scale);
    - ``guidance.mc_samples`` > 1 (Monte Carlo guidance) makes the kind ``<kind>+mc<N>``;
    - ``eval.label``, when set, is the label (kind and strength as above), so evaluations of other
      models or planners at the same guidance are separate cells.

    Raises:
        ResultsError: a missing ``task``/``config`` or a malformed ``cell``, naming the file and key.
    """
    if isinstance(data, EvaluationRecord):
        return _cell_id(data.task, data.cell, data.config, data.trained_config, path)
    if not isinstance(data, Mapping):
        raise ResultsError(f"{path}: not a results object (got {type(data).__name__}); {FIX}")
    cell = None if data.get("cell") is None else CellRecord.from_json(data["cell"], path, key="cell")
    task = data.get("task")
    if not isinstance(task, str) and (cell is None or cell.task is None):
        raise _missing(path, "task")
    config = data.get("config")
    if cell is None and not isinstance(config, Mapping):
        if config is None:
            raise _missing(path, "config")
        raise ResultsError(f"{path}: key 'config' must be the resolved config (an object), got {config!r}; {FIX}")
    trained = data.get("trained_config")
    return _cell_id(str(task), cell, config or {}, trained if isinstance(trained, Mapping) else {}, path)


def _cell_id(task: str, cell: CellRecord | None, config: Mapping[str, Any], trained_config: Mapping[str, Any],
             path: Path | str) -> CellId:
    identity = _guidance_cell_id(task, cell, config, trained_config, path)
    label = (config.get("eval") or {}).get("label") if cell is None else None
    if label:  # eval.label names the cell
        return CellId(identity.task, identity.kind, identity.strength, str(label))
    return identity


def _guidance_cell_id(task: str, cell: CellRecord | None, config: Mapping[str, Any],
                      trained_config: Mapping[str, Any], path: Path | str) -> CellId:
    if cell is not None:
        label = cell.label or f"{cell.kind}={_format_strength(float(cell.strength))}"
        return CellId(cell.task or task, cell.kind, float(cell.strength), label)
    config = migrate_legacy(dict(config))  # results written before settings moved into their sections
    policy = str((config.get("eval") or {}).get("controller", "planner"))
    if policy in REFERENCE_POLICIES:
        return CellId(task, policy, 0.0, policy)
    guidance = config.get("guidance") or {}
    planner = config.get("planner") or {}
    model = trained_config.get("model") or {}
    kind = str(guidance.get("kind", "none"))
    weight = (planner.get("return_guidance") or {}).get("weight")
    extra = ""
    if kind == "none" and model.get("return_condition") and weight is not None and float(weight) != 1.0:
        kind, strength = "classifier_free", float(weight)
    elif kind == "none":
        strength = 0.0
    else:
        # The setting a strength of this kind sets (the registry's; guidance.scale for kinds of plugins
        # that are not imported here).
        spec = find_guidance_kind(kind)
        key = (spec.strength_key if spec is not None else "guidance.scale").removeprefix("guidance.")
        if key not in guidance:
            raise _missing(path, f"config.guidance.{key}")
        strength = float(guidance[key])
        if kind == "value_policy":
            extra = f",policy={_format_strength(float(guidance.get('policy_scale', 1.0)))}"
    mc = int(guidance.get("mc_samples", 1) or 1)
    if mc > 1:
        kind = f"{kind}+mc{mc}"
    if planner.get("critic"):  # candidates ranked by an offline agent's critic: another planner
        kind = f"{kind}+critic"
        if planner.get("agent_candidate"):  # and the agent's own action among the candidates
            kind = f"{kind}+agent"
    return CellId(task, kind, strength, f"{kind}={_format_strength(strength)}{extra}")


def parse_results(data: Any, path: str | Path) -> ResultsFile:
    """Check parsed results JSON through its record and wrap it (see :func:`load_results`)."""
    path = Path(path)
    return _results_file(EvaluationRecord.from_json(data, source=path), path)


def _results_file(record: EvaluationRecord, path: Path) -> ResultsFile:
    if not record.episodes:
        raise ResultsError(f"{path}: key 'episodes' is empty; it must list the evaluation's episodes ({FIX})")
    episodes = [
        Episode(seed=e.seed, episode=e.episode, reset_seed=e.reset_seed, episode_return=float(e.episode_return),
                normalized_score=float(e.normalized_score), success=e.success, length=e.length, failed=e.failed,
                reason=e.reason or "", source=path)
        for e in record.episodes
    ]
    keys = [e.key for e in episodes]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ResultsError(f"{path}: repeated (seed, reset_seed) under key 'episodes'; episodes {dup} appear twice")
    npz = path.parent / EPISODES_FILE if path.name == "results.json" else path.with_suffix(".episodes.npz")
    return ResultsFile(path, record, derive_cell(record, path), episodes, npz if npz.exists() else None)


def load_results(path: str | Path) -> ResultsFile:
    """Read and check one results.json (:func:`~diffplan.evaluation.results.read_record`).

    ``episodes.npz`` is looked up next to a file named results.json, or as
    ``<stem>.episodes.npz`` beside any other name.

    Raises:
        ResultsError: unreadable JSON, or a missing/malformed key (named with the file).
    """
    path = Path(path)
    return _results_file(read_record(path), path)


def find_results(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and directories into results files.

    Files are taken as given. Directories are searched recursively for ``results.json`` and
    for other ``*.json`` files holding a top-level ``"episodes"`` key (other JSON is skipped).
    Each file is listed once, relative to the working directory when it lies below it (else by its
    absolute path), which is how the report names it.

    Raises:
        ResultsError: an input does not exist, or nothing was found.
    """
    found: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_file():
            found.append(item)
        elif item.is_dir():
            for candidate in sorted(item.rglob("*.json")):
                if candidate.name == "results.json" or _has_episodes(candidate):
                    found.append(candidate)
        else:
            raise ResultsError(f"{item}: no such file or directory; pass results.json files or directories")
    unique = [_shown(p) for p in dict.fromkeys(p.resolve() for p in found)]
    if not unique:
        raise ResultsError(f"no results files under {[str(i) for i in inputs]}: directories are searched for "
                           "results.json and *.json files with an 'episodes' key (diffplan-evaluate writes them)")
    return unique


def _shown(path: Path) -> Path:
    """A resolved results file relative to the working directory when it lies below it (so a report made
    in a checkout names its files as the checkout sees them, not by the machine's path), else as it is."""
    try:
        return path.relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def _has_episodes(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "episodes" in data


def group_cells(files: Sequence[ResultsFile]) -> tuple[list[Cell], list[str]]:
    """Pool files into cells, per task sorted by (kind, strength, label); returns (cells, notes).

    Files sharing a task and label are pooled when they share the checkpoint (sha256) and
    hold disjoint (seed, reset_seed) episodes. Files that cannot be pooled keep separate
    cells labelled ``"<label> [<file>]"``; each such split is explained in the notes.
    """
    groups: dict[tuple[str, str], list[ResultsFile]] = {}
    for f in files:
        groups.setdefault((f.cell.task, f.cell.label), []).append(f)
    cells: list[Cell] = []
    notes: list[str] = []
    for (task, label), members in groups.items():
        shas = {m.checkpoint_sha256 for m in members}
        keys = [k for m in members for k in {e.key for e in m.episodes}]
        if len(members) == 1 or (len(shas) == 1 and len(keys) == len(set(keys))):
            cells.append(Cell(members[0].cell, list(members)))
            continue
        why = "different checkpoints" if len(shas) > 1 else "the same episodes (seed, reset_seed)"
        notes.append(f"{task}: {len(members)} files labelled {label!r} hold {why}, so they are reported as "
                     "separate cells (give each a distinct \"cell\": {\"label\": ...} to name them)")
        names = _short_names([m.path for m in members])
        for member, name in zip(members, names, strict=True):
            cell = CellId(task, member.cell.kind, member.cell.strength, f"{label} [{name}]")
            cells.append(Cell(cell, [member]))
    cells.sort(key=lambda c: (c.task, c.kind != "none", c.kind, c.strength, c.label))
    return cells, notes


def _short_names(paths: list[Path]) -> list[str]:
    """The shortest path suffixes that tell ``paths`` apart (``eval-a/results.json`` -> ``eval-a``)."""
    for depth in range(1, 6):
        names = ["/".join(_parts(p)[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def _parts(path: Path) -> list[str]:
    parts = list(path.parts)
    if parts[-1] == "results.json":
        parts = parts[:-1]
    else:
        parts[-1] = path.stem
    return parts
