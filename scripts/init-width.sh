#!/usr/bin/env bash
# How far the first steps of the `cifar10` recipe move the weights, by initialisation and
# ResNet-18 width (BENCHMARKS.md, "relative update by init and width"). Each run trains
# STEPS steps (batch 512, lr 0.06, wd 5e-4, d 2048; an epoch of 512 x STEPS images of a
# 60-epoch schedule, so the lr is the recipe's first-epoch 0.06) and logs the `weights` line
# (|w| and |Δw|/|w| per stage) after every step. Then one CSV row per run: each stage's
# relative update, the mean over steps 2..STEPS (the first step has no momentum yet).
#
#   scripts/init-width.sh                       # widths 8 16 32 (20 steps), 64 (10 steps)
#   WIDTHS="8 16" STEPS=10 scripts/init-width.sh
# Environment: ROOT (default runs/init-width), D (the CIFAR-10 folder), WIDTHS, STEPS,
# STEPS_64 (steps at width 64, where a step takes about a minute on a 2-core CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --quiet
B=target/release/simsiam
D=${D:-../shared/data/cifar10-jpeg}
ROOT=${ROOT:-runs/init-width}
WIDTHS=${WIDTHS:-8 16 32 64}
STEPS=${STEPS:-20}
STEPS_64=${STEPS_64:-10}
mkdir -p "$ROOT"
declare -A INIT=(
    [default]="--set model.zero_init_residual=true --set model.conv_init=\"kaiming_fan_out\""
    [no_zero_init]="--set model.zero_init_residual=false --set model.conv_init=\"kaiming_fan_out\""
    [peer]="--set model.zero_init_residual=false --set model.conv_init=\"pytorch\""
)
for w in $WIDTHS; do
    n=$STEPS
    [ "$w" = 64 ] && n=$STEPS_64
    for init in default no_zero_init peer; do
        out=$ROOT/w$w-$init
        [ -f "$out/checkpoints/latest" ] || [ -d "$out/checkpoints/latest" ] && { echo "skip $out (done)"; continue; }
        rm -rf "$out"
        # shellcheck disable=SC2086
        eval $B train --preset cifar10 --device cpu --epochs 60 --until-epoch 1 --data $D/train.tar.gz \
            --set data.train_limit=$((512 * n)) --set model.width=$w --set monitor.log_every=1 \
            --set monitor.knn_at_init=false ${INIT[$init]} --out "$out" 2>&1 | grep -v '^\s*$' | tail -n 2
    done
done
# One row per run: width, init, steps, then per stage the mean relative update over steps 2..n.
python3 - "$ROOT" <<'PY'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
stages = ["stem", "layer1", "layer2", "layer3", "layer4", "backbone", "projector", "predictor"]
print("width,init,steps," + ",".join(f"update_{s}" for s in stages) + ",norm_backbone_0")
runs = sorted(root.glob("w*-*"), key=lambda p: (int(p.name[1:].split("-")[0]), p.name))
for run in runs:
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    ws = [l for l in lines if l.get("event") == "weights"]
    if not ws:
        continue
    later = ws[1:] or ws
    mean = lambda s: sum(l["update"][s] for l in later) / len(later)
    w, init = run.name[1:].split("-", 1)
    print(f"{w},{init},{len(ws)}," + ",".join(f"{mean(s):.3e}" for s in stages) + f",{ws[0]['norm']['backbone']:.2f}")
PY
