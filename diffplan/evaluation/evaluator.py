"""Batched closed-loop evaluation: N episodes in lockstep, per-episode records.

The evaluator steps a batch of environments together, asks the controller for actions of the
active ones, masks episodes that ended, and records per episode: return, normalized score,
success, length, and, if something went wrong (an exception, a non-finite plan), the
failure with its reason. One bad episode never stops the evaluation.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from diffplan.controllers import Controller, PlanRecord

log = logging.getLogger(__name__)


class BatchEnv(Protocol):
    """What the evaluator needs from a batch of N environments (see diffplan_envs.MazeBatch)."""

    @property
    def n_envs(self) -> int: ...

    def reset(self, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]: ...

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> Any: ...

    def close(self) -> None: ...


@dataclass
class EpisodeResult:
    """One evaluation episode."""

    seed: int
    episode: int
    reset_seed: int
    episode_return: float
    normalized_score: float
    success: bool
    length: int
    failed: bool = False
    reason: str = ""


@dataclass
class EpisodeTrace:
    """Executed path and plans of one episode, kept for plots."""

    seed: int
    episode: int
    goal: np.ndarray
    observations: np.ndarray  # (T + 1, obs_dim)
    plans: list[np.ndarray] = field(default_factory=list)  # each (H, obs_dim)
    reset_seed: int = -1  # the environment's reset seed (-1: unknown)


@dataclass
class PlanCounts:
    """Counts over one episode's plans (one plan per environment and planner call)."""

    #: Plans the ``plan_check`` of :func:`evaluate` flagged, and plans it checked (0, 0 without one).
    flagged: int = 0
    checked: int = 0
    #: Plans whose kept candidate a planner's proposer added (e.g. the agent's own action,
    #: ``planner.agent_candidate``), and plans of planners with a proposer (0, 0 without one).
    proposed: int = 0
    ranked_with_proposals: int = 0


