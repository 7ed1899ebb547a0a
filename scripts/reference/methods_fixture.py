"""Writes `tests/fixtures/methods/`: lightly's losses of the methods this tool trains beside
SimSiam (SimCLR, MoCo v2, SwAV, BYOL), on fixed vectors, with their gradients; `tests/methods.rs`
sets each method's objective (as `--method NAME` configures it) beside them.

Inputs, float64, seed 0, B = 8 images, d = 16: the online projections z1, z2 and predictions
p1, p2 of the two views; the target branch's projections t1, t2 (BYOL's EMA network, MoCo's
momentum encoder); MoCo's queues of past keys, `moco_queue` `[2, 24, d]` (row v: view v's keys,
unit rows); SwAV's prototypes `[10, d]` (unit rows) and queue `swav_queue` `[2, 16, d]` (unit
rows).

Outputs, each method's loss and its gradient with respect to every input that takes one:
- `simclr`: `NTXentLoss(temperature=0.5)(z1, z2)`;
- `moco`: `0.5 (NTXentLoss(0.2, memory_bank_size=(24, d))(z1, t2) + (z2, t1))`, the bank of
  the first call holding view 2's past keys and of the second view 1's (each call's bank set
  before it; lightly's own update between the calls is not the method's);
- `swav`: `SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)` of the
  scores `normalize(z_v) C^T`, with gradients into z and the prototypes C; `swavq` the same
  with `queue_outputs = [swav_queue[v] C^T]`;
- `byol`: `0.5 (NegativeCosineSimilarity()(p1, t2) + (p2, t1))`;
- `sinkhorn`: lightly's `sinkhorn` of view 1's scores `[B, 10]`.

`manifest.txt` lists one array per line, `name dim...`; `NAME.f64` is that array in
little-endian float64, row-major.

    /tmp/refvenv/bin/python scripts/reference/methods_fixture.py tests/fixtures/methods
"""
import sys
from pathlib import Path

import lightly
import torch
import torch.nn.functional as F
from lightly.loss import NegativeCosineSimilarity, NTXentLoss, SwaVLoss
from lightly.loss.swav_loss import sinkhorn

torch.manual_seed(0)
B, D, Q, K, QS = 8, 16, 24, 10, 16
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
arrays = {}


def leaf(*shape):
    return torch.randn(*shape, dtype=torch.float64).requires_grad_(True)


def unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


z1, z2, p1, p2, t1, t2 = (leaf(B, D) for _ in range(6))
moco_queue = unit(2, Q, D)
prototypes = unit(K, D).requires_grad_(True)
swav_queue = unit(2, QS, D)
inputs = dict(z1=z1, z2=z2, p1=p1, p2=p2, t1=t1, t2=t2, moco_queue=moco_queue, prototypes=prototypes,
              swav_queue=swav_queue)
arrays.update(inputs)


def record(name, loss, wrt):
    """The loss and its gradient with respect to each named leaf of `wrt`."""
    grads = torch.autograd.grad(loss, [inputs[w] for w in wrt])
    arrays[f"{name}-loss"] = loss.reshape(1)
    for w, g in zip(wrt, grads):
        arrays[f"{name}-grad-{w}"] = g


record("simclr", NTXentLoss(temperature=0.5)(z1, z2), ["z1", "z2"])


def moco_call(q, k, bank):
    crit = NTXentLoss(temperature=0.2, memory_bank_size=(Q, D))
    crit.memory_bank.bank = bank.clone()
    return crit(q, k)


record("moco", 0.5 * (moco_call(z1, t2, moco_queue[1]) + moco_call(z2, t1, moco_queue[0])), ["z1", "z2"])

scores = [F.normalize(z, dim=1) @ prototypes.T for z in (z1, z2)]
swav = SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)
record("swav", swav(scores, []), ["z1", "z2", "prototypes"])
scores = [F.normalize(z, dim=1) @ prototypes.T for z in (z1, z2)]
queued = [swav_queue[v] @ prototypes.T for v in range(2)]
record("swavq", swav(scores, [], queue_outputs=queued), ["z1", "z2", "prototypes"])
arrays["sinkhorn"] = sinkhorn((F.normalize(z1, dim=1) @ prototypes.T).detach(), iterations=3, epsilon=0.05)

cos = NegativeCosineSimilarity()
record("byol", 0.5 * (cos(p1, t2) + cos(p2, t1)), ["p1", "p2"])

lines = [f"# torch {torch.__version__}, lightly {lightly.__version__}"]
for name, a in arrays.items():
    a = a.detach().contiguous()
    (out / f"{name}.f64").write_bytes(a.numpy().astype("<f8").tobytes())
    lines.append(" ".join([name, *map(str, a.shape)]))
(out / "manifest.txt").write_text("\n".join(lines) + "\n")
