"""Summarize collected datasets from their metadata: size, episodes, mean return and score (what a
file's metadata lacks, e.g. a maze file's return statistics, is null), the file's sha256 and the
dataset's identity (the hash of its arrays and recipe that checkpoints record: equal for two collections
that wrote the same data at different times, whose files' sha256 differ).

    python scripts/dataset_stats.py data/hopper-medium.hdf5 ... --out results/datasets/locomotion.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffplan.data.hdf5 import load_hdf5, read_metadata
from diffplan.data.identity import dataset_identity
from diffplan.utils import file_sha256


def summary(path: Path) -> dict[str, object]:
    meta = read_metadata(path)
    stats = meta.get("dataset_stats") or {}
    policy = meta.get("policy") or {}
    agent = meta.get("agent") or {}
    return {
        "file": path.name,
        "sha256": file_sha256(path),
        "identity": dataset_identity(load_hdf5(path)),
        "task": meta.get("task"),
        "n_steps": stats.get("n_steps"),
        "n_episodes": stats.get("n_episodes"),
        "n_terminals": stats.get("n_terminals"),
        "n_timeouts": stats.get("n_timeouts"),
        "mean_return": stats.get("mean_return"),
        "mean_normalized_score": stats.get("mean_normalized_score"),
        "ref_scores": meta.get("ref_scores"),
        "policy": policy,
        "agent_algo": (agent.get("recipe") or {}).get("algo"),
        "agent_evals": agent.get("evals"),
        "created": meta.get("created") or meta.get("created_at"),
        "package_versions": meta.get("package_versions"),
    }


def _cell(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = [summary(path) for path in args.files]
    print("| dataset | steps | episodes | mean return | D4RL normalized | agent steps at snapshot |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        policy = row["policy"] if isinstance(row["policy"], dict) else {}
        print(f"| {row['task']} | {_cell(row['n_steps'], ',')} | {_cell(row['n_episodes'], ',')} | "
              f"{_cell(row['mean_return'], '.1f')} | **{_cell(row['mean_normalized_score'], '.1f')}** | "
              f"{_cell(policy.get('steps'), ',')} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