@dataclass
class EvaluationOutput:
    """Everything an evaluation measured."""

    episodes: list[EpisodeResult]
    plan_times_s: list[float]
    wall_time_s: float
    traces: list[EpisodeTrace]
    #: Plan counts per (seed, episode), for the episodes that planned (a batched sweep splits them by cell).
    plan_counts: dict[tuple[int, int], PlanCounts] = field(default_factory=dict)

    def plan_totals(self) -> PlanCounts:
        """The plan counts summed over the episodes."""
        return PlanCounts(*(sum(getattr(c, f.name) for c in self.plan_counts.values()) for f in fields(PlanCounts)))

    def normalized_scores(self) -> np.ndarray:
        return np.array([e.normalized_score for e in self.episodes])

    def summary(self) -> dict[str, Any]:
        """Mean and standard error of the normalized score, success rate, counts, timing."""
        scores = self.normalized_scores()
        returns = np.array([e.episode_return for e in self.episodes])
        n = len(scores)
        per_seed = {
            str(s): float(np.mean([e.normalized_score for e in self.episodes if e.seed == s]))
            for s in sorted({e.seed for e in self.episodes})
        }
        return {
            "n_episodes": n,
            "n_failed": int(sum(e.failed for e in self.episodes)),
            "normalized_score": {
                "mean": float(scores.mean()) if n else float("nan"),
                "stderr": float(scores.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
                "per_seed_mean": per_seed,
            },
            "return": {"mean": float(returns.mean()) if n else float("nan")},
            "success_rate": float(np.mean([e.success for e in self.episodes])) if n else float("nan"),
            "plan_time_s": {
                "mean": float(np.mean(self.plan_times_s)) if self.plan_times_s else float("nan"),
                "median": float(np.median(self.plan_times_s)) if self.plan_times_s else float("nan"),
                "n_plans": len(self.plan_times_s),
            },
            "wall_time_s": self.wall_time_s,
        }

    def episode_dicts(self) -> list[dict[str, Any]]:
        return [asdict(e) for e in self.episodes]


def normalize_score(episode_return: float, ref_min: float, ref_max: float) -> float:
    """100 * (return - min) / (max - min) (D4RL's and Minari's definition)."""
    return 100.0 * (episode_return - ref_min) / (ref_max - ref_min)


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip()[:500]


def evaluate(
    controller: Controller,
    make_env: Callable[[int], BatchEnv],
    *,
    n_episodes: int,
    n_envs: int,
    seeds: list[int],
    episode_steps: int,
    ref_min: float,
    ref_max: float,
    device: torch.device | str = "cpu",
    n_traces: int = 6,
    trace_plans: bool = True,
    action_low: float = -1.0,
    action_high: float = 1.0,
    progress: bool = True,
    reset_seed_of: Callable[[int, int], int] | None = None,
    plan_check: Callable[[np.ndarray], np.ndarray] | None = None,
) -> EvaluationOutput:
    """Run ``n_episodes`` episodes for each seed, ``n_envs`` at a time.

    Episode ``j`` of seed ``s`` resets its environment with seed ``s * 1_000_003 + j`` (or
    ``reset_seed_of(s, j)`` when given: a batched guidance sweep gives every cell's episodes
    the start states of a sequential evaluation) and the planner draws from a generator
    seeded with ``s``: the same seeds give the same episodes and the same plans. The first
    ``n_traces`` episodes keep their executed observations (and, with ``trace_plans``, their
    plans) in ``EvaluationOutput.traces``. ``plan_check`` maps each planning call's planned states
    (n, H, obs_dim) to a (n,) bool flag (e.g. plans through a maze's walls); the flagged and checked
    counts, and those of plans whose kept candidate a planner's proposer added
    (:attr:`PlanRecord.proposed`), go to ``EvaluationOutput.plan_counts`` per episode.
    """
    if n_episodes < 1 or n_envs < 1:
        raise ValueError(f"eval.n_episodes and eval.n_envs must be >= 1, got {n_episodes} and {n_envs}")
    if ref_max <= ref_min:
        raise ValueError(f"reference scores must satisfy max > min, got min={ref_min} max={ref_max}")
    results: list[EpisodeResult] = []
    traces: list[EpisodeTrace] = []
    plan_times: list[float] = []
    counts: dict[tuple[int, int], PlanCounts] = {}
    start = time.perf_counter()
    total = n_episodes * len(seeds)
    bar = tqdm(total=total, desc="eval", unit="ep", disable=not progress)
    env: BatchEnv | None = None
    for seed in seeds:
        generator = torch.Generator(device=device).manual_seed(int(seed))
        for first in range(0, n_episodes, n_envs):
            count = min(n_envs, n_episodes - first)
            episode_ids = list(range(first, first + count))
            if reset_seed_of is None:
                reset_seeds = [int(seed) * 1_000_003 + j for j in episode_ids]
            else:
                reset_seeds = [int(reset_seed_of(int(seed), j)) for j in episode_ids]
            controller.reset(count)  # plan records and times belong to this batch only
            try:
                if env is None or env.n_envs != count:
                    if env is not None:
                        env.close()
                    env = None
                    env = make_env(count)
            except Exception as e:
                batch = _failed_batch(count, f"environment construction failed: {_reason(e)}", reset_seeds)
            else:
                batch = _run_batch(controller, env, reset_seeds, generator, episode_steps, (action_low, action_high))
            returns, success, lengths, failed, reasons, observations, goals = batch
            for i, j in enumerate(episode_ids):
                results.append(
                    EpisodeResult(
                        seed=int(seed),
                        episode=j,
                        reset_seed=reset_seeds[i],
                        episode_return=float(returns[i]),
                        normalized_score=normalize_score(float(returns[i]), ref_min, ref_max),
                        success=bool(success[i]),
                        length=int(lengths[i]),
                        failed=bool(failed[i]),
                        reason=reasons[i],
                    )
                )
                if len(traces) < n_traces:
                    traces.append(
                        EpisodeTrace(
                            seed=int(seed),
                            episode=j,
                            goal=goals[i],
                            observations=observations[: lengths[i] + 1, i],
                            plans=_plans_of(controller.records, i) if trace_plans else [],
                            reset_seed=reset_seeds[i],
                        )
                    )
            plan_times.extend(r.time_s for r in controller.records)
            _count_plans(counts, controller.records, int(seed), episode_ids, plan_check)
            bar.update(count)
            scores = [r.normalized_score for r in results]
            bar.set_postfix(score=f"{np.mean(scores):.1f}", failed=sum(r.failed for r in results))
    bar.close()
    if env is not None:
        env.close()
    return EvaluationOutput(results, plan_times, time.perf_counter() - start, traces, counts)


def _count_plans(counts: dict[tuple[int, int], PlanCounts], records: list[PlanRecord], seed: int,
                 episode_ids: list[int], plan_check: Callable[[np.ndarray], np.ndarray] | None) -> None:
    """Add one batch's plan records to the per-episode counts (a record's ``env_index`` i is episode
    ``episode_ids[i]`` of ``seed``); episodes with nothing counted get no entry."""
    totals = np.zeros((4, len(episode_ids)), dtype=np.int64)  # the PlanCounts fields, per environment
    for record in records:
        env = np.asarray(record.env_index).reshape(-1)
        if plan_check is not None and record.observations.size:
            np.add.at(totals[0], env, np.asarray(plan_check(record.observations), dtype=bool))
            np.add.at(totals[1], env, 1)
        if record.proposed is not None:
            np.add.at(totals[2], env, record.proposed)
            np.add.at(totals[3], env, 1)
    for i in np.flatnonzero(totals[1] + totals[3]):
        counts[(seed, episode_ids[i])] = PlanCounts(*(int(v) for v in totals[:, i]))


def _plans_of(records: list[PlanRecord], env_index: int) -> list[np.ndarray]:
    plans = []
    for record in records:
        hit = np.flatnonzero(record.env_index == env_index)
        if hit.size:
            plans.append(record.observations[hit[0]])
    return plans


BatchOutcome = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]


