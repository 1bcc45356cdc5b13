#!/usr/bin/env bash
# An offline agent (TD3+BC, or IQL with ALGO=iql) on real data only, on real + unguided synthetic
# data, and on real + policy-guided
# synthetic data (Policy-Guided Diffusion's loop: the synthetic set is regenerated every
# REGEN updates, guided towards the agent being trained), one training seed per call:
#
#   scripts/pgd_experiment.sh TASK VARIANT SEED [HYDRA_OVERRIDE ...]
#   VARIANT: real | unguided | guided
#
# Needs the diffusion model with reward and terminal channels in runs/TASK-rt (diffplan-train
# +experiment=locomotion task=TASK train.model_rewards=true train.model_terminals=true
# run_dir=runs/TASK-rt). Environment: STEPS (updates, default 20000), RATIO (synthetic share of
# each batch, default 0.5), REGEN (default 10000), COEF (policy_scale of the guided variant,
# default 0.01), OUT (results folder, default results/offline), ALGO (td3bc or iql, default td3bc).
# Writes runs/TASK-pgd/VARIANT-sSEED/ (TD3+BC; runs/TASK-pgd/ALGO-VARIANT-sSEED/ for another
# ALGO: agent, synthetic sets) and OUT/TASK-ALGO-VARIANT-sSEED.json.
set -euo pipefail
TASK=${1:?usage: pgd_experiment.sh TASK real|unguided|guided SEED}
VARIANT=${2:?VARIANT}
SEED=${3:?SEED}
shift 3
STEPS=${STEPS:-20000}; RATIO=${RATIO:-0.5}; REGEN=${REGEN:-10000}; COEF=${COEF:-0.01}; OUT=${OUT:-results/offline}
ALGO=${ALGO:-td3bc}
case $ALGO in
    td3bc) RUN=runs/$TASK-pgd/$VARIANT-s$SEED ;;
    iql) RUN=runs/$TASK-pgd/$ALGO-$VARIANT-s$SEED ;;
    *) echo "ALGO must be td3bc or iql, got $ALGO" >&2; exit 2 ;;
esac
HERE=$(cd "$(dirname "$0")" && pwd)
COMMON=(+experiment=locomotion "task=$TASK" "run_dir=runs/$TASK-rt" "offline=$ALGO" "offline.run_dir=$RUN" "offline.seed=$SEED"
        "offline.steps=$STEPS" "generate.seed=$SEED" generate.n_trajectories=2000 generate.length=16 "$@")
case $VARIANT in
    real) EXTRA=(offline.synthetic_ratio=0) ;;
    unguided) EXTRA=("offline.synthetic_ratio=$RATIO" "offline.regenerate_every=$REGEN" guidance=policy
                     guidance.policy_scale=0) ;;
    guided) EXTRA=("offline.synthetic_ratio=$RATIO" "offline.regenerate_every=$REGEN" guidance=policy
                   "guidance.policy_scale=$COEF") ;;
    *) echo "VARIANT must be real, unguided or guided, got $VARIANT" >&2; exit 2 ;;
esac
python "$HERE/train_offline.py" "${COMMON[@]}" "${EXTRA[@]}" offline.progress=false
python "$HERE/evaluate.py" "${COMMON[@]}" "${EXTRA[@]}" eval.controller=offline eval.n_episodes=20 eval.n_envs=20 \
    'eval.seeds=[0]' "eval.out_dir=$RUN/eval" eval.progress=false
mkdir -p "$OUT"
cp "$RUN/eval/results.json" "$OUT/$TASK-$ALGO-$VARIANT-s$SEED.json"
