"""torchvision's Gaussian blur (ours: an exact Gaussian, reflect padding) against PIL's
`ImageFilter.GaussianBlur(radius=sigma)`, what the official code, lightly and solo-learn blur
with (three box blurs of the same variance, the edge pixels repeated), on the test photo; and
the same Gaussian with the edge pixels repeated instead of reflected. Not part of the tool or
its tests; grey levels of 255.

    /tmp/refvenv/bin/python scripts/reference/blur_compare.py
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as NF
import torchvision.transforms.functional as F
from PIL import Image, ImageFilter

photo = Image.open(Path(__file__).parents[2] / "tests/fixtures/resize/photo.png").convert("RGB")
x = F.pil_to_tensor(photo).float()


def pil_blur(s):
    return torch.from_numpy(np.array(photo.filter(ImageFilter.GaussianBlur(radius=s)))).permute(2, 0, 1).float()


def replicate_blur(img, k, s):
    half = (k - 1) / 2
    g = torch.exp(-0.5 * (torch.linspace(-half, half, k) / s) ** 2)
    g = g / g.sum()
    y = NF.pad(img[None], [k // 2] * 4, mode="replicate")
    y = NF.conv2d(y, g.view(1, 1, 1, k).repeat(3, 1, 1, 1), groups=3)
    return NF.conv2d(y, g.view(1, 1, k, 1).repeat(3, 1, 1, 1), groups=3)[0]


for name, blur in [("torchvision (reflect)", lambda k, s: F.gaussian_blur(x, [k, k], [s, s])),
                   ("edges repeated", lambda k, s: replicate_blur(x, k, s))]:
    for k in (23, 11):
        for s in (0.1, 0.5, 1.0, 1.5, 2.0):
            ours = blur(k, s)
            d = (ours - pil_blur(s)).abs()
            inner = d[:, 12:-12, 12:-12]
            print(f"{name}, kernel {k}, sigma {s}: |ours - PIL| mean {d.mean():.3f}, max {d.max():.1f}; "
                  f"12 px from the borders mean {inner.mean():.3f}, max {inner.max():.1f}; "
                  f"the blur's own change mean {(ours - x).abs().mean():.2f}")
