"""Open-loop check of a locomotion diffusion model: plan from dataset states (start state
inpainted, one candidate, cold start) and compare the first planned action and the second
planned state with the dataset's own, on states drawn at random from the dataset.

    python scripts/open_loop_action_error.py --task walker2d-medium --checkpoint runs/walker2d-medium/checkpoint.pt \\
        --out results/locomotion/diagnostics/open-loop-walker2d-medium.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from diffplan.cli.common import CONF_DIR
from diffplan.config import as_config, register_configs
from diffplan.data.loading import load_episodes
from diffplan.guidance import ConstantGuide
from diffplan.planning.value_planner import ValuePlanner
from diffplan.training.checkpoint import load_trained_model
from diffplan.utils import file_sha256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--n-states", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = as_config(compose("config", overrides=[
            "+experiment=locomotion", f"task={args.task}", "planner.n_candidates=1", "planner.warm_start.level=0",
        ]))
    model = load_trained_model(args.checkpoint)
    episodes = load_episodes(cfg.task.dataset)
    rng = np.random.default_rng(args.seed)
    # States whose next step is in the same episode (not an episode's last row).
    last_rows = episodes.starts + episodes.lengths - 1
    index = np.setdiff1d(rng.choice(len(episodes.observations), args.n_states, replace=False), last_rows)
    planner = ValuePlanner(model, ConstantGuide(), planner=cfg.planner, diffusion=cfg.diffusion,
                           guidance=cfg.guidance)
    plan = planner.plan(torch.as_tensor(episodes.observations[index]).float(),
                        torch.Generator().manual_seed(args.seed))
    actions = episodes.actions[index]
    action_mse = float(((plan.actions[:, 0].numpy() - actions) ** 2).mean())
    state_var = episodes.observations.var(axis=0) + 1e-6
    next_mse = float((((plan.observations[:, 1].numpy() - episodes.observations[index + 1]) ** 2) / state_var).mean())
    result = {
        "task": args.task, "checkpoint": str(args.checkpoint), "checkpoint_sha256": file_sha256(args.checkpoint),
        "step": model.step, "n_states": int(len(index)), "seed": args.seed,
        "first_action_mse": action_mse, "dataset_action_variance": float(actions.var(axis=0).mean()),
        "second_state_mse_over_state_variance": next_mse,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
