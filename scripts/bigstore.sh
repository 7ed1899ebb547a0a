#!/usr/bin/env bash
# A store larger than memory (BENCHMARKS.md, "Stores larger than memory"): 40,000 CIFAR-10
# training images upscaled to 288x256 JPEGs (a 7.3 GiB store at the `imagenet` preset's 256 px),
# decoded into the disk cache and trained on for one epoch inside a memory cgroup (cgroup v1,
# run as root), from a cold page cache each time.
#   scripts/bigstore.sh make                 # the images (needs Python with Pillow: PYTHON=...)
#   scripts/bigstore.sh decode LIMIT_MIB     # decode into the cache inside the limit
#   scripts/bigstore.sh train LIMIT_MIB NAME # one epoch inside the limit (0: no limit)
set -eu
W=${W:-/tmp/bigstore}
B=${B:-$PWD/target/release/simsiam}
PYTHON=${PYTHON:-python3}
CG=/sys/fs/cgroup/memory/simsiam-bigstore
mkdir -p "$W"
# in_cgroup LIMIT_MIB CMD...: CMD in the cgroup (no limit for 0); prints the cgroup's peak and OOM kills.
in_cgroup() {
    local lim=$1
    shift
    mkdir -p $CG
    if [ "$lim" = 0 ]; then echo -1 >$CG/memory.limit_in_bytes; else echo $((lim << 20)) >$CG/memory.limit_in_bytes; fi
    echo 0 >$CG/memory.max_usage_in_bytes
    local kills
    kills=$(awk '/oom_kill /{print $2}' $CG/memory.oom_control)
    sync && echo 1 >/proc/sys/vm/drop_caches
    (echo $BASHPID >$CG/cgroup.procs && exec "$@") || echo "rc=$?"
    echo "limit ${lim} MiB, peak $(($(cat $CG/memory.max_usage_in_bytes) >> 20)) MiB," \
        "OOM kills $(($(awk '/oom_kill /{print $2}' $CG/memory.oom_control) - kills))"
}
case "${1:-}" in
make)
    "$PYTHON" - "$W/train" <<'P'
import io, os, sys, tarfile
from PIL import Image
out, counts = sys.argv[1], {}
with tarfile.open("../shared/data/cifar10-jpeg/train.tar.gz") as t:
    for m in t:
        if not m.isfile():
            continue
        cls, name = m.name.split("/")[-2:]
        if counts.get(cls, 0) >= 4000:
            continue
        counts[cls] = counts.get(cls, 0) + 1
        img = Image.open(io.BytesIO(t.extractfile(m).read())).convert("RGB").resize((288, 256), Image.BILINEAR)
        os.makedirs(f"{out}/{cls}", exist_ok=True)
        img.save(f"{out}/{cls}/{name}", quality=90)
print(sum(counts.values()), "images in", out)
P
    ;;
decode)
    rm -rf "$W/cache"
    in_cgroup "$2" /usr/bin/time -f "wall %e s" $B data --data "$W/train" --preset imagenet \
        --set "data.cache_dir=\"$W/cache\""
    ;;
train)
    rm -rf "$W/$3"
    in_cgroup "$2" $B train --preset imagenet --device cpu --epochs 1 --batch-size 64 \
        --set 'model.arch="resnet18"' --set model.width=8 --set augment.view_size=64 \
        --data "$W/train" --set "data.cache_dir=\"$W/cache\"" --set monitor.knn_every=0 \
        --set monitor.knn_at_init=false --out "$W/$3" 2>&1 | grep -E "^(trained|final|limit)|rc="
    ;;
*)
    sed -n 2,9p "$0"
    exit 2
    ;;
esac
