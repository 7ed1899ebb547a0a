#!/usr/bin/env python3
"""How far weight decay alone explains the backbone's norm over a run (BENCHMARKS.md, session 15).

A convolution followed by BatchNorm is scale-invariant: its gradient is orthogonal to the weight
and shrinks as 1/|w|, so, while the gradient steps are small against |w|, the norm follows SGD's
weight decay alone. With momentum mu the steady update of the decay term is lr * wd / (1 - mu), so

    |w_t| / |w_0| = exp(-wd / (1 - mu) * sum_{s < t} lr_s)

and the relative update per unit of lr, 1 / |w|^2, grows as that ratio to the power -2. This
prints, for each run (a run folder with `metrics.jsonl` and `config.toml`, `monitor.weights` on),
the measured ratio of the backbone's norm (first `weights` line to the last) beside that
prediction, and what the prediction gives at the end of the run's whole schedule (cosine decay
over `run.epochs`, as `optim.rs` does): at the end of a 60-epoch CIFAR-10 schedule the norm is
still 42% of its start, after 800 epochs exp(-11.6) of it, i.e. the gradient's growth has
long balanced the decay and the initial scale is forgotten.

    python3 scripts/norm-decay.py runs/init-width-long/w8-default runs/init-w32/peer ...
"""
import json
import math
import pathlib
import sys
import tomllib


def main(runs):
    print("| run | steps | sum of lr | |w| first -> last | measured ratio | weight decay alone | "
          "whole schedule: sum of lr, ratio |")
    print("|---|---|---|---|---|---|---|")
    for run in map(pathlib.Path, runs):
        cfg = tomllib.loads((run / "config.toml").read_text())
        wd, mu = cfg["optim"]["weight_decay"], cfg["optim"]["momentum"]
        lines = [json.loads(line) for line in (run / "metrics.jsonl").open()]
        weights = [x for x in lines if x.get("event") == "weights"]
        if len(weights) < 2:
            sys.exit(f"{run}: fewer than two `weights` lines in metrics.jsonl (monitor.weights off?)")
        # The lr of every step, from the step lines (one per step; `monitor.log_every` only sets
        # how often they are fetched from the device).
        steps = [(x["step"], x["lr"]) for x in lines if "loss" in x and x.get("event") is None]
        first, last = weights[0], weights[-1]
        lr_sum, prev = 0.0, first["step"]
        for step, lr in steps:
            if prev < step <= last["step"]:
                lr_sum += lr * (step - prev)
                prev = step
        predicted = math.exp(-wd / (1 - mu) * lr_sum)
        n0, n1 = first["norm"]["backbone"], last["norm"]["backbone"]
        # The whole schedule: cosine from the initial lr over every step of run.epochs.
        # Steps are counted from 0 and epochs too: the first step of epoch 1 is the epoch's length.
        lr0 = steps[0][1]
        later = [x["step"] for x in lines if "loss" in x and x.get("event") is None and x["epoch"] >= 1]
        whole = ""
        if later:
            total = later[0] * cfg["run"]["epochs"]
            s = sum(lr0 * 0.5 * (1 + math.cos(math.pi * t / total)) for t in range(total))
            whole = f"{s:.1f}, {math.exp(-wd / (1 - mu) * s):.3f}"
        print(f"| {run} | {first['step']}-{last['step']} | {lr_sum:.2f} | {n0:.2f} -> {n1:.2f} | "
              f"{n1 / n0:.4f} | {predicted:.4f} | {whole} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
