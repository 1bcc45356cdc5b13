"""Dynamics error of real dataset transitions (the floor the synthetic numbers sit on).

Replays the first N transitions of each locomotion file in MuJoCo from the state each
observation describes (``diffplan_envs.dynamics``) and reports the normalized next-observation
and reward errors, over all transitions and over those whose observations show no clipped
velocity (Hopper and Walker2d clip qvel to [-10, 10] in the observation, so a clipped
observation does not describe the true state).

    python scripts/dynamics_error_real.py data/{hopper,walker2d,halfcheetah}-medium.hdf5 \\
        --out results/synthetic/dynamics-error-real-data.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
from diffplan_envs.dynamics import replay_transitions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for path in args.files:
        task = path.stem
        with h5py.File(path, "r") as handle:
            obs, act = handle["observations"][: args.n], handle["actions"][: args.n]
            nxt, rew = handle["next_observations"][: args.n], handle["rewards"][: args.n]
            variance = handle["observations"][:].var(axis=0)
            reward_variance = float(handle["rewards"][:].var())
        replay = replay_transitions(task, obs, act)
        per_transition = ((nxt - replay.next_observations) ** 2 / np.where(variance > 0, variance, 1.0)).mean(axis=1)
        n_pos = obs.shape[1] - (obs.shape[1] + 1) // 2  # qpos[1:] entries come first; velocities after
        clipped = (np.abs(obs[:, n_pos:]) >= 9.999).any(axis=1) | (np.abs(nxt[:, n_pos:]) >= 9.999).any(axis=1)
        rows.append({"task": task, "n_transitions": int(len(obs)), "next_obs_mse": float(per_transition.mean()),
                     "next_obs_mse_unclipped": float(per_transition[~clipped].mean()) if (~clipped).any() else None,
                     "clipped_fraction": float(clipped.mean()),
                     "reward_mse": float(((rew - replay.rewards) ** 2).mean() / reward_variance)})
        print(rows[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "scripts/dynamics_error_real.py", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
