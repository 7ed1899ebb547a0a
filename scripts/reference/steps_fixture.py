"""Writes `tests/fixtures/pytorch/steps.safetensors` and `steps-*.pt`: two training steps of each
method, in PyTorch with lightly's losses, from the weights of `solo.ckpt` (a SimSiam at width 4
with every weight and BN statistic random: `pytorch_checkpoints.py`), and of SimSiam as
facebookresearch/simsiam builds it from `official.pth.tar` (`official`: the 7x7 stem with
max-pool, the 3-layer projector whose last Linear's bias `main_simsiam.py` freezes);
`tests/methods.rs` runs our step on the same weights and views and compares the weights after.

Each method, two steps of batch 6 on fixed random views (`x.S.V`: step S, view V, float32
`[6, 3, 32, 32]`), every module in train mode, SGD lr 0.05 (the predictor's 0.08), momentum 0.9,
weight decay 5e-4 on every parameter, in the order of our training loop:
1. BYOL and MoCo: both views' target projections from the EMA network (train-mode BN, no
   gradient);
2. SwAV: the prototypes' rows normalised (SwAV's `main_swav.py`);
3. forward, loss, backward, SGD;
4. MoCo: the keys pushed at the front of each view's queue (`[2, 16, d]`, newest first), the
   oldest dropped;
5. BYOL and MoCo: the EMA update `xi <- tau xi + (1 - tau) theta` of every parameter (the
   buffers are the EMA network's own), tau of step k = BYOL's `1 - 0.01 (cos(pi k / 4) + 1)/2`,
   MoCo's 0.99.

Losses (lightly 1.6): `simsiam` and `byol` `0.5 (NegativeCosineSimilarity(p1, sg t2) + (p2, sg
t1))` (SimSiam's targets its own z), `simclr` `NTXentLoss(0.5)(z1, z2)` without the predictor,
`moco` `0.5 (NTXentLoss(0.2, bank)(z1, k2) + (z2, k1))` with each call's bank the other view's
queue, `swav` `SwaVLoss(0.1, 3, 0.05)` of `normalize(z_v) C^T` over 10 prototypes.

Written: `METHOD.loss` (the two steps' losses), `swav.prototypes.init` / `.after`,
`moco.queue.init` / `.after` in `steps.safetensors`; each method's weights and BN statistics
after the two steps in solo-learn's layout, `steps-METHOD.pt` (`steps-official.pt` in the
official checkpoint's); BYOL's and MoCo's EMA networks, `steps-METHOD-ema.pt`.

    /tmp/refvenv/bin/python scripts/reference/steps_fixture.py tests/fixtures/pytorch
"""
import copy
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightly.loss import NegativeCosineSimilarity, NTXentLoss, SwaVLoss
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from pytorch_checkpoints import D, official, solo  # noqa: E402

B, Q, K, STEPS = 6, 16, 10, 2
PRED_LR = 0.08
out = Path(sys.argv[1])
g = torch.Generator().manual_seed(1)
views = [[torch.randn(B, 3, 32, 32, generator=g) for _ in range(2)] for _ in range(STEPS)]
queue_init = F.normalize(torch.randn(2, Q, D, generator=g), dim=-1)
prototypes_init = torch.randn(K, D, generator=g)
saved = {f"x.{s}.{v}": views[s][v] for s in range(STEPS) for v in range(2)}
saved["moco.queue.init"] = queue_init
saved["swav.prototypes.init"] = prototypes_init


def network(layout):
    """The SimSiam of `solo.ckpt` (solo-learn's layout) or of `official.pth.tar`
    (facebookresearch/simsiam's), its weights and BN statistics loaded, in train mode; its
    encoder (backbone and projector) as one module."""
    g = torch.Generator().manual_seed(0)
    if layout == "solo":
        _, m, _ = solo(g)
        m.load_state_dict(torch.load(out / "solo.ckpt", weights_only=False)["state_dict"])
        encoder = nn.Sequential(m.backbone, m.projector)
    else:
        _, m, _ = official(g)
        state = torch.load(out / "official.pth.tar", weights_only=False)["state_dict"]
        m.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        # main_simsiam.py: the projector's last Linear keeps its bias frozen (a BN follows).
        m.encoder.fc[6].bias.requires_grad_(False)
        encoder = m.encoder
    return m.train(), encoder


