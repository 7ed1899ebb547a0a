#!/usr/bin/env bash
# Launches by torchrun itself, on this machine (CPU, Gloo over loopback), against one process:
#   one:   one process with BatchNorm over the two halves of each batch (model.bn_splits = 2),
#          which is what two ranks without sync BN compute;
#   two:   `torchrun --standalone --nproc-per-node 2` (one agent, two workers);
#   nodes: two torchrun agents as two nodes (`--nnodes 2 --node-rank 0|1`, static rendezvous
#          at 127.0.0.1), one worker each.
# Prints, for each launch, the largest parameter difference relative to the largest weight and
# the largest difference of the logged per-step losses. Needs torchrun and, beside it, a Python
# with torch and safetensors (TORCHRUN, default `torchrun` on PATH; e.g. a venv with
# `pip install torch==2.11.0 safetensors`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --quiet
B="$PWD/target/release/simsiam"
TORCHRUN="${TORCHRUN:-torchrun}"
PY="$(dirname "$(command -v "$TORCHRUN")")/python"
D="${SIMSIAM_DATA:-../shared/data/cifar10-jpeg}/train.tar.gz"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
export OMP_NUM_THREADS=1
common=(train --preset tiny --device cpu --batch-size 64 --epochs 2 --data "$D" --set data.train_limit=256
  --set model.width=4 --set model.dim=32 --set model.proj_hidden=32 --set model.pred_hidden=8
  --set run.threads=1 --set monitor.log_every=2 --set monitor.knn_at_init=false)
"$B" "${common[@]}" --set model.bn_splits=2 --out "$out/one" > "$out/one.log" 2>&1
"$TORCHRUN" --standalone --nproc-per-node 2 --no-python "$B" "${common[@]}" --out "$out/two" > "$out/two.log" 2>&1
port=$((29500 + RANDOM % 1000))
for node in 0 1; do
  "$TORCHRUN" --nnodes 2 --nproc-per-node 1 --node-rank $node --master-addr 127.0.0.1 --master-port $port \
    --no-python "$B" "${common[@]}" --out "$out/nodes" > "$out/node$node.log" 2>&1 &
done
wait
grep -h "distributed:" "$out/two.log" "$out/node0.log"
"$PY" - "$out" <<'PY'
import json, sys
from safetensors.torch import load_file
out = sys.argv[1]
def weights(run):
    name = open(f"{out}/{run}/checkpoints/latest").read().strip()
    return load_file(f"{out}/{run}/checkpoints/{name}/model.safetensors")
def losses(run):
    return [json.loads(l)["loss"] for l in open(f"{out}/{run}/metrics.jsonl") if '"event"' not in l]
one, one_loss = weights("one"), losses("one")
keys = [k for k in one if "running_" not in k]
for run in ["two", "nodes"]:
    w, loss = weights(run), losses(run)
    d = max((one[k] - w[k]).abs().max().item() for k in keys) / max(one[k].abs().max().item() for k in keys)
    dl = max(abs(a - b) for a, b in zip(one_loss, loss))
    print(f"{run}: {len(keys)} parameter tensors, max |diff| / max |w| = {d:.2e}; "
          f"{len(loss)} steps' losses (one process: {len(one_loss)}), max |diff| = {dl:.1e}")
PY
