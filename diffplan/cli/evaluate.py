"""``diffplan-evaluate``: plan in N environments at once and write results.json."""

from __future__ import annotations

import logging
from pathlib import Path

from diffplan.cli.common import hydra_entry
from diffplan.config import Config, to_container
from diffplan.data.hdf5 import reference_scores
from diffplan.data.layout import TrajectoryLayout
from diffplan.evaluation.evaluator import evaluate
from diffplan.evaluation.results import build_results, write_json
from diffplan.planning.planner import GoalPlanner
from diffplan.planning.policy import PlanningPolicy
from diffplan.reporting.maze_plot import plot_maze_paths
from diffplan.training.checkpoint import load_trained_model
from diffplan.utils import file_sha256, select_device

log = logging.getLogger(__name__)


def run_evaluate(cfg: Config) -> Path:
    """Evaluate the checkpoint ``eval.checkpoint``; returns the path of results.json."""
    from diffplan_envs import MazeBatch, get_maze_task

    task = get_maze_task(cfg.task.name)
    device = select_device(cfg.eval.device)
    model = load_trained_model(
        cfg.eval.checkpoint,
        device=device,
        use_ema=cfg.eval.use_ema,
        expected_layout=TrajectoryLayout(obs_dim=task.obs_dim, act_dim=task.act_dim),
        expected_task=cfg.task.name,
    )
    planner = GoalPlanner(
        model, planner=cfg.planner, diffusion=cfg.diffusion, goal_dims=cfg.task.goal_obs_dims, device=device
    )
    policy = PlanningPolicy(
        planner,
        cfg.planner,
        position_dims=cfg.task.goal_obs_dims,
        velocity_dims=cfg.task.velocity_obs_dims,
        stride=model.config.task.stride,
    )
    ref = reference_scores(cfg.task.dataset)
    output = evaluate(
        policy,
        lambda n: MazeBatch(task, n),
        n_episodes=cfg.eval.n_episodes,
        n_envs=cfg.eval.n_envs,
        seeds=list(cfg.eval.seeds),
        episode_steps=cfg.task.episode_steps,
        ref_min=float(ref["min"]),
        ref_max=float(ref["max"]),
        device=device,
        progress=cfg.eval.progress,
    )
    results = build_results(
        output,
        task=cfg.task.name,
        config=to_container(cfg),
        trained_config=to_container(model.config),
        dataset={"path": str(Path(cfg.task.dataset).resolve()), "sha256": file_sha256(cfg.task.dataset)},
        checkpoint={"path": str(model.path.resolve()), "sha256": file_sha256(model.path), "step": model.step,
                    "ema": cfg.eval.use_ema},
        seeds=list(cfg.eval.seeds),
        n_episodes_per_seed=cfg.eval.n_episodes,
        reference_scores=ref,
    )
    out_dir = Path(cfg.eval.out_dir)
    path = write_json(out_dir / "results.json", results)
    if cfg.eval.plots and output.traces:
        from diffplan_envs import maze_geometry

        plot_maze_paths(
            output.traces,
            maze_geometry(task).wall_rectangles(),
            out_dir / "paths.png",
            title=f"{cfg.task.name}: planned (dashed) vs executed (solid)",
        )
    score = results["normalized_score"]
    log.info(
        "%s: normalized score %.1f +- %.1f over %d episodes (%d failed), success %.2f, %.3f s per plan -> %s",
        cfg.task.name, score["mean"], score["stderr"], results["n_episodes"], results["n_failed"],
        results["success_rate"], results["plan_time_s"]["mean"], path,
    )
    return path


main = hydra_entry(run_evaluate)