def run(method, layout="solo"):
    m, encoder = network(layout)
    params = [p for p in encoder.parameters() if p.requires_grad]
    prototypes = nn.Parameter(prototypes_init.clone()) if method == "swav" else None
    if prototypes is not None:
        params.append(prototypes)
    groups = [{"params": params}]
    if method in ("simsiam", "byol"):
        # The predictor's own group (SimSiam's `fix_pred_lr`), at another lr so that a
        # parameter in the wrong group shows.
        groups.append({"params": list(m.predictor.parameters()), "lr": PRED_LR})
    opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9, weight_decay=5e-4)
    ema = None
    if method in ("byol", "moco"):
        ema = copy.deepcopy(encoder)  # (backbone, projector)
        for p in ema.parameters():
            p.requires_grad_(False)
    queue = queue_init.clone()
    cos = NegativeCosineSimilarity()
    losses = []
    for s in range(STEPS):
        x1, x2 = views[s]
        if ema is not None:
            with torch.no_grad():
                t1, t2 = ema(x1), ema(x2)
        if prototypes is not None:
            with torch.no_grad():
                prototypes.copy_(F.normalize(prototypes, dim=1))
        z1, z2 = encoder(x1), encoder(x2)
        if method == "simsiam":
            p1, p2 = m.predictor(z1), m.predictor(z2)
            loss = 0.5 * (cos(p1, z2.detach()) + cos(p2, z1.detach()))
        elif method == "byol":
            p1, p2 = m.predictor(z1), m.predictor(z2)
            loss = 0.5 * (cos(p1, t2) + cos(p2, t1))
        elif method == "simclr":
            loss = NTXentLoss(temperature=0.5)(z1, z2)
        elif method == "moco":
            def call(q, k, bank):
                crit = NTXentLoss(temperature=0.2, memory_bank_size=(Q, D))
                crit.memory_bank.bank = bank.clone()
                return crit(q, k)
            loss = 0.5 * (call(z1, t2, queue[1]) + call(z2, t1, queue[0]))
        elif method == "swav":
            scores = [F.normalize(z, dim=1) @ prototypes.T for z in (z1, z2)]
            loss = SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)(scores, [])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if method == "moco":
            keys = torch.stack([F.normalize(t1, dim=1), F.normalize(t2, dim=1)])
            queue = torch.cat([keys, queue], 1)[:, :Q]
        if ema is not None:
            tau = 0.99 if method == "moco" else 1 - 0.01 * (math.cos(math.pi * s / 4) + 1) / 2
            with torch.no_grad():
                for e, o in zip(ema.parameters(), encoder.parameters()):
                    e.mul_(tau).add_(o, alpha=1 - tau)
    name = method if layout == "solo" else layout
    saved[f"{name}.loss"] = torch.tensor(losses)
    prefix = "" if layout == "solo" else "module."
    torch.save({"state_dict": {prefix + k: v for k, v in m.state_dict().items()}}, out / f"steps-{name}.pt")
    if ema is not None:
        state = {f"{part}.{k}": v for part, i in [("backbone", 0), ("projector", 1)] for k, v in ema[i].state_dict().items()}
        torch.save({"state_dict": state}, out / f"steps-{name}-ema.pt")
    if method == "moco":
        saved["moco.queue.after"] = queue
    if prototypes is not None:
        saved["swav.prototypes.after"] = prototypes.detach().clone()
    print(name, losses)


for method in ["simsiam", "simclr", "byol", "moco", "swav"]:
    run(method)
run("simsiam", "official")
save_file({k: v.contiguous() for k, v in saved.items()}, out / "steps.safetensors")
