"""Exact-reproduction records: small end-to-end pipelines, one per planner kind, re-checkable.

Each kind is a short chain of the user commands (collect -> train [-> train-value | train-bc]
-> evaluate), run as subprocesses into a work folder (default /tmp/diffplan-repro):

- ``goal``: pointmaze-umaze, the demo's U-Net and pursuit planner, goal guidance;
- ``value``: hopper-medium from a tiny PPO agent budget, Diffuser's locomotion recipe, value guidance;
- ``policy``: the same Hopper data and diffusion model, policy guidance towards a BC target;
- ``forcing``: pointmaze-umaze, a causal transformer trained with independent levels (Diffusion
  Forcing), pyramid-schedule MPC with goal guidance.

``record`` runs every pipeline and writes ``results/reproduction/<kind>.json``: the evaluator's
results.json as it is, plus a ``reproduce`` block with the commands (plain argv lists; ``{work}``
stands for the work folder; argv[0] is the console script, run as ``python -m <module>`` through
the code's pyproject.toml ``[project.scripts]``, so ``PYTHONPATH`` selects the code), the code's git
revision, the per-episode returns, a digest of the executed trajectories and the hashes of every
dataset and checkpoint.

``check`` re-runs the commands stored in the records (edit them there when a key is renamed)
with whatever code ``python -m diffplan...`` imports, and compares exactly:

- per-episode returns (``episode_returns``, and the failed-episode count);
- the executed trajectories (``episodes.npz``: observations, lengths, goals, reset seeds);
- every dataset and checkpoint by content (all but its settings, next item): HDF5 arrays and
  attributes, checkpoint tensors and values, with the work folder's path written as ``{work}`` and
  only these left out: the dataset's creation timestamp (metadata ``created`` / ``created_at``) and, inside checkpoints,
  the embedded file hash of that dataset (``dataset.sha256``), which a timestamp changes;
- the artifacts' settings, a checkpoint's stored training config and a dataset's metadata, key by
  key: differences are listed (a refactor that renames config keys changes them without changing
  a result); ``--strict-config`` makes them a mismatch;
- the files' sha256 too, reported per artifact (they differ after a fresh collection, since the
  timestamp is in the file); ``--strict-bytes`` makes a byte difference a mismatch.

It prints a table of kind / match and exits 1 on any mismatch or failed command.

    PYTHONPATH=/tmp/repro-base:/tmp/repro-base/envs python scripts/reproduce.py record
    python scripts/reproduce.py check                      # all kinds, from scratch
    python scripts/reproduce.py check --kind value         # one kind (repeatable)
    python scripts/reproduce.py check --reuse              # keep datasets/checkpoints whose content matches
                                                           # the record: re-check the evaluations only
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RECORD_DIR = REPO / "results" / "reproduction"
DEFAULT_WORK = Path("/tmp/diffplan-repro")
RECORD_FORMAT = 1
KINDS = ("goal", "value", "policy", "forcing")

# ----------------------------------------------------------------------------- the pipelines

MAZE_DATA = "{work}/data/pointmaze-umaze.hdf5"
HOPPER_DATA = "{work}/data/hopper-medium.hdf5"

COLLECT_MAZE = [
    "diffplan-collect", "task=pointmaze-umaze", f"task.dataset={MAZE_DATA}", "run_dir={work}/data",
    "collect.n_steps=20000", "collect.ref_episodes=10", "collect.progress=false",
]
# The cheapest Hopper data the collector allows while still training its agent: PPO stops at the
# medium_max_steps budget (one 2,048-step rollout of 8 envs x 256 steps), evaluated on 2 episodes.
COLLECT_HOPPER = [
    "diffplan-collect", "task=hopper-medium", f"task.dataset={HOPPER_DATA}", "run_dir={work}/data",
    "collect.agent_dir={work}/data/agents", "collect.n_steps=10000", "collect.n_envs=4", "collect.progress=false",
    "collect.agents.hopper.medium_max_steps=2048", "collect.agents.hopper.eval_every=2048",
    "collect.agents.hopper.eval_episodes=2", "collect.agents.hopper.expert_steps=0",
]
GOAL = ["+experiment=demo", "run_dir={work}/goal", f"task.dataset={MAZE_DATA}"]
HOPPER = ["+experiment=locomotion", "task=hopper-medium", "run_dir={work}/hopper", f"task.dataset={HOPPER_DATA}"]
FORCING = ["+experiment=medium-df", "task=pointmaze-umaze", "task.horizon=128", "run_dir={work}/forcing",
           f"task.dataset={MAZE_DATA}"]
# 1 seed x 8 episodes in two batches of 4 environments (the seed's generator is shared by its batches).
EVAL = ["eval.n_episodes=8", "eval.n_envs=4", "eval.seeds=[0]", "eval.progress=false", "eval.plots=false",
        "eval.save_episodes=true"]


def _train(common: list[str], steps: int, *extra: str) -> list[str]:
    return ["diffplan-train", *common, f"train.steps={steps}", f"train.ckpt_every={steps}", "train.progress=false",
            *extra]


def _dataset(path: str, clean: list[str]) -> dict[str, Any]:
    return {"path": path, "made_by": "diffplan-collect", "clean": [f"{path}.partial", *clean]}


def _checkpoint(path: str, command: str) -> dict[str, Any]:
    return {"path": path, "made_by": command, "clean": []}


#: The pipelines ``record`` runs. ``check`` runs the commands stored in the records instead.
PIPELINES: dict[str, dict[str, Any]] = {
    "goal": {
        "description": "pointmaze-umaze: demo U-Net (horizon 64, stride 2), 400 steps; pursuit planner with goal "
                       "guidance (guidance=goal)",
        "commands": [
            COLLECT_MAZE,
            _train(GOAL, 400),
            # planner.tracker.lookahead=4: the demo's tracker setting when this was recorded (it is 24 since).
            ["diffplan-evaluate", *GOAL, "guidance=goal", "planner.tracker.lookahead=4", *EVAL,
             "eval.out_dir={work}/goal/eval"],
        ],
        "artifacts": {
            "dataset": _dataset(MAZE_DATA, []),
            "checkpoint": _checkpoint("{work}/goal/checkpoint.pt", "diffplan-train"),
        },
        "eval_dir": "{work}/goal/eval",
    },
    "value": {
        "description": "hopper-medium (10k steps from a 2,048-step PPO agent): +experiment=locomotion U-Net, 400 "
                       "steps; value function 400 steps; 8-candidate warm-started planner with value guidance",
        "commands": [
            COLLECT_HOPPER,
            _train(HOPPER, 400),
            ["diffplan-train-value", *HOPPER, "value.steps=400", "value.ckpt_every=400", "value.progress=false"],
            ["diffplan-evaluate", *HOPPER, "guidance=value", *EVAL, "eval.out_dir={work}/hopper/eval-value"],
        ],
        "artifacts": {
            "dataset": _dataset(HOPPER_DATA, ["{work}/data/agents/hopper"]),
            "checkpoint": _checkpoint("{work}/hopper/checkpoint.pt", "diffplan-train"),
            "value_checkpoint": _checkpoint("{work}/hopper/value/checkpoint.pt", "diffplan-train-value"),
        },
        "eval_dir": "{work}/hopper/eval-value",
    },
    "policy": {
        "description": "hopper-medium, the value kind's data and diffusion model; BC target 1,000 steps; policy-guided "
                       "diffusion (guidance=policy, bc: target), one candidate per plan (no value ranking)",
        "commands": [
            COLLECT_HOPPER,
            _train(HOPPER, 400),
            ["diffplan-train-bc", *HOPPER, "bc.steps=1000", "bc.ckpt_every=1000", "bc.progress=false"],
            ["diffplan-evaluate", *HOPPER, "guidance=policy", "guidance.policy=bc:{work}/hopper/bc/checkpoint.pt",
             "planner.n_candidates=1", *EVAL, "eval.out_dir={work}/hopper/eval-policy"],
        ],
        "artifacts": {
            "dataset": _dataset(HOPPER_DATA, ["{work}/data/agents/hopper"]),
            "checkpoint": _checkpoint("{work}/hopper/checkpoint.pt", "diffplan-train"),
            "bc_checkpoint": _checkpoint("{work}/hopper/bc/checkpoint.pt", "diffplan-train-bc"),
        },
        "eval_dir": "{work}/hopper/eval-policy",
    },
    "forcing": {
        "description": "pointmaze-umaze: +experiment=medium-df causal transformer (independent levels, Min-SNR), "
                       "horizon 128, 800 steps at lr 5e-4; forcing planner, pyramid schedule, goal guidance scale 100",
        "commands": [
            COLLECT_MAZE,
            _train(FORCING, 800, "train.lr=5e-4"),
            ["diffplan-evaluate", *FORCING, *EVAL, "eval.out_dir={work}/forcing/eval"],
        ],
        "artifacts": {
            "dataset": _dataset(MAZE_DATA, []),
            "checkpoint": _checkpoint("{work}/forcing/checkpoint.pt", "diffplan-train"),
        },
        "eval_dir": "{work}/forcing/eval",
    },
}

# ----------------------------------------------------------------------------- hashing

#: Dataset metadata keys (at any depth) that hold the time of writing: left out of the content digest.
TIMESTAMP_KEYS = frozenset({"created", "created_at"})
#: Checkpoint leaves left out of the content digest: the embedded file hash of the training dataset.
CHECKPOINT_EXCLUDED = (("dataset", "sha256"),)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Canonical:
    """A SHA-256 of nested values: dicts by sorted key, JSON strings parsed, the work folder as ``{work}``,
    tensors and arrays by dtype, shape and bytes. ``excluded`` are key paths (tuples) left out;
    ``dropped`` collects the paths that were."""

    def __init__(self, work: Path, excluded: Callable[[tuple[str, ...]], bool]) -> None:
        self.work = str(work)
        self.excluded = excluded
        self.dropped: set[str] = set()

    def digest(self, value: Any, path: tuple[str, ...] = ()) -> str:
        h = hashlib.sha256()
        self._feed(h, value, path)
        return h.hexdigest()

    def _feed(self, h: Any, value: Any, path: tuple[str, ...]) -> None:
        import numpy as np
        import torch

        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{list(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, np.ndarray):
            a = np.ascontiguousarray(value)
            if a.dtype.kind in "OUS":
                self._feed(h, a.tolist(), path)
                return
            h.update(f"A{a.dtype.str}{list(a.shape)}:".encode())
            h.update(a.tobytes())
        elif isinstance(value, dict):
            h.update(b"{")
            for key in sorted(value, key=str):
                sub = (*path, str(key))
                if self.excluded(sub):
                    self.dropped.add(".".join(sub))
                    continue
                h.update(json.dumps(str(key)).encode() + b":")
                self._feed(h, value[key], sub)
            h.update(b"}")
        elif isinstance(value, list | tuple):
            h.update(b"[")
            for item in value:
                self._feed(h, item, path)
                h.update(b",")
            h.update(b"]")
        elif isinstance(value, bytes):
            self._feed(h, value.decode("utf-8", "replace"), path)
        elif isinstance(value, str):
            stripped = value.strip()
            if stripped[:1] in ("{", "[") and len(stripped) > 1:
                try:
                    parsed = json.loads(stripped)
                except ValueError:
                    parsed = None
                if parsed is not None:
                    h.update(b"J")
                    self._feed(h, parsed, path)
                    return
            h.update(b"S" + json.dumps(value.replace(self.work, "{work}")).encode())
        else:  # numbers, bools, None
            if isinstance(value, np.generic):
                value = value.item()
            h.update(f"V{type(value).__name__}:{value!r}".encode())


#: The entry of each artifact that holds its settings rather than its data: a checkpoint's training
#: config, a dataset's metadata attribute. Compared leaf by leaf and reported; a refactor that renames
#: config keys changes them without changing any result, so they count only with --strict-config.
SETTINGS_ENTRY = {"checkpoint": "config", "dataset": "@metadata"}


def _summary(entries: dict[str, str], settings_entry: str, canon: Canonical, settings: Any) -> dict[str, Any]:
    data = {k: v for k, v in entries.items() if k != settings_entry}
    return {"content": hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest(),
            "entries": entries, "ignored": sorted(canon.dropped), "settings_entry": settings_entry,
            "settings": _flatten(_plain(settings, canon.work, canon.excluded))}


def _plain(value: Any, work: str, excluded: Callable[[tuple[str, ...]], bool], path: tuple[str, ...] = ()) -> Any:
    """JSON-like ``value`` (a JSON string is parsed) with the work folder as ``{work}``, without excluded keys."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    if isinstance(value, dict):
        return {str(k): _plain(v, work, excluded, (*path, str(k))) for k, v in value.items()
                if not excluded((*path, str(k)))}
    if isinstance(value, list | tuple):
        return [_plain(v, work, excluded, path) for v in value]
    if isinstance(value, str):
        return value.replace(work, "{work}")
    return value.item() if hasattr(value, "item") else value


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": leaf}`` (lists are leaves)."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def hdf5_content(path: Path, work: Path) -> dict[str, Any]:
    """Digest of an HDF5 file's arrays and attributes, without its creation timestamp."""
    import h5py

    canon = Canonical(work, lambda sub: sub[-1] in TIMESTAMP_KEYS)
    entries: dict[str, str] = {}
    with h5py.File(path, "r") as handle:
        names: list[str] = []
        handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in sorted(names):
            entries[name] = canon.digest(handle[name][()], (name,))
        for key in sorted(handle.attrs):
            entries[f"@{key}"] = canon.digest(handle.attrs[key], (f"@{key}",))
        settings = handle.attrs.get("metadata", "{}")
    return _summary(entries, SETTINGS_ENTRY["dataset"], canon, settings)


