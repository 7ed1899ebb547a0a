#!/usr/bin/env bash
# Every experiment whose arms differ in objective or architecture, at CPU scale: ResNet-18 at
# width 8, d = 128, 1,024 CIFAR-10 training images, batch 64, 12 epochs, base lr 1.0. This shows
# the collapse behaviour of each arm in minutes; it is not the paper's setting (for that, run
# `simsiam experiment NAME` on a GPU with the defaults). The experiments whose arms differ in
# what these overrides fix keep their own values of it: output-dim and dim-sweep their d (and the
# predictor's d/4 hidden width; the projector's hidden width stays 2048, as in SimSiam App. B),
# batch-size its batch (on 4,096 images, so that batch 1024 still takes 4 steps an epoch);
# method-comparison's MoCo keeps 512 keys, half the 1,024 images (4,096 would repeat each image).
# With no names it runs every experiment but these three; name them to run them.
# Reports go to docs/results/cpu-small/<name>/ (report.md, outcome.json, plots/*.png).
# SEEDS=0,1,2 runs every arm once per seed (`--seeds`) into runs/cpu-small-seeds/<name>/ and
# docs/results/cpu-small-seeds/<name>/; SIMSIAM_THREADS=N sets run.threads.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --quiet
data="${SIMSIAM_DATA:-../shared/data/cifar10-jpeg}"
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(stop-gradient predictor bn-placement similarity symmetrisation siamese-architectures \
  dummy-gradients triplet-extra-gradient simsiam-extra-gradient simple-predictors covariance moving-average explicit-eoa \
  decorrelation k-step-alternation oracle-predictor shard-dynamics augmentation-removal infonce-extra-gradient \
  simclr-predictor mirror-simsiam swav-predictor method-comparison)
set_name=cpu-small${SEEDS:+-seeds}
for name in "${names[@]}"; do
  batch=(--batch-size 64)
  dims=(--set model.dim=128 --set model.proj_hidden=128 --set model.pred_hidden=32)
  images=1024
  case $name in
  output-dim | dim-sweep) dims=() ;;
  batch-size) batch=() images=4096 ;;
  method-comparison) dims+=(--arm-set moco:objective.infonce_queue=512) ;;
  esac
  ./target/release/simsiam experiment "$name" ${SEEDS:+--seeds $SEEDS} --out "runs/$set_name/$name" --device cpu \
    --data "$data/train.tar.gz" --test-data "$data/test.tar.gz" --epochs 12 "${batch[@]}" \
    --set model.width=8 "${dims[@]}" ${SIMSIAM_THREADS:+--set run.threads=$SIMSIAM_THREADS} \
    --set data.train_limit=$images --set data.test_limit=1000 --set optim.base_lr=1.0 \
    --set monitor.knn_every=6 --set monitor.knn_k=20 --set monitor.log_every=16 --set monitor.geometry_samples=512
  dest="docs/results/$set_name/$name"
  mkdir -p "$dest/plots"
  cp "runs/$set_name/$name/report.md" "runs/$set_name/$name/outcome.json" "$dest/"
  cp runs/"$set_name/$name"/plots/*.png "$dest/plots/"
done
