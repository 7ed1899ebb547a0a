#!/bin/bash
# Whole 30-epoch schedule at width 8 on 10,240 CIFAR-10 training images: ours (peer's init),
# PyTorch + lightly (the peer's pipeline), ours (default init); seeds 0-2, one run at a time.
source /work/main/scripts/env.sh >/dev/null 2>&1
cd /tmp/full30
B=/tmp/full30/simsiam; D=/work/shared/data/cifar10-jpeg
COMMON="--preset cifar10 --device cpu --epochs 30 --data $D/train.tar.gz --test-data $D/test.tar.gz --set data.train_limit=10240 --set model.width=8 --set monitor.knn_every=5"
PEER="--set model.zero_init_residual=false --set model.conv_init=\"pytorch\" --set model.stem_relu=false"
for s in 0 1 2; do
  [ -f peer_s$s/summary.json ] || eval $B train $COMMON $PEER --seed $s --out peer_s$s > peer_s$s.log 2>&1
  [ -f ref_s$s.done ] || { OMP_NUM_THREADS=2 /tmp/refvenv/bin/python /work/main/scripts/reference/simsiam_torch.py --data $D/train.tar.gz --test-data $D/test.tar.gz --limit 10240 --epochs 30 --cosine-epochs 30 --knn-every 5 --width 8 --seed $s --out ref_s$s.jsonl > ref_s$s.log 2>&1 && touch ref_s$s.done; }
  [ -f def_s$s/summary.json ] || $B train $COMMON --seed $s --out def_s$s > def_s$s.log 2>&1
done
echo ALLDONE > /tmp/full30/ALLDONE
