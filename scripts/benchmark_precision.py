"""float32 against bfloat16 autocast at the reference Diffuser Hopper shape (the ``reference-hopper``
preset of ``diffplan-bench``): the guided plan and the training step, the two precisions
alternating in one process so that the machine's drift cancels.

    python scripts/benchmark_precision.py --out results/benchmarks/precision-reference-hopper.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from diffplan.bench.builders import build_trainer, build_value_planner, compose_config, episodes_for, random_model
from diffplan.bench.presets import REFERENCE_HOPPER
from diffplan.bench.timing import time_alternating
from diffplan.enums import Precision
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

        def plan(name: str) -> Callable[[], object]:
            return lambda: planners[name].plan(observations, torch.Generator().manual_seed(0))

        rows = {f"plan_guided_s_{name}": row for name, row in time_alternating(
            {name: plan(name) for name in planners}, repeats=args.plans, warmup=1, device=device).items()}
        rows |= {f"train_step_ms_{name}": row for name, row in time_alternating(
            {name: trainer.train_step for name, trainer in trainers.items()}, repeats=args.steps, warmup=3,
            device=device, scale=1e3).items()}
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
