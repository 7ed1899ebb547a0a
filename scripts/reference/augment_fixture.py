"""Writes `tests/fixtures/augment/`: what torchvision makes of a photo with each augmentation op,
once its random parameters are drawn; `tests/augment.rs` sets our batched ops beside them.

Crops. What torchvision makes of crops of `tests/fixtures/resize/photo.png` (160x120), as
`RandomResizedCrop` + `RandomHorizontalFlip` make a view once the box and the flip are drawn. `boxes.txt` lists one case per line, `x0 y0 w h size flip`; for case i,
`tensor-i.f32` is `F.resized_crop` of the float image in [0, 1] (bilinear, antialias=True,
torchvision's default for tensors; `hflip` after it where flip is 1) as little-endian float32
`[3, size, size]`, and `pil-i.rgb` is the same on the PIL image (what lightly's and the official
code's transforms see: `crop` then `resize`, PIL's antialiased bilinear in 8 bits) as raw
`size x size x 3` bytes.

Colour ops and blur. `input.f32` holds two 32x32 images `[2, 3, 32, 32]`: a cut of the photo
and uniform noise in steps of 1/255 (every hue sector, and ties between channels). `ops.txt`
lists one op per line, `name a b`, a and b the two images' parameters; `op-NAME.f32` is
torchvision's functional op (`adjust_brightness`, `adjust_contrast`, `adjust_saturation`,
`adjust_hue`, `rgb_to_grayscale`, `gaussian_blur` with kernel size `blurK` and sigma a or b)
of each image, float32 `[2, C, 32, 32]`.

    /tmp/refvenv/bin/python scripts/reference/augment_fixture.py tests/fixtures/augment
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms.functional as F
from PIL import Image

# x0 y0 w h size flip: enlarged (a small crop to a CIFAR view), shrunk (most of the photo to 32
# or 48 px: the antialiasing's case), one axis each way, the whole photo, boxes on each border,
# a box of one pixel's width, and flips.
CASES = [
    (30, 20, 20, 15, 32, 0),
    (30, 20, 20, 15, 32, 1),
    (5, 4, 150, 110, 32, 0),
    (0, 0, 160, 120, 48, 1),
    (10, 50, 120, 18, 48, 0),
    (0, 0, 37, 29, 32, 0),
    (123, 91, 37, 29, 32, 1),
    (77, 0, 1, 120, 16, 0),
    (50, 30, 64, 64, 64, 0),
    (3, 7, 157, 61, 96, 1),
]

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
photo = Image.open(Path(__file__).parents[2] / "tests/fixtures/resize/photo.png").convert("RGB")
x = F.pil_to_tensor(photo).float() / 255.0  # [3, 120, 160]
lines = [f"# torch {torch.__version__}, torchvision {torchvision.__version__}, PIL {Image.__version__}"]
for i, (x0, y0, w, h, size, flip) in enumerate(CASES):
    t = F.resized_crop(x, y0, x0, h, w, [size, size], antialias=True)
    p = F.resized_crop(photo, y0, x0, h, w, [size, size])
    if flip:
        t, p = F.hflip(t), F.hflip(p)
    (out / f"tensor-{i}.f32").write_bytes(t.contiguous().numpy().astype("<f4").tobytes())
    (out / f"pil-{i}.rgb").write_bytes(np.asarray(p, dtype=np.uint8).tobytes())
    lines.append(f"{x0} {y0} {w} {h} {size} {flip}")
(out / "boxes.txt").write_text("\n".join(lines) + "\n")

torch.manual_seed(0)
images = torch.stack([x[:, 40:72, 60:92], torch.randint(0, 256, (3, 32, 32)).float() / 255.0])
(out / "input.f32").write_bytes(images.numpy().astype("<f4").tobytes())
OPS = [
    ("brightness", 1.3, 0.65, F.adjust_brightness),
    ("contrast", 0.6, 1.4, F.adjust_contrast),
    ("saturation", 1.4, 0.0, F.adjust_saturation),
    ("hue", 0.1, -0.37, F.adjust_hue),
    ("hue-half", 0.5, -0.5, F.adjust_hue),
    ("grayscale", 0, 0, lambda img, _: F.rgb_to_grayscale(img)),
    ("blur5", 1.3, 0.4, lambda img, s: F.gaussian_blur(img, [5, 5], [s, s])),
    ("blur9", 2.0, 0.1, lambda img, s: F.gaussian_blur(img, [9, 9], [s, s])),
]
ops = []
for name, a, b, op in OPS:
    y = torch.stack([op(images[0], a), op(images[1], b)])
    (out / f"op-{name}.f32").write_bytes(y.numpy().astype("<f4").tobytes())
    ops.append(f"{name} {a} {b}")
(out / "ops.txt").write_text("\n".join(ops) + "\n")
print(f"{len(CASES)} crops and {len(OPS)} ops in {out}")
