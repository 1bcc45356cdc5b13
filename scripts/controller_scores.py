"""Scores of the maze waypoint controller itself, with and without its action noise.

Puts planner scores in context: the dataset's reference max is the *noisy* controller
(the data policy); the noise-free controller shows what following the shortest path at the
controller's pace scores on the same normalized scale.

    python scripts/controller_scores.py --tasks pointmaze-umaze --out results/reference
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffplan.data.hdf5 import reference_scores
from diffplan.evaluation.evaluator import normalize_score
from diffplan.utils import hardware_info


def main() -> None:
    from diffplan_envs import WaypointController, compute_maze_reference_scores, maze_geometry

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["pointmaze-umaze"])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--out", type=Path, default=Path("results/reference"))
    args = parser.parse_args()
    for task in args.tasks:
        ref = reference_scores(args.data_dir / f"{task}.hdf5")
        rows = {}
        for noise in (0.0, 0.5):
            controller = WaypointController(maze_geometry(task), action_noise_std=noise)
            scores = compute_maze_reference_scores(task, n_episodes=args.episodes, seed=args.seed,
                                                   controller=controller)
            normalized = normalize_score(scores["max"], ref["min"], ref["max"])
            rows[f"noise_{noise}"] = {"mean_return": scores["max"], "return_std": scores["max_std"],
                                      "normalized_score": normalized}
            print(f"{task}: controller noise {noise}: return {scores['max']:.1f}, normalized {normalized:.1f}")
        out = {"task": task, "dataset_reference_scores": ref, "n_episodes": args.episodes, "seed": args.seed,
               "controller": rows, "hardware": hardware_info(),
               "command": f"python scripts/controller_scores.py --tasks {task}"}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{task}-controller.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
