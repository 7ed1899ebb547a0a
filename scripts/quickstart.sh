#!/usr/bin/env bash
# The main job on a fresh machine: install libtorch (once), build, and pre-train SimSiam on the
# shared CIFAR-10 copy with the `tiny` preset (a few minutes on a 2-core CPU; on a GPU machine
# it uses CUDA). Prints the kNN top-1 of the network at initialisation and after training.
# Extra arguments go to `simsiam train` (e.g. --epochs 10, --device cpu, --set optim.base_lr=0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --quiet
data="${SIMSIAM_DATA:-../shared/data/cifar10-jpeg}"
out="runs/quickstart-$(date +%Y%m%d-%H%M%S)"
exec ./target/release/simsiam train --preset tiny \
  --data "$data/train.tar.gz" --test-data "$data/test.tar.gz" --out "$out" "$@"
