"""Time one guidance sweep batched versus sequential and write the timings as JSON.

Both runs compose the same config (Hydra overrides after ``--``), evaluate the same cells into
``<out>/sequential`` and ``<out>/batched`` (fresh folders: nothing is resumed) and record the wall
time of each whole sweep, the sum of the cells' plan times and the mean normalized score per
cell. The checkpoint (``eval.checkpoint``) and dataset must exist.

    python scripts/benchmark_sweep.py --out results/benchmarks/sweep-umaze -- \\
        +experiment=umaze-ref guidance=goal sweep=maze-goal eval.n_episodes=10

With ``--physics gymnasium mujoco`` the same sweep (batched, or sequential with ``--sequential``) runs
once per physics backend instead (``eval.physics``), in that order, into ``<out>/<backend>``, and the
per-cell scores of the backends must be identical (the backends step the same episodes):

    python scripts/benchmark_sweep.py --physics gymnasium mujoco --out runs/benchmarks/sweep-umaze-physics -- \\
        +experiment=umaze-ref guidance=goal sweep=umaze-report
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any


def compose_config(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    from diffplan.cli.common import CONF_DIR
    from diffplan.config import as_config, register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return as_config(compose("config", overrides=overrides))


def run_mode(overrides: list[str], out: Path, batched: bool, folder: Path | None = None) -> dict[str, Any]:
    from diffplan.sweep.runner import run_sweep

    folder = folder or out / ("batched" if batched else "sequential")
    if folder.exists():
        shutil.rmtree(folder)
    cfg = compose_config([*overrides, f"sweep.out_dir={folder}", f"sweep.batched={str(batched).lower()}",
                          "eval.progress=false"])
    start = time.perf_counter()
    paths = run_sweep(cfg)
    wall = time.perf_counter() - start
    cells = {}
    for path in paths:
        results = json.loads(path.read_text())
        cells[results["cell"]["label"]] = {
            "normalized_score": results["normalized_score"]["mean"],
            "n_episodes": results["n_episodes"],
            "plan_calls": results["plan_time_s"]["n_plans"],
            "plan_time_s": sum(results["plan_time_s"]["per_plan"]),
            "n_envs": results.get("batched", {}).get("n_envs", cfg.eval.n_envs),
        }
    return {"wall_time_s": wall, "cells": cells, "n_cells": len(paths), "seeds": list(cfg.eval.seeds),
            "episodes_per_cell_and_seed": cfg.eval.n_episodes, "device": cfg.eval.device}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/sweep"),
                        help="folder for both sweeps and benchmark.json")
    parser.add_argument("--physics", nargs="+", default=None,
                        help="time the sweep once per eval.physics backend instead of sequential vs batched")
    parser.add_argument("--sequential", action="store_true", help="with --physics: run the sweeps sequentially")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the sweep (after --)")
    args = parser.parse_args(argv)
    from diffplan_envs.mujoco_batch import check_physics

    for backend in args.physics or []:
        try:
            check_physics(backend)
        except ValueError as error:
            parser.error(f"--physics {backend}: {error}")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("diffplan").setLevel(logging.INFO)
    from diffplan.utils import hardware_info

    if args.physics:
        return compare_physics(args.physics, args.overrides, args.out, batched=not args.sequential,
                               hardware=hardware_info())
    sequential = run_mode(args.overrides, args.out, batched=False)
    batched = run_mode(args.overrides, args.out, batched=True)
    report = {
        "command": "python scripts/benchmark_sweep.py --out " + str(args.out) + " -- " + " ".join(args.overrides),
        "overrides": args.overrides,
        "sequential": sequential,
        "batched": batched,
        "speedup": sequential["wall_time_s"] / batched["wall_time_s"] if batched["wall_time_s"] > 0 else None,
        "hardware": hardware_info(),
        "note": "wall_time_s covers the whole sweep (model loading and result writing included); per-cell "
                "plan_time_s of a batched sweep is the time of the shared planner calls",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "benchmark.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"sequential {sequential['wall_time_s']:.1f} s, batched {batched['wall_time_s']:.1f} s, "
          f"speedup {report['speedup']:.2f}x -> {path}")
    return 0


def compare_physics(backends: list[str], overrides: list[str], out: Path, *, batched: bool,
                    hardware: dict[str, Any]) -> int:
    """Run the sweep once per physics backend; write ``<out>/benchmark.json``; 1 if the scores differ."""
    rows = {backend: run_mode([*overrides, f"eval.physics={backend}"], out, batched, folder=out / backend)
            for backend in backends}
    scores = {backend: {cell: row["normalized_score"] for cell, row in rows[backend]["cells"].items()}
              for backend in backends}
    identical = all(scores[backend] == scores[backends[0]] for backend in backends)
    first = rows[backends[0]]["wall_time_s"]
    report = {
        "command": f"python scripts/benchmark_sweep.py --physics {' '.join(backends)}"
                   f"{'' if batched else ' --sequential'} --out {out} -- {' '.join(overrides)}",
        "overrides": overrides,
        "batched": batched,
        "physics": rows,
        "scores_identical": identical,
        "speedup_vs_first": {backend: first / rows[backend]["wall_time_s"] for backend in backends},
        "hardware": hardware,
        "note": "wall_time_s covers the whole sweep (model loading and result writing included), one backend "
                "after the other in the order given",
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "benchmark.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(", ".join(f"{backend} {rows[backend]['wall_time_s']:.1f} s" for backend in backends)
          + f"; scores identical: {identical} -> {path}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
