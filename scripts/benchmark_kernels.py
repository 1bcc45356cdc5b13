"""What the CPU kernels under the reference Hopper shape can give: convolutions and Mish, alone.

The reference Diffuser's Hopper U-Net (dim 32, mults 1-2-4-8, kernel 5, horizon 32) spends its time
in Conv1d layers and in Mish; this times each alternative on the layer shapes of that network, at
the planning batch (64 candidates) and the training batch (32), so a proposed kernel change can be
judged before it is built:

- convolutions: float32 ``conv1d`` (what runs now), bfloat16 ``conv1d``, bfloat16 channels-last
  ``conv2d`` over (B, C, 1, L) and the convolution as one GEMM over unfolded windows (float32 and
  bfloat16), forward and forward + backward (input and weight gradients);
- Mish: ATen's ``mish`` against ``silu`` (a lower bound for any one-pass activation) and Mish written
  as ``x * n / (n + 2)`` with ``n = e^x (e^x + 2)`` from separate ATen calls, forward and forward + backward.

Every figure is the median of --repeats timed loops of --calls calls (after warm-up) in microseconds
per call, with the min and max; variants of one shape alternate within each repeat, so their ratios
are fair even on a drifting machine. Writes JSON (--out) with the hardware and torch version.

    python scripts/benchmark_kernels.py --out results/benchmarks/kernels-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffplan.utils import git_revision, hardware_info

#: (output channels, length, input channels) of the reference Hopper U-Net's convolutions
#: (dim 32, mults 1-2-4-8 over a horizon of 32, 14 transition channels in).
CONV_SHAPES = ((32, 32, 14), (32, 32, 32), (64, 16, 64), (128, 8, 128), (256, 4, 256), (128, 8, 512))
#: (channels, length) of the activations Mish runs on in that network.
MISH_SHAPES = ((32, 32), (64, 16), (128, 8), (256, 4))
KERNEL = 5


def conv_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Conv1d (stride 1, 'same' padding) as one GEMM over the unfolded windows."""
    batch, channels, length = x.shape
    out, _, k = weight.shape
    columns = F.pad(x, (k // 2, k // 2)).unfold(2, k, 1).permute(0, 2, 1, 3).reshape(batch * length, channels * k)
    return torch.addmm(bias, columns, weight.reshape(out, channels * k).t()).view(batch, length, out).permute(0, 2, 1)


def mish_rational(x: torch.Tensor) -> torch.Tensor:
    """Mish as x * n / (n + 2), n = e^x (e^x + 2), from separate ATen calls."""
    e = x.clamp(max=20.0).exp()
    n = e * (e + 2.0)
    return x * n / (n + 2.0)


def _loop(fn: Callable[[], Any], calls: int) -> float:
    began = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - began) / calls * 1e6


def time_variants(variants: dict[str, Callable[[], Any]], repeats: int, calls: int) -> dict[str, dict[str, float]]:
    """Median, min and max microseconds per call of each variant, the variants alternating per repeat."""
    for fn in variants.values():
        _loop(fn, max(2, calls // 5))
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            runs[name].append(_loop(fn, calls))
    return {name: {"median_us": statistics.median(v), "min_us": min(v), "max_us": max(v)} for name, v in runs.items()}


def conv_variants(batch: int, out: int, length: int, channels: int, backward: bool) -> dict[str, Callable[[], Any]]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, length, generator=generator).requires_grad_(backward)
    w = torch.randn(out, channels, KERNEL, generator=generator).requires_grad_(backward)
    b = torch.randn(out, generator=generator).requires_grad_(backward)
    x4 = x.detach().unsqueeze(2).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w4 = w.detach().unsqueeze(2).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    x4.requires_grad_(backward)
    w4.requires_grad_(backward)
    b16 = b.detach().to(torch.bfloat16).requires_grad_(backward)

    def run(forward: Callable[[], torch.Tensor], inputs: tuple[torch.Tensor, ...]) -> Callable[[], Any]:
        if not backward:
            def call() -> Any:
                with torch.no_grad():
                    return forward()
            return call
        grad = torch.randn_like(forward())

        def call_backward() -> Any:
            return torch.autograd.grad(forward(), inputs, grad)
        return call_backward

    def bf16(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn()
        return call

    return {
        "conv1d_float32": run(lambda: F.conv1d(x, w, b, padding=KERNEL // 2), (x, w, b)),
        "conv1d_bfloat16_autocast": run(bf16(lambda: F.conv1d(x, w, b, padding=KERNEL // 2)), (x, w, b)),
        "conv2d_bfloat16_channels_last": run(lambda: F.conv2d(x4, w4, b16, padding=(0, KERNEL // 2)), (x4, w4, b16)),
        "gemm_float32": run(lambda: conv_gemm(x, w, b), (x, w, b)),
        "gemm_bfloat16_autocast": run(bf16(lambda: conv_gemm(x, w, b)), (x, w, b)),
    }


def mish_variants(batch: int, channels: int, length: int, backward: bool) -> dict[str, Callable[[], Any]]:
    x = (3 * torch.randn(batch, channels, length, generator=torch.Generator().manual_seed(0))).requires_grad_(backward)
    grad = torch.randn_like(x)

    def run(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], Any]:
        if backward:
            return lambda: torch.autograd.grad(fn(x), x, grad)

        def call() -> Any:
            with torch.no_grad():
                return fn(x)
        return call

    return {"mish_aten": run(F.mish), "silu_aten": run(F.silu), "mish_rational": run(mish_rational)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    error = (mish_rational(torch.linspace(-30, 30, 10001)) - F.mish(torch.linspace(-30, 30, 10001))).abs().max()
    rows: list[dict[str, Any]] = []
    for batch, what in ((64, "planning batch"), (32, "training batch")):
        for backward in (False, True):
            for out, length, channels in CONV_SHAPES:
                times = time_variants(conv_variants(batch, out, length, channels, backward), args.repeats, args.calls)
                rows.append({"op": "conv", "batch": batch, "what": what, "backward": backward, "out_channels": out,
                             "length": length, "in_channels": channels, "kernel": KERNEL,
                             "gflop": 2 * batch * out * channels * KERNEL * length * (3 if backward else 1) / 1e9,
                             "times": times})
                print(f"conv B{batch} {out}x{channels} L{length} {'fwd+bwd' if backward else 'fwd'}: "
                      + ", ".join(f"{k} {v['median_us']:.0f}" for k, v in times.items()))
            for channels, length in MISH_SHAPES:
                times = time_variants(mish_variants(batch, channels, length, backward), args.repeats, args.calls)
                rows.append({"op": "activation", "batch": batch, "what": what, "backward": backward,
                             "channels": channels, "length": length, "times": times})
                print(f"mish B{batch} C{channels} L{length} {'fwd+bwd' if backward else 'fwd'}: "
                      + ", ".join(f"{k} {v['median_us']:.0f}" for k, v in times.items()))
    result = {
        "command": "python scripts/benchmark_kernels.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "hardware": hardware_info(),
        "threads": torch.get_num_threads(),
        "load_average_start": list(os.getloadavg()),
        "mish_rational_max_abs_error": float(error),
        "unit": "microseconds per call: median (min, max) over repeats; variants alternate within a repeat",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
