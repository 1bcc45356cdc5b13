"""Print the README's results table from the evaluator JSON files under results/.

    python scripts/results_table.py results/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(path: Path) -> str:
    r = json.loads(path.read_text())
    cfg, trained = r["config"], r["trained_config"]
    score = r["normalized_score"]
    planner = cfg["planner"]
    tracking = planner["tracking"] if planner["mode"] == "tracker" else "actions"
    model = trained["model"]
    train_steps = r["checkpoint"]["step"]
    return (
        f"| {r['task']} | {trained['task']['horizon']}x{trained['task']['stride']} | dim {model['dim']} "
        f"{tuple(model['dim_mults'])}, {train_steps} steps | {planner['mode']}/{tracking} | "
        f"{len(r['seeds'])} x {r['n_episodes_per_seed']} | **{score['mean']:.1f} ± {score['stderr']:.1f}** | "
        f"{r['success_rate']:.2f} | {r['plan_time_s']['mean']:.2f} | [{path.name}]({path.as_posix()}) |"
    )


def main() -> None:
    print("| task | tokens x stride | model, training | execution | seeds x episodes | normalized score "
          "(mean ± s.e.) | success | s per plan | results file |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in sys.argv[1:]:
        print(row(Path(name)))


if __name__ == "__main__":
    main()
