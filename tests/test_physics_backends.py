"""eval.physics=mujoco against the reference, eval.physics=gymnasium: the raw-MuJoCo batches
(diffplan_envs.mujoco_batch) give the Gymnasium envs' observations, rewards, terminations,
truncations and goals bit for bit from the same reset seeds and actions, and an evaluation through
diffplan-evaluate gives the same episodes on either backend."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diffplan_envs.locomotion import ROBOTS, LocomotionBatch, LocomotionTask
from diffplan_envs.maze import MazeBatch
from diffplan_envs.mujoco_batch import (
    MujocoLocomotionBatch,
    MujocoMazeBatch,
    check_physics,
    locomotion_batch,
    maze_batch,
)
from errors_helpers import Command, one_line

FIELDS = ("obs", "reward", "terminated", "truncated", "success")
ENV_IDS = {"hopper": "Hopper-v5", "walker2d": "Walker2d-v5", "halfcheetah": "HalfCheetah-v5"}


def maze_transitions(task: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` transitions of a Gymnasium PointMaze env whose pushes, held 25 steps, drive it into walls."""
    from diffplan_envs.maze import get_maze_task, make_maze_env

    env = make_maze_env(get_maze_task(task))
    obs = env.reset(seed=0)[0]["observation"]
    rng = np.random.default_rng(1)
    observations, actions = [], []
    for t in range(n):
        if t % 25 == 0:
            action = rng.uniform(-1.5, 1.5, 2)
        observations.append(obs)
        actions.append(action)
        obs = env.step(action)[0]["observation"]
    env.close()
    return np.array(observations), np.array(actions)


def evaluate_on_backends(run: Command, out: Path, physics: str, n_envs: int | None = None) -> tuple[dict, dict]:
    """``diffplan-evaluate`` of the tiny trained run on ``gymnasium`` and on ``physics``: both results,
    after checking that each ran, recorded its backend and played the same 6 episodes (reset seeds,
    lengths, successes, none failed); the returns are the caller's to compare."""
    results = {}
    for backend in ("gymnasium", physics):
        extra = [] if n_envs is None else [f"eval.n_envs={n_envs}"]
        outcome = run("evaluate", f"eval.physics={backend}", *extra, f"eval.out_dir={out / backend}",
                      "eval.plots=false", "eval.progress=false")
        assert outcome.returncode == 0, outcome.stderr[-2000:]
        results[backend] = json.loads((out / backend / "results.json").read_text())
    assert results[physics]["config"]["eval"]["physics"] == physics
    episodes = [[(e["reset_seed"], e["length"], e["success"], e["failed"]) for e in results[backend]["episodes"]]
                for backend in ("gymnasium", physics)]
    assert episodes[0] == episodes[1] and len(episodes[0]) == 6 and not any(e[3] for e in episodes[0])
    return results["gymnasium"], results[physics]


def check_locomotion_backend(
    robot: str, physics: str, n: int, step_tol: float, free_tol: tuple[float, float],
    short_tol: tuple[float, float], short_scale: float = 1.0,
) -> None:
    """A simulation backend against Gymnasium on one robot: 1,000 real transitions replayed from
    Gymnasium's states (actions past the box, so the clip is exercised; next observations within
    ``step_tol``, rewards within 1e-4, terminations equal); ``n`` envs free-running from the same seeds
    until every episode ended (``free_tol`` on observations and rewards); and 40-step episodes with
    falls and time limits in one batch (``short_tol``, random actions of ``short_scale`` in the second
    round)."""
    from diffplan_envs.dynamics import random_transitions, replay_transitions

    task = LocomotionTask(ROBOTS[robot], "medium")
    observations, actions = random_transitions(ENV_IDS[robot], 1000, seed=0, action_scale=1.2)
    reference = replay_transitions(task.name, observations, actions, physics="gymnasium")
    ours = replay_transitions(task.name, observations, actions, physics=physics, chunk=n)
    np.testing.assert_allclose(ours.next_observations, reference.next_observations, rtol=0.0, atol=step_tol)
    np.testing.assert_allclose(ours.rewards, reference.rewards, rtol=0.0, atol=1e-4)
    np.testing.assert_array_equal(ours.terminated, reference.terminated)
    assert reference.terminated.any() == (robot != "halfcheetah")
    reference_batch, batch = LocomotionBatch(task, n), MujocoLocomotionBatch(task, n, physics=physics)
    taken, terminated, truncated = run_both(reference_batch, batch, list(range(n)), steps=1000, scale=0.2, seed=0,
                                            tolerance=free_tol)
    if robot == "halfcheetah":
        assert (taken, truncated) == (n * 1000, n)
    else:
        assert terminated == n
    short = LocomotionTask(replace(ROBOTS[robot], episode_steps=40), "medium")
    ends = np.zeros(2, dtype=int)
    for round_ in range(2):
        reference_batch, batch = LocomotionBatch(short, n), MujocoLocomotionBatch(short, n, physics=physics)
        ends += run_both(reference_batch, batch, [n * round_ + i for i in range(n)], steps=40,
                         scale=short_scale if round_ else 0.1, seed=round_, tolerance=short_tol)[1:]
    assert ends[1] > 0 and (ends[0] > 0) == (robot != "halfcheetah")


