"""Batched evaluation with a fake batch env: returns, masking, failures, scores, summaries."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest
import torch
from diffplan_envs import StepResult

from diffplan.config import PlannerConfig
from diffplan.enums import ExecutionMode
from diffplan.evaluation.evaluator import EpisodeResult, EvaluationOutput, evaluate, normalize_score
from diffplan.planning.controllers import PlanController
from diffplan.planning.planner import Plan


class Step(NamedTuple):
    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray


class FakeBatch:
    """N envs; env i ends (terminated) after ``2 + i`` steps and earns ``1 + i`` per step.

    It keeps paying reward to envs that already ended, so the evaluator has to mask them.
    Position += action; success for even i once ended. ``fail_on_seed`` makes ``step`` raise
    for any batch holding that reset seed.
    """

    instances: list[FakeBatch] = []

    def __init__(self, n_envs: int, fail_on_seed: int | None = None) -> None:
        self._n = n_envs
        self.fail_on_seed = fail_on_seed
        self.closed = False
        self.seeds: list[int] = []
        self.actions: list[np.ndarray] = []
        FakeBatch.instances.append(self)

    @property
    def n_envs(self) -> int:
        return self._n

    def reset(self, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
        self.seeds = list(seeds)
        self.t = np.zeros(self._n, dtype=np.int64)
        self.obs = np.zeros((self._n, 4))
        self.obs[:, 3] = np.arange(self._n)
        return self.obs.copy(), np.ones((self._n, 2))

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> Step:
        if self.fail_on_seed is not None and self.fail_on_seed in self.seeds:
            raise RuntimeError("boom")
        self.actions.append(actions.copy())
        mask = np.ones(self._n, dtype=bool) if active is None else active
        self.t[mask] += 1
        self.obs[mask, :2] += actions[mask]
        ended = self.t >= 2 + np.arange(self._n)
        return Step(self.obs.copy(), 1.0 + np.arange(self._n), ended, np.zeros(self._n, dtype=bool),
                    ended & (np.arange(self._n) % 2 == 0))

    def close(self) -> None:
        self.closed = True


class StubPlanner:
    """Constant plans: action (0.5, -0.5) at every token; optionally non-finite or raising."""

    def __init__(self, finite: bool = True, raises: bool = False) -> None:
        self.finite, self.raises = finite, raises

    def plan(self, observations: torch.Tensor, generator: torch.Generator, *, goals: torch.Tensor | None = None,
             previous: torch.Tensor | None = None, shift: int = 0, strengths: object = None) -> Plan:
        if self.raises:
            raise FloatingPointError("sampler diverged")
        n = observations.shape[0]
        states = torch.zeros(n, 4, 4)
        actions = torch.tensor([0.5, -0.5]).expand(n, 4, 2)
        return Plan(states, actions, torch.full((n,), self.finite), 0.25)


def _policy(planner: StubPlanner | None = None) -> PlanController:
    return PlanController(planner or StubPlanner(), PlannerConfig(mode=ExecutionMode.actions, replan_every=0),
                          position_dims=[0, 1], velocity_dims=[2, 3])


def _evaluate(policy: PlanController, make_env, **kwargs: object) -> EvaluationOutput:  # noqa: ANN001
    options: dict = {"n_episodes": 3, "n_envs": 3, "seeds": [0], "episode_steps": 10,
                     "ref_min": 0.0, "ref_max": 10.0, "progress": False}
    options.update(kwargs)
    return evaluate(policy, make_env, **options)


def test_returns_lengths_and_masking() -> None:
    FakeBatch.instances = []
    out = _evaluate(_policy(), FakeBatch)
    assert [e.length for e in out.episodes] == [2, 3, 4]
    # Env i earns 1 + i for 2 + i steps, and nothing after it ended.
    assert [e.episode_return for e in out.episodes] == [2.0, 6.0, 12.0]
    assert [e.normalized_score for e in out.episodes] == pytest.approx([20.0, 60.0, 120.0])
    assert [e.success for e in out.episodes] == [True, False, True]
    assert not any(e.failed for e in out.episodes)
    assert [e.reset_seed for e in out.episodes] == [0, 1, 2]
    env = FakeBatch.instances[0]
    assert env.closed
    assert len(env.actions) == 4  # the batch stops once every episode ended
    np.testing.assert_allclose(env.actions[0], [[0.5, -0.5]] * 3)
    # Traces hold the executed path up to each episode's end.
    assert [len(t.observations) for t in out.traces] == [3, 4, 5]
    np.testing.assert_allclose(out.traces[2].observations[-1, :2], [2.0, -2.0])
    assert out.plan_times_s == [0.25]


def test_batches_seeds_and_env_reuse() -> None:
    FakeBatch.instances = []
    out = _evaluate(_policy(), FakeBatch, n_episodes=3, n_envs=2, seeds=[0, 7])
    assert [(e.seed, e.episode) for e in out.episodes] == [(0, 0), (0, 1), (0, 2), (7, 0), (7, 1), (7, 2)]
    assert [e.reset_seed for e in out.episodes][3:] == [7_000_021, 7_000_022, 7_000_023]
    # Batches of 2 then 1 per seed: each size change builds a new env and closes the old one.
    assert [env.n_envs for env in FakeBatch.instances] == [2, 1, 2, 1]
    assert all(env.closed for env in FakeBatch.instances)
    assert [e.episode_return for e in out.episodes] == [2.0, 6.0, 2.0, 2.0, 6.0, 2.0]


def test_env_step_failure_is_recorded_and_evaluation_continues() -> None:
    out = _evaluate(_policy(), lambda n: FakeBatch(n, fail_on_seed=1_000_003), n_episodes=2, n_envs=2,
                    seeds=[0, 1])
    seed0, seed1 = out.episodes[:2], out.episodes[2:]
    assert not any(e.failed for e in seed0)
    assert [e.episode_return for e in seed0] == [2.0, 6.0]
    assert all(e.failed for e in seed1)
    assert all(e.reason == "environment step failed: RuntimeError: boom" for e in seed1)
    assert [e.length for e in seed1] == [0, 0]
    assert out.summary()["n_failed"] == 2


def test_env_construction_and_reset_failures_are_recorded() -> None:
    def broken(n: int) -> FakeBatch:
        raise OSError("no display")

    out = _evaluate(_policy(), broken, n_episodes=2, n_envs=2)
    assert [e.reason for e in out.episodes] == ["environment construction failed: OSError: no display"] * 2
    assert out.plan_times_s == [] and all(e.failed for e in out.episodes)

    class ResetFails(FakeBatch):
        def reset(self, seeds):  # noqa: ANN001, ANN201
            raise RuntimeError("bad seed")

    out = _evaluate(_policy(), ResetFails, n_episodes=2, n_envs=2)
    assert [e.reason for e in out.episodes] == ["environment reset failed: RuntimeError: bad seed"] * 2


def test_non_finite_plans_fail_their_episodes() -> None:
    out = _evaluate(_policy(StubPlanner(finite=False)), FakeBatch)
    assert all(e.failed for e in out.episodes)
    assert {e.reason for e in out.episodes} == {"planner returned a non-finite plan"}
    assert [e.length for e in out.episodes] == [0, 0, 0]
    assert [e.episode_return for e in out.episodes] == [0.0, 0.0, 0.0]


def test_planning_exception_fails_the_batch() -> None:
    out = _evaluate(_policy(StubPlanner(raises=True)), FakeBatch, seeds=[0, 1])
    assert len(out.episodes) == 6 and all(e.failed for e in out.episodes)
    assert {e.reason for e in out.episodes} == {"planning failed: FloatingPointError: sampler diverged"}


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="n_episodes and eval.n_envs must be >= 1, got 0 and 3"):
        _evaluate(_policy(), FakeBatch, n_episodes=0)
    with pytest.raises(ValueError, match="max > min, got min=5.0 max=5.0"):
        _evaluate(_policy(), FakeBatch, ref_min=5.0, ref_max=5.0)


def test_normalize_score() -> None:
    assert normalize_score(5.0, 0.0, 10.0) == 50.0
    assert normalize_score(-2.0, -2.0, 6.0) == 0.0
    assert normalize_score(6.0, -2.0, 6.0) == 100.0
    assert normalize_score(10.0, 2.0, 6.0) == pytest.approx(200.0)


def _result(seed: int, score: float, failed: bool = False) -> EpisodeResult:
    return EpisodeResult(seed=seed, episode=0, reset_seed=0, episode_return=score / 10,
                         normalized_score=score, success=score > 50, length=1, failed=failed)


def test_summary_statistics() -> None:
    out = EvaluationOutput([_result(0, 10.0), _result(0, 20.0), _result(1, 60.0, failed=True)],
                           [0.1, 0.2, 0.6], 3.0, [])
    summary = out.summary()
    assert summary["n_episodes"] == 3 and summary["n_failed"] == 1
    score = summary["normalized_score"]
    assert score["mean"] == pytest.approx(30.0)
    # stderr = sample std (ddof 1) / sqrt(n) = sqrt((400 + 100 + 900) / 2) / sqrt(3)
    assert score["stderr"] == pytest.approx(math.sqrt(700.0) / math.sqrt(3.0))
    assert score["per_seed_mean"] == {"0": pytest.approx(15.0), "1": pytest.approx(60.0)}
    assert summary["return"]["mean"] == pytest.approx(3.0)
    assert summary["success_rate"] == pytest.approx(1 / 3)
    assert summary["plan_time_s"] == {"mean": pytest.approx(0.3), "median": pytest.approx(0.2), "n_plans": 3}
    single = EvaluationOutput([_result(0, 10.0)], [], 1.0, []).summary()
    assert math.isnan(single["normalized_score"]["stderr"])
    assert math.isnan(single["plan_time_s"]["mean"])


class PartlyFailingBatch(FakeBatch):
    """Env 1's second step reports an error (the others step normally)."""

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> StepResult:
        result = super().step(actions, active)
        errors = np.full(self.n_envs, "", dtype=object)
        if self.t[1] == 2:
            errors[1] = "MuJoCo warning: bad qacc"
        return StepResult(*result, errors=errors)  # the MazeBatch contract


def test_per_env_step_error_fails_only_that_episode() -> None:
    out = _evaluate(_policy(), PartlyFailingBatch)
    assert [e.failed for e in out.episodes] == [False, True, False]
    assert out.episodes[1].reason == "environment step failed: MuJoCo warning: bad qacc"
    # The failing step does not count: env 1 keeps its first step's reward and length.
    assert [e.episode_return for e in out.episodes] == [2.0, 2.0, 12.0]
    assert [e.length for e in out.episodes] == [2, 1, 4]
