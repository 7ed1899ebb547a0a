"""Writes the fixtures of `tests/import.rs`: SimSiam weights as the PyTorch tools save them, and
what PyTorch computes with them, so that `model.init_from` is checked against PyTorch itself.

    /tmp/refvenv/bin/python scripts/reference/pytorch_checkpoints.py tests/fixtures/pytorch

Five files, each a ResNet-18 at a sixteenth of the width (4 channels
in the stem; the tests set `model.width = 4`), small heads (d = 32), every weight and BN
statistic drawn at random so that a misplaced tensor shows:

- `official.pth.tar`: facebookresearch/simsiam's `main_simsiam.py` checkpoint (`builder.SimSiam`
  under DataParallel: `module.encoder.*` with the projector as `encoder.fc`, `module.predictor.*`;
  the optimizer's state beside it), 7x7 stem with max-pool, 3-layer projector;
- `solo.ckpt`: a Lightning checkpoint as solo-learn writes it (`state_dict` with `backbone.*`,
  `projector.*`, `predictor.*`, plus Lightning's bookkeeping and an `argparse.Namespace` of
  hyper-parameters), CIFAR stem, 2-layer projector;
- `lightly.pt`: `torch.save(model.state_dict(), pickle_protocol=4)` of lightly's SimSiam example (backbone
  `nn.Sequential(*list(resnet.children())[:-1])`, `projection_head.layers.*`,
  `prediction_head.layers.*`), CIFAR stem, 3-layer projector;
- `lightly_resnet.pt`: the same with lightly's own CIFAR ResNet, `ResNetGenerator("resnet-18")`,
  as lightly's CIFAR-10 benchmark builds it (shortcuts named `shortcut`, no ReLU after the stem),
  2-layer projector;
- `torchvision.pth`: a plain torchvision state dict, backbone only (with its `fc` classifier).

`views.pt` holds views of one storage, tensors of other dtypes in lists and tuples, a
Parameter, and a list that holds itself.
`expected.safetensors` holds the input `x` [4,3,32,32] and, per file, the eval-mode backbone
features `y`, projections `z` and predictions `p` PyTorch computes (`official.y`, ...).
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file
from torchvision.models.resnet import BasicBlock, ResNet

W, D, HIDDEN, PRED = 4, 32, 24, 8


class SmallResNet18(ResNet):
    """torchvision's ResNet-18 with `w` channels in the stem (64 in torchvision)."""

    def __init__(self, w, cifar_stem):
        self.w = w
        super().__init__(BasicBlock, [2, 2, 2, 2])
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.fc = nn.Linear(8 * w, 10)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:
            self.inplanes = self.w
        return super()._make_layer(block, planes * self.w // 64, blocks, stride, dilate)


def head(blocks):
    """lightly's ProjectionHead: (in, out, bn, relu) blocks; a Linear has a bias only without BN."""
    layers = []
    for i, o, bn, relu in blocks:
        layers.append(nn.Linear(i, o, bias=bn is None))
        if bn is not None:
            layers.append(bn)
        if relu:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def randomise(model, g):
    """Every parameter and BN statistic at random, so that each tensor's place matters."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype != torch.float32:
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("weight") and t.dim() == 1:  # a BN's gamma
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.dim() > 1:  # a conv or Linear weight, at PyTorch's scale
                t.copy_(torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5)
            else:  # a bias or running mean
                t.copy_(0.3 * torch.randn(t.shape, generator=g))


def official(g):
    """`builder.SimSiam(models.resnet18, dim, pred_dim)`: the projector replaces `encoder.fc`."""
    enc = SmallResNet18(W, cifar_stem=False)
    prev = enc.fc.weight.shape[1]
    enc.fc = nn.Sequential(
        nn.Linear(prev, prev, bias=False), nn.BatchNorm1d(prev), nn.ReLU(inplace=True),
        nn.Linear(prev, prev, bias=False), nn.BatchNorm1d(prev), nn.ReLU(inplace=True),
        nn.Linear(prev, D), nn.BatchNorm1d(D, affine=False))
    pred = nn.Sequential(nn.Linear(D, PRED, bias=False), nn.BatchNorm1d(PRED), nn.ReLU(inplace=True),
                         nn.Linear(PRED, D))
    m = nn.Module()
    m.encoder, m.predictor = enc, pred
    randomise(m, g)

    def run(x):
        enc_fc, enc.fc = enc.fc, nn.Identity()
        y = enc(x)
        enc.fc = enc_fc
        z = enc.fc(y)
        return y, z, pred(z)

    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    for p in m.parameters():
        opt.state[p]["momentum_buffer"] = torch.randn(p.shape, generator=g)
    state = {"module." + k: v for k, v in m.state_dict().items()}
    ckpt = {"epoch": 100, "arch": "resnet18", "state_dict": state, "optimizer": opt.state_dict()}
    return ckpt, m, run


def solo(g):
    backbone = SmallResNet18(W, cifar_stem=True)
    backbone.fc = nn.Identity()
    feat = 8 * W
    projector = head([(feat, HIDDEN, nn.BatchNorm1d(HIDDEN), True), (HIDDEN, D, nn.BatchNorm1d(D, affine=False), False)])
    predictor = head([(D, PRED, nn.BatchNorm1d(PRED), True), (PRED, D, None, False)])
    m = nn.Module()
    m.backbone, m.projector, m.predictor = backbone, projector, predictor
    randomise(m, g)

    def run(x):
        y = backbone(x)
        z = projector(y)
        return y, z, predictor(z)

    ckpt = {
        "epoch": 399,
        "global_step": 39000,
        "pytorch-lightning_version": "2.0.9",
        "state_dict": m.state_dict(),
        # Lightning keeps the hyper-parameters as the user's objects: a class the reader must skip.
        "hyper_parameters": {"cfg": argparse.Namespace(method="simsiam", lr=0.5, nested={"k": [1, 2.5, True]})},
        "lr_schedulers": [{"last_epoch": 399}],
    }
    return ckpt, m, run


def lightly_style(g, backbone, projection_blocks):
    """A SimSiam as lightly's examples build it: `backbone`, `projection_head.layers`,
    `prediction_head.layers`."""
    projection, prediction = head(projection_blocks), head([(D, PRED, nn.BatchNorm1d(PRED), True), (PRED, D, None, False)])
    m = nn.Module()
    m.backbone, m.projection_head, m.prediction_head = backbone, nn.Module(), nn.Module()
    m.projection_head.layers, m.prediction_head.layers = projection, prediction
    randomise(m, g)

    def run(x):
        y = backbone(x).flatten(1)
        z = projection(y)
        return y, z, prediction(z)

    return m.state_dict(), m, run


def lightly(g):
    """torchvision's ResNet as an nn.Sequential of its children, a 3-layer projector."""
    resnet = SmallResNet18(W, cifar_stem=True)
    feat = 8 * W
    return lightly_style(g, nn.Sequential(*list(resnet.children())[:-1]),
                         [(feat, HIDDEN, nn.BatchNorm1d(HIDDEN), True), (HIDDEN, HIDDEN, nn.BatchNorm1d(HIDDEN), True),
                          (HIDDEN, D, nn.BatchNorm1d(D, affine=False), False)])


def lightly_generator(g):
    """lightly's CIFAR benchmarks: `ResNetGenerator("resnet-18")` as an nn.Sequential of its
    children, which has no ReLU after the stem (lightly's forward applies it, the Sequential not)."""
    from lightly.models import ResNetGenerator

    resnet = ResNetGenerator("resnet-18", width=W / 64)
    feat = 8 * W
    return lightly_style(g, nn.Sequential(*list(resnet.children())[:-1], nn.AdaptiveAvgPool2d(1)),
                         [(feat, HIDDEN, nn.BatchNorm1d(HIDDEN), True), (HIDDEN, D, nn.BatchNorm1d(D, affine=False), False)])


def torchvision_plain(g):
    m = SmallResNet18(W, cifar_stem=True)
    randomise(m, g)

    def run(x):
        fc, m.fc = m.fc, nn.Identity()
        y = m(x)
        m.fc = fc
        return y, None, None

    return m.state_dict(), m, run


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, 32, generator=g)
    expected = {"x": x}
    for name, file, build in [("official", "official.pth.tar", official), ("solo", "solo.ckpt", solo),
                              ("lightly", "lightly.pt", lightly), ("lightly_resnet", "lightly_resnet.pt", lightly_generator),
                              ("torchvision", "torchvision.pth", torchvision_plain)]:
        obj, model, run = build(g)
        # lightly's file in pickle protocol 4 (frames, STACK_GLOBAL, MEMOIZE), the others in
        # torch.save's default 2.
        torch.save(obj, out / file, pickle_protocol=4 if name == "lightly" else 2)
        model.eval()
        with torch.no_grad():
            y, z, p = run(x)
        expected[f"{name}.y"] = y.contiguous()
        if z is not None:
            expected[f"{name}.z"] = z.contiguous()
            expected[f"{name}.p"] = p.contiguous()
        print(file, (out / file).stat().st_size, "bytes")
    save_file(expected, out / "expected.safetensors")
    # Views of one storage (offset, stride), other dtypes, and nesting in lists and tuples.
    t = torch.arange(12, dtype=torch.float32).view(3, 4)
    views = {"base": t, "row": t[1], "col": t[:, 2], "again": t,
             "kinds": [torch.tensor([1.5, -2.25], dtype=torch.bfloat16), torch.tensor([7, -3], dtype=torch.int64),
                       (torch.tensor([0.5], dtype=torch.float16), torch.tensor([True, False]))],
             "step": 3, "name": "views"}
    views["param"] = nn.Parameter(torch.tensor([1.0, 2.0]))  # torch._utils._rebuild_parameter
    cycle = [t[0]]
    cycle.append(cycle)  # a list that holds itself: pickle writes it through the memo
    views["cycle"] = cycle
    torch.save(views, out / "views.pt")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/pytorch")
