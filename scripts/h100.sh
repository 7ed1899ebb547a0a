#!/usr/bin/env bash
# The H100 measurements of BENCHMARKS.md (issues 2, 3, 4, 5, 6, 7) as one script, so that a
# lease of the GPU machine runs all of them in few calls.
#
#   scripts/h100.sh prep             # here (CPU machine): build, then fill .device/ (git-ignored)
#   scripts/h100.sh start [PLAN]     # there: launches PLAN (`all`, `second`, `next`, `gap`, `blog`, `exps`) detached
#                                    #        (setsid); chain `wait` calls with no gap: the
#                                    #        machine goes back 30 s after a call, and with it
#                                    #        the detached work
#   scripts/h100.sh wait SECONDS     # there: waits up to SECONDS (or until `all` ends), then packs
#                                    #        what is done so far into $OUT/res.tgz.*
#   scripts/h100.sh all              # there: phase A (exclusive GPU: tests, bench, the NCCL check,
#                                    #        the 60-epoch fast run), then phase B (3 workers)
#
# Results live in /tmp/res on the GPU machine (kept between calls while the machine is warm).
# Environment: EPOCHS (experiment epochs, default 3), WORKERS (default 3), EXPS (plan `exps`).
set -u
cd "$(dirname "$0")/.."
R=/tmp/res
B=$PWD/.device/simsiam
D=$PWD/.device/data
DATA="--data $D/train.tar.gz --test-data $D/test.tar.gz"
EPOCHS=${EPOCHS:-3}
WORKERS=${WORKERS:-3}

log() { echo "[$(date +%T)] $*" | tee -a $R/timeline.txt; }
# job NAME TIMEOUT CMD...: runs CMD with its output in $R/NAME.log, records start, end and status.
job() {
    local name=$1 t=$2
    shift 2
    log "start $name"
    local t0=$SECONDS
    timeout "$t" "$@" >"$R/$name.log" 2>&1
    log "end $name rc=$? after $((SECONDS - t0)) s"
}

# Packs what $R holds into $OUT/res.tgz.* (pieces of at most 16 MiB come back: join them with
# `cat res.tgz.* | tar xz`), staged outside $OUT so that a kill mid-pack leaves the last pack.
pack() {
    rm -rf /tmp/pack && mkdir -p /tmp/pack
    tar czf - -C $R --exclude='*.safetensors' --exclude='*.npy' . | split -b 15m - /tmp/pack/res.tgz.
    rm -f "$OUT"/res.tgz.*
    mv /tmp/pack/res.tgz.* "$OUT"/
}

libs() {
    LD_LIBRARY_PATH=$(python3 -c "import torch,os;print(os.path.dirname(torch.__file__))")/lib
    export LD_LIBRARY_PATH
}

# There: the binaries that `prep` gzipped, unpacked once (before `start` launches a plan).
if [ "${1:-}" != prep ]; then
    for f in simsiam gpu-tests; do
        if [ -f .device/$f.gz ]; then gunzip -f .device/$f.gz && chmod +x .device/$f; fi
    done
fi

