"""Time one guidance sweep batched versus sequential and write the timings as JSON.

Both runs compose the same config (Hydra overrides after ``--``), evaluate the same cells into
``<out>/sequential`` and ``<out>/batched`` (fresh folders: nothing is resumed) and record the wall
time of each whole sweep, the sum of the cells' plan times and the mean normalized score per
cell. The checkpoint (``eval.checkpoint``) and dataset must exist.

    python scripts/benchmark_sweep.py --out results/benchmarks/sweep-umaze -- \\
        +experiment=umaze-ref guidance=goal sweep=maze-goal eval.n_episodes=10
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


def run_mode(overrides: list[str], out: Path, batched: bool) -> dict[str, Any]:
    from diffplan.sweep.runner import run_sweep

    folder = out / ("batched" if batched else "sequential")
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
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the sweep (after --)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("diffplan").setLevel(logging.INFO)
    from diffplan.utils import hardware_info

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


if __name__ == "__main__":
    sys.exit(main())
