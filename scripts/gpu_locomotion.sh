#!/usr/bin/env bash
# Train and evaluate value-guided planning for one locomotion dataset on a GPU machine, on a
# wall-clock budget: the diffusion model and the value function train side by side (the value
# trainer starts once the first diffusion checkpoint exists), then the guided planner at each
# scale in SCALES and the unguided planner are evaluated side by side. Every step resumes: rerun
# the same command to train further (max_minutes is per invocation).
#
#   scripts/gpu_locomotion.sh TASK OUT_DIR TRAIN_MINUTES [HYDRA_OVERRIDE ...]
#   scripts/gpu_locomotion.sh walker2d-medium results/gpu 5 model.unet.dim=32 'model.unet.dim_mults=[1,2,4,8]'
#
# Environment: PY (python; default python3), SCALES (guidance scales; default "1.0"),
# RUN_DIR (default runs/TASK-gpu).
# Writes: RUN_DIR/{checkpoint.pt,value/checkpoint.pt}, OUT_DIR/{train,value}.log, and
# OUT_DIR/<task>-{value-<scale>,unguided}/results.json with a log beside each.
set -uo pipefail
TASK=${1:?usage: gpu_locomotion.sh TASK OUT_DIR TRAIN_MINUTES [HYDRA_OVERRIDE ...]}
OUT_DIR=${2:?OUT_DIR}
TRAIN_MINUTES=${3:?TRAIN_MINUTES}
shift 3
PY=${PY:-python3}
SCALES=${SCALES:-1.0}
RUN_DIR=${RUN_DIR:-runs/$TASK-gpu}
HERE=$(cd "$(dirname "$0")" && pwd)
COMMON=(+experiment=locomotion "task=$TASK" "run_dir=$RUN_DIR" "$@")
mkdir -p "$OUT_DIR" "$RUN_DIR"

"$PY" "$HERE/train.py" "${COMMON[@]}" "train.max_minutes=$TRAIN_MINUTES" train.steps=1000000 \
    >"$OUT_DIR/train.log" 2>&1 &
train_pid=$!
for _ in $(seq 600); do
    [ -f "$RUN_DIR/checkpoint.pt" ] && break
    kill -0 "$train_pid" 2>/dev/null || break
    sleep 1
done
if [ ! -f "$RUN_DIR/checkpoint.pt" ]; then
    echo "gpu_locomotion: no diffusion checkpoint in $RUN_DIR; see $OUT_DIR/train.log" >&2
    tail -20 "$OUT_DIR/train.log" >&2
    exit 1
fi
"$PY" "$HERE/train_value.py" "${COMMON[@]}" "value.max_minutes=$TRAIN_MINUTES" value.steps=1000000 \
    >"$OUT_DIR/value.log" 2>&1 &
value_pid=$!
wait "$train_pid" || { echo "gpu_locomotion: diffusion training failed" >&2; tail -20 "$OUT_DIR/train.log" >&2; }
wait "$value_pid" || { echo "gpu_locomotion: value training failed" >&2; tail -20 "$OUT_DIR/value.log" >&2; exit 1; }

pids=()
for scale in $SCALES; do
    dir="$OUT_DIR/$TASK-value-$scale"
    mkdir -p "$dir"
    "$PY" "$HERE/evaluate.py" "${COMMON[@]}" guidance=value "guidance.scale=$scale" "eval.out_dir=$dir" \
        eval.plots=false >"$dir/eval.log" 2>&1 &
    pids+=($!)
done
dir="$OUT_DIR/$TASK-unguided"
mkdir -p "$dir"
"$PY" "$HERE/evaluate.py" "${COMMON[@]}" guidance=none "eval.out_dir=$dir" eval.plots=false \
    >"$dir/eval.log" 2>&1 &
pids+=($!)
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
grep -h "normalized\|score" "$OUT_DIR"/*/eval.log | tail -20
exit $status
