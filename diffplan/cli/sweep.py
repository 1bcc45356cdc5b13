"""``diffplan-sweep``: evaluate a grid of guidance kinds x strengths x seeds, one results.json per cell.

    diffplan-sweep guidance=goal sweep=maze-goal                      # sequential, resumable
    diffplan-sweep guidance=goal sweep=maze-goal sweep.batched=true   # one batch of envs per seed
    diffplan-sweep -m hydra/launcher=joblib guidance=goal sweep=maze-goal 'sweep.cells_index=range(0,5)'

The cells of ``sweep.cells`` are applied as overrides on the guidance config (see
:mod:`diffplan.sweep.grid`); each writes ``<sweep.out_dir>/<label>/results.json`` with a
top-level ``"cell"`` key, which ``diffplan-report`` reads. See :mod:`diffplan.sweep` for what
batched and sequential sweeps share.
"""

from __future__ import annotations

from diffplan.cli.common import CommandHelp, hydra_entry
from diffplan.sweep.runner import run_sweep

main = hydra_entry(run_sweep, help=CommandHelp(
    options=(
        "task.name",
        "run_dir",
        "sweep.name",
        "sweep.out_dir",
        "sweep.batched",
        "sweep.report",
        "eval.seeds",
        "eval.n_episodes",
    ),
    examples=(
        "diffplan-sweep task=pointmaze-umaze guidance=goal sweep=maze-goal",
        "diffplan-sweep -m hydra/launcher=joblib guidance=goal sweep=maze-goal 'sweep.cells_index=range(0,5)'",
    ),
))

if __name__ == "__main__":
    main()