def checkpoint_content(path: Path, work: Path) -> dict[str, Any]:
    """Digest of a checkpoint's payload (every entry), without the embedded dataset file hash."""
    import torch

    payload = torch.load(path, map_location="cpu", weights_only=True)
    canon = Canonical(work, lambda sub: sub in CHECKPOINT_EXCLUDED)
    entries = {str(key): canon.digest(payload[key], (str(key),)) for key in sorted(payload, key=str)}
    return _summary(entries, SETTINGS_ENTRY["checkpoint"], canon, payload.get("config", "{}"))


def artifact_hashes(path: Path, work: Path) -> dict[str, Any]:
    content = hdf5_content(path, work) if path.suffix in (".hdf5", ".h5") else checkpoint_content(path, work)
    return {"sha256": file_sha256(path), **content}


def settings_diff(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Leaf differences between two flattened settings: keys that moved to a new name with the same
    value (the code's ``diffplan.config.LEGACY_KEYS``, if it has one), removed, added and changed keys."""
    out = []
    removed = sorted(set(recorded) - set(now))
    added = sorted(set(now) - set(recorded))
    changed = sorted(k for k in set(recorded) & set(now) if recorded[k] != now[k])
    try:
        from diffplan.config import LEGACY_KEYS
    except ImportError:  # code from before settings moved
        LEGACY_KEYS = {}
    moved = [(k, LEGACY_KEYS[k]) for k in removed if LEGACY_KEYS.get(k) in added and recorded[k] == now[LEGACY_KEYS[k]]]
    if moved:
        out.append(f"moved with the same value ({len(moved)}): " + ", ".join(f"{a} -> {b}" for a, b in moved))
        removed = [k for k in removed if k not in dict(moved)]
        added = [k for k in added if k not in {b for _, b in moved}]
    if removed:
        out.append(f"removed {removed}")
    if added:
        out.append(f"added {added}")
    if changed:
        out.append("changed " + ", ".join(f"{k}: {recorded[k]!r} -> {now[k]!r}" for k in changed))
    return out


def trajectory_digests(path: Path) -> dict[str, str]:
    """``executed``: observations, lengths, goals and keys of every episode; ``plans``: the recorded plans."""
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        def digest(keys: tuple[str, ...]) -> str:
            h = hashlib.sha256()
            for key in keys:
                if key in z.files:
                    a = np.ascontiguousarray(z[key])
                    h.update(f"{key}:{a.dtype.str}:{list(a.shape)}:".encode())
                    h.update(a.tobytes())
                else:
                    h.update(f"{key}:missing".encode())
            return h.hexdigest()

        return {"executed": digest(("observations", "lengths", "goals", "seed", "episode", "reset_seed")),
                "plans": digest(("plans", "plan_episode"))}


# ----------------------------------------------------------------------------- running commands


class Runner:
    """Runs console-script argv lists as ``python -m <module>`` of the code the environment imports."""

    def __init__(self, work: Path, log_dir: Path) -> None:
        self.work = work
        self.log_dir = log_dir
        self.code = self._code()
        self.scripts = self._scripts()
        self.done: dict[tuple[str, ...], str] = {}  # argv already run (or reused) in this invocation -> how

    def _code(self) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-c", "import diffplan, diffplan_envs; print(diffplan.__file__); "
                              "print(diffplan_envs.__file__)"], capture_output=True, text=True, check=True,
                             cwd=str(self.work))  # not the caller's folder: a checkout there would shadow PYTHONPATH
        package, envs = out.stdout.split()
        root = Path(package).resolve().parent.parent
        rev = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
        return {"diffplan": package, "diffplan_envs": envs, "root": str(root),
                "git_revision": (rev + ("-dirty" if dirty else "")) if rev else "unknown",
                "pythonpath": os.environ.get("PYTHONPATH", "")}

    def _scripts(self) -> dict[str, str]:
        pyproject = Path(self.code["root"]) / "pyproject.toml"
        if pyproject.is_file():
            scripts = tomllib.loads(pyproject.read_text()).get("project", {}).get("scripts", {})
            return {name: target.split(":")[0] for name, target in scripts.items()}
        return {}

    def expand(self, argv: list[str]) -> list[str]:
        return [arg.replace("{work}", str(self.work)) for arg in argv]

    def invocation(self, argv: list[str]) -> list[str]:
        name, args = argv[0], self.expand(argv[1:])
        if name in self.scripts:
            return [sys.executable, "-m", self.scripts[name], *args]
        if name.startswith("diffplan-"):
            return [sys.executable, "-m", "diffplan.cli." + name.removeprefix("diffplan-").replace("-", "_"), *args]
        if name.endswith(".py"):
            return [sys.executable, name.replace("{work}", str(self.work)), *args]
        return [name.replace("{work}", str(self.work)), *args]

    def run(self, argv: list[str], label: str) -> tuple[int, float, str]:
        cmd = self.invocation(argv)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{label}.log"
        print(f"  $ {shlex.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        with open(log, "w") as handle:
            handle.write(shlex.join(cmd) + "\n")
            handle.flush()
            proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=str(self.work))
        seconds = time.perf_counter() - t0
        tail = ""
        if proc.returncode != 0:
            lines = [line for line in log.read_text().splitlines() if "AdroitHand" not in line]
            tail = "\n".join(lines[-6:])
        return proc.returncode, seconds, tail


