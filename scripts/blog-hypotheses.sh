#!/usr/bin/env bash
# Issue 6 in one command: SimSiam, SimCLR and BYOL trained with one schedule (and SimSiam with
# its predictor's lr decayed like the encoder's, for B1's constant-vs-decayed comparison), every
# analysis (B1-B5) on each, SimSiam's initialisation in train-mode BN (C6), B1 and B3 at every
# kept checkpoint, then `simsiam hypotheses` judges C1-C6 into DEST/report.md.
#
#   scripts/blog-hypotheses.sh                 # CPU scale (defaults below), about an hour on 2 cores
#   PRESET=cifar10 EPOCHS=30 DEVICE=cuda N=5000 K=16 SIZES=1000,5000 B=.device/simsiam \
#     DATA=.device/data EXPERIMENTS=/tmp/res/exp scripts/blog-hypotheses.sh   # the GPU run
#
# A finished step is not repeated: training resumes (or returns at once when done), and the
# analyses are rewritten (they are cheap next to training).
# Environment: PRESET (tiny), EPOCHS (30), DEVICE (cpu), N (2000 analysed test images), K (16
# views each), SIZES (instance counts for B2), N_DYN and K_DYN (the same for B1 and B3 at every
# kept checkpoint: 1000 and 8), CKPT_EVERY (5), ROOT (runs/blog-<PRESET>),
# DEST (ROOT/hypotheses), EXPERIMENTS (a folder of experiment outputs; default
# docs/results/cpu-small), B (the binary), DATA (the folder with train.tar.gz and test.tar.gz),
# PARALLEL (1: train the three methods at once).
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${PRESET:-tiny}
EPOCHS=${EPOCHS:-30}
DEVICE=${DEVICE:-cpu}
N=${N:-2000}
K=${K:-16}
SIZES=${SIZES:-100,500,1000,2000}
N_DYN=${N_DYN:-1000}
K_DYN=${K_DYN:-8}
CKPT_EVERY=${CKPT_EVERY:-5}
ROOT=${ROOT:-runs/blog-$PRESET}
DEST=${DEST:-$ROOT/hypotheses}
EXPERIMENTS=${EXPERIMENTS:-docs/results/cpu-small}
DATA=${DATA:-../shared/data/cifar10-jpeg}
PARALLEL=${PARALLEL:-0}
if [ -z "${B:-}" ]; then
    source scripts/env.sh
    cargo build --release --quiet
    B=./target/release/simsiam
fi
mkdir -p "$ROOT"

RUNS=(simsiam simclr byol simsiam-pred-decay)
# train NAME: the run ROOT/NAME, its method and any extra overrides from its name.
train() {
    local name=$1 run=$ROOT/$1 method=$1 extra=()
    if [ "$name" = simsiam-pred-decay ]; then
        method=simsiam
        extra=(--set optim.fix_pred_lr=false)
    fi
    if [ -f "$run/checkpoints/latest" ]; then
        "$B" train --resume "$run"
    else
        "$B" train --preset "$PRESET" --method "$method" --epochs "$EPOCHS" --device "$DEVICE" \
            --data "$DATA/train.tar.gz" --test-data "$DATA/test.tar.gz" --out "$run" \
            --set run.checkpoint_every="$CKPT_EVERY" --set run.keep_checkpoints=0 --set monitor.knn_every="$CKPT_EVERY" \
            --set monitor.instances=true --set monitor.instances_n=1000 --set monitor.instances_k=8 "${extra[@]}"
    fi >"$ROOT/$name.train.log" 2>&1
    echo "trained $name: $(tail -n 1 "$ROOT/$name.train.log")"
}

if [ "$PARALLEL" = 1 ]; then
    for m in "${RUNS[@]}"; do train "$m" & done
    wait
else
    for m in "${RUNS[@]}"; do train "$m"; done
fi

A=(--n "$N" --k "$K" --sizes "$SIZES" --device "$DEVICE")
for m in "${RUNS[@]}"; do
    "$B" analyse all "$ROOT/$m" "${A[@]}" >/dev/null
    for what in predictor shards; do
        "$B" analyse $what "$ROOT/$m" --n "$N_DYN" --k "$K_DYN" --device "$DEVICE" --checkpoint all >/dev/null
    done
    echo "analysed $m"
done
"$B" analyse all "$ROOT/simsiam" "${A[@]}" --checkpoint init --train-bn >/dev/null
"$B" hypotheses --run simsiam="$ROOT/simsiam" --run simclr="$ROOT/simclr" --run byol="$ROOT/byol" \
    --run simsiam-pred-decay="$ROOT/simsiam-pred-decay" --experiments "$EXPERIMENTS" --out "$DEST"
