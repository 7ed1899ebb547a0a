"""The PyTorch peer's SimSiam pipeline (lightly 1.6 modules and transforms), for comparing
training dynamics with `simsiam train` on the same data copy. Not part of the tool or its tests:
it needs `torch`, `torchvision` and `lightly` (see BENCHMARKS.md for the environment).

    python scripts/reference/simsiam_torch.py --data ../shared/data/cifar10-jpeg/train.tar.gz \
        --steps 40 --out runs/ref.jsonl [--resnet lightly|torchvision] [--zero-init] \
        [--conv-init pytorch|kaiming] [--stem-relu]
    # several epochs of a cosine schedule over 60, kNN on the test split every 2 epochs:
    python scripts/reference/simsiam_torch.py --data .../train.tar.gz --test-data .../test.tar.gz \
        --epochs 6 --cosine-epochs 60 --knn-every 2 --width 8 --out runs/ref-w8.jsonl

Model: ResNet-18 CIFAR variant (lightly's `ResNetGenerator("resnet-18")` as lightly's examples
build the backbone, `nn.Sequential(*children[:-1], AdaptiveAvgPool2d(1))`, which drops the ReLU
after the stem's BN (`--stem-relu` puts it back, as torchvision and `simsiam` have it), PyTorch's
default conv init or torchvision's Kaiming fan-out (`--conv-init kaiming`); or torchvision's
resnet18 with a 3x3 stem and no max-pool, Kaiming fan-out init),
2-layer projector Linear-BN-ReLU-Linear-BN(affine=False), predictor 2048-512-2048, symmetric
negative cosine with stop-gradient. SGD lr 0.06 (0.03 x 512/256), momentum 0.9, wd 5e-4,
predictor lr constant. Views: lightly's `SimSiamTransform(input_size=32, gaussian_blur=0)`.
One JSON line per step: loss, collapse_std (lightly's std_of_l2_normalized of z) and
sqrt(d) x collapse_std (`collapse_std_scaled`, as `simsiam train` logs it).
"""

import argparse
import io
import json
import math
import random
import tarfile
import time

import numpy as np
import torch
import torch.nn as nn
import torchvision
from PIL import Image
from lightly.loss import NegativeCosineSimilarity
from lightly.models import ResNetGenerator
from lightly.models.modules.heads import ProjectionHead, SimSiamPredictionHead
from lightly.transforms import SimSiamTransform
from lightly.utils.debug import std_of_l2_normalized


