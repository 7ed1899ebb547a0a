"""Our linear probe against the same recipe in PyTorch, on the same weights and features.
Loads a PyTorch `state_dict` of `simsiam_torch.py`'s model (e.g. `--save`'s), computes the
frozen backbone's features (PIL -> to_tensor -> Normalize, eval-mode BN; raw, not l2-normalised)
and trains `simsiam eval linear --no-augment`'s recipe on them: nn.Linear initialised N(0, 0.01)
with bias 0, SGD (momentum 0.9, no weight decay), lr 30 cosine-decayed per epoch, batch 256
reshuffled each epoch (the last batch kept), cross-entropy, 100 epochs; top-1 and top-5 on the
test split. Compare with `simsiam eval linear RUN --no-augment` on a run made from the same file
(`simsiam train --until-epoch 0 --init-from FILE`). Not part of the tool or its tests.

    python scripts/reference/linear_check.py tv-w8.pt --width 8 --stem-relu --data .../train.tar.gz \
        --test-data .../test.tar.gz [--mean 0.485 0.456 0.406 --std 0.229 0.224 0.225]
"""

import argparse
import json
import math

import torch
import torch.nn as nn
import torchvision

from simsiam_torch import SimSiam, load_tar


def backbone_features(model, images, normalize):
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(images), 1000):
            x = torch.stack([normalize(torchvision.transforms.functional.to_tensor(i)) for i in images[s : s + 1000]])
            out.append(model.backbone(x).flatten(1))
    return torch.cat(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("--width", type=int, required=True)
    ap.add_argument("--stem-relu", action="store_true")
    ap.add_argument("--data", required=True)
    ap.add_argument("--test-data", required=True)
    ap.add_argument("--mean", type=float, nargs=3, default=[0.485, 0.456, 0.406])
    ap.add_argument("--std", type=float, nargs=3, default=[0.229, 0.224, 0.225])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--lr", type=float, default=30.0)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    model = SimSiam("lightly", False, a.width, stem_relu=a.stem_relu)
    model.load_state_dict(torch.load(a.weights, map_location="cpu"))
    norm = torchvision.transforms.Normalize(a.mean, a.std)
    train, train_y = load_tar(a.data, 0)
    test, test_y = load_tar(a.test_data, 0)
    train_y, test_y = torch.as_tensor(train_y), torch.as_tensor(test_y)
    fx, tx = backbone_features(model, train, norm), backbone_features(model, test, norm)
    torch.manual_seed(a.seed)
    fc = nn.Linear(fx.shape[1], int(train_y.max()) + 1)
    nn.init.normal_(fc.weight, 0.0, 0.01)
    nn.init.zeros_(fc.bias)
    opt = torch.optim.SGD(fc.parameters(), lr=a.lr, momentum=0.9, weight_decay=0.0)
    g = torch.Generator().manual_seed(a.seed)
    for epoch in range(a.epochs):
        for group in opt.param_groups:
            group["lr"] = a.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / a.epochs))
        order = torch.randperm(len(fx), generator=g)
        for s in range(0, len(fx), a.batch):
            idx = order[s : s + a.batch]
            loss = nn.functional.cross_entropy(fc(fx[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        top5 = fc(tx).topk(5, dim=1).indices
    hit = top5 == test_y[:, None]
    print(json.dumps({"weights": a.weights, "top1": 100.0 * hit[:, 0].float().mean().item(),
                      "top5": 100.0 * hit.any(1).float().mean().item(), "train_loss": loss.item()}))


if __name__ == "__main__":
    main()
