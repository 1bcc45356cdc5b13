"""Planning latency: milliseconds per batched goal-conditioned plan at N environments.

A thin wrapper around :mod:`diffplan.bench` (``diffplan-bench`` measures training, denoising
and planning at fixed presets; this script sweeps the number of environments N). Builds the
planner exactly as the evaluator does (random weights: latency does not depend on them) for
one or more model/diffusion presets and times ``GoalPlanner.plan`` at each N. Writes a JSON
file with the medians, the hardware and the command.

    python scripts/benchmark_planning.py --device cpu --out results/benchmarks/planning-cpu.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

import torch

from diffplan.bench.builders import build_goal_planner, compose_config, random_model
from diffplan.bench.timing import time_runs
from diffplan.data.layout import TrajectoryLayout
from diffplan.utils import hardware_info, select_device

PRESETS = {
    # name: Hydra overrides
    "demo (unet_small dim16 (1,2,4), 64 tokens x stride 2, DDIM 20)": ["+experiment=demo"],
    "diffuser-umaze (dim32 (1,4,8), H128, DDIM 20)": ["model=unet_diffuser"],
    "diffuser-umaze (dim32 (1,4,8), H128, DDPM 64)": ["model=unet_diffuser", "diffusion=ddpm"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-envs", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--presets", nargs="*", default=None, help="subset of preset names (default: all)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = select_device(args.device)
    layout = TrajectoryLayout(obs_dim=4, act_dim=2)
    rows = []
    for name, overrides in PRESETS.items():
        if args.presets and not any(p in name for p in args.presets):
            continue
        cfg = compose_config(overrides)
        planner = build_goal_planner(cfg, random_model(cfg, layout, device), device)
        for n in args.n_envs:
            generator = torch.Generator(device=device).manual_seed(0)
            obs, goals = torch.zeros(n, 4), torch.ones(n, 2)
            times = time_runs(functools.partial(planner.plan, obs, generator, goals=goals), repeats=args.repeats,
                              warmup=1, device=device)
            median_ms = 1000 * statistics.median(times)
            rows.append({"preset": name, "n_envs": n, "median_ms": median_ms, "min_ms": 1000 * min(times),
                         "max_ms": 1000 * max(times), "repeats": args.repeats})
            print(f"{name:55s} N={n:3d}  {median_ms:9.1f} ms per batched plan", flush=True)
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "device": str(device),
              "hardware": hardware_info(), "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
