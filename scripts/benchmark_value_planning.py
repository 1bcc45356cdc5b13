"""Value-guided planning latency: seconds per plan at Diffuser's locomotion shape and at ours.

A thin wrapper around :mod:`diffplan.bench` (``diffplan-bench --presets reference-hopper``
measures the headline shape with training and denoising; this script sweeps the number of
environments N). Builds ``ValuePlanner`` exactly as ``diffplan-evaluate`` does, with random
weights (latency does not depend on them), Hopper's dimensions (11 observations + 3 actions)
and horizon 32, and times one plan for N environments (K candidates each, one batched sampler
call), warm-started from the previous plan where the preset warm-starts.

Presets:
- ``diffuser-default``: ``diffplan-bench``'s ``reference-hopper`` shape: Diffuser's locomotion
  networks (U-Net and value net dim 32, mults (1, 2, 4, 8)), 64 candidates, DDPM over all 20
  levels from noise, 2 guide steps per level: the shape the reference implementation needs
  2.2 s for on a 2-core CPU (measured with its own code).
- ``ours-cold``: the CPU-sized networks of ``+experiment=locomotion`` at 64 candidates,
  DDIM over 10 of the 20 levels, every plan from noise.
- ``ours-warm``: the same, warm-started from the previous plan (re-noised to level 6, 3 steps).
- ``ours-eval``: exactly what the evaluations ran (8 candidates, warm start).

    python scripts/benchmark_value_planning.py --device cpu --out results/benchmarks/value-planning-cpu.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

import torch

from diffplan.bench.builders import build_value_planner, compose_config, random_model
from diffplan.bench.presets import REFERENCE_HOPPER
from diffplan.bench.reference import REFERENCE_FIGURES
from diffplan.bench.timing import time_runs
from diffplan.data.layout import TrajectoryLayout
from diffplan.utils import hardware_info, select_device

BASE = ["+experiment=locomotion", "guidance=value"]
PRESETS: dict[str, list[str]] = {
    "diffuser-default (U-Net + value dim32 (1,2,4,8), K=64, DDPM 20, 2 guide steps)": list(REFERENCE_HOPPER.overrides),
    "ours-cold (dim16 (1,2,4) nets, K=64, DDIM 10, cold start)": [
        *BASE, "planner.n_candidates=64", "planner.warm_start.level=0",
    ],
    "ours-warm (same, warm start: re-noise to level 6, 3 steps)": [*BASE, "planner.n_candidates=64"],
    "ours-eval (+experiment=locomotion as evaluated: K=8, warm start)": [*BASE],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-envs", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--presets", nargs="*", default=None, help="substrings of preset names (default: all)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = select_device(args.device)
    layout = TrajectoryLayout(obs_dim=11, act_dim=3)
    rows = []
    for name, overrides in PRESETS.items():
        if args.presets and not any(p in name for p in args.presets):
            continue
        cfg = compose_config(overrides)
        planner = build_value_planner(cfg, random_model(cfg, layout, device), device)
        for n in args.n_envs:
            generator = torch.Generator(device=device).manual_seed(0)
            obs = torch.zeros(n, 11)
            previous = planner.plan(obs, generator).normalized  # warm-up, and the warm start's input
            times = time_runs(functools.partial(planner.plan, obs, generator, previous=previous, shift=1),
                              repeats=args.repeats, warmup=0, device=device)
            median_s = statistics.median(times)
            rows.append({"preset": name, "n_envs": n, "n_candidates": planner.cfg.n_candidates,
                         "warm_start_level": planner.cfg.warm_start.level, "median_s": median_s,
                         "min_s": min(times), "max_s": max(times), "repeats": args.repeats})
            print(f"{name:80s} N={n:3d}  {median_s:7.3f} s per plan", flush=True)
    hopper = {kind: figures["reference-hopper"]["plan_guided"].value for kind, figures in REFERENCE_FIGURES.items()}
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "device": str(device),
              "torch_threads": torch.get_num_threads(), "hardware": hardware_info(),
              "reference": {"diffuser_guided_plan_s_2core_cpu": hopper["cpu-2core"],
                            "diffuser_guided_plan_s_h200": hopper["h200"]},
              "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
