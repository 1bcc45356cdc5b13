"""The evaluator's results.json as a typed record: one file per evaluation, self-describing.

:class:`EvaluationRecord` is what ``diffplan-evaluate`` (and every sweep cell) writes and what
``diffplan-report`` reads. It is a frozen dataclass with nested records for the parts the
code reads (scores, plan times, episodes, dataset, checkpoint, reference scale, hardware,
sweep cell); the resolved configs stay plain JSON objects. :meth:`EvaluationRecord.from_json`
checks every required key and type and raises :class:`ResultsError` (a ``ValueError``) with
one line naming the file, the key and the fix; :meth:`EvaluationRecord.to_json` gives back the
JSON object, key for key, so a file read and written again is unchanged:

- keys this module does not know (a recipe, optional metrics like ``dynamics_error``) are kept
  in each record's ``extra`` and written back;
- a record read from a file remembers which keys the file had and their order (``keys``), so
  an absent optional key stays absent and a ``null`` stays ``null``;
- numbers are kept as they were written (an integer stays an integer).

The JSON (``format`` 1) is the one the evaluator has always written; see :func:`build_record`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Self

from diffplan import __version__
from diffplan.evaluation.evaluator import EvaluationOutput
from diffplan.evaluation.reference import scale_label
from diffplan.utils import atomic_path, git_revision, hardware_info

RESULTS_FORMAT = 1
"""The ``format`` of results.json this package writes and reads."""

#: Distributions whose versions results.json records (``packages``) and the report shows.
TRACKED_PACKAGES = ("diffplan", "torch", "numpy", "gymnasium", "gymnasium-robotics", "mujoco")

FIX = "results files are written by diffplan-evaluate (rerun it, or fix the file)"
"""The fix a :class:`ResultsError` about a bad or old file names."""


class ResultsError(ValueError):
    """A results file that cannot be read; the message (one line) names the file, the key and the fix."""


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed version of each distribution in ``names`` ("not installed" when absent)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# --- reading JSON values ------------------------------------------------------------------------


@dataclass(frozen=True)
class _At:
    """Where a value is: the file (``source``) and the key path inside it (``episodes[3].seed``)."""

    source: str
    key: str = ""

    def sub(self, name: str) -> _At:
        return _At(self.source, f"{self.key}.{name}" if self.key else name)

    def item(self, index: int) -> _At:
        return _At(self.source, f"{self.key}[{index}]")

    def missing(self) -> ResultsError:
        return ResultsError(f"{self.source}: missing key {self.key!r}; {FIX}")

    def bad(self, expected: str, value: Any) -> ResultsError:
        if not self.key:
            return ResultsError(f"{self.source}: not a results object (got {type(value).__name__}); {FIX}")
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return ResultsError(f"{self.source}: key {self.key!r} must be {expected}, got {shown}; {FIX}")


Check = Callable[[Any, _At], Any]
"""Validates a JSON value found at a key and returns what the record holds."""


def _number(value: Any, at: _At) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value  # an integer stays an integer, so the file is written back as it was
    raise at.bad("a number", value)


def _int(value: Any, at: _At) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise at.bad("an integer", value)


def _str(value: Any, at: _At) -> str:
    if isinstance(value, str):
        return value
    raise at.bad("a string", value)


def _bool(value: Any, at: _At) -> bool:
    if isinstance(value, bool):
        return value
    raise at.bad("true or false", value)


def _object(value: Any, at: _At) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    raise at.bad("an object", value)


def _nullable(check: Check) -> Check:
    def read(value: Any, at: _At) -> Any:
        return None if value is None else check(value, at)

    return read


def _list_of(check: Check) -> Check:
    def read(value: Any, at: _At) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise at.bad("a list", value)
        return tuple(check(item, at.item(i)) for i, item in enumerate(value))

    return read


def _map_of(check: Check) -> Check:
    def read(value: Any, at: _At) -> dict[str, Any]:
        return {key: check(item, at.sub(key)) for key, item in _object(value, at).items()}

    return read


def _record(cls: type[_Record]) -> Check:
    def read(value: Any, at: _At) -> _Record:
        return cls._parse(value, at)

    return read


def _key(check: Check, json_name: str | None = None) -> dict[str, Any]:
    """A field's metadata: how its JSON value is checked, and its JSON name when not the field's."""
    return {"check": check, **({"json": json_name} if json_name else {})}


def _plain(value: Any) -> Any:
    """``value`` as plain JSON data (records as objects, tuples as lists), copied."""
    if isinstance(value, _Record):
        return value.to_json()
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


@dataclass(frozen=True, kw_only=True)
class _Record:
    """A JSON object with typed fields (each field's metadata says how its value is checked).

    Attributes:
        extra: the object's keys that are not fields, as read (written back after the fields).
        keys: the keys of the object this record was read from, in their order (empty when built
            in code: then fields are written in their declared order, optional ones only when set).
    """

    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)
    keys: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Any, source: str | Path = "<results>", *, key: str = "") -> Self:
        """Check ``data`` (parsed JSON) and build the record.

        Args:
            data: the JSON object.
            source: the file it came from (named in errors).
            key: where the object is inside the file (``"dataset"``), for errors.

        Raises:
            ResultsError: a missing required key or a value of the wrong type, naming the file,
                the key and the fix.
        """
        return cls._parse(data, _At(str(source), key))

    @classmethod
    def _parse(cls, data: Any, at: _At) -> Self:
        if not isinstance(data, Mapping):
            raise at.bad("an object", data)
        values: dict[str, Any] = {}
        known = set()
        for f in fields(cls):
            check = f.metadata.get("check")
            if check is None:
                continue
            name = f.metadata.get("json", f.name)
            known.add(name)
            if name in data:
                values[f.name] = check(data[name], at.sub(name))
            elif f.default is MISSING and f.default_factory is MISSING:
                raise at.sub(name).missing()
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**values, extra=extra, keys=tuple(data))

    def to_json(self) -> dict[str, Any]:
        """The JSON object: the keys it was read from, in their order, then any others."""
        values: dict[str, Any] = {}
        for f in fields(self):
            if "check" not in f.metadata:
                continue
            name = f.metadata.get("json", f.name)
            value = getattr(self, f.name)
            if value is None and f.default is None and name not in self.keys:
                continue  # an optional key that is not set
            values[name] = _plain(value)
        for name, value in self.extra.items():
            values.setdefault(name, _plain(value))
        ordered = {name: values[name] for name in self.keys if name in values}
        return {**ordered, **values}


# --- the records ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EpisodeRecord(_Record):
    """One episode (an entry of ``episodes``): its seeds, return, score, success, length, failure."""

    seed: int = field(metadata=_key(_int))
    episode: int = field(metadata=_key(_int))
    reset_seed: int = field(metadata=_key(_int))
    episode_return: float = field(metadata=_key(_number))
    normalized_score: float = field(metadata=_key(_number))
    success: bool = field(metadata=_key(_bool))
    length: int = field(metadata=_key(_int))
    failed: bool = field(metadata=_key(_bool))
    reason: str | None = field(default=None, metadata=_key(_str))


@dataclass(frozen=True, kw_only=True)
class ScoreRecord(_Record):
    """``normalized_score``: mean and standard error over episodes, and the mean of each seed."""

    mean: float = field(metadata=_key(_number))
    stderr: float = field(metadata=_key(_number))
    per_seed_mean: Mapping[str, float] = field(metadata=_key(_map_of(_number)))


@dataclass(frozen=True, kw_only=True)
class ReturnRecord(_Record):
    """``return``: the mean episode return."""

    mean: float = field(metadata=_key(_number))


@dataclass(frozen=True, kw_only=True)
class PlanTimeRecord(_Record):
    """``plan_time_s``: seconds per plan call (one call plans a whole batch), and every call's time."""

    mean: float = field(metadata=_key(_number))
    median: float = field(metadata=_key(_number))
    n_plans: int = field(metadata=_key(_int))
    per_plan: tuple[float, ...] = field(metadata=_key(_list_of(_number)))


@dataclass(frozen=True, kw_only=True)
class HardwareRecord(_Record):
    """``hardware``: what ran the evaluation (:func:`diffplan.utils.hardware_info`)."""

    platform: str = field(metadata=_key(_str))
    processor: str = field(metadata=_key(_str))
    cpu_count: int | None = field(metadata=_key(_nullable(_int)))
    torch_threads: int = field(metadata=_key(_int))
    python: str = field(metadata=_key(_str))
    torch: str = field(metadata=_key(_str))
    gpu: str | None = field(default=None, metadata=_key(_str))


@dataclass(frozen=True, kw_only=True)
class DatasetRecord(_Record):
    """``dataset``: the evaluated dataset (:func:`diffplan.data.identity.dataset_record`).

    Files written before dataset identities hold only ``path`` and ``sha256``. ``sha256`` is
    null for a Minari dataset (a folder); ``matches_checkpoint`` is null, with a ``note``, when
    the dataset could not be compared with the checkpoint's.
    """

    path: str = field(metadata=_key(_str))
    sha256: str | None = field(metadata=_key(_nullable(_str)))
    identity: str | None = field(default=None, metadata=_key(_nullable(_str)))
    layout: str | None = field(default=None, metadata=_key(_nullable(_str)))
    n_transitions: int | None = field(default=None, metadata=_key(_nullable(_int)))
    n_episodes: int | None = field(default=None, metadata=_key(_nullable(_int)))
    matches_checkpoint: bool | None = field(default=None, metadata=_key(_nullable(_bool)))
    note: str | None = field(default=None, metadata=_key(_nullable(_str)))


@dataclass(frozen=True, kw_only=True)
class FileRecord(_Record):
    """A file by path and content hash (the value checkpoint of value guidance)."""

    path: str = field(metadata=_key(_str))
    sha256: str = field(metadata=_key(_str))


@dataclass(frozen=True, kw_only=True)
class CheckpointRecord(_Record):
    """``checkpoint``: what was evaluated (path, sha256, training step; ``ema`` for diffusion models,
    ``value`` for the value checkpoint of value guidance, ``critic`` for the offline agent whose
    critic ranked the candidates, ``planner.critic``)."""

    path: str = field(metadata=_key(_str))
    sha256: str = field(metadata=_key(_str))
    step: int = field(metadata=_key(_int))
    ema: bool | None = field(default=None, metadata=_key(_bool))
    value: FileRecord | None = field(default=None, metadata=_key(_record(FileRecord)))
    critic: FileRecord | None = field(default=None, metadata=_key(_record(FileRecord)))


@dataclass(frozen=True, kw_only=True)
class ReferenceScale(_Record):
    """``reference_scores``: the returns a normalized score of 0 and 100 stand for, and where they
    came from (:func:`diffplan.evaluation.reference.resolve_reference_scores`; measured ones name
    the policies and the episodes each was measured over)."""

    method: str = field(metadata=_key(_str))
    min: float = field(metadata=_key(_number))
    max: float = field(metadata=_key(_number))
    source: str | None = field(default=None, metadata=_key(_str))
    min_policy: str | None = field(default=None, metadata=_key(_str))
    max_policy: str | None = field(default=None, metadata=_key(_str))
    n_episodes: int | None = field(default=None, metadata=_key(_int))

    @property
    def label(self) -> str:
        """The scale's short name for reports (``"D4RL scale"``)."""
        return scale_label({"method": self.method})


@dataclass(frozen=True, kw_only=True)
class CellRecord(_Record):
    """``cell``: the sweep cell a file belongs to (written by ``diffplan-sweep``)."""

    task: str | None = field(default=None, metadata=_key(_str))
    kind: str = field(metadata=_key(_str))
    strength: float = field(metadata=_key(_number))
    label: str | None = field(default=None, metadata=_key(_nullable(_str)))


@dataclass(frozen=True, kw_only=True)
class BatchedRecord(_Record):
    """``batched``: the batched sweep pass a cell was evaluated in."""

    n_envs: int = field(metadata=_key(_int))
    cells_in_batch: tuple[str, ...] = field(metadata=_key(_list_of(_str)))


@dataclass(frozen=True, kw_only=True)
class EvaluationRecord(_Record):
    """One evaluation: results.json.

    Attributes (the JSON keys; ``return_`` is ``return``):
        format: :data:`RESULTS_FORMAT`.
        task, created_at, diffplan_version, git_revision, hardware, packages: what ran, where and
            when (``packages`` is absent in files written before it was recorded).
        config / trained_config: the evaluation's and the checkpoint's resolved configs.
        dataset, checkpoint: what was evaluated.
        seeds, n_episodes_per_seed, n_episodes, n_failed: the episodes run.
        reference_scores: the scale of the normalized scores.
        normalized_score, success_rate (None: scored by return only), return_, plan_time_s,
            wall_time_s, episode_returns, episodes: what was measured.
        cell, batched: a sweep's cell and batched pass (absent outside sweeps).
    """

    format: int = field(metadata=_key(_int))
    task: str = field(metadata=_key(_str))
    created_at: str = field(metadata=_key(_str))
    diffplan_version: str = field(metadata=_key(_str))
    git_revision: str = field(metadata=_key(_str))
    hardware: HardwareRecord = field(metadata=_key(_record(HardwareRecord)))
    packages: Mapping[str, str] | None = field(default=None, metadata=_key(_map_of(_str)))
    config: Mapping[str, Any] = field(metadata=_key(_object))
    trained_config: Mapping[str, Any] = field(metadata=_key(_object))
    dataset: DatasetRecord = field(metadata=_key(_record(DatasetRecord)))
    checkpoint: CheckpointRecord = field(metadata=_key(_record(CheckpointRecord)))
    seeds: tuple[int, ...] = field(metadata=_key(_list_of(_int)))
    n_episodes_per_seed: int = field(metadata=_key(_int))
    n_episodes: int = field(metadata=_key(_int))
    n_failed: int = field(metadata=_key(_int))
    reference_scores: ReferenceScale = field(metadata=_key(_record(ReferenceScale)))
    normalized_score: ScoreRecord = field(metadata=_key(_record(ScoreRecord)))
    success_rate: float | None = field(metadata=_key(_nullable(_number)))
    return_: ReturnRecord = field(metadata=_key(_record(ReturnRecord), "return"))
    plan_time_s: PlanTimeRecord = field(metadata=_key(_record(PlanTimeRecord)))
    wall_time_s: float = field(metadata=_key(_number))
    episode_returns: tuple[float, ...] = field(metadata=_key(_list_of(_number)))
    episodes: tuple[EpisodeRecord, ...] = field(metadata=_key(_list_of(_record(EpisodeRecord))))
    cell: CellRecord | None = field(default=None, metadata=_key(_record(CellRecord)))
    batched: BatchedRecord | None = field(default=None, metadata=_key(_record(BatchedRecord)))

    @classmethod
    def from_json(cls, data: Any, source: str | Path = "<results>", *, key: str = "") -> Self:
        """Check a parsed results.json and build its record (see :meth:`_Record.from_json`).

        Raises:
            ResultsError: not an object, no ``episodes`` (not an evaluation's results), a
                ``format`` other than :data:`RESULTS_FORMAT`, a missing required key or a value of
                the wrong type; the message names the file, the key and the fix.
        """
        at = _At(str(source), key)
        if isinstance(data, Mapping):
            if "episodes" not in data:
                raise at.sub("episodes").missing()
            version = data.get("format")
            if isinstance(version, int) and not isinstance(version, bool) and version != RESULTS_FORMAT:
                newer = "a newer diffplan: upgrade diffplan to read it" if version > RESULTS_FORMAT else FIX
                raise ResultsError(f"{source}: key 'format' is {version}, this diffplan reads format "
                                   f"{RESULTS_FORMAT}; the file was written by {newer}")
        return cls._parse(data, at)

    @property
    def has_success(self) -> bool:
        """False where the evaluator wrote ``success_rate: null`` (tasks scored by return only)."""
        return self.success_rate is not None


def build_record(
    output: EvaluationOutput,
    *,
    task: str,
    config: dict[str, Any],
    trained_config: dict[str, Any],
    dataset: Mapping[str, Any],
    checkpoint: Mapping[str, Any],
    seeds: list[int],
    n_episodes_per_seed: int,
    reference_scores: Mapping[str, Any],
    has_success: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> EvaluationRecord:
    """The record of an evaluation: provenance, summary, and every episode.

    ``config`` is the evaluation's resolved config (planner, sampler, eval settings);
    ``trained_config`` is the checkpoint's (model, horizon, stride, training budget).
    ``has_success=False`` (locomotion: scored by return only) records ``success_rate: null``;
    ``extra`` adds top-level keys (a sweep's ``cell`` and ``batched``, checked as such).

    Raises:
        ResultsError: ``dataset``, ``checkpoint``, ``reference_scores`` or a ``cell`` lack a key
            or hold a value of the wrong type.
    """
    at = _At("results.json")
    summary = output.summary()
    score, plan = summary["normalized_score"], summary["plan_time_s"]
    others = dict(extra or {})
    cell, batched = others.pop("cell", None), others.pop("batched", None)
    return EvaluationRecord(
        format=RESULTS_FORMAT,
        task=task,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        diffplan_version=__version__,
        git_revision=git_revision(),
        hardware=HardwareRecord._parse(hardware_info(), at.sub("hardware")),
        packages=package_versions(),
        config=config,
        trained_config=trained_config,
        dataset=DatasetRecord._parse(dataset, at.sub("dataset")),
        checkpoint=CheckpointRecord._parse(checkpoint, at.sub("checkpoint")),
        seeds=tuple(seeds),
        n_episodes_per_seed=n_episodes_per_seed,
        n_episodes=summary["n_episodes"],
        n_failed=summary["n_failed"],
        reference_scores=ReferenceScale._parse(reference_scores, at.sub("reference_scores")),
        normalized_score=ScoreRecord(mean=score["mean"], stderr=score["stderr"], per_seed_mean=score["per_seed_mean"]),
        success_rate=summary["success_rate"] if has_success else None,
        return_=ReturnRecord(mean=summary["return"]["mean"]),
        plan_time_s=PlanTimeRecord(mean=plan["mean"], median=plan["median"], n_plans=plan["n_plans"],
                                   per_plan=tuple(output.plan_times_s)),
        wall_time_s=summary["wall_time_s"],
        episode_returns=tuple(e.episode_return for e in output.episodes),
        episodes=tuple(EpisodeRecord(**asdict(e)) for e in output.episodes),
        cell=None if cell is None else CellRecord._parse(cell, at.sub("cell")),
        batched=None if batched is None else BatchedRecord._parse(batched, at.sub("batched")),
        extra=others,
    )


def build_results(output: EvaluationOutput, **kwargs: Any) -> dict[str, Any]:
    """results.json as JSON data: :func:`build_record`'s record, :meth:`~EvaluationRecord.to_json`."""
    return build_record(output, **kwargs).to_json()


def read_record(path: str | Path) -> EvaluationRecord:
    """Read and check one results.json.

    Raises:
        ResultsError: no such file, not JSON, or not a results record (see
            :meth:`EvaluationRecord.from_json`), naming the file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ResultsError(f"{path}: no such file; pass results.json files or directories holding them") from e
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e}); {FIX}") from e
    return EvaluationRecord.from_json(data, source=path)


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")
    return path


def write_record(path: str | Path, record: EvaluationRecord) -> Path:
    """Write ``record`` as results.json (atomically)."""
    return write_json(path, record.to_json())
