"""The shared-level fast path's effect: the reference Hopper-shape U-Net forward and value-net
forward + backward at batch 64, with one level embedding per sample (the fast path) and with
the per-token path forced, alternating in one process.

    python scripts/benchmark_shared_levels.py --out results/benchmarks/shared-levels.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diffplan.bench.timing import time_alternating
from diffplan.models import unet as unet_module
from diffplan.models import value as value_module
from diffplan.models.unet import TemporalUnet, shared_levels
from diffplan.models.value import ValueNet
from diffplan.utils import hardware_info


def _identity(levels: torch.Tensor) -> torch.Tensor:
    """The per-token path: every token's level embedded on its own."""
    return levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    shape = {"transition_dim": 14, "horizon": 32, "dim": 32, "dim_mults": [1, 2, 4, 8]}
    denoiser = TemporalUnet(transition_dim=14, horizon=32, dim=32, dim_mults=(1, 2, 4, 8)).eval()
    value = ValueNet(transition_dim=14, horizon=32, dim=32, dim_mults=(1, 2, 4, 8)).eval()
    x, levels = torch.randn(64, 32, 14), torch.rand(64, 1).expand(64, 32)

    def forward() -> None:
        with torch.no_grad():
            denoiser(x, levels)

    def value_gradient() -> None:
        leaf = x.detach().requires_grad_(True)
        torch.autograd.grad(value(leaf, levels).sum(), leaf)

    def per_token(call):  # type: ignore[no-untyped-def]
        def run() -> None:
            unet_module.shared_levels = value_module.shared_levels = _identity
            try:
                call()
            finally:
                unet_module.shared_levels = value_module.shared_levels = shared_levels
        return run

    cases = {"unet_forward_shared": forward, "unet_forward_per_token": per_token(forward),
             "value_grad_shared": value_gradient, "value_grad_per_token": per_token(value_gradient)}
    found = time_alternating(cases, repeats=args.repeats, warmup=3, device=torch.device("cpu"), scale=1e3)
    rows = {name: {"median_ms": r["median"], "min_ms": r["min"], "max_ms": r["max"]} for name, r in found.items()}
    for name, row in rows.items():
        print(f"{name:26s} {row['median_ms']:6.1f} ms ({row['min_ms']:.1f} .. {row['max_ms']:.1f})")
    result = {
        "command": "python scripts/benchmark_shared_levels.py", "batch": 64,
        "shape": shape,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "hardware": hardware_info(),
        "repeats": args.repeats, "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
