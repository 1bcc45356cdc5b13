"""Planning latency: milliseconds per batched goal-conditioned plan at N environments.

Builds the planner exactly as the evaluator does (random weights: latency does not depend
on them) for one or more model/diffusion presets and times ``GoalPlanner.plan`` at each N.
Writes a JSON file with the medians, the hardware and the command.

    python scripts/benchmark_planning.py --device cpu --out results/benchmarks/planning-cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from diffplan.cli.common import CONF_DIR
from diffplan.config import as_config, register_configs
from diffplan.data.layout import TrajectoryLayout
from diffplan.data.normalizer import fit_normalizer
from diffplan.diffusion.schedule import NoiseSchedule
from diffplan.models.factory import build_denoiser
from diffplan.planning.planner import GoalPlanner
from diffplan.training.checkpoint import TrainedModel
from diffplan.utils import hardware_info, select_device

PRESETS = {
    # name: Hydra overrides
    "demo (unet_small dim16 (1,2,4), 64 tokens x stride 2, DDIM 20)": ["+experiment=demo"],
    "diffuser-umaze (dim32 (1,4,8), H128, DDIM 20)": ["model=unet_diffuser"],
    "diffuser-umaze (dim32 (1,4,8), H128, DDPM 64)": ["model=unet_diffuser", "diffusion=ddpm"],
}


def build_planner(overrides: list[str], device: torch.device) -> GoalPlanner:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = as_config(compose("config", overrides=overrides))
    layout = TrajectoryLayout(obs_dim=4, act_dim=2)
    torch.manual_seed(0)
    denoiser = build_denoiser(cfg.model, transition_dim=layout.transition_dim, horizon=cfg.task.horizon)
    schedule = NoiseSchedule(cfg.diffusion.n_timesteps, kind=cfg.diffusion.schedule,
                             prediction=cfg.diffusion.prediction)
    normalizer = fit_normalizer("limits", torch.randn(1000, layout.transition_dim).numpy())
    model = TrainedModel(denoiser.to(device).eval(), schedule.to(device), normalizer.to(device), layout, cfg,
                         cfg.task.horizon, 0, Path("random-weights"))
    return GoalPlanner(model, planner=cfg.planner, diffusion=cfg.diffusion, goal_dims=[0, 1], device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-envs", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--presets", nargs="*", default=None, help="subset of preset names (default: all)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    register_configs()
    device = select_device(args.device)
    rows = []
    for name, overrides in PRESETS.items():
        if args.presets and not any(p in name for p in args.presets):
            continue
        planner = build_planner(overrides, device)
        for n in args.n_envs:
            generator = torch.Generator(device=device).manual_seed(0)
            obs, goals = torch.zeros(n, 4), torch.ones(n, 2)
            planner.plan(obs, goals, generator)  # warm-up
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                planner.plan(obs, goals, generator)
                times.append(time.perf_counter() - start)
            median_ms = 1000 * statistics.median(times)
            rows.append({"preset": name, "n_envs": n, "median_ms": median_ms, "min_ms": 1000 * min(times),
                         "repeats": args.repeats})
            print(f"{name:55s} N={n:3d}  {median_ms:9.1f} ms per batched plan", flush=True)
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "device": str(device),
              "hardware": hardware_info(), "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
