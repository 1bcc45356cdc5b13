"""Guidance sweeps (``diffplan-sweep``): guidance kind x strength x seed, one results.json per cell.

- :mod:`diffplan.sweep.grid`: the cells of ``sweep.cells``, their configs, labels and the
  resume check (a finished cell is skipped when its stored config equals the current one and
  refused, naming the differing keys, when it does not).
- :mod:`diffplan.sweep.batched`: ``sweep.batched=true``, the cells that differ only in guidance
  kind and strength evaluated as one batch of environments per seed with per-environment
  strengths.
- :mod:`diffplan.sweep.runner`: :func:`run_sweep`, the command.

Batched versus sequential, precisely. Identical in both modes: each cell's config (as written
to results.json), its reset seeds (so start states and goals), its seeds, episode count and
results format. Bit-identical: a sample's guided update with a per-sample scale equals the
update with that scale as a float; a zero per-sample scale leaves the sample exactly unguided;
a pass whose strengths are all 0 equals one unguided evaluation of the same environments (same
reset seeds, same batch); a pass of a single cell equals the sequential evaluation of that cell
with ``eval.n_envs = eval.n_episodes``. Not identical: with several cells, the planner's
initial noise comes from one generator for the whole batch, so a cell's noise (and every
replanning draw after it) differs from a sequential run's, and sequential runs split
``eval.n_episodes`` into batches of ``eval.n_envs``; results then agree in distribution only.
Mixed value/policy passes go through a CompositeGuide, equal to the single guide up to
floating-point rounding of the extra multiplication by 1. Plan times of batched cells are those
of the shared planner calls (one call plans for every cell).
"""

from diffplan.sweep.grid import PlannedCell, SweepCell, SweepError, expand_cells, plan_cells, sweep_kinds

__all__ = ["PlannedCell", "SweepCell", "SweepError", "expand_cells", "plan_cells", "sweep_kinds"]