case "${1:-}" in
prep)
    source scripts/env.sh
    cargo build --release
    cargo test --release --no-run 2>&1 | tee /tmp/test-build.log
    mkdir -p .device/data
    cp ../shared/data/cifar10-jpeg/*.tar.gz .device/data/
    # The binaries travel gzipped (`start` unpacks them there): the working tree and the carry
    # together must stay under the device tool's 64 MiB.
    rm -f .device/simsiam* .device/gpu-tests*
    gzip -9 -c target/release/simsiam >.device/simsiam.gz
    gpu=$(grep -o 'target/release/deps/gpu-[0-9a-f]*' /tmp/test-build.log | head -1)
    gzip -9 -c "$gpu" >.device/gpu-tests.gz
    du -sh .device
    tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null | awk '/total$/ {s += $1} END {print s}')
    carry=$(du -sb .device | cut -f1)
    echo "travels: working tree $((tree / 1048576)) MiB + .device $((carry / 1048576)) MiB (limit 64 MiB)"
    if [ $((tree + carry)) -gt $((60 * 1048576)) ]; then
        echo "error: over 60 MiB would travel; the device tool refuses more than 64 MiB" >&2
        exit 1
    fi
    ;;
start)
    plan=${2:-all}
    mkdir -p $R
    setsid nohup bash "$0" "$plan" >$R/$plan.log 2>&1 </dev/null &
    echo "started $plan (pid $!)"
    ;;
wait)
    # A call that outruns its limit is killed with its pipeline, before a pack at the end
    # could run, and the lease's last call may get less than asked (the device time left):
    # so what is done is packed every minute as well as at the end.
    end=$((SECONDS + ${2:-540}))
    next_pack=$((SECONDS + 60))
    while [ $SECONDS -lt $end ] && ! grep -q "^.* all done" $R/timeline.txt 2>/dev/null; do
        sleep 5
        if [ $SECONDS -ge $next_pack ]; then
            pack
            next_pack=$((SECONDS + 60))
        fi
    done
    tail -n 40 $R/timeline.txt
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
    pack
    ls -la "$OUT"
    ;;
all)
    libs
    mkdir -p $R
    nvidia-smi >$R/nvidia-smi.txt 2>&1
    $B --version >>$R/nvidia-smi.txt 2>&1
    # Phase A: the GPU to itself (timings).
    job smoke 60 $B bench --preset cifar10 --device cuda --batch-size 128 --warmup 2 --steps 5
    job gpu-tests 300 .device/gpu-tests --test-threads 1
    M=step,forward,optimizer,augment,end-to-end
    job bench-fp32-512 120 $B bench --preset cifar10 --device cuda --batch-size 512 --warmup 10 --steps 50 --mode $M \
        --set 'run.precision="fp32"' --set run.channels_last=false
    job bench-fast-512 120 $B bench --preset cifar10 --device cuda --batch-size 512 --warmup 10 --steps 50 --mode $M
    job bench-fast-1024 120 $B bench --preset cifar10 --device cuda --batch-size 1024 --warmup 10 --steps 50 --mode $M
    job bench-unfused-512 120 $B bench --preset cifar10 --device cuda --batch-size 512 --warmup 10 --steps 50 \
        --mode step,optimizer --set optim.fused=false
    job bench-bf16-nocl-512 120 $B bench --preset cifar10 --device cuda --batch-size 512 --warmup 10 --steps 50 \
        --mode step --set run.channels_last=false
    job nccl-plain 150 $B train --preset cifar10 --device cuda --epochs 3 --set monitor.knn_every=0 \
        --set monitor.knn_at_init=false --data $D/train.tar.gz --out $R/plain
    job nccl-1rank 150 $B train --nproc 1 --preset cifar10 --device cuda --epochs 3 --set monitor.knn_every=0 \
        --set monitor.knn_at_init=false --data $D/train.tar.gz --out $R/nccl1
    job fast60 600 $B train --preset cifar10 --device cuda --epochs 60 --set monitor.knn_every=10 $DATA --out $R/simsiam
    # Phase B: WORKERS processes share the GPU (no timings taken from here on, except as noted).
    log "phase B: $WORKERS workers, experiments at $EPOCHS epochs"
    {
        echo fp32_60
        echo simclr
        echo byol
        echo analyse_simsiam
        for e in stop-gradient predictor shard-dynamics oracle-predictor dim-sweep augmentation-removal \
            simple-predictors siamese-architectures dummy-gradients moving-average explicit-eoa \
            bn-placement similarity symmetrisation output-dim batch-size k-step-alternation \
            triplet-extra-gradient simsiam-extra-gradient decorrelation covariance; do
            echo "exp_$e"
        done
    } | xargs -P "$WORKERS" -I{} bash "$0" task {}
    log "all done"
    ;;
second)
    # The second lease (2026-11-23): GPU tests, the benchmarks after the one-pass augmentation,
    # the NCCL check over longer runs, then every experiment at $EPOCHS epochs.
    libs
    mkdir -p $R
    job gpu-tests 300 .device/gpu-tests --test-threads 1
    for b in 512 1024; do
        job bench-fast-$b 120 $B bench --preset cifar10 --device cuda --batch-size $b --warmup 10 --steps 50 \
            --mode step,augment,end-to-end
    done
    job nccl-plain 150 $B train --preset cifar10 --device cuda --epochs 6 --set monitor.knn_every=0 \
        --set monitor.knn_at_init=false --data $D/train.tar.gz --out $R/plain
    job nccl-1rank 150 $B train --nproc 1 --preset cifar10 --device cuda --epochs 6 --set monitor.knn_every=0 \
        --set monitor.knn_at_init=false --data $D/train.tar.gz --out $R/nccl1
    log "experiments: $WORKERS workers, $EPOCHS epochs"
    for e in stop-gradient predictor shard-dynamics oracle-predictor siamese-architectures dummy-gradients \
        moving-average simple-predictors explicit-eoa bn-placement similarity symmetrisation output-dim \
        batch-size k-step-alternation triplet-extra-gradient simsiam-extra-gradient decorrelation covariance \
        dim-sweep augmentation-removal; do
        echo "exp_$e"
    done | xargs -P "$WORKERS" -I{} bash "$0" task {}
    log "all done"
    ;;
exps)
    # Issue 5 on a lease of its own: only the experiments named in EXPS (space-separated; all
    # 24 when unset), EPOCHS epochs each, WORKERS at a time. A fresh machine starts empty, so
    # split the 24 over leases by EXPS rather than relying on `experiment` skipping finished arms.
    libs
    mkdir -p $R
    log "experiments: $WORKERS workers, $EPOCHS epochs"
    for e in ${EXPS:-stop-gradient predictor siamese-architectures moving-average simple-predictors \
        dummy-gradients similarity shard-dynamics oracle-predictor bn-placement symmetrisation output-dim \
        batch-size k-step-alternation triplet-extra-gradient simsiam-extra-gradient decorrelation covariance \
        dim-sweep augmentation-removal explicit-eoa infonce-extra-gradient simclr-predictor mirror-simsiam swav-predictor method-comparison}; do
        echo "exp_$e"
    done | xargs -P "$WORKERS" -I{} bash "$0" task {}
    log "all done"
    ;;
next)
    # The next lease: what the first one left pending, most needed first. Phase A alone on the
    # GPU (timed): GPU tests, bench, SimSiam 60 epochs with the current code and its analyses
    # (kept in this plan so that the end of a lease cannot lose them). Phase B shared: the
    # fp32 comparison, the zero-init-residual check of the accuracy gap to the peer, SimCLR
    # and BYOL with their analyses, then the experiments not yet run on the GPU.
    libs
    mkdir -p $R
    job gpu-tests 300 .device/gpu-tests --test-threads 1
    job bench-fast-512 120 $B bench --preset cifar10 --device cuda --batch-size 512 --warmup 10 --steps 50
    job fast60 600 $B train --preset cifar10 --device cuda --epochs 60 --set monitor.knn_every=10 $DATA --out $R/simsiam
    job analyse_simsiam 900 $B analyse all $R/simsiam --n 10000 --k 32 --sizes 1000,5000,10000 --device cuda
    log "phase B: $WORKERS workers, experiments at $EPOCHS epochs"
    {
        echo fp32_60
        echo zir_off
        echo simclr
        echo byol
        for e in explicit-eoa symmetrisation output-dim bn-placement batch-size k-step-alternation \
            triplet-extra-gradient simsiam-extra-gradient decorrelation covariance dim-sweep \
            augmentation-removal stop-gradient predictor siamese-architectures moving-average \
            simple-predictors shard-dynamics oracle-predictor dummy-gradients similarity; do
            echo "exp_$e"
        done
    } | xargs -P "$WORKERS" -I{} bash "$0" task {}
    log "all done"
    ;;
gap)
    # One call of a 15-minute lease (`start gap && wait 570`), issue 3, most needed first so that
    # the call's end cuts only the least needed: the GPU tests; the benchmarks at batch 512 and
    # 1024, eager and with both speed options (the step as a CUDA graph, the next views made on a
    # second stream), profiled (where every millisecond goes: $R/prof-*/MODE-profile.md); the
    # accuracy gap to the peer (58.3% kNN at 60 epochs): SimSiam 60 epochs with torchvision's
    # ResNet (the official code's) and with the peer's lightly ResNet (no zero-init, nn.Conv2d's
    # own conv init, no stem ReLU), both at once (shared GPU: no timings from them), compared;
    # then each speed option alone, the host store and fp16.
    libs
    mkdir -p $R
    job gpu-tests 180 .device/gpu-tests --test-threads 1
    for b in 512 1024; do
        job bench-$b 60 $B bench --preset cifar10 --device cuda --batch-size $b --warmup 10 --steps 40 \
            --mode step,augment,end-to-end,train --profile $R/prof-$b --profile-steps 3
        job bench-both-$b 60 $B bench --preset cifar10 --device cuda --batch-size $b --warmup 10 --steps 40 \
            --mode step,end-to-end,train --set run.cuda_graph=true --set run.prefetch=true --profile $R/prof-both-$b --profile-steps 3
    done
    printf '%s\n' gap_torchvision gap_lightly | xargs -P 2 -I{} bash "$0" task {}
    job gap-compare 30 $B report torchvision=$R/gap-torchvision lightly=$R/gap-lightly --out $R/gap-compare
    for b in 512 1024; do
        job bench-graph-$b 60 $B bench --preset cifar10 --device cuda --batch-size $b --warmup 10 --steps 40 \
            --mode end-to-end --set run.cuda_graph=true
        job bench-prefetch-$b 60 $B bench --preset cifar10 --device cuda --batch-size $b --warmup 10 --steps 40 \
            --mode end-to-end --set run.prefetch=true
        # What a host store (`data.store = "host"`: each batch gathered on the host and copied
        # from pinned memory) costs end to end, beside the device store's figure.
        job bench-host-$b 60 $B bench --preset cifar10 --device cuda --batch-size $b --warmup 10 --steps 40 \
            --mode end-to-end --set 'data.store="host"'
    done
    # fp16 with loss scaling (`auto` on pre-Ampere GPUs), on the H100 beside bf16's figure above.
    job bench-fp16-512 60 $B bench --preset cifar10 --device cuda --batch-size 512 --warmup 10 --steps 40 \
        --mode step,end-to-end --set 'run.precision="fp16"'
    log "all done"
    ;;
