#!/usr/bin/env bash
# The checks a CUDA machine is for, in one bounded run: the CUDA tests (tests/test_gpu.py), then
# diffplan-bench on the GPU in float32 (every preset), with torch.compile and in bfloat16 (the
# reference Diffuser shapes and the locomotion and demo recipes). Each step has its own time limit,
# so one that hangs or compiles slowly costs only its share; a step that fails does not stop the
# others. Writes OUT_DIR/{gpu.txt,tests.log,bench-*.json,bench-*.log}.
#
#   scripts/gpu_check.sh OUT_DIR [SECONDS_PER_BENCH]       # default 150
#
# Environment: PY (python; default python3). The package must be importable (installed, or the
# repository root and envs/ on PYTHONPATH) with its dependencies.
set -uo pipefail
OUT_DIR=${1:?usage: gpu_check.sh OUT_DIR [SECONDS_PER_BENCH]}
LIMIT=${2:-150}
PY=${PY:-python3}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
status=0

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} | tee "$OUT_DIR/gpu.txt"

timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT_DIR/tests.log" || status=1

bench() {  # NAME ARGS...: one diffplan-bench run on the GPU, bounded by LIMIT seconds
    local name=$1
    shift
    timeout "$LIMIT" "$PY" -m diffplan.cli.bench --device cuda --out "$OUT_DIR/bench-$name.json" "$@" \
        >"$OUT_DIR/bench-$name.log" 2>&1 || { echo "gpu_check: bench $name failed or timed out" >&2; status=1; }
    tail -n 30 "$OUT_DIR/bench-$name.log"
}
bench cuda-float32
bench cuda-compile --compile --presets reference-hopper locomotion demo
bench cuda-bfloat16 --precision bfloat16 --presets reference-hopper locomotion demo
exit $status
