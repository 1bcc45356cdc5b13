"""Batched sweeps: the cells that differ only in guidance kind and strength, in one batch.

Cells whose resolved configs are equal once the strength keys (``guidance.kind``,
``guidance.scale``, ``guidance.policy_scale``, ``planner.return_guidance.weight``) and the output
folder are set aside share a *pass* (:func:`batch_passes`): one policy and one batch of
``n_envs = cells x eval.n_episodes`` environments per seed. Environment ``i`` belongs to cell
``i // n_episodes`` and replays that cell's episode ``i % n_episodes``: it resets with the
seed a sequential evaluation of the cell gives that episode (``seed * 1_000_003 + episode``),
so every cell sees the same start states and goals as sequentially (and as each other). The
policy carries per-environment strengths (:class:`~diffplan.guidance.per_env.EnvStrengths`,
:func:`pass_strengths`) built on the pass's guidance kind:

- only ``none``/``classifier_free`` cells: unguided; ``classifier_free`` cells give per-environment classifier-free
  guidance weights;
- ``goal`` (mazes), ``value`` or ``policy`` with ``none``/``classifier_free``: that guide, one step size per
  environment (0 for ``none``/``classifier_free`` cells, whose samples then follow the unguided updates);
- ``value``, ``policy`` and ``value_policy`` mixed: ``value_policy``'s CompositeGuide with
  per-environment term weights (value (1, 0) x scale, policy (0, 1) x policy_scale,
  value_policy (scale, policy_scale) x 1, none (0, 0)).

Cells with a different structure (``mc_samples``, planner, anything else) go in separate
passes; goal cells never share one with value or policy cells. ``planner.mode=forcing`` has no
per-environment strengths: its cells are evaluated one at a time (as ``sweep.batched=false``).

What is and is not identical to a sequential sweep: see :mod:`diffplan.sweep` and the README
("Guidance sweeps").
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from torch import Tensor

from diffplan.config import Config, to_container
from diffplan.evaluation.evaluator import EvaluationOutput
from diffplan.guidance.kinds import guidance_kind
from diffplan.guidance.per_env import EnvStrengths
from diffplan.planning.modes import PLANNERS
from diffplan.sweep.grid import PlannedCell, flatten, with_overrides
from diffplan.tasks import is_locomotion

log = logging.getLogger(__name__)

#: Config keys a batched pass varies per environment (plus the cell's output folder).
PER_ENV_KEYS = ("guidance.kind", "guidance.scale", "guidance.policy_scale", "planner.return_guidance.weight",
                "eval.out_dir")

#: Kinds that share a pass have one ``batch_family`` (:class:`~diffplan.guidance.kinds.GuidanceKindSpec`):
#: the goal guide alone; value, policy and value_policy through value_policy's CompositeGuide (on a
#: maze a value cell's pass holds value and unguided cells only). A kind without a family (a plugin's,
#: by default) is evaluated one cell per pass, its strength in its own config.


def _family(kind: str) -> str | None:
    """The batch family of a cell's kind; None for unguided cells (none, cfg)."""
    if kind in ("none", "classifier_free"):
        return None
    spec = guidance_kind(kind)
    return None if spec is None else spec.batch_family or f"alone:{kind}"

#: Environment ``j`` of a pass replays episode ``j % n_episodes`` of its cell.
RESET_SEED_STRIDE = 1_000_003


def structure_key(cfg: Config) -> str:
    """What must be equal for cells to share a pass: the resolved config without :data:`PER_ENV_KEYS`."""
    flat = flatten(to_container(cfg))
    return json.dumps({k: v for k, v in flat.items() if k not in PER_ENV_KEYS}, sort_keys=True, default=str)


def batchable(cfg: Config) -> bool:
    """False where the planner has no per-environment strengths (Diffusion Forcing MPC)."""
    return PLANNERS.get(str(cfg.planner.mode)).batchable if str(cfg.planner.mode) in PLANNERS else False


def batch_passes(cells: list[PlannedCell]) -> list[list[PlannedCell]]:
    """Cells grouped into passes (grid order kept): equal :func:`structure_key`, one guide family
    per pass (none/cfg cells join the first family of their group); unbatchable cells alone."""
    groups: dict[str, list[PlannedCell]] = {}
    passes: list[list[PlannedCell]] = []
    for planned in cells:
        if not batchable(planned.cfg):
            passes.append([planned])
            continue
        groups.setdefault(structure_key(planned.cfg), []).append(planned)
    for members in groups.values():
        families: dict[str, list[PlannedCell]] = {}
        unguided: list[PlannedCell] = []
        for planned in members:
            family = _family(planned.cell.kind)
            if family is None:
                unguided.append(planned)
            elif family.startswith("alone:"):
                passes.append([planned])
            else:
                families.setdefault(family, []).append(planned)
        split = list(families.values())
        if split:
            split[0] = unguided + split[0]
        else:
            split = [unguided]
        order = {id(p): i for i, p in enumerate(cells)}
        passes.extend(sorted(part, key=lambda p: order[id(p)]) for part in split if part)
    passes.sort(key=lambda part: part[0].cell.index)
    return passes