def run_both(
    reference: Any, batch: Any, seeds: list[int], steps: int, scale: float, seed: int, homing: bool = False,
    tolerance: tuple[float, float] = (0.0, 0.0),
) -> tuple[int, int, int]:
    """Reset both batches with ``seeds`` and step them with the same seeded random actions (``homing``:
    plus a pull towards the goal) until every episode ended or ``steps`` steps; every result must be
    equal but observations and rewards, which must be within ``tolerance`` (absolute, for each; 0:
    equal). Returns the env steps taken and the episodes terminated and truncated."""
    obs, goals = reference.reset(seeds)
    for ours, theirs in zip(batch.reset(seeds), (obs, goals), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    rng = np.random.default_rng(seed)
    active = np.ones(len(seeds), dtype=bool)
    taken = terminated = truncated = 0
    for t in range(steps):
        actions = rng.uniform(-scale, scale, (len(seeds), reference.task.act_dim))
        if homing:
            actions += 2.0 * (reference.goals - obs[:, :2]) - obs[:, 2:]
        ours, theirs = batch.step(actions, active), reference.step(actions, active)
        obs = theirs.obs
        for field in FIELDS:
            atol = {"obs": tolerance[0], "reward": tolerance[1]}.get(field, 0.0)
            if atol:
                np.testing.assert_allclose(getattr(ours, field), getattr(theirs, field), rtol=0.0, atol=atol,
                                           err_msg=f"{field} at {t}")
            else:
                np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field), err_msg=f"{field} at {t}")
        assert (ours.errors == "").all() and (theirs.errors == "").all()
        if hasattr(reference, "goals"):
            np.testing.assert_array_equal(batch.goals, reference.goals)
        taken += int(active.sum())
        terminated += int((theirs.terminated & active).sum())
        truncated += int((theirs.truncated & active).sum())
        active &= ~(theirs.terminated | theirs.truncated)
        if not active.any():
            break
    return taken, terminated, truncated


@pytest.mark.parametrize("task", ["pointmaze-umaze", "pointmaze-medium", "pointmaze-large"])
def test_maze_batches_agree(task: str) -> None:
    reference, batch = MazeBatch(task, 3), MujocoMazeBatch(task, 3)
    assert reference.geometry.maze_map.tolist() == batch.geometry.maze_map.tolist()
    # the evaluation setting: the goal stays, reward 1 per step near it, truncated at the time limit
    taken, _, truncated = run_both(reference, batch, [0, 1, 7], steps=reference.task.episode_steps + 1, scale=1.0,
                                   seed=0)
    assert taken == 3 * reference.task.episode_steps and truncated == 3
    np.testing.assert_array_equal(batch.qpos, reference.qpos)
    np.testing.assert_array_equal(batch.qvel, reference.qvel)


