"""Long-horizon dynamics consistency: full-sequence versus Diffusion Forcing sampling.

From the same start states (dataset observations drawn with --seed), one model generates
trajectories of ``--factor`` times its training horizon in three ways:

- ``full_sequence``: one window of the whole length, every token at the same level
  (the transformer's sinusoidal positions allow horizons beyond training);
- ``pyramid``: one window of the whole length along a pyramid matrix;
- ``sliding``: Diffusion Forcing's rollout: windows of the training horizon, each starting
  from the clean history of the previous ones (:meth:`ForcingPlanner.rollout`).

Every generated transition is replayed in the simulator (:mod:`diffplan.evaluation.consistency`)
and the normalized next-state error is reported overall and per training-horizon segment.

    python scripts/forcing_consistency.py runs/medium-df/checkpoint.pt --task pointmaze-medium \\
        --out results/forcing/dynamics-consistency-medium.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from diffplan.config import DiffusionConfig
from diffplan.evaluation.consistency import trajectory_consistency
from diffplan.planning.forcing import ForcingPlanner
from diffplan.training.checkpoint import load_trained_model
from diffplan.utils import file_sha256, git_revision, hardware_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--task", required=True)
    parser.add_argument("--dataset", type=Path, default=None, help="default: data/<task>.hdf5")
    parser.add_argument("--n", type=int, default=32, help="trajectories per mode")
    parser.add_argument("--factor", type=int, default=2, help="length in training horizons")
    parser.add_argument("--sampling-steps", type=int, default=10)
    parser.add_argument("--uncertainty", type=float, default=0.25)
    parser.add_argument("--execute", type=int, default=16)
    parser.add_argument("--n-history", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_trained_model(args.checkpoint)
    dataset = args.dataset or Path("data") / f"{args.task}.hdf5"
    with h5py.File(dataset, "r") as handle:
        observations = handle["observations"][:]
    rng = np.random.default_rng(args.seed)
    start = torch.as_tensor(observations[rng.choice(len(observations), args.n, replace=False)], dtype=torch.float32)
    length = args.factor * model.horizon
    variance = observations.var(axis=0)
    rows = {}
    for mode in ("full_sequence", "pyramid", "sliding"):
        diffusion = DiffusionConfig()
        diffusion.sampling_steps = args.sampling_steps
        diffusion.schedule_matrix = "full_sequence" if mode == "full_sequence" else "pyramid"  # type: ignore[assignment]
        diffusion.uncertainty = args.uncertainty
        generator = torch.Generator().manual_seed(args.seed)
        began = time.perf_counter()
        if mode == "sliding":
            planner = ForcingPlanner(model, diffusion=diffusion, execute=args.execute, n_history=args.n_history)
            trajectory = planner.rollout(start, length, generator).trajectory
        else:
            planner = ForcingPlanner(model, diffusion=diffusion, execute=args.execute, n_history=0, horizon=length)
            plan = planner.plan(start, generator)
            assert plan.normalized is not None
            trajectory = model.normalizer.unnormalize(plan.normalized)
        elapsed = time.perf_counter() - began
        consistency = trajectory_consistency(args.task, trajectory.cpu().double().numpy(), model.layout, variance)
        rows[mode] = {**consistency.summary(model.horizon), "wall_time_s": elapsed}
        segments = [round(x, 4) for x in consistency.segment_means(model.horizon)]
        print(f"{mode:14s} mean {rows[mode]['mean']:.4f} per segment {segments} ({elapsed:.0f} s)")
    result = {
        "task": args.task,
        "checkpoint": {"path": str(args.checkpoint.resolve()), "sha256": file_sha256(args.checkpoint),
                       "step": model.step},
        "dataset": {"path": str(dataset.resolve()), "sha256": file_sha256(dataset)},
        "training_horizon": model.horizon,
        "length": length,
        "settings": {k: v for k, v in vars(args).items() if k not in ("checkpoint", "out", "dataset")},
        "modes": rows,
        "git_revision": git_revision(),
        "hardware": hardware_info(),
        "metric": "mean over transitions and observation dims of (generated next obs - simulated next obs)^2 / "
                  "dataset variance",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