def _failed_batch(n: int, reason: str, reset_seeds: list[int]) -> BatchOutcome:
    """The record of a batch that could not run at all: every episode failed with ``reason``."""
    log.warning("batch with reset seeds %s failed: %s", reset_seeds, reason)
    zeros = np.zeros(n)
    return zeros, zeros.astype(bool), zeros.astype(np.int64), np.ones(n, dtype=bool), [reason] * n, \
        np.zeros((1, n, 1)), np.zeros((n, 1))


def _run_batch(
    controller: Controller,
    env: BatchEnv,
    reset_seeds: list[int],
    generator: torch.Generator,
    episode_steps: int,
    action_box: tuple[float, float],
) -> BatchOutcome:
    """Run one lockstep batch of episodes to the end; never raises for a single episode."""
    n = env.n_envs
    returns = np.zeros(n)
    success = np.zeros(n, dtype=bool)
    lengths = np.zeros(n, dtype=np.int64)
    failed = np.zeros(n, dtype=bool)
    reasons = [""] * n
    try:
        obs, goals = env.reset(reset_seeds)
    except Exception as e:
        return _failed_batch(n, f"environment reset failed: {_reason(e)}", reset_seeds)
    observations = np.zeros((episode_steps + 1, n, obs.shape[1]))
    observations[0] = obs
    active = np.ones(n, dtype=bool)
    controller.reset(n)

    def fail(index: np.ndarray, reason: str) -> None:
        for i in np.flatnonzero(index):
            if not failed[i]:
                failed[i], reasons[i] = True, reason
                log.warning("episode with reset seed %d failed: %s", reset_seeds[i], reason)
        active[index] = False

    for t in range(episode_steps):
        if not active.any():
            break
        try:
            actions, bad = controller.act(t, obs, goals, active, generator)
        except Exception as e:  # the whole batch's plan failed: record it, do not crash
            log.debug(traceback.format_exc())
            fail(active.copy(), f"planning failed: {_reason(e)}")
            break
        fail(bad & active, "planner returned a non-finite plan")
        actions = np.clip(np.nan_to_num(actions), *action_box)
        try:
            result = env.step(actions, active)
        except Exception as e:
            fail(active.copy(), f"environment step failed: {_reason(e)}")
            break
        errors = getattr(result, "errors", None)
        if errors is not None:
            for i in np.flatnonzero(active & (errors != "")):
                fail(np.arange(n) == i, f"environment step failed: {errors[i]}")
        obs = result.obs
        returns[active] += result.reward[active]
        success[active] |= result.success[active]
        lengths[active] += 1
        observations[t + 1, active] = obs[active]
        done = (result.terminated | result.truncated) & active
        active &= ~done
    return returns, success, lengths, failed, reasons, observations, goals
