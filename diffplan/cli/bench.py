"""``diffplan-bench``: training and planning speed at fixed shapes, as JSON and a table.

    diffplan-bench                                   # every preset, CPU or CUDA (auto)
    diffplan-bench --presets reference-hopper --repeats 5
    diffplan-bench --device cuda --precision bfloat16 --compile
    diffplan-bench --quick                           # smoke test: tiny presets, 1 repeat

Random weights (latency does not depend on them). Per preset: ms per training step at batch
32 (the real Trainer.train_step) and samples/s, one denoiser forward at the planning batch,
and plans for the preset's N environments (value-guided and unguided on locomotion shapes);
each the median of --repeats timed runs after --warmup untimed ones, with min and max.
The reference-hopper and reference-umaze presets are compared with the reference Diffuser
code's figures, and the headline targets (guided plan <= 1.1 s, training step <= 40 ms on 2
CPU cores) are reported as met or missed. Writes --out (default
results/benchmarks/bench-<device>-<precision>[-compile].json).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from diffplan.enums import Precision


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffplan-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's own)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per metric (default 5; --quick: 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs before them (default 2; --quick: 1)")
    parser.add_argument("--train-steps-per-run", type=int, default=None,
                        help="training steps per timed run (default 10; --quick: 2)")
    parser.add_argument("--presets", nargs="+", default=None, metavar="SUBSTRING",
                        help="presets whose names contain any of these (comma-separated also works; default all)")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")
    parser.add_argument("--precision", choices=[p.value for p in Precision], default="float32",
                        help="train.precision and planner.precision (default float32)")
    parser.add_argument("--compile", action="store_true", help="train.compile and planner.compile (torch.compile)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default results/benchmarks/bench-<device>-<precision>[-compile].json)")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny presets only, 1 repeat, 1 warm-up")
    return parser


def default_out(device: torch.device, precision: str, compile: bool) -> Path:
    return Path("results/benchmarks") / f"bench-{device.type}-{precision}{'-compile' if compile else ''}.json"


def _fail(message: str) -> int:
    print(f"diffplan-bench: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``diffplan-bench``; returns the exit status (2 for bad arguments, 1 when a preset failed)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from diffplan.bench import PresetError, Settings, format_table, run_benchmark, select_presets
    from diffplan.evaluation.results import write_json
    from diffplan.utils import ensure_writable_folder, select_device

    for name in ("repeats", "warmup", "train_steps_per_run"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            return _fail(f"--{name.replace('_', '-')} must be >= {0 if name == 'warmup' else 1}, got {value}")
    if args.threads < 0:
        return _fail(f"--threads must be >= 0 (0: torch's default), got {args.threads}")
    try:
        presets = select_presets(args.presets, quick=args.quick)
    except PresetError as error:
        return _fail(str(error))
    if args.list:
        for preset in presets:
            print(f"{preset.name:18s} {preset.description}")
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return _fail(f"--device {args.device}: CUDA is not available on this machine; use --device cpu or auto")
    try:
        device = select_device(args.device)
    except ValueError as error:
        return _fail(f"--device {args.device}: {error}")
    if args.threads:
        torch.set_num_threads(args.threads)

    def pick(given: int | None, quick: int, full: int) -> int:
        return given if given is not None else quick if args.quick else full

    settings = Settings(
        device=device,
        repeats=pick(args.repeats, 1, 5),
        warmup=pick(args.warmup, 1, 2),
        train_steps_per_run=pick(args.train_steps_per_run, 2, 10),
        denoise_calls_per_run=pick(None, 2, 10),
        precision=args.precision,
        compile=args.compile,
        threads=args.threads,
    )
    out = args.out if args.out is not None else default_out(device, args.precision, args.compile)
    try:  # before minutes of timing, not after
        ensure_writable_folder(out.parent, "--out's folder")
    except OSError as error:
        return _fail(str(error))
    command = " ".join(["diffplan-bench", *(sys.argv[1:] if argv is None else argv)])
    result = run_benchmark(presets, settings, command=command, quick=args.quick)
    write_json(out, result)
    print()
    print(format_table(result))
    print(f"wrote {out}")
    failed = [name for name, record in result["presets"].items() if "error" in record]
    if failed:
        print(f"diffplan-bench: {len(failed)} preset(s) failed: {', '.join(failed)} (see {out})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
