"""Print the README's results tables from the evaluator JSON files under results/.

    python scripts/results_table.py results/pointmaze-*.json
    python scripts/results_table.py --locomotion results/locomotion/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def row(path: Path) -> str:
    r = json.loads(path.read_text())
    cfg, trained = r["config"], r["trained_config"]
    score = r["normalized_score"]
    planner = cfg["planner"]
    tracking = planner["tracking"] if planner["mode"] == "tracker" else "actions"
    model = trained["model"]
    train_steps = r["checkpoint"]["step"]
    return (
        f"| {r['task']} | {trained['task']['horizon']}x{trained['task']['stride']} | dim {model['dim']} "
        f"{tuple(model['dim_mults'])}, {train_steps} steps | {planner['mode']}/{tracking} | "
        f"{len(r['seeds'])} x {r['n_episodes_per_seed']} | **{score['mean']:.1f} ± {score['stderr']:.1f}** | "
        f"{r['success_rate']:.2f} | {r['plan_time_s']['mean']:.2f} | [{path.name}]({path.as_posix()}) |"
    )


def locomotion_row(path: Path) -> str:
    r = json.loads(path.read_text())
    cfg, trained = r["config"], r["trained_config"]
    score = r["normalized_score"]
    if cfg["eval"].get("controller", cfg["eval"].get("policy")) == "bc":
        policy = "BC (MLP 256-256)"
        training = f"{r['checkpoint']['step']} steps"
    else:
        guidance = cfg["guidance"]
        planner = cfg["planner"]
        kind = f"value guidance {guidance['scale']:g}" if guidance["kind"] == "value" else "unguided"
        start = (f"warm {planner['warm_start_level']}/{planner['warm_start_steps']}" if planner["warm_start_level"]
                 else f"cold {cfg['diffusion']['sampling_steps']}")
        policy = f"diffusion, {kind}, K={planner['n_candidates']}, replan {planner['replan_every']}, {start}"
        model = trained["model"]
        training = f"dim {model['dim']} {tuple(model['dim_mults'])}, {r['checkpoint']['step']} steps"
        if trained["train"]["batch_size"] != 32:
            training += f" x batch {trained['train']['batch_size']}"
    gpu = r.get("hardware", {}).get("gpu")
    if gpu:
        training += f" ({gpu.removeprefix('NVIDIA ')})"
    return (
        f"| {r['task']} | {policy} | {training} | {len(r['seeds'])} x {r['n_episodes_per_seed']} | "
        f"**{score['mean']:.1f} ± {score['stderr']:.1f}** | {r['plan_time_s']['mean']:.3f} | "
        f"[{path.name}]({path.as_posix()}) |"
    )


def synthetic_row(path: Path) -> str:
    """One row of the policy-guidance table from a ``diffplan-generate`` metrics JSON."""
    r = json.loads(path.read_text())
    g = r["config"]["guidance"]
    dyn, lp = r["dynamics_error"], r["policy_log_prob"]
    coefficient = g["policy_scale"] if g["kind"] != "none" else 0.0
    return (
        f"| {r['task']} | {coefficient:g} | {g['schedule']}, {g['apply_to']}, {g['n_guide_steps']} steps"
        f"{', normalized' if g['normalize_grad'] else ''} "
        f"| {r['n_trajectories']} x {r['config']['generate']['length']} "
        f"| **{lp['generated_mean']:.2f} ± {lp['generated_stderr']:.2f}** | {lp['dataset_mean']:.2f} "
        f"| **{dyn['next_obs_mse']:.3f}** | {dyn['reward_mse']:.3f} | [{path.name}]({path.as_posix()}) |"
    )


def offline_rows(paths: list[Path]) -> list[str]:
    """One row per (task, data variant) over training seeds: the mean of each trained agent's
    score, the standard error across agents, and the files behind it."""
    groups: dict[tuple[str, str], list[tuple[dict[str, Any], Path]]] = {}
    for path in paths:
        r = json.loads(path.read_text())
        off = r["config"]["offline"]
        if not off["synthetic_ratio"]:
            variant = "real only"
        else:
            guided = r["config"]["guidance"]["kind"] != "none" and r["config"]["guidance"]["policy_scale"] > 0
            variant = (f"real + {'policy-guided' if guided else 'unguided'} synthetic "
                       f"({off['synthetic_ratio']:g} of each batch, regenerated every {off['regenerate_every']})")
            if guided:
                variant += f", coefficient {r['config']['guidance']['policy_scale']:g}"
        groups.setdefault((r["task"], variant), []).append((r, path))
    rows = []
    for (task, variant), runs in groups.items():
        scores = np.array([r["normalized_score"]["mean"] for r, _ in runs])
        stderr = scores.std(ddof=1) / np.sqrt(len(scores)) if len(scores) > 1 else float("nan")
        first = runs[0][0]
        files = ", ".join(f"[{p.name}]({p.as_posix()})" for _, p in runs)
        rows.append(
            f"| {task} | {first['config']['offline']['algo']} | {variant} | {first['checkpoint']['step']} "
            f"| {len(runs)} x {first['n_episodes']} | **{scores.mean():.1f} ± {stderr:.1f}** "
            f"| {' / '.join(f'{x:.1f}' for x in scores)} | {files} |"
        )
    return rows


def main() -> None:
    if sys.argv[1:2] == ["--offline"]:
        print("| dataset | agent | training data | updates | agents x episodes | D4RL normalized score "
              "(mean ± s.e. over agents) | per agent | results files |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for line in offline_rows([Path(name) for name in sys.argv[2:]]):
            print(line)
        return
    if sys.argv[1:2] == ["--synthetic"]:
        print("| dataset | policy coefficient | schedule, target, guide steps | trajectories x length "
              "| target log-likelihood of generated actions (mean ± s.e.) | of dataset actions "
              "| dynamics error (next obs) | reward error | results file |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name in sys.argv[2:]:
            print(synthetic_row(Path(name)))
        return
    if sys.argv[1:2] == ["--locomotion"]:
        print("| dataset | policy | model, training | seeds x episodes | D4RL normalized score (mean ± s.e.) "
              "| s per plan | results file |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name in sys.argv[2:]:
            print(locomotion_row(Path(name)))
        return
    print("| task | tokens x stride | model, training | execution | seeds x episodes | normalized score "
          "(mean ± s.e.) | success | s per plan | results file |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in sys.argv[1:]:
        print(row(Path(name)))


if __name__ == "__main__":
    main()