blog)
    # Issue 6 on the GPU, one 15-minute lease in two chained calls (`start blog && wait 560`,
    # then `wait 280`): SimSiam, SimCLR, BYOL and SimSiam with a decayed predictor lr, 30 epochs
    # at once (shared GPU: no timings),
    # then every analysis on N = 5000 test images and `simsiam hypotheses` into $R/blog/hypotheses.
    libs
    mkdir -p $R
    job blog 1500 env PRESET=cifar10 EPOCHS=30 DEVICE=cuda N=5000 K=16 SIZES=1000,5000 N_DYN=2000 K_DYN=16 CKPT_EVERY=10 \
        PARALLEL=1 B="$B" DATA="$D" ROOT=$R/blog EXPERIMENTS=$R/exp scripts/blog-hypotheses.sh
    log "all done"
    ;;
task)
    libs
    t=$2
    case $t in
    gap_*)
        arm=${t#gap_}
        case $arm in
        # Each arm names every model field it is about, whatever the preset's defaults are.
        torchvision) sets=(--set model.zero_init_residual=true --set 'model.conv_init="kaiming_fan_out"' --set model.stem_relu=true) ;;
        zir_off) sets=(--set model.zero_init_residual=false --set 'model.conv_init="kaiming_fan_out"' --set model.stem_relu=true) ;;
        # The peer's backbone as lightly's examples build it: nn.Conv2d's own init, no zero-init,
        # and no ReLU after the stem's BN (`nn.Sequential(*children[:-1])` skips it).
        lightly) sets=(--set model.zero_init_residual=false --set 'model.conv_init="pytorch"' --set model.stem_relu=false) ;;
        esac
        job "$t" 480 $B train --preset cifar10 --device cuda --epochs 60 --set monitor.knn_every=10 \
            --set run.checkpoint_every=60 "${sets[@]}" $DATA --out $R/gap-$arm
        ;;
    fp32_60)
        job fp32_60 1800 $B train --preset cifar10 --device cuda --epochs 60 --set monitor.knn_every=10 \
            --set 'run.precision="fp32"' --set run.channels_last=false $DATA --out $R/fp32
        ;;
    simclr | byol)
        job "$t" 1800 $B train --method "$t" --preset cifar10 --device cuda --epochs 60 --set monitor.knn_every=10 \
            $DATA --out $R/$t
        job "analyse_$t" 900 $B analyse all $R/$t --n 10000 --k 32 --sizes 1000,5000,10000 --device cuda
        ;;
    zir_off)
        job zir_off 1800 $B train --preset cifar10 --device cuda --epochs 60 --set monitor.knn_every=10 \
            --set model.zero_init_residual=false $DATA --out $R/zir-off
        ;;
    analyse_simsiam)
        job analyse_simsiam 900 $B analyse all $R/simsiam --n 10000 --k 32 --sizes 1000,5000,10000 --device cuda
        ;;
    exp_*)
        e=${t#exp_}
        job "$t" 3000 $B experiment "$e" --device cuda --epochs "$EPOCHS" $DATA --out $R/exp/$e
        ;;
    esac
    ;;
*)
    sed -n 2,14p "$0"
    exit 2
    ;;
esac
