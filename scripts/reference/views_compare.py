"""simsiam's augmented views against lightly's on the same images. Not part of the tool or its
tests: it needs the reference environment of `simsiam_torch.py` (plus `safetensors` for
`--checkpoint`).

    simsiam data --data $D/test.tar.gz --views 2000 --out views        # our views, seeded
    python scripts/reference/views_compare.py views [--draws 4] [--tensor] \
        [--checkpoint RUN/checkpoints/step-N/model.safetensors] [--torch-model ref.pt] [--width 8]

Per view, in pixel space [0, 1]: mean, std over pixels (contrast), mean saturation (max - min
over the channels), the grayscale fraction, the mean absolute difference of neighbouring
pixels (detail: a small crop blown up to 32 px has less), and per image the mean squared
difference of its two views. lightly's views are `SimSiamTransform(input_size=32,
gaussian_blur=0)` of the same uint8 images, `--draws` pairs each; with `--tensor`, the same
torchvision transforms on float tensors instead of PIL images (no 8-bit rounding between
steps). With `--checkpoint` (a
simsiam run's weights at `--width`), the SimSiam loss of that network (train-mode BN, batches of
500) on both kinds of views; the same with `--torch-model`, a network the reference script
trained and saved (`--save`). Each network gets the views normalised as in its training.
"""

import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
import simsiam_torch as R  # noqa: E402
from lightly.transforms import SimSiamTransform  # noqa: E402

OUR_MEAN, OUR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]  # simsiam's AugmentConfig default
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # lightly's


def pixels(x, mean, std):
    """[N, 3, H, W] normalised -> [0, 1]."""
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (x * s + m).clamp(0, 1)


def stats(p):
    """Per-view statistics of [N, 3, H, W] pixels in [0, 1]."""
    sat = p.max(1).values - p.min(1).values
    detail = (p[..., 1:] - p[..., :-1]).abs().mean((1, 2, 3)) + (p[..., 1:, :] - p[..., :-1, :]).abs().mean((1, 2, 3))
    return {
        "mean": p.mean((1, 2, 3)),
        "contrast (std)": p.std((1, 2, 3)),
        "saturation": sat.mean((1, 2)),
        "grayscale": (sat.amax((1, 2)) < 1e-3).float(),
        "detail": detail / 2,
    }


def loss_of(model, v1, v2):
    crit = R.NegativeCosineSimilarity()
    model.train()
    out = []
    with torch.no_grad():
        for s in range(0, len(v1), 500):
            z1, p1 = model(v1[s : s + 500])
            z2, p2 = model(v2[s : s + 500])
            out.append(float(0.5 * (crit(p1, z2) + crit(p2, z1))))
    return sum(out) / len(out)


