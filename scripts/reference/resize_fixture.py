"""Writes `tests/fixtures/resize/`: a photo (a 160x120 PNG cut from the `image` crate's test
cat.jpg, lossless so that only the resize is compared) and what torchvision makes of it,
Resize(S) + CenterCrop(S) on the PIL image (bilinear, antialiased), for S = 48 (down) and
144 (up), as raw RGB bytes `SxSx3`. `tests/data.rs` sets our store's decoding beside them.
Two cuts of it whose sides do not scale to whole pixels, 157x119 ("wide") and 87x119
("tall"), are compared the same way: torchvision truncates the long side and rounds the
crop's offset half to even, which a resize must follow to land on the same pixels.

    /tmp/refvenv/bin/python scripts/reference/resize_fixture.py CAT_JPG tests/fixtures/resize
    /tmp/refvenv/bin/python scripts/reference/resize_fixture.py --cuts tests/fixtures/resize
"""
import sys
from pathlib import Path

import numpy as np
import torchvision.transforms as T
from PIL import Image


def reference(photo, name, out):
    for s in (48, 144):
        ref = np.asarray(T.CenterCrop(s)(T.Resize(s)(photo)), dtype=np.uint8)
        (out / f"torchvision-{name}{s}.rgb").write_bytes(ref.tobytes())
        print(name or "photo", photo.size, s, ref.shape)


src, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
if src != "--cuts":
    photo = Image.open(src).convert("RGB").crop((80, 60, 240, 180))
    photo.save(out / "photo.png")
    reference(Image.open(out / "photo.png"), "", out)
photo = Image.open(out / "photo.png")
for name, box in (("wide", (0, 0, 157, 119)), ("tall", (10, 0, 97, 119))):
    photo.crop(box).save(out / f"photo-{name}.png")
    reference(Image.open(out / f"photo-{name}.png"), f"{name}-", out)
