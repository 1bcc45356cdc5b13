"""Value-guided planning latency: seconds per plan at Diffuser's locomotion shape and at ours.

Builds ``ValuePlanner`` exactly as ``diffplan-evaluate`` does, with random weights (latency
does not depend on them), Hopper's dimensions (11 observations + 3 actions) and horizon 32,
and times one plan for one environment (K candidates in one batched sampler call).

Presets:
- ``diffuser-default``: Diffuser's locomotion networks (U-Net and value net dim 32, mults
  (1, 2, 4, 8)), 64 candidates, DDPM over 20 levels, 2 guide steps per level: the shape the
  reference implementation needs 2.2 s for on a 2-core CPU (REFERENCE.md).
- ``ours-cold``: the CPU-sized networks of ``+experiment=locomotion`` at 64 candidates,
  DDIM over 10 of the 20 levels, every plan from noise.
- ``ours-warm``: the same, warm-started from the previous plan (re-noised to level 6, 3 steps).
- ``ours-eval``: exactly what the evaluations ran (8 candidates, warm start).

    python scripts/benchmark_value_planning.py --device cpu --out results/benchmarks/value-planning-cpu.json
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
from diffplan.guidance import ValueGuide
from diffplan.models.factory import build_denoiser
from diffplan.models.value import build_value_net
from diffplan.planning.value_planner import ValuePlanner
from diffplan.training.checkpoint import TrainedModel
from diffplan.utils import hardware_info, select_device

BASE = ["+experiment=locomotion", "guidance=value"]
PRESETS: dict[str, list[str]] = {
    "diffuser-default (U-Net + value dim32 (1,2,4,8), K=64, DDPM 20, 2 guide steps)": [
        *BASE, "model.dim=32", "model.dim_mults=[1,2,4,8]", "value.dim=32", "value.dim_mults=[1,2,4,8]",
        "diffusion=ddpm", "diffusion.n_timesteps=20", "diffusion.sampling_steps=20", "diffusion.normalizer=gaussian",
        "diffusion.clip_denoised=null", "planner.n_candidates=64",
    ],
    "ours-cold (dim16 (1,2,4) nets, K=64, DDIM 10, cold start)": [
        *BASE, "planner.n_candidates=64", "planner.warm_start_level=0",
    ],
    "ours-warm (same, warm start: re-noise to level 6, 3 steps)": [*BASE, "planner.n_candidates=64"],
    "ours-eval (+experiment=locomotion as evaluated: K=8, warm start)": [*BASE],
}


def build_planner(overrides: list[str], device: torch.device) -> ValuePlanner:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = as_config(compose("config", overrides=overrides))
    layout = TrajectoryLayout(obs_dim=11, act_dim=3)
    torch.manual_seed(0)
    horizon = cfg.task.horizon
    denoiser = build_denoiser(cfg.model, transition_dim=layout.transition_dim, horizon=horizon)
    value = build_value_net(cfg.value, transition_dim=layout.transition_dim, horizon=horizon)
    schedule = NoiseSchedule(cfg.diffusion.n_timesteps, kind=cfg.diffusion.schedule,
                             prediction=cfg.diffusion.prediction)
    normalizer = fit_normalizer("gaussian", torch.randn(1000, layout.transition_dim).numpy())
    model = TrainedModel(denoiser.to(device).eval(), schedule.to(device), normalizer.to(device), layout, cfg,
                         horizon, 0, Path("random-weights"))
    return ValuePlanner(model, ValueGuide(value.to(device).eval()), planner=cfg.planner, diffusion=cfg.diffusion,
                        guidance=cfg.guidance, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n-envs", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--presets", nargs="*", default=None, help="substrings of preset names (default: all)")
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
            obs = torch.zeros(n, 11)
            previous = planner.plan(obs, generator).normalized  # warm-up, and the warm start's input
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                planner.plan(obs, generator, previous=previous, shift=1)
                times.append(time.perf_counter() - start)
            median_s = statistics.median(times)
            rows.append({"preset": name, "n_envs": n, "n_candidates": planner.cfg.n_candidates,
                         "median_s": median_s, "min_s": min(times), "repeats": args.repeats})
            print(f"{name:80s} N={n:3d}  {median_s:7.3f} s per plan", flush=True)
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "device": str(device),
              "torch_threads": torch.get_num_threads(), "hardware": hardware_info(),
              "reference": {"diffuser_guided_plan_s_2core_cpu": 2.2, "diffuser_guided_plan_s_h200": 0.55},
              "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
