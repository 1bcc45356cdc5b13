"""Transitions/s of :func:`diffplan_envs.dynamics.replay_transitions` (the dynamics error's replay) on
each backend: 2,000 Hopper transitions (observations of Hopper-v5 stepped with seeded uniform random
actions, reset on falls), replayed with ``physics="gymnasium"`` (one env, one transition at a time),
``physics="mujoco"`` (chunks of 256 in one ``mujoco.batch.Batch`` call, on every CPU) and the same on
one thread; the backends in turns within each repeat, median (min .. max) of the repeats. The results
must be identical. Writes the key ``replay`` of ``--out`` (read, modified, written: every other key
is kept).

    python scripts/benchmark_replay.py --out results/benchmarks/physics-cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
from diffplan_envs.dynamics import random_transitions, replay_transitions


def transitions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return random_transitions("Hopper-v5", n, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    observations, actions = transitions(args.n, seed=0)
    variants: dict[str, dict[str, Any]] = {"gymnasium": {"physics": "gymnasium"}, "mujoco": {"physics": "mujoco"},
                                           "mujoco-1-thread": {"physics": "mujoco", "threads": 1}}
    times: dict[str, list[float]] = {name: [] for name in variants}
    load_start = [round(x, 2) for x in os.getloadavg()]
    results = {}
    for _ in range(args.repeats):
        for name, kwargs in variants.items():
            start = time.perf_counter()
            results[name] = replay_transitions("hopper-medium", observations, actions, **kwargs)
            times[name].append(time.perf_counter() - start)
    load_end = [round(x, 2) for x in os.getloadavg()]
    for name in variants:
        for field in ("next_observations", "rewards", "terminated"):
            np.testing.assert_array_equal(getattr(results[name], field), getattr(results["gymnasium"], field))
    rates = {name: [args.n / t for t in times[name]] for name in variants}
    reference = statistics.median(rates["gymnasium"])
    rows = {name: {"transitions_per_s": round(statistics.median(r)), "min": round(min(r)), "max": round(max(r)),
                   "speedup_vs_gymnasium": round(statistics.median(r) / reference, 2)} for name, r in rates.items()}
    revision = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    entry = {"command": "python scripts/benchmark_replay.py", "git_revision": revision,
             "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
             "mujoco": mujoco.__version__, "task": "hopper-medium", "n_transitions": args.n,
             "repeats": args.repeats, "chunk": 256, "cpu_count": os.cpu_count(),
             "notes": "replay_transitions of Hopper-v5 transitions (seeded uniform random actions): transitions/s, "
                      "median (min .. max) of the repeats, the backends in turns; the three give identical "
                      "results; load averages (/proc/loadavg) count this benchmark's own process",
             "rows": rows, "load_average": {"start": load_start, "end": load_end}}
    print(json.dumps(entry, indent=1))
    if args.out is not None:
        data = json.loads(args.out.read_text()) if args.out.exists() else {}
        data["replay"] = entry
        args.out.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