def load_tar(path, limit):
    """(PIL images, class labels) of a tar of `<split>/<class>/<image>` members, shuffled."""
    items = []
    with tarfile.open(path) as tar:
        for m in tar:
            if m.isfile() and m.name.lower().endswith((".jpg", ".jpeg", ".png")):
                cls = m.name.split("/")[-2]
                items.append((Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB"), cls))
    random.Random(0).shuffle(items)
    items = items[:limit] if limit else items
    classes = sorted({c for _, c in items})
    return [i for i, _ in items], torch.tensor([classes.index(c) for _, c in items])


@torch.no_grad()
def features(model, images, normalize):
    """l2-normalised backbone features of un-augmented images (eval-mode BN)."""
    model.eval()
    out = []
    for s in range(0, len(images), 1000):
        x = torch.stack([normalize(torchvision.transforms.functional.to_tensor(i)) for i in images[s : s + 1000]])
        out.append(nn.functional.normalize(model.backbone(x), dim=1))
    model.train()
    return torch.cat(out)


def knn_top1(bank, bank_labels, query, query_labels, k=200, t=0.1, classes=10):
    """Weighted kNN (InstDisc / lightly's knn_predict): top-k cosine neighbours, weights exp(s/t)."""
    correct = 0
    for s in range(0, len(query), 1000):
        sim, idx = (query[s : s + 1000] @ bank.T).topk(k, dim=1)
        one_hot = nn.functional.one_hot(bank_labels[idx], classes).float()
        pred = (one_hot * (sim / t).exp().unsqueeze(2)).sum(1).argmax(1)
        correct += (pred == query_labels[s : s + 1000]).sum().item()
    return 100.0 * correct / len(query)


def backbone(kind, zero_init, width, conv_init="pytorch", stem_relu=False):
    if kind == "lightly":
        r = ResNetGenerator("resnet-18", width=width / 64)
        if conv_init == "kaiming":  # torchvision's ResNet init: every conv, Kaiming normal fan-out
            for m in r.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init:
            for m in r.modules():
                if hasattr(m, "bn2") and hasattr(m, "conv2"):
                    nn.init.zeros_(m.bn2.weight)
        children = list(r.children())[:-1]  # conv1, bn1, layer1-4 (lightly's forward applies the stem's ReLU itself)
        if stem_relu:
            children.insert(2, nn.ReLU(inplace=True))
        return nn.Sequential(*children, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert width == 64, "torchvision's resnet18 has width 64"
    r = torchvision.models.resnet18(zero_init_residual=zero_init)
    r.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(r.conv1.weight, mode="fan_out", nonlinearity="relu")
    r.maxpool, r.fc = nn.Identity(), nn.Identity()
    return r


def stages(bb):
    """The four stages (`nn.Sequential`s of blocks) of either backbone."""
    if hasattr(bb, "layer1"):
        return [bb.layer1, bb.layer2, bb.layer3, bb.layer4]
    return [c for c in bb.children() if isinstance(c, nn.Sequential)]


@torch.no_grad()
def weights(bb, before):
    """As `simsiam train`'s `weights` line: the backbone's kernel norm |w| (every weight with
    dim >= 2), the step's relative update |w - w_before|/|w|, and per stage the residual
    branches' gain (mean |gamma| of each block's last BN)."""
    ws = [p for p in bb.parameters() if p.dim() >= 2]
    norm = math.sqrt(sum(float(p.square().sum()) for p in ws))
    moved = math.sqrt(sum(float((p - b).square().sum()) for p, b in zip(ws, before)))
    gain = {}
    for i, st in enumerate(stages(bb)):
        gain[f"layer{i + 1}"] = float(torch.cat([blk.bn2.weight for blk in st]).abs().mean())
    gain["backbone"] = float(torch.cat([blk.bn2.weight for st in stages(bb) for blk in st]).abs().mean())
    return {"backbone_norm": norm, "backbone_update": moved / norm, "branch_gain": gain}


class SimSiam(nn.Module):
    def __init__(self, kind, zero_init, width, conv_init="pytorch", stem_relu=False):
        super().__init__()
        self.backbone = backbone(kind, zero_init, width, conv_init, stem_relu)
        self.projector = ProjectionHead(
            [(width * 8, 2048, nn.BatchNorm1d(2048), nn.ReLU()), (2048, 2048, nn.BatchNorm1d(2048, affine=False), None)]
        )
        self.predictor = SimSiamPredictionHead(2048, 512, 2048)

    def forward(self, x):
        z = self.projector(self.backbone(x))
        return z, self.predictor(z)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--resnet", choices=["lightly", "torchvision"], default="lightly")
    ap.add_argument("--zero-init", action="store_true")
    ap.add_argument("--conv-init", choices=["pytorch", "kaiming"], default="pytorch", help="lightly's ResNet: conv init")
    ap.add_argument("--stem-relu", action="store_true", help="lightly's ResNet: keep the ReLU after the stem's BN")
    ap.add_argument("--width", type=int, default=64, help="channels of the first stage (64: ResNet-18)")
    ap.add_argument("--test-data", help="kNN top-1 (k 200, t 0.1) on this split after training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=0, help="train this many epochs (overrides --steps)")
    ap.add_argument("--cosine-epochs", type=int, default=0, help="cosine lr over this many epochs, per epoch (0: constant)")
    ap.add_argument("--knn-every", type=int, default=0, help="kNN on --test-data every this many epochs")
    ap.add_argument("--out", required=True)
    ap.add_argument("--save", help="write the trained model's state_dict here (torch.save) at the end")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    images, labels = load_tar(a.data, a.limit)
    transform = SimSiamTransform(input_size=32, gaussian_blur=0.0)
    model = SimSiam(a.resnet, a.zero_init, a.width, a.conv_init, a.stem_relu)
    lr = 0.03 * a.batch / 256
    opt = torch.optim.SGD(
        [{"params": list(model.backbone.parameters()) + list(model.projector.parameters())},
         {"params": model.predictor.parameters()}],
        lr=lr, momentum=0.9, weight_decay=5e-4,
    )
    crit = NegativeCosineSimilarity()
    per_epoch = len(images) // a.batch  # drop_last, a new permutation each epoch
    steps = a.epochs * per_epoch if a.epochs else a.steps
    test = None
    if a.test_data:
        test, test_labels = load_tar(a.test_data, 0)
        norm = transform.transforms[0].transform.transforms[-1]  # the views' own Normalize

    def knn(f, step):
        acc = knn_top1(features(model, images, norm), labels, features(model, test, norm), test_labels)
        f.write(json.dumps({"event": "knn", "step": step, "epoch": step // per_epoch, "knn_top1": acc}) + "\n")
        f.flush()
        print({"epoch": step // per_epoch, "knn_top1": acc}, flush=True)

    model.train()
    with open(a.out, "w") as f:
        if test is not None and a.knn_every:
            knn(f, 0)
            model.train()
        for step in range(steps):
            t0 = time.time()
            if step % per_epoch == 0:
                order = torch.randperm(len(images)).tolist()
                if a.cosine_epochs:
                    # As `simsiam train` (lr set per epoch; the predictor's stays constant, `fix_pred_lr`):
                    # lr_0 * 0.5 * (1 + cos(pi * epoch / epochs)).
                    c = 0.5 * (1 + math.cos(math.pi * (step // per_epoch) / a.cosine_epochs))
                    opt.param_groups[0]["lr"] = lr * c
            idx = order[(step % per_epoch) * a.batch :][: a.batch]
            pairs = [transform(images[i]) for i in idx]
            x0 = torch.stack([p[0] for p in pairs])
            x1 = torch.stack([p[1] for p in pairs])
            z0, p0 = model(x0)
            z1, p1 = model(x1)
            loss = 0.5 * (crit(p0, z1.detach()) + crit(p1, z0.detach()))
            opt.zero_grad()
            loss.backward()
            before = [p.detach().clone() for p in model.backbone.parameters() if p.dim() >= 2]
            opt.step()
            std = std_of_l2_normalized(z0.detach()).item()
            # `collapse_std_scaled` as `simsiam train` logs it: sqrt(d) x collapse_std (1 = spread).
            row = {"step": step, "loss": loss.item(), "collapse_std": std, "collapse_std_scaled": std * math.sqrt(z0.shape[1]),
                   "seconds": time.time() - t0, **weights(model.backbone, before)}
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(row, flush=True)
            epoch_done = (step + 1) % per_epoch == 0 and (step + 1) // per_epoch
            if test is not None and a.knn_every and epoch_done and epoch_done % a.knn_every == 0:
                knn(f, step + 1)
        if test is not None and not a.knn_every:
            knn(f, steps)
    if a.save:
        torch.save(model.state_dict(), a.save)


if __name__ == "__main__":
    main()