def load_ours_into(model, path):
    """A simsiam `model.safetensors` into the reference model (lightly's ResNet + stem ReLU)."""
    from safetensors.torch import load_file

    ours = load_file(path)
    sd = {"backbone.0.weight": ours["backbone.conv1.weight"]}
    bn = ["weight", "bias", "running_mean", "running_var"]
    sd.update({f"backbone.1.{k}": ours[f"backbone.bn1.{k}"] for k in bn})
    for layer in range(4):
        for b in range(2):
            o, r = f"backbone.layer{layer + 1}.{b}", f"backbone.{3 + layer}.{b}"
            for c in [1, 2]:
                sd[f"{r}.conv{c}.weight"] = ours[f"{o}.conv{c}.weight"]
                sd.update({f"{r}.bn{c}.{k}": ours[f"{o}.bn{c}.{k}"] for k in bn})
            if f"{o}.downsample.0.weight" in ours:
                sd[f"{r}.shortcut.0.weight"] = ours[f"{o}.downsample.0.weight"]
                sd.update({f"{r}.shortcut.1.{k}": ours[f"{o}.downsample.1.{k}"] for k in bn})
    sd["projector.layers.0.weight"] = ours["projector.0.linear.weight"]
    sd.update({f"projector.layers.1.{k}": ours[f"projector.0.bn.{k}"] for k in bn})
    sd["projector.layers.3.weight"] = ours["projector.1.linear.weight"]
    sd.update({f"projector.layers.4.{k}": ours[f"projector.1.bn.{k}"] for k in ["running_mean", "running_var"]})
    sd["predictor.layers.0.weight"] = ours["predictor.0.linear.weight"]
    sd.update({f"predictor.layers.1.{k}": ours[f"predictor.0.bn.{k}"] for k in bn})
    sd["predictor.layers.3.weight"] = ours["predictor.1.linear.weight"]
    sd["predictor.layers.3.bias"] = ours["predictor.1.linear.bias"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert all(k.endswith("num_batches_tracked") for k in missing) and not unexpected, (missing, unexpected)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("views", help="the folder `simsiam data --views N --out DIR` wrote")
    ap.add_argument("--draws", type=int, default=4, help="lightly's view pairs per image")
    ap.add_argument("--checkpoint", help="a simsiam model.safetensors: the loss on both kinds of views")
    ap.add_argument("--torch-model", help="a state_dict of simsiam_torch.py --save: its loss on both kinds of views")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tensor", action="store_true",
                    help="instead of lightly's transform on PIL images, the same torchvision transforms on "
                         "float tensors (no 8-bit rounding between the steps)")
    a = ap.parse_args()
    images = np.load(os.path.join(a.views, "images.npy"))  # [N, H, W, 3] uint8
    ours = torch.from_numpy(np.load(os.path.join(a.views, "views.npy")))  # [N, 2, 3, H, W]
    n = len(images)
    torch.manual_seed(a.seed)
    tf = SimSiamTransform(input_size=images.shape[1], gaussian_blur=0.0)
    pil = [Image.fromarray(im) for im in images]
    if a.tensor:
        import torchvision.transforms as T

        # lightly's SimSiamTransform's steps and parameters (no blur), on tensors in [0, 1].
        steps = T.Compose([
            T.RandomResizedCrop(images.shape[1], scale=(0.2, 1.0)),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomHorizontalFlip(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])
        tf = lambda im: [steps(im), steps(im)]  # noqa: E731
        pil = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images]
    theirs = []
    for _ in range(a.draws):
        pairs = [tf(im) for im in pil]
        theirs.append(torch.stack([torch.stack([p[0], p[1]]) for p in pairs]))  # [N, 2, 3, H, W]

    ours_px = pixels(ours.flatten(0, 1), OUR_MEAN, OUR_STD)
    theirs_px = [pixels(t.flatten(0, 1), IMAGENET_MEAN, IMAGENET_STD) for t in theirs]
    originals = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    so, st, sx = stats(ours_px), [stats(t) for t in theirs_px], stats(originals)
    peer = "torchvision" if a.tensor else "lightly"
    print(f"{n} images; ours: one pair each; {peer}'s: {a.draws} pairs each")
    print(f"{'per view':16s} {'original':>9s} {'ours':>16s} {peer:>16s}")
    for k in so:
        t = torch.cat([s[k] for s in st])
        print(f"{k:16s} {float(sx[k].mean()):9.4f} {float(so[k].mean()):8.4f} ± {float(so[k].std()):.3f} "
              f"{float(t.mean()):8.4f} ± {float(t.std()):.3f}   (se of the difference "
              f"{float((so[k].var() / len(so[k]) + t.var() / len(t)).sqrt()):.4f})")
    d_ours = (ours_px.view(n, 2, -1)[:, 0] - ours_px.view(n, 2, -1)[:, 1]).square().mean(1)
    d_theirs = torch.cat([(t.view(n, 2, -1)[:, 0] - t.view(n, 2, -1)[:, 1]).square().mean(1) for t in theirs_px])
    print(f"{'view 1 - view 2':16s} {'':9s} {float(d_ours.mean()):8.4f} ± {float(d_ours.std()):.3f} "
          f"{float(d_theirs.mean()):8.4f} ± {float(d_theirs.std()):.3f}   (mean squared difference per pixel)")
    # Each network sees the views normalised as it was trained: simsiam's with CIFAR-10's
    # statistics, the reference script's with ImageNet's (lightly's transform).
    nets = []
    if a.checkpoint:
        nets.append((a.checkpoint, load_ours_into(R.SimSiam("lightly", True, a.width, "kaiming", True), a.checkpoint),
                     OUR_MEAN, OUR_STD))
    if a.torch_model:
        m = R.SimSiam("lightly", True, a.width, "kaiming", True)
        m.load_state_dict(torch.load(a.torch_model))
        nets.append((a.torch_model, m, IMAGENET_MEAN, IMAGENET_STD))
    for name, model, mean, std in nets:
        def norm(x, src_mean, src_std):
            return (pixels(x, src_mean, src_std) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        l_ours = loss_of(model, norm(ours[:, 0], OUR_MEAN, OUR_STD), norm(ours[:, 1], OUR_MEAN, OUR_STD))
        l_theirs = [loss_of(model, norm(t[:, 0], IMAGENET_MEAN, IMAGENET_STD), norm(t[:, 1], IMAGENET_MEAN, IMAGENET_STD))
                    for t in theirs]
        print(f"loss of {name} (train-mode BN): our views {l_ours:.4f}; lightly's "
              f"{sum(l_theirs) / len(l_theirs):.4f} (draws: {', '.join(f'{v:.4f}' for v in l_theirs)})")


if __name__ == "__main__":
    main()
