"""float32 against bfloat16 autocast at the reference Diffuser Hopper shape (the ``reference-hopper``
preset of ``diffplan-bench``): the guided plan and the training step, the two precisions
alternating in one process so that the machine's drift cancels.

    python scripts/benchmark_precision.py --out results/benchmarks/precision-reference-hopper.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from diffplan.acceleration import Precision
from diffplan.bench.builders import build_trainer, build_value_planner, compose_config, episodes_for, random_model
from diffplan.bench.presets import REFERENCE_HOPPER
from diffplan.utils import hardware_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plans", type=int, default=5, help="timed plans per precision")
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per precision")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device("cpu")
    cfg = compose_config(list(REFERENCE_HOPPER.overrides))
    episodes = episodes_for(cfg)
    planners, trainers = {}, {}
    with tempfile.TemporaryDirectory(prefix="diffplan-precision-") as run_dir:
        for precision in Precision:
            variant = dataclasses.replace(
                cfg, planner=dataclasses.replace(cfg.planner, precision=precision),
                train=dataclasses.replace(cfg.train, precision=precision),
            )
            trainers[precision.value] = build_trainer(variant, episodes, Path(run_dir) / precision.value)
            model = random_model(variant, trainers[precision.value].layout, device,
                                 data=episodes.transitions(trainers[precision.value].layout))
            planners[precision.value] = build_value_planner(variant, model, device)
        observations = torch.zeros(1, model.layout.obs_dim)
        times: dict[str, list[float]] = {f"{kind}_{p}": [] for kind in ("plan_guided_s", "train_step_ms")
                                         for p in planners}
        for name, planner in planners.items():  # warm-up
            planner.plan(observations, torch.Generator().manual_seed(0))
            for _ in range(3):
                trainers[name].train_step()
        for _ in range(args.plans):
            for name, planner in planners.items():
                start = time.perf_counter()
                planner.plan(observations, torch.Generator().manual_seed(0))
                times[f"plan_guided_s_{name}"].append(time.perf_counter() - start)
        for _ in range(args.steps):
            for name, trainer in trainers.items():
                start = time.perf_counter()
                trainer.train_step()
                times[f"train_step_ms_{name}"].append(1e3 * (time.perf_counter() - start))
    rows = {
        name: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)} for name, v in times.items()
    }
    for name, row in rows.items():
        print(f"{name:28s} {row['median']:8.3f} ({row['min']:.3f} .. {row['max']:.3f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": "python scripts/benchmark_precision.py", "preset": REFERENCE_HOPPER.name,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "hardware": hardware_info(), "rows": rows,
        }, indent=1) + "\n")


if __name__ == "__main__":
    main()