def test_maze_goal_redraws_and_termination_agree() -> None:
    # the collection setting: a reached goal is redrawn from the env's generator
    kwargs: dict[str, Any] = {"reset_target": True, "max_episode_steps": 400}
    reference, batch = MazeBatch("pointmaze-umaze", 2, **kwargs), MujocoMazeBatch("pointmaze-umaze", 2, **kwargs)
    goals = reference.reset([3, 4])[1]
    run_both(reference, batch, [3, 4], steps=400, scale=0.5, seed=1, homing=True)
    assert (reference.goals != goals).any()  # a goal was reached and redrawn
    # not continuing: reaching the goal ends the episode
    kwargs = {"continuing_task": False, "max_episode_steps": 300}
    reference, batch = MazeBatch("pointmaze-umaze", 4, **kwargs), MujocoMazeBatch("pointmaze-umaze", 4, **kwargs)
    assert run_both(reference, batch, [10, 11, 12, 13], steps=300, scale=0.5, seed=2, homing=True)[1] > 0


@pytest.mark.parametrize("robot", ["hopper", "walker2d", "halfcheetah"])
def test_locomotion_batches_agree(robot: str) -> None:
    # the full 1000-step episodes, then a 40-step limit for falls and truncations in one batch
    task = LocomotionTask(ROBOTS[robot], "medium")
    reference, batch = LocomotionBatch(task, 3), MujocoLocomotionBatch(task, 3)
    taken, _, _ = run_both(reference, batch, [0, 1, 2], steps=1000, scale=0.2, seed=0)
    assert taken >= (3000 if robot == "halfcheetah" else 60)
    short = LocomotionTask(replace(ROBOTS[robot], episode_steps=40), "medium")
    reference, batch = LocomotionBatch(short, 4), MujocoLocomotionBatch(short, 4)
    ends = np.zeros(2, dtype=int)
    for round_ in range(3):
        seeds = [4 * round_ + i for i in range(4)]
        ends += run_both(reference, batch, seeds, steps=40, scale=1.0 if round_ else 0.1, seed=round_)[1:]
    assert ends[1] > 0 and (ends[0] > 0) == (robot != "halfcheetah")  # falls and time limits both seen


def test_threads_do_not_change_the_results() -> None:
    results = []
    for threads in (1, 2):
        batch = MujocoLocomotionBatch("hopper-medium", 5, threads=threads)
        batch.reset(list(range(5)))
        rng = np.random.default_rng(0)
        results.append([batch.step(rng.uniform(-1, 1, (5, 3))).obs for _ in range(30)])
    np.testing.assert_array_equal(results[0], results[1])


def test_factories_and_bad_inputs() -> None:
    assert isinstance(maze_batch("pointmaze-umaze", 1, physics="mujoco"), MujocoMazeBatch)
    assert isinstance(maze_batch("pointmaze-umaze", 1), MazeBatch)
    assert isinstance(locomotion_batch("hopper-medium", 1, physics="mujoco"), MujocoLocomotionBatch)
    assert isinstance(locomotion_batch("hopper-medium", 1, physics="gymnasium"), LocomotionBatch)
    with pytest.raises(ValueError, match=r"eval.physics to one of \['gymnasium', 'mujoco', 'mjx', 'warp'\]"):
        check_physics("bullet")
    batch = MujocoMazeBatch("pointmaze-umaze", 2)
    with pytest.raises(ValueError, match="step\\(\\) before reset"):
        batch.step(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="one seed per env"):
        batch.reset([0])
    batch.reset([0, 1])
    with pytest.raises(ValueError, match=r"actions must have shape \(2, 2\)"):
        batch.step(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"active must have shape \(2,\)"):
        batch.step(np.zeros((2, 2)), np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="threads must be >= 0"):
        MujocoLocomotionBatch("hopper-medium", 1, threads=-1)


def test_evaluate_command_gives_the_same_episodes(run: Command, trained: Path, tmp_path: Path) -> None:
    reference, ours = evaluate_on_backends(run, tmp_path, "mujoco")
    assert [e["episode_return"] for e in reference["episodes"]] == [e["episode_return"] for e in ours["episodes"]]
    assert reference["episode_returns"] == ours["episode_returns"]


def test_unknown_backend_is_one_line(run: Command) -> None:
    one_line(run("evaluate", "eval.physics=bullet"), "eval.physics", "gymnasium, mujoco, mjx",
             command="diffplan-evaluate")
