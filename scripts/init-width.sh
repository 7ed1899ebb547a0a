#!/usr/bin/env bash
# How far the first steps of the `cifar10` recipe move the weights, by initialisation and
# ResNet-18 width (BENCHMARKS.md, "relative update by init and width"). Each run trains
# STEPS steps (batch 512, lr 0.06, wd 5e-4, d 2048; an epoch of 512 x STEPS images of a
# 60-epoch schedule, so the lr is the recipe's first-epoch 0.06) and logs the `weights` line
# (|w| and |Δw|/|w| per stage) after every step. Then one CSV row per run: each stage's
# relative update, the mean over steps 6-10 (the same steps at every width; the momentum
# buffer is still filling then: 1 - 0.9^10 = 65% of its steady size at step 10), and at the
# last step.
#
# Then (LONG_WIDTHS, default "8 16") the default init alone for the recipe's first LONG_EPOCHS
# epochs (6: 582 steps of the full copy), one thread each, side by side, and their `weights`
# lines every 10 steps as a CSV: do the residual branches (zero-initialised) wake up, and
# does the width still slow them? A long run already there is resumed to LONG_EPOCHS (an exact
# resume; nothing is trained if it is there already).
#
#   scripts/init-width.sh                       # widths 8 16 32 (20 steps), 64 (10 steps)
#   WIDTHS="8 16" STEPS=10 LONG_WIDTHS= scripts/init-width.sh
# Environment: ROOT (default runs/init-width), ROOT_LONG (default runs/init-width-long), D (the
# CIFAR-10 folder), WIDTHS, STEPS, STEPS_64 (steps at width 64, where a step takes about a
# minute on a 2-core CPU), LONG_WIDTHS, LONG_EPOCHS. Finished sweep runs are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --quiet
B=target/release/simsiam
D=${D:-../shared/data/cifar10-jpeg}
ROOT=${ROOT:-runs/init-width}
ROOT_LONG=${ROOT_LONG:-runs/init-width-long}
LONG_WIDTHS=${LONG_WIDTHS-8 16}
LONG_EPOCHS=${LONG_EPOCHS:-6}
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
        [ -f "$out/checkpoints/latest" ] && { echo "skip $out (done)"; continue; }
        rm -rf "$out"
        # shellcheck disable=SC2086
        eval $B train --preset cifar10 --device cpu --epochs 60 --until-epoch 1 --data $D/train.tar.gz \
            --set data.train_limit=$((512 * n)) --set model.width=$w --set monitor.log_every=1 \
            --set monitor.knn_at_init=false ${INIT[$init]} --out "$out" 2>&1 | grep -v '^\s*$' | tail -n 2
    done
done
# One row per run: width, init, steps; per stage the mean relative update over steps 6-10; the
# backbone's update at the last step and its norm at the first and last; and, from the last
# checkpoint, the mean |gamma| of each residual branch's last BatchNorm per stage (0 at the
# start with zero_init_residual: the branch is switched off until it grows).
python3 - "$ROOT" <<'PY'
import json, pathlib, struct, sys
root = pathlib.Path(sys.argv[1])
stages = ["stem", "layer1", "layer2", "layer3", "layer4", "backbone", "projector", "predictor"]
layers = ["layer1", "layer2", "layer3", "layer4"]

def f32_tensors(path):
    """The F32 tensors of a safetensors file (8-byte header size, JSON header, data)."""
    b = path.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8 : 8 + n])
    out = {}
    for k, v in head.items():
        if k != "__metadata__" and v["dtype"] == "F32":
            s, e = v["data_offsets"]
            out[k] = struct.unpack(f"<{(e - s) // 4}f", b[8 + n + s : 8 + n + e])
    return out

print("width,init,steps," + ",".join(f"update_{s}" for s in stages)
      + ",update_backbone_last,norm_backbone_first,norm_backbone_last," + ",".join(f"gamma_res_{l}" for l in layers))
runs = sorted(root.glob("w*-*"), key=lambda p: (int(p.name[1:].split("-")[0]), p.name))
for run in runs:
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    ws = [l for l in lines if l.get("event") == "weights"]
    ckpt = sorted((run / "checkpoints").glob("step-*/model.safetensors"))
    if len(ws) < 10 or not ckpt:
        continue
    mean = lambda s: sum(l["update"][s] for l in ws[5:10]) / 5
    t = f32_tensors(ckpt[-1])
    def gamma(layer):
        gs = [abs(x) for k, v in t.items() if k.startswith(f"backbone.{layer}.") and k.endswith("bn2.weight") for x in v]
        return sum(gs) / len(gs)
    w, init = run.name[1:].split("-", 1)
    print(f"{w},{init},{len(ws)}," + ",".join(f"{mean(s):.3e}" for s in stages)
          + f",{ws[-1]['update']['backbone']:.3e},{ws[0]['norm']['backbone']:.2f},{ws[-1]['norm']['backbone']:.2f},"
          + ",".join(f"{gamma(l):.2e}" for l in layers))
PY
[ -z "$LONG_WIDTHS" ] && exit 0
mkdir -p "$ROOT_LONG"
for w in $LONG_WIDTHS; do
    out=$ROOT_LONG/w$w-default
    if [ -f "$out/checkpoints/latest" ]; then
        $B train --resume "$out" --until-epoch "$LONG_EPOCHS" >>"$out.log" 2>&1 &
    else
        $B train --preset cifar10 --device cpu --epochs 60 --until-epoch "$LONG_EPOCHS" --data $D/train.tar.gz \
            --set model.width=$w --set monitor.knn_at_init=false --set run.threads=1 --out "$out" >"$out.log" 2>&1 &
    fi
done
wait
# One row per `weights` line: width, step (1-based), each stage's residual branch gain, the
# backbone's and layer1's relative update, and layer1's as a multiple of what weight decay
# alone gives it (lr wd (1 - 0.9^t) / (1 - 0.9): 1 = no gradient from the loss).
python3 - "$ROOT_LONG" <<'PY'
import json, pathlib, sys
print("width,step,gain_layer1,gain_layer2,gain_layer3,gain_layer4,update_backbone,update_layer1,layer1_over_decay")
for run in sorted(pathlib.Path(sys.argv[1]).glob("w*-default"), key=lambda p: int(p.name[1:].split("-")[0])):
    for l in (run / "metrics.jsonl").read_text().splitlines():
        v = json.loads(l)
        if v.get("event") != "weights" or "branch_gain" not in v:
            continue
        t = v["step"] + 1
        floor = v["lr"] * 5e-4 * (1 - 0.9**t) / 0.1
        g = v["branch_gain"]
        print(f"{run.name[1:].split('-')[0]},{t}," + ",".join(f"{g[k]:.3e}" for k in ["layer1", "layer2", "layer3", "layer4"])
              + f",{v['update']['backbone']:.3e},{v['update']['layer1']:.3e},{v['update']['layer1'] / floor:.2f}")
PY