def pass_kind(cells: list[PlannedCell]) -> str:
    """The guidance kind a pass's policy is built with (see the module docstring)."""
    kinds = {p.cell.kind for p in cells} - {"none", "classifier_free"}
    if not kinds:
        return "none"
    if len(kinds) == 1 and kinds != {"value_policy"}:
        return kinds.pop()
    if "goal" in kinds:
        raise ValueError(f"goal guidance cannot share a batch with {sorted(kinds - {'goal'})}")
    return "value_policy"


def pass_strengths(cells: list[PlannedCell], n_episodes: int) -> EnvStrengths | None:
    """Per-environment strengths of a pass: ``n_episodes`` rows per cell, in cell order; None when
    nothing varies per environment (a pass of unguided cells without ``classifier_free`` cells)."""
    kind = pass_kind(cells)
    spec = guidance_kind(kind)
    if spec is not None and spec.batch_family is None:
        return None  # a kind that is never batched: one cell, its strength in its config
    scale: list[float] = []
    weights: list[list[float]] = []
    for planned in cells:
        cell, guidance = planned.cell, planned.cfg.guidance
        if kind == "value_policy":
            row = {
                "value": (cell.strength, [1.0, 0.0]),
                "policy": (cell.strength, [0.0, 1.0]),
                "value_policy": (1.0, [cell.strength, float(guidance.policy_scale)]),
            }.get(cell.kind, (0.0, [0.0, 0.0]))
            scale.append(row[0])
            weights.append(row[1])
        else:
            scale.append(cell.strength if cell.kind == kind else 0.0)
    return_weight = None
    if any(p.cell.kind == "classifier_free" for p in cells):
        return_weight = [float(p.cfg.planner.return_guidance.weight) for p in cells]
    if kind == "none" and return_weight is None:
        return None

    def rows(values: list[float] | list[list[float]]) -> Tensor:
        """One row per environment: each cell's value repeated over its episodes."""
        return torch.tensor(values, dtype=torch.float32).repeat_interleave(n_episodes, dim=0)

    return EnvStrengths(
        scale=None if kind == "none" else rows(scale),
        weights=rows(weights) if kind == "value_policy" else None,
        return_weight=None if return_weight is None else rows(return_weight),
    )


def pass_config(cells: list[PlannedCell]) -> Config:
    """The config a pass's policy is built from: its first cell's, with the pass's guidance kind."""
    return with_overrides(cells[0].cfg, {"guidance.kind": pass_kind(cells)})


def split_output(output: EvaluationOutput, position: int, n_episodes: int) -> EvaluationOutput:
    """The episodes, traces and plan counts of the cell at ``position`` in its pass, renumbered
    0..n_episodes-1 per seed as a sequential evaluation numbers them. Plan times and wall time are the
    pass's (every planner call served all the cells of the batch)."""
    lo, hi = position * n_episodes, (position + 1) * n_episodes
    episodes = [dataclasses.replace(e, episode=e.episode - lo) for e in output.episodes if lo <= e.episode < hi]
    traces = [dataclasses.replace(t, episode=t.episode - lo) for t in output.traces if lo <= t.episode < hi]
    counts = {(seed, episode - lo): c for (seed, episode), c in output.plan_counts.items() if lo <= episode < hi}
    return EvaluationOutput(episodes, list(output.plan_times_s), output.wall_time_s, traces, counts)


def run_pass(cells: list[PlannedCell]) -> list[Path]:
    """Evaluate one pass as one batch per seed and write each cell's results.json; returns their paths."""
    from diffplan.pipeline.evaluate import prepare_evaluation, run_episodes, write_evaluation

    base = pass_config(cells)
    n_episodes = base.eval.n_episodes
    n_envs = len(cells) * n_episodes
    labels = [p.label for p in cells]
    log.info("batched pass: %d cells (%s) x %d episodes = %d environments per seed, guidance.kind=%s",
             len(cells), ", ".join(labels), n_episodes, n_envs, pass_kind(cells))
    setup = prepare_evaluation(base, pass_strengths(cells, n_episodes))
    traced = base.eval.save_episodes or (base.eval.plots and not is_locomotion(base.task))
    output = run_episodes(
        base, setup, n_episodes=n_envs, n_envs=n_envs,
        reset_seed_of=lambda seed, j: seed * RESET_SEED_STRIDE + j % n_episodes,
        n_traces=n_envs * len(base.eval.seeds) if traced else 0,
    )
    paths = []
    for position, planned in enumerate(cells):
        extra = {"cell": planned.key, "batched": {"n_envs": n_envs, "cells_in_batch": labels}}
        paths.append(write_evaluation(planned.cfg, setup, split_output(output, position, n_episodes), extra=extra))
    return paths
