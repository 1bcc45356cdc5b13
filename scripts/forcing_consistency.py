"""Long-horizon dynamics consistency: full-sequence versus Diffusion Forcing sampling.

From the same start states (dataset observations drawn with --seed), one model generates
trajectories of ``--factor`` times its training horizon (in tokens) in up to four ways (--modes):

- ``full_sequence``: one window of the whole length, every token at the same level
  (the transformer's sinusoidal positions and the convolutional U-Net allow horizons beyond training);
- ``pyramid``: one window of the whole length along a pyramid matrix;
- ``sliding``: Diffusion Forcing's rollout: windows of the training horizon, each starting
  from the clean history of the previous ones (:meth:`ForcingPlanner.rollout`; --schedule picks
  the windows' matrix, --execute and --n-history their step);
- ``chained``: full-sequence plans of the training horizon chained end to end, each started
  (inpainted) at the previous plan's last state, as a planner without history would roll out.

Every generated transition is replayed in the simulator (:mod:`diffplan.evaluation.consistency`)
and the normalized next-state error is reported overall and per training-horizon segment. A
strided model (``task.stride`` > 1: tokens several environment steps apart) is replayed by holding
each token's action over the steps to the next token (--hold, default the model's stride); since
such a model does not generate the actions between its tokens, the dataset's own windows at the
same stride, replayed the same way, are reported as the ``dataset`` row: the floor of that replay.
The sampler's settings are the checkpoint's own (``diffusion.*`` of its training config) except
--sampling-steps and the matrices named here.

    python scripts/forcing_consistency.py runs/medium-df/checkpoint.pt --task pointmaze-medium \\
        --out results/forcing/dynamics-consistency-medium.json
    python scripts/forcing_consistency.py runs/medium-forcing/checkpoint.pt --task pointmaze-medium \\
        --modes sliding chained --schedule full_sequence --execute 8 --n-history 8 --sampling-steps 20 \\
        --out results/forcing/unet-medium/consistency-schedule.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from diffplan.data.loading import load_episodes
from diffplan.data.windows import WindowSampler
from diffplan.enums import ScheduleMatrixKind
from diffplan.evaluation.consistency import trajectory_consistency
from diffplan.planning.forcing import ForcingPlanner
from diffplan.training.checkpoint import TrainedModel, load_trained_model
from diffplan.utils import file_sha256, git_revision, hardware_info

MODES = ("full_sequence", "pyramid", "sliding", "chained")
#: Tokens per window of the dataset's own strided windows (the floor row); any length gives the
#: same per-transition errors, a short one finds windows in short episodes.
FLOOR_TOKENS = 16


def generate(
    model: TrainedModel, mode: str, start: torch.Tensor, length: int, args: argparse.Namespace
) -> torch.Tensor:
    """(B, length', D) raw-unit trajectory of ``mode`` from ``start`` (B, obs_dim)."""
    matrix = "pyramid" if mode == "pyramid" or (mode == "sliding" and args.schedule == "pyramid") else "full_sequence"
    diffusion = dataclasses.replace(model.config.diffusion, sampling_steps=args.sampling_steps,
                                    schedule_matrix=ScheduleMatrixKind(matrix),
                                    uncertainty=model.config.diffusion.uncertainty if args.uncertainty is None
                                    else args.uncertainty)
    generator = torch.Generator().manual_seed(args.seed)
    if mode == "sliding":
        planner = ForcingPlanner(model, diffusion=diffusion, execute=args.execute, n_history=args.n_history)
        return planner.rollout(start, length, generator).trajectory
    if mode == "chained":
        planner = ForcingPlanner(model, diffusion=diffusion, execute=args.execute, n_history=0)
        pieces, current = [], start
        for k in range(args.factor):
            plan = planner.plan(current, generator)
            assert plan.normalized is not None
            window = model.normalizer.unnormalize(plan.normalized)
            last = k == args.factor - 1
            pieces.append(window if last else window[:, :-1])  # the next plan starts at (and acts from) that state
            current = window[:, -1, model.layout.obs]
        return torch.cat(pieces, dim=1)
    planner = ForcingPlanner(model, diffusion=diffusion, execute=args.execute, n_history=0, horizon=length)
    plan = planner.plan(start, generator)
    assert plan.normalized is not None
    return model.normalizer.unnormalize(plan.normalized)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--task", required=True)
    parser.add_argument("--dataset", type=Path, default=None, help="default: data/<task>.hdf5")
    parser.add_argument("--n", type=int, default=32, help="trajectories per mode")
    parser.add_argument("--factor", type=int, default=2, help="length in training horizons")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["full_sequence", "pyramid", "sliding"])
    parser.add_argument("--schedule", choices=("pyramid", "full_sequence"), default="pyramid",
                        help="the sliding windows' scheduling matrix")
    parser.add_argument("--sampling-steps", type=int, default=10)
    parser.add_argument("--uncertainty", type=float, default=None,
                        help="the pyramid's rows between tokens (default: the checkpoint's diffusion.uncertainty)")
    parser.add_argument("--execute", type=int, default=16)
    parser.add_argument("--n-history", type=int, default=32)
    parser.add_argument("--hold", type=int, default=None,
                        help="environment steps per token in the replay (default: the model's task.stride)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    for name in ("n", "factor", "sampling_steps", "execute", "hold"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}={value} must be >= 1")
    torch.set_num_threads(1)
    model = load_trained_model(args.checkpoint)
    stride = int(model.config.task.stride)
    hold = stride if args.hold is None else args.hold
    dataset = args.dataset or Path("data") / f"{args.task}.hdf5"
    episodes = load_episodes(dataset)
    observations = episodes.observations
    rng = np.random.default_rng(args.seed)
    start = torch.as_tensor(observations[rng.choice(len(observations), args.n, replace=False)], dtype=torch.float32)
    length = args.factor * model.horizon
    variance = observations.var(axis=0)
    rows = {}
    sampler = WindowSampler(episodes, model.layout, FLOOR_TOKENS, model.normalizer, stride=stride)
    real = model.normalizer.unnormalize(sampler.sample(4 * args.n, torch.Generator().manual_seed(args.seed)).x)
    floor = trajectory_consistency(args.task, real.double().numpy(), model.layout, variance, hold=hold)
    rows["dataset"] = {**floor.summary(FLOOR_TOKENS - 1), "windows_tokens": FLOOR_TOKENS}
    print(f"{'dataset':14s} mean {rows['dataset']['mean']:.4f} (its own windows at stride {stride}, hold {hold})")
    for mode in args.modes:
        began = time.perf_counter()
        trajectory = generate(model, mode, start, length, args)
        elapsed = time.perf_counter() - began
        consistency = trajectory_consistency(args.task, trajectory.cpu().double().numpy(), model.layout, variance,
                                             hold=hold)
        rows[mode] = {**consistency.summary(model.horizon), "wall_time_s": elapsed, "tokens": int(trajectory.shape[1]),
                      "trajectory_means": [round(float(x), 6) for x in consistency.errors.mean(axis=1)]}
        segments = [round(x, 4) for x in consistency.segment_means(model.horizon)]
        print(f"{mode:14s} mean {rows[mode]['mean']:.4f} per segment {segments} ({elapsed:.0f} s)")
    result = {
        "task": args.task,
        "checkpoint": {"path": str(args.checkpoint.resolve()), "sha256": file_sha256(args.checkpoint),
                       "step": model.step, "noise_mode": str(model.config.train.noise_mode), "stride": stride},
        "dataset": {"path": str(dataset.resolve()), "sha256": file_sha256(dataset)},
        "training_horizon": model.horizon,
        "length": length,
        "settings": {k: v for k, v in vars(args).items() if k not in ("checkpoint", "out", "dataset")} | {"hold": hold},
        "modes": rows,
        "git_revision": git_revision(),
        "hardware": hardware_info(),
        "metric": "mean over transitions and observation dims of (generated next obs - simulated next obs)^2 / "
                  "dataset variance; the simulator holds each token's action for `hold` environment steps",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
