"""The SimSiam training step in PyTorch, timed alone: a peer figure for `simsiam bench --mode step`
on the same machine (BENCHMARKS.md). Not part of the tool or its tests.

    python scripts/reference/step_torch.py BATCH      # e.g. 32 on the 2-core CPU

Model: torchvision's resnet18 with the CIFAR stem (3x3 conv, no max-pool), the 2-layer projector
(2048, BN, last BN without affine: the CIFAR recipe's, App. D) and the 2048-512-2048 predictor, as the `cifar10` preset
builds them; symmetric negative cosine with stop-gradient; SGD lr 0.06, momentum 0.9, wd 5e-4;
fp32. Two random batches of 32x32 views; 2 warm-up steps, then 5 timed.
"""

import sys
import time

import torch
import torch.nn as nn
import torchvision


def main():
    torch.manual_seed(0)
    bs = int(sys.argv[1])
    backbone = torchvision.models.resnet18()
    backbone.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    backbone.maxpool = nn.Identity()
    backbone.fc = nn.Identity()

    def block(i, o, relu=True, affine=True):
        layers = [nn.Linear(i, o, bias=False), nn.BatchNorm1d(o, affine=affine)]
        return layers + [nn.ReLU(inplace=True)] if relu else layers

    projector = nn.Sequential(*block(512, 2048), *block(2048, 2048, relu=False, affine=False))
    predictor = nn.Sequential(*block(2048, 512), nn.Linear(512, 2048))
    encoder = nn.Sequential(backbone, projector)
    params = list(encoder.parameters()) + list(predictor.parameters())
    opt = torch.optim.SGD(params, lr=0.06, momentum=0.9, weight_decay=5e-4)
    cos = nn.CosineSimilarity(dim=1)
    x1, x2 = torch.randn(bs, 3, 32, 32), torch.randn(bs, 3, 32, 32)

    def step():
        z1, z2 = encoder(x1), encoder(x2)
        p1, p2 = predictor(z1), predictor(z2)
        loss = -(cos(p1, z2.detach()).mean() + cos(p2, z1.detach()).mean()) * 0.5
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(2):
        step()
    times = []
    for _ in range(5):
        t = time.time()
        step()
        times.append(time.time() - t)
    times.sort()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {bs}: "
        f"ms/step min {times[0] * 1e3:.0f}, median {times[2] * 1e3:.0f}"
    )


if __name__ == "__main__":
    main()
