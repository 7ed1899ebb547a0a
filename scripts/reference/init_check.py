"""Is `simsiam`'s default initialisation the distribution PyTorch draws? Not part of the tool or
its tests: it needs the reference environment of `simsiam_torch.py` plus `safetensors`.

    # initial weights of simsiam (a step at lr 1e-30 and no weight decay leaves them as drawn):
    for s in 0 1 2; do simsiam train --preset cifar10 --device cpu --epochs 1 --data $D/test.tar.gz \
        --set data.train_limit=512 --set model.width=16 --set optim.base_lr=1e-30 \
        --set optim.weight_decay=0 --set monitor.knn_at_init=false --set monitor.knn_every=0 \
        --seed $s --out init-s$s; done
    python scripts/reference/init_check.py --data $D/train.tar.gz init-s*/checkpoints/step-000000001/model.safetensors

1. Per tensor, pooled over the given runs: std against the intended one (torchvision's Kaiming
   normal fan-out for the convolutions, `nn.Linear`'s U(+-1/sqrt(fan_in)) for the heads) and a
   Kolmogorov-Smirnov distance to that distribution.
2. The stem's relative update at step 0 (lr 0.06, wd 5e-4), in the PyTorch model (lightly's
   ResNet at width 16 with torchvision's init and a stem ReLU) on one batch of lightly's views:
   with each of our stems, and with `--torch-draws` stems of PyTorch's own. Under the stem's
   BatchNorm this is dominated by its weakest-responding filter, so it varies from draw to draw.
"""

import argparse
import math
import os
import sys

import torch
import torch.nn as nn
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
import simsiam_torch as R  # noqa: E402
from lightly.transforms import SimSiamTransform  # noqa: E402

TENSORS = ["backbone.conv1.weight", "backbone.layer2.0.conv1.weight", "backbone.layer4.1.conv2.weight",
           "projector.0.linear.weight", "predictor.1.linear.weight"]


def distributions(files):
    for key in TENSORS:
        ws = [load_file(f)[key] for f in files]
        v = torch.cat([w.flatten() for w in ws]).double()
        if ws[0].dim() == 4:  # Kaiming normal, fan-out, ReLU gain
            sd = math.sqrt(2.0 / (ws[0].shape[0] * ws[0].shape[2] * ws[0].shape[3]))
            x = (v / sd).sort().values
            cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
        else:  # U(-b, b), b = 1/sqrt(fan_in)
            b = 1 / math.sqrt(ws[0].shape[1])
            sd = b / math.sqrt(3)
            x = (v / b).sort().values
            cdf = ((x + 1) / 2).clamp(0, 1)
        n = len(x)
        ks = float((torch.arange(1, n + 1, dtype=torch.double) / n - cdf).abs().max())
        print(f"{key:32s} n {n:8d}  std/intended {float(v.std()) / sd:.4f}  mean/std {float(v.mean()) / sd:+.4f}  "
              f"KS {ks:.5f} (5% critical value {1.36 / math.sqrt(n):.5f})")


def stem_updates(data, files, draws):
    images, _ = R.load_tar(data, 1024)
    tf = SimSiamTransform(input_size=32, gaussian_blur=0.0)
    torch.manual_seed(1)
    pairs = [tf(images[i]) for i in range(512)]
    x0, x1 = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    crit = R.NegativeCosineSimilarity()
    torch.manual_seed(0)
    base = R.SimSiam("lightly", True, 16, "kaiming", True).state_dict()

    def update(stem):
        m = R.SimSiam("lightly", True, 16, "kaiming", True)
        m.load_state_dict({**base, "backbone.0.weight": stem})
        z0, p0 = m(x0)
        z1, p1 = m(x1)
        (0.5 * (crit(p0, z1.detach()) + crit(p1, z0.detach()))).backward()
        w = m.backbone[0].weight.detach()
        return 0.06 * float((m.backbone[0].weight.grad + 5e-4 * w).norm()) / float(w.norm())

    def summary(tag, v):
        mean = sum(v) / len(v)
        sd = math.sqrt(sum((u - mean) ** 2 for u in v) / (len(v) - 1))
        print(f"stem's step-0 relative update, {tag}: n {len(v)}, mean {mean:.2e}, sd {sd:.2e}, "
              f"min {min(v):.2e}, max {max(v):.2e}")

    summary("simsiam's draws", [update(load_file(f)["backbone.conv1.weight"]) for f in files])
    theirs = []
    for s in range(draws):
        torch.manual_seed(100 + s)
        c = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(c.weight, mode="fan_out", nonlinearity="relu")
        theirs.append(update(c.weight.detach().clone()))
    summary("PyTorch's draws", theirs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="training archive (one batch of lightly's views)")
    ap.add_argument("--torch-draws", type=int, default=20)
    ap.add_argument("files", nargs="+", help="model.safetensors of simsiam runs at width 16, as drawn")
    a = ap.parse_args()
    distributions(a.files)
    stem_updates(a.data, a.files, a.torch_draws)


if __name__ == "__main__":
    main()
