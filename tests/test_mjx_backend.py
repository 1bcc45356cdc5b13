"""eval.physics=mjx against the reference, eval.physics=gymnasium: the batches of
diffplan_envs.mujoco_batch stepped by MJX in float64 (diffplan_envs.mjx_batch) from the same reset
seeds and actions as the Gymnasium envs.

What is compared, and how closely (the tolerances are absolute; the largest differences measured
here are in docs/COMMANDS.md, "Physics backends": most steps agree to ~1e-14, and where the two
constraint solvers stop at their tolerance, opt.tolerance 1e-8, on different iterates, a step
differs by up to ~1e-6, which a free run may grow):

- PointMaze umaze, medium and large, free-running: 3 envs for 1,000 steps with goal redraws
  (``reset_target``) and random pushes plus a pull towards the goal, which drives the ball into
  walls: observations within 1e-4, rewards, successes, truncations and goals equal; then up to
  300 steps without ``continuing_task``: terminations on reaching the goal equal.
- Hopper, Walker2d, HalfCheetah, per step: 1,000 real transitions of the Gymnasium env replayed
  from its states (diffplan_envs.dynamics.replay_transitions, physics="mjx" against "gymnasium"):
  next observations within 1e-5, rewards within 1e-4, terminations equal. Free-running: 3 envs
  from the same seeds until every episode ended (Hopper and Walker2d fall within ~120 steps,
  HalfCheetah runs its 1,000): observations within 1e-4, rewards within 1e-3, terminations and
  truncations equal; and 40-step episodes with falls and time limits, as in
  test_physics_backends.py.
- diffplan-evaluate on a tiny umaze run: the same episodes (seeds, lengths, successes) and returns
  within 1e-9 on either backend.

MJX compiles one function per model, batch size and frame skip, kept for the process: every test
here uses batches of 3 so each model compiles once (most of these tests' time on a CPU), and JAX's
persistent compilation cache in pytest's cache folder (unless JAX_COMPILATION_CACHE_DIR names
another) spares a rerun most of that.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import mujoco
import numpy as np
import pytest
from diffplan_envs.dynamics import random_transitions, replay_transitions
from diffplan_envs.maze import MazeBatch
from diffplan_envs.mujoco_batch import MujocoLocomotionBatch, MujocoMazeBatch, locomotion_batch, maze_batch
from errors_helpers import Command, one_line
from test_physics_backends import check_locomotion_backend, evaluate_on_backends, run_both

needs_mjx = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None or importlib.util.find_spec("mujoco.mjx") is None,
    reason='eval.physics=mjx needs jax and mujoco-mjx, not installed here: pip install "diffplan[mjx]"')

N = 3  # one batch size throughout: one compilation per model


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(pytestconfig: pytest.Config) -> None:
    """JAX's persistent compilation cache in pytest's cache folder, where neither pytest's cache nor
    JAX_COMPILATION_CACHE_DIR is off or set otherwise."""
    cache = getattr(pytestconfig, "cache", None)
    if cache is None or importlib.util.find_spec("jax") is None:
        return
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(cache.mkdir("jax-compilation")))


@needs_mjx
@pytest.mark.parametrize("task", ["pointmaze-umaze", "pointmaze-medium", "pointmaze-large"])
def test_maze_batches_agree(task: str) -> None:
    kwargs = {"reset_target": True, "max_episode_steps": 1000}
    reference, batch = MazeBatch(task, N, **kwargs), MujocoMazeBatch(task, N, physics="mjx", **kwargs)
    goals = reference.reset([0, 1, 7])[1]
    taken, _, truncated = run_both(reference, batch, [0, 1, 7], steps=1001, scale=1.0, seed=0, homing=True,
                                   tolerance=(1e-4, 0.0))
    assert taken == N * 1000 and truncated == N
    # goals were reached and redrawn (the straight pull seldom gets round the large maze's walls)
    assert (reference.goals != goals).any() or task == "pointmaze-large"
    ends = {"continuing_task": False, "max_episode_steps": 300}
    reference, batch = MazeBatch(task, N, **ends), MujocoMazeBatch(task, N, physics="mjx", **ends)
    assert run_both(reference, batch, [10, 11, 12], steps=300, scale=0.5, seed=2, homing=True,
                    tolerance=(1e-4, 0.0))[1] > 0


@needs_mjx
@pytest.mark.parametrize("robot", ["hopper", "walker2d", "halfcheetah"])
def test_locomotion_agrees(robot: str) -> None:
    check_locomotion_backend(robot, "mjx", N, step_tol=1e-5, free_tol=(1e-4, 1e-3), short_tol=(1e-4, 1e-3))


@needs_mjx
def test_unstable_simulations_are_errors() -> None:
    # velocities beyond MuJoCo's 1e10: MJX reports those simulations as failed, keeping their
    # state, and the replay takes Gymnasium's answer for them (as for physics="mujoco")
    observations, actions = random_transitions("Hopper-v5", 7, seed=5)
    observations[[1, 5], 6] = 1e12
    batch = MujocoLocomotionBatch("hopper-medium", N, physics="mjx")
    batch.reset([0, 1, 2])
    batch._sims.qvel[1, 0] = 1e12
    before = batch._sims.qpos.copy()
    result = batch.step(np.zeros((N, 3)))
    assert result.errors[1].startswith("mjx: unstable simulation") and (result.errors[[0, 2]] == "").all()
    assert result.terminated.tolist() == [False, True, False]
    np.testing.assert_array_equal(batch._sims.qpos[1], before[1])
    reference = replay_transitions("hopper-medium", observations, actions, physics="gymnasium")
    ours = replay_transitions("hopper-medium", observations, actions, physics="mjx", chunk=N)
    np.testing.assert_array_equal(ours.next_observations[[1, 5]], reference.next_observations[[1, 5]])
    np.testing.assert_allclose(ours.next_observations, reference.next_observations, rtol=0.0, atol=1e-5)


@needs_mjx
def test_factories_device_and_unsupported_models(caplog: pytest.LogCaptureFixture) -> None:
    from diffplan_envs.mjx_batch import MjxSimulations

    assert isinstance(maze_batch("pointmaze-umaze", N, physics="mjx"), MujocoMazeBatch)
    assert isinstance(locomotion_batch("hopper-medium", N, physics="mjx"), MujocoLocomotionBatch)
    xml = ('<mujoco><option solver="{}"/><worldbody><body><joint type="slide"/><geom size=".1"/></body>'
           "</worldbody></mujoco>")
    with caplog.at_level(logging.INFO, logger="diffplan_envs.mjx_batch"):
        MjxSimulations(mujoco.MjModel.from_xml_string(xml.format("CG")), 1)  # a model new to this process
    assert "eval.physics=mjx: MJX on JAX device cpu:0" in caplog.text
    with pytest.raises(ValueError, match=r"eval.physics=mjx cannot simulate .*PGS.*; set eval.physics=mujoco"):
        MjxSimulations(mujoco.MjModel.from_xml_string(xml.format("PGS")), 1)


@needs_mjx
def test_evaluate_command_gives_the_same_episodes(run: Command, tmp_path: Path) -> None:
    reference, ours = evaluate_on_backends(run, tmp_path, "mjx", n_envs=N)
    np.testing.assert_allclose(ours["episode_returns"], reference["episode_returns"], rtol=0.0, atol=1e-9)


def test_mjx_without_the_extra_is_one_line(run: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jax", None)  # import jax fails as if it were not installed
    monkeypatch.setitem(sys.modules, "mujoco.mjx", None)
    one_line(run("evaluate", "eval.physics=mjx"), "eval.physics=mjx needs the optional dependency 'jax'",
             'pip install "diffplan[mjx]"', command="diffplan-evaluate")