def _git(root: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _inside(work: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(work.resolve())
        return True
    except ValueError:
        return False


def _remove(work: Path, path: Path) -> None:
    if not _inside(work, path) or path.resolve() == work.resolve():
        raise SystemExit(f"reproduce.py: refusing to delete {path}: not inside the work folder {work}")
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# ----------------------------------------------------------------------------- one pipeline


def run_pipeline(kind: str, spec: dict[str, Any], runner: Runner, *, recorded: dict[str, Any] | None,
                 reuse: bool) -> dict[str, Any]:
    """Run ``spec``'s commands; return what happened (timings, failures, artifacts, results)."""
    work = runner.work
    artifacts = spec["artifacts"]
    recorded_artifacts = (recorded or {}).get("artifacts", {})
    eval_dir = Path(runner.expand([spec["eval_dir"]])[0])
    steps: list[dict[str, Any]] = []
    out: dict[str, Any] = {"kind": kind, "steps": steps, "failed": None}
    for index, argv in enumerate(spec["commands"]):
        key = tuple(runner.expand(argv))
        name = argv[0]
        produced = [role for role, a in artifacts.items() if a.get("made_by") == name]
        label = f"{kind}-{index}-{name}"
        step = {"argv": argv, "command_line": shlex.join(runner.invocation(argv))}
        steps.append(step)
        if key in runner.done:
            step.update(status="shared", seconds=0.0)
            print(f"[{kind}] {name}: same command as above ({runner.done[key]}), shared", flush=True)
            continue
        if reuse and produced and all(_reusable(work, runner, artifacts[r], recorded_artifacts.get(r))
                                      for r in produced):
            step.update(status="reused", seconds=0.0)
            runner.done[key] = "reused"
            print(f"[{kind}] {name}: reusing {', '.join(produced)} (content matches the record)", flush=True)
            continue
        # Start clean: training resumes from an existing checkpoint and collection skips an existing file.
        for role in produced:
            for path in [artifacts[role]["path"], *artifacts[role].get("clean", [])]:
                _remove(work, Path(runner.expand([path])[0]))
        if name == "diffplan-evaluate":
            for leftover in ("results.json", "episodes.npz"):
                _remove(work, eval_dir / leftover)
        print(f"[{kind}] {name}", flush=True)
        code, seconds, tail = runner.run(argv, label)
        step.update(status="ran" if code == 0 else f"exit {code}", seconds=round(seconds, 2))
        print(f"[{kind}] {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {seconds:.1f} s", flush=True)
        if code != 0:
            out["failed"] = {"step": index, "argv": argv, "exit": code, "log": str(runner.log_dir / f"{label}.log"),
                             "tail": tail}
            print(tail, flush=True)
            return out
        runner.done[key] = f"ran in {seconds:.1f} s"
    results_path = eval_dir / "results.json"
    if not results_path.is_file():
        out["failed"] = {"step": None, "argv": None, "exit": None, "log": None,
                         "tail": f"no {results_path} after the evaluation"}
        return out
    out["results"] = json.loads(results_path.read_text())
    episodes = eval_dir / "episodes.npz"
    out["trajectories"] = trajectory_digests(episodes) if episodes.is_file() else None
    out["artifacts"] = {}
    for role, a in artifacts.items():
        path = Path(runner.expand([a["path"]])[0])
        entry = {"path": a["path"], "made_by": a["made_by"], "clean": a.get("clean", [])}
        entry.update(artifact_hashes(path, work) if path.is_file() else {"missing": True})
        out["artifacts"][role] = entry
    return out


def _reusable(work: Path, runner: Runner, artifact: dict[str, Any], recorded: dict[str, Any] | None) -> bool:
    path = Path(runner.expand([artifact["path"]])[0])
    if recorded is None or not path.is_file():
        return False
    try:
        return artifact_hashes(path, work)["content"] == recorded.get("content")
    except Exception as e:  # an unreadable file is rebuilt
        print(f"  ({path}: {e}; rebuilding)", flush=True)
        return False


# ----------------------------------------------------------------------------- record and check


def record(args: argparse.Namespace) -> int:
    runner = Runner(args.work, args.work / "logs")
    print(f"code: {runner.code['diffplan']} at {runner.code['git_revision']}", flush=True)
    RECORD_DIR.mkdir(parents=True, exist_ok=True)
    status = 0
    for kind in args.kind or KINDS:
        spec = PIPELINES[kind]
        t0 = time.perf_counter()
        outcome = run_pipeline(kind, spec, runner, recorded=None, reuse=False)
        if outcome["failed"]:
            print(f"[{kind}] not recorded: {outcome['failed']}", flush=True)
            status = 1
            continue
        results = outcome["results"]
        block = {
            "format": RECORD_FORMAT,
            "kind": kind,
            "description": spec["description"],
            "recorded_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "git_revision": runner.code["git_revision"],
            "code": runner.code,
            "python": sys.version.split()[0],
            "machine": {"platform": platform.platform(), "cpu": _cpu_name(), "cpu_count": os.cpu_count()},
            "work": str(args.work),
            "invocation": "argv[0] is a console script of pyproject.toml [project.scripts], run as `python -m "
                          "<its module>`; {work} is the work folder (scripts/reproduce.py --work)",
            "commands": spec["commands"],
            "command_lines": [s["command_line"] for s in outcome["steps"]],
            "eval_dir": spec["eval_dir"],
            "episode_returns": results["episode_returns"],
            "n_failed": results.get("n_failed"),
            "trajectories": outcome["trajectories"],
            "dataset_identity": results.get("dataset", {}).get("identity"),
            "artifacts": outcome["artifacts"],
            "step_seconds": [s["seconds"] for s in outcome["steps"]],
            "seconds": round(time.perf_counter() - t0, 1),
            "compared_by_check": "episode_returns and n_failed exactly; trajectories.executed; each artifact's "
                                 "content (its settings, a checkpoint's config or a dataset's metadata, are "
                                 "reported and required with --strict-config; file sha256 reported, required "
                                 "with --strict-bytes)",
        }
        record_path = RECORD_DIR / f"{kind}.json"
        record_path.write_text(json.dumps({**results, "reproduce": block}, indent=1) + "\n")
        print(f"[{kind}] recorded {record_path.relative_to(REPO)}: returns {results['episode_returns']} "
              f"({block['seconds']} s)", flush=True)
    return status


def check(args: argparse.Namespace) -> int:
    runner = Runner(args.work, args.work / "logs")
    print(f"code: {runner.code['diffplan']} at {runner.code['git_revision']}", flush=True)
    rows: list[tuple[str, ...]] = []
    details: list[str] = []
    ok_all = True
    for kind in args.kind or KINDS:
        path = RECORD_DIR / f"{kind}.json"
        if not path.is_file():
            rows.append((kind, "-", "-", "-", "-", "-", "NO RECORD"))
            ok_all = False
            continue
        stored = json.loads(path.read_text())["reproduce"]
        spec = {"commands": stored["commands"], "eval_dir": stored["eval_dir"],
                "artifacts": {r: {k: a[k] for k in ("path", "made_by", "clean") if k in a}
                              for r, a in stored["artifacts"].items()}}
        t0 = time.perf_counter()
        outcome = run_pipeline(kind, spec, runner, recorded=stored, reuse=args.reuse)
        seconds = time.perf_counter() - t0
        if outcome["failed"]:
            f = outcome["failed"]
            where = f"command {f['step'] + 1} ({f['argv'][0]}) exit {f['exit']}" if f["step"] is not None else f["tail"]
            rows.append((kind, "-", "-", "-", "-", f"{seconds:.0f}", f"FAILED: {where}"))
            details.append(f"{kind}: {where}\n    {shlex.join(runner.expand(f['argv'])) if f['argv'] else ''}\n    "
                           + (f["tail"] or "").replace("\n", "\n    ") + (f"\n    log: {f['log']}" if f["log"] else ""))
            ok_all = False
            continue
        results = outcome["results"]
        returns_ok = (results["episode_returns"] == stored["episode_returns"]
                      and results.get("n_failed") == stored.get("n_failed"))
        if not returns_ok:
            details.append(f"{kind}: episode_returns\n    recorded {stored['episode_returns']}\n    now      "
                           f"{results['episode_returns']}")
        traj_now, traj_rec = outcome["trajectories"], stored.get("trajectories")
        if traj_now and traj_rec:
            traj_ok = traj_now["executed"] == traj_rec["executed"]
            traj = "same" if traj_ok else "DIFFER"
            if traj_ok and traj_now["plans"] != traj_rec["plans"]:
                traj = "same (plans differ)"
                details.append(f"{kind}: executed trajectories equal, recorded plans differ")
        else:
            traj_ok, traj = True, "n/a"
        content_ok, settings_ok, bytes_ok, notes = True, True, True, []
        for role, rec in stored["artifacts"].items():
            now = outcome["artifacts"].get(role, {"missing": True})
            if now.get("missing"):
                content_ok = False
                details.append(f"{kind}: {role} missing ({rec['path']})")
                continue
            same_content = now["content"] == rec["content"]
            same_settings = now["settings"] == rec.get("settings")
            same_bytes = now["sha256"] == rec["sha256"]
            content_ok &= same_content
            settings_ok &= same_settings
            bytes_ok &= same_bytes
            if not same_content:
                differ = sorted(k for k in set(now["entries"]) | set(rec["entries"])
                                if k != now["settings_entry"] and now["entries"].get(k) != rec["entries"].get(k))
                details.append(f"{kind}: {role} content differs in {differ}")
            if not same_settings:
                diff = settings_diff(rec.get("settings") or {}, now["settings"])
                details.append(f"{kind}: {role} {now['settings_entry']} differs: " + "; ".join(diff))
            if same_content and same_settings and not same_bytes:
                notes.append(f"{role} (left out: {', '.join(now['ignored']) or 'nothing'})")
        if notes:
            details.append(f"{kind}: file sha256 differs, content and settings equal: " + "; ".join(notes))
        ok = (returns_ok and traj_ok and content_ok and (settings_ok or not args.strict_config)
              and (bytes_ok or not args.strict_bytes))
        ok_all &= ok
        content = ("same" if settings_ok else "same, settings differ") if content_ok else "DIFFER"
        rows.append((kind, "same" if returns_ok else "DIFFER", traj, content,
                     "same" if bytes_ok else "differ", f"{seconds:.0f}", "MATCH" if ok else "MISMATCH"))
    header = ("kind", "returns", "trajectories", "artifacts (content)", "artifacts (sha256)", "seconds", "verdict")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print()
    print(f"code: {runner.code['diffplan']} at {runner.code['git_revision']}")
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)))
    if details:
        print("\n" + "\n".join(details))
    return 0 if ok_all else 1


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("record", "check"))
    parser.add_argument("--kind", action="append", choices=KINDS, help="only this kind (repeatable); default all")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"work folder (default {DEFAULT_WORK})")
    parser.add_argument("--reuse", action="store_true",
                        help="check: keep datasets and checkpoints in the work folder whose content matches the "
                             "record (re-run only what is missing or different, and every evaluation)")
    parser.add_argument("--strict-config", action="store_true",
                        help="check: also require the checkpoints' stored configs and the datasets' metadata to "
                             "equal the record's (a renamed config key then counts as a mismatch)")
    parser.add_argument("--strict-bytes", action="store_true",
                        help="check: also require every dataset and checkpoint file's sha256 to equal the record's")
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    sys.exit(record(args) if args.mode == "record" else check(args))


if __name__ == "__main__":
    main()
