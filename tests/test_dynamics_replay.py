"""replay_transitions(physics="mujoco"), the batched replay (diffplan_envs.mujoco_batch.replay_locomotion
and replay_maze), gives the Gymnasium replay's next observations, rewards and terminations bit for bit
on physically valid transitions taken from real envs stepped with seeded random actions."""

from __future__ import annotations

import numpy as np
import pytest
from diffplan_envs.dynamics import Replay, default_physics, dynamics_error, random_transitions, replay_transitions
from test_physics_backends import maze_transitions

FIELDS = ("next_observations", "rewards", "terminated")


def assert_same(ours: Replay, theirs: Replay) -> None:
    for field in FIELDS:
        mine, reference = getattr(ours, field), getattr(theirs, field)
        assert mine.dtype == reference.dtype and mine.shape == reference.shape, field
        # the bits, not just the values (-0.0 and 0.0, NaNs)
        np.testing.assert_array_equal(mine.view(np.uint8), reference.view(np.uint8), err_msg=field)


def locomotion_transitions(env_id: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Real transitions with actions a little past the action box (so the replay's clip is exercised)."""
    return random_transitions(env_id, n, seed, action_scale=1.2)


@pytest.mark.parametrize(("env_id", "task"), [("Hopper-v5", "hopper-medium"), ("Walker2d-v5", "walker2d-medium"),
                                               ("HalfCheetah-v5", "halfcheetah-medium")])
def test_locomotion_replays_agree(env_id: str, task: str) -> None:
    observations, actions = locomotion_transitions(env_id, 300, seed=0)
    reference = replay_transitions(task, observations, actions, physics="gymnasium")
    if task != "halfcheetah-medium":
        assert reference.terminated.any() and not reference.terminated.all()  # falls are replayed too
    # 300 = one full chunk of 128, another and a partial one; float32 inputs as read from HDF5 files
    assert_same(replay_transitions(task, observations, actions, physics="mujoco", chunk=128), reference)
    obs32, act32 = observations.astype(np.float32), actions.astype(np.float32)
    assert_same(replay_transitions(task, obs32, act32, physics="mujoco", threads=1),
                replay_transitions(task, obs32, act32, physics="gymnasium"))


def test_a_replay_does_not_depend_on_the_other_transitions() -> None:
    observations, actions = locomotion_transitions("Walker2d-v5", 200, seed=3)
    for physics in ("gymnasium", "mujoco"):
        full = replay_transitions("walker2d-medium", observations, actions, physics=physics)
        backwards = replay_transitions("walker2d-medium", observations[::-1], actions[::-1], physics=physics)
        np.testing.assert_array_equal(backwards.next_observations[::-1], full.next_observations)
        np.testing.assert_array_equal(backwards.rewards[::-1], full.rewards)


@pytest.mark.parametrize("task", ["pointmaze-umaze", "pointmaze-medium"])
def test_maze_replays_agree(task: str) -> None:
    observations_array, actions_array = maze_transitions(task, 300)  # pushes held for 25 steps: walls
    observations_array[::10, 2:] *= 8.0  # generated-looking velocities, beyond the step's clip to +-5
    reference = replay_transitions(task, observations_array, actions_array, physics="gymnasium")
    assert (np.abs(observations_array[:, 2:]) > 5.0).any()
    assert_same(replay_transitions(task, observations_array, actions_array, physics="mujoco", chunk=100), reference)


def test_simulator_failures_fall_back_to_gymnasium() -> None:
    # velocities beyond MuJoCo's 1e10 limit: Gymnasium's mj_step warns and resets the simulation,
    # the batch raises for those simulations and the replay takes Gymnasium's answer for them
    observations, actions = locomotion_transitions("Hopper-v5", 20, seed=5)
    observations[[3, 11], 6] = 1e12
    reference = replay_transitions("hopper-medium", observations, actions, physics="gymnasium")
    assert_same(replay_transitions("hopper-medium", observations, actions, physics="mujoco", chunk=8), reference)


def test_default_backend_and_bad_inputs() -> None:
    assert default_physics() == "mujoco"  # mujoco >= 4 here
    observations, actions = locomotion_transitions("Hopper-v5", 30, seed=2)
    next_obs = replay_transitions("hopper-medium", observations, actions, physics="gymnasium").next_observations
    error = dynamics_error("hopper-medium", observations, actions, next_obs, obs_variance=observations.var(0))
    assert error.next_obs_mse == 0.0
    empty = replay_transitions("hopper-medium", np.zeros((0, 11)), np.zeros((0, 3)), physics="mujoco")
    assert empty.next_observations.shape == (0, 11) and empty.rewards.shape == (0,)
    with pytest.raises(ValueError, match=r"eval.physics to one of"):
        replay_transitions("hopper-medium", observations, actions, physics="bullet")
    with pytest.raises(ValueError, match=r"hopper-medium observations must be \(T, 11\)"):
        replay_transitions("hopper-medium", observations[:, :10], actions, physics="mujoco")
    with pytest.raises(ValueError, match=r"actions must be \(30, 3\)"):
        replay_transitions("hopper-medium", observations, actions[:5], physics="mujoco")
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        replay_transitions("hopper-medium", observations, actions, physics="mujoco", chunk=0)
