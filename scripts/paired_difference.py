"""Paired difference of normalized scores between two policies evaluated on the same episodes.

Episodes are matched by their reset seed (the same seeds give the same start states), pooled
over any number of results files per side; files of one side that hold the same start state (e.g.
three BC agents evaluated on the same episodes) count with their mean score there. Prints mean,
standard error and a 95% percentile bootstrap interval of the per-episode difference A - B, and
writes them as JSON.

    python scripts/paired_difference.py --a results/locomotion/hopper-medium-value-1.0*.json \\
        --b results/locomotion/hopper-medium-unguided*.json --out results/locomotion/paired-hopper-medium.json

With ``--by-file`` the unit is a results file instead (e.g. one trained agent per training seed): the
i-th file of ``--a`` is paired with the i-th of ``--b`` and the difference is taken between their mean
normalized scores, so the interval covers the spread between training seeds:

    python scripts/paired_difference.py --by-file --a results/offline/x/hopper-medium-td3bc-guided-s{0,1,2,3,4}.json \\
        --b results/offline/x/hopper-medium-td3bc-real-s{0,1,2,3,4}.json

With ``--consistency`` each side is one ``FILE:MODE`` of ``scripts/forcing_consistency.py``'s records and
the unit is a generated trajectory (its mean dynamics error; the same --seed and dataset give the same
start states, so trajectory i of one record starts where trajectory i of another does; lower is better):

    python scripts/paired_difference.py --consistency --a results/forcing/x/schedule.json:sliding \\
        --b results/forcing/x/full-sequence.json:chained
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def scores_by_reset_seed(paths: list[Path]) -> dict[int, float]:
    """Normalized score per reset seed, the mean over the files that hold that start state."""
    scores: dict[int, list[float]] = {}
    for path in paths:
        for episode in json.loads(path.read_text())["episodes"]:
            scores.setdefault(int(episode["reset_seed"]), []).append(float(episode["normalized_score"]))
    return {seed: float(np.mean(values)) for seed, values in scores.items()}


def consistency_by_trajectory(spec: Path) -> dict[int, float]:
    """Trajectory index -> mean dynamics error of one ``FILE:MODE`` of a consistency record."""
    path, _, mode = str(spec).rpartition(":")
    if not path:
        raise SystemExit(f"--consistency sides are FILE:MODE, got {spec}; e.g. record.json:sliding")
    modes = json.loads(Path(path).read_text())["modes"]
    if "trajectory_means" not in modes.get(mode, {}):
        raise SystemExit(f"{path} has no per-trajectory errors for mode {mode!r} (modes: {sorted(modes)}); "
                         "name one of them, or re-run scripts/forcing_consistency.py for it")
    return dict(enumerate(float(x) for x in modes[mode]["trajectory_means"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, nargs="+", required=True)
    parser.add_argument("--b", type=Path, nargs="+", required=True)
    parser.add_argument("--n-bootstrap", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--by-file", action="store_true",
                        help="pair the i-th file of --a with the i-th of --b (their mean scores) instead of episodes")
    parser.add_argument("--consistency", action="store_true",
                        help="--a and --b are one FILE:MODE each of forcing_consistency.py records; pair trajectories")
    args = parser.parse_args()
    if args.consistency:
        if len(args.a) != 1 or len(args.b) != 1:
            raise SystemExit("--consistency compares one FILE:MODE per side; give one --a and one --b")
        a, b = consistency_by_trajectory(args.a[0]), consistency_by_trajectory(args.b[0])
    elif args.by_file:
        if len(args.a) != len(args.b):
            raise SystemExit(f"--by-file pairs files in order: --a has {len(args.a)}, --b {len(args.b)}; give as many")
        a = {i: float(json.loads(path.read_text())["normalized_score"]["mean"]) for i, path in enumerate(args.a)}
        b = {i: float(json.loads(path.read_text())["normalized_score"]["mean"]) for i, path in enumerate(args.b)}
    else:
        a, b = scores_by_reset_seed(args.a), scores_by_reset_seed(args.b)
    common = sorted(set(a) & set(b))
    if not common:
        raise SystemExit("the two sides share no reset seed: evaluate them with the same eval.seeds and n_episodes")
    diff = np.array([a[k] - b[k] for k in common])
    rng = np.random.default_rng(args.seed)
    boot = rng.choice(diff, size=(args.n_bootstrap, len(diff)), replace=True).mean(axis=1)
    result = {
        "a": [str(p) for p in args.a], "b": [str(p) for p in args.b], "n_pairs": len(common),
        "mean_a": float(np.mean([a[k] for k in common])), "mean_b": float(np.mean([b[k] for k in common])),
        "mean_difference": float(diff.mean()), "stderr": float(diff.std(ddof=1) / np.sqrt(len(diff))),
        "bootstrap_95ci": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "n_bootstrap": args.n_bootstrap, "seed": args.seed,
        "unit": "trajectory" if args.consistency else "file" if args.by_file else "episode",
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
