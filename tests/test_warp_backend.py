"""eval.physics=warp against the reference, eval.physics=gymnasium: the batches of
diffplan_envs.mujoco_batch stepped by MuJoCo Warp (diffplan_envs.warp_batch) in float32 on Warp's
device (the CPU here) from the same reset seeds and actions as the Gymnasium envs.

What is compared, and how closely (absolute tolerances; MuJoCo Warp computes in float32, so one step
differs from MuJoCo's float64 one by ~1e-6 in positions and up to ~5e-4 in HalfCheetah's large joint
velocities, and a free run grows that as any chaotic system does: the largest differences measured
here are in docs/COMMANDS.md, "Physics backends"):

- PointMaze umaze, medium and large, per step: 1,000 transitions of a Gymnasium env pushed into walls,
  replayed from its states: next observations within 1e-4. Free-running: 3 envs for 300 steps with a
  pull towards the goal: observations within 1e-3, rewards, successes, truncations and goals equal.
- Hopper, Walker2d, HalfCheetah, per step: 1,000 real transitions replayed from the Gymnasium env's
  states: next observations within 1e-3, rewards within 1e-4, terminations equal. Free-running: 3 envs
  from the same seeds until every episode ended (HalfCheetah runs its 1,000 steps): observations within
  1e-3, rewards within 1e-3, terminations and truncations equal; and 40-step episodes with falls and
  time limits under random actions over the whole box (joint velocities up to ~10, so within 1e-2;
  HalfCheetah, which does not fall, with a tenth of the box: over the whole box its free run parts
  from the reference by ~1e-2 within 20 steps).
- diffplan-evaluate on a tiny umaze run: the same episodes (seeds, lengths, successes) on either
  backend, returns within 1e-9.

Warp compiles MuJoCo Warp's kernels once (about half a minute on these cores) into its kernel cache;
later processes load them.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import mujoco
import numpy as np
import pytest
from diffplan_envs.dynamics import replay_transitions
from diffplan_envs.maze import MazeBatch
from diffplan_envs.mujoco_batch import MujocoLocomotionBatch, MujocoMazeBatch, locomotion_batch, maze_batch
from errors_helpers import Command, one_line
from test_physics_backends import check_locomotion_backend, evaluate_on_backends, maze_transitions, run_both

needs_warp = pytest.mark.skipif(
    importlib.util.find_spec("warp") is None or importlib.util.find_spec("mujoco_warp") is None,
    reason='eval.physics=warp needs warp-lang and mujoco-warp, not installed here: pip install "diffplan[warp]"')

N = 3


@needs_warp
@pytest.mark.parametrize("task", ["pointmaze-umaze", "pointmaze-medium", "pointmaze-large"])
def test_maze_batches_agree(task: str) -> None:
    observations, actions = maze_transitions(task, 1000)
    reference = replay_transitions(task, observations, actions, physics="gymnasium")
    ours = replay_transitions(task, observations, actions, physics="warp", chunk=100)
    np.testing.assert_allclose(ours.next_observations, reference.next_observations, rtol=0.0, atol=1e-4)
    kwargs = {"reset_target": True, "max_episode_steps": 300}
    reference_batch, batch = MazeBatch(task, N, **kwargs), MujocoMazeBatch(task, N, physics="warp", **kwargs)
    taken, _, truncated = run_both(reference_batch, batch, [0, 1, 7], steps=301, scale=1.0, seed=0, homing=True,
                                   tolerance=(1e-3, 0.0))
    assert taken == N * 300 and truncated == N


@needs_warp
@pytest.mark.parametrize("robot", ["hopper", "walker2d", "halfcheetah"])
def test_locomotion_agrees(robot: str) -> None:
    # HalfCheetah, which does not fall, with a tenth of the box in the short episodes: over the whole box
    # its free run parts from the reference by ~1e-2 within 20 steps
    check_locomotion_backend(robot, "warp", N, step_tol=1e-3, free_tol=(1e-3, 1e-3), short_tol=(1e-2, 1e-2),
                             short_scale=0.1 if robot == "halfcheetah" else 1.0)


@needs_warp
def test_unstable_simulations_are_errors_and_inactive_ones_keep_their_state() -> None:
    batch = MujocoLocomotionBatch("hopper-medium", N, physics="warp")
    batch.reset([0, 1, 2])
    batch._sims.qvel[1, 0] = 1e12
    before = batch._sims.qpos.copy()
    result = batch.step(np.zeros((N, 3)))
    assert result.errors[1].startswith("warp: unstable simulation") and (result.errors[[0, 2]] == "").all()
    np.testing.assert_array_equal(batch._sims.qpos[1], before[1])
    assert (batch._sims.qpos[[0, 2]] != before[[0, 2]]).any()
    # an inactive simulation is not advanced
    kept = batch._sims.qpos[2].copy()
    batch.step(np.zeros((N, 3)), np.array([True, False, False]))
    np.testing.assert_array_equal(batch._sims.qpos[2], kept)


@needs_warp
def test_factories_device_and_unsupported_models(caplog: pytest.LogCaptureFixture) -> None:
    import diffplan_envs.warp_batch as warp_batch

    warp_batch._LOGGED.clear()
    with caplog.at_level(logging.INFO, logger="diffplan_envs.warp_batch"):
        assert isinstance(maze_batch("pointmaze-umaze", N, physics="warp"), MujocoMazeBatch)
    assert "eval.physics=warp: MuJoCo Warp on Warp device cpu, float32" in caplog.text
    assert isinstance(locomotion_batch("hopper-medium", N, physics="warp"), MujocoLocomotionBatch)
    xml = ('<mujoco><option solver="PGS"/><worldbody><body><joint type="slide"/><geom size=".1"/></body>'
           "</worldbody></mujoco>")
    with pytest.raises(ValueError, match=r"eval.physics=warp cannot simulate .*PGS.*; set eval.physics=mujoco"):
        warp_batch.WarpSimulations(mujoco.MjModel.from_xml_string(xml), 1)


@needs_warp
def test_evaluate_command_gives_the_same_episodes(run: Command, tmp_path: Path) -> None:
    reference, ours = evaluate_on_backends(run, tmp_path, "warp", n_envs=N)
    np.testing.assert_allclose(ours["episode_returns"], reference["episode_returns"], rtol=0.0, atol=1e-9)


def test_warp_without_the_extra_is_one_line(run: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "warp", None)  # import warp fails as if it were not installed
    monkeypatch.setitem(sys.modules, "mujoco_warp", None)
    one_line(run("evaluate", "eval.physics=warp"), "eval.physics=warp needs the optional dependency 'warp'",
             'pip install "diffplan[warp]"', command="diffplan-evaluate")
