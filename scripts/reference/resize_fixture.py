"""Writes `tests/fixtures/resize/`: a photo (a 160x120 PNG cut from the `image` crate's test
cat.jpg, lossless so that only the resize is compared) and what torchvision makes of it,
Resize(S) + CenterCrop(S) on the PIL image (bilinear, antialiased), for S = 48 (down) and
144 (up), as raw RGB bytes `SxSx3`. `tests/data.rs` sets our store's decoding beside them.

    /tmp/refvenv/bin/python scripts/reference/resize_fixture.py CAT_JPG tests/fixtures/resize
"""
import sys
from pathlib import Path

import numpy as np
import torchvision.transforms as T
from PIL import Image

src, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
photo = Image.open(src).convert("RGB").crop((80, 60, 240, 180))
photo.save(out / "photo.png")
photo = Image.open(out / "photo.png")
for s in (48, 144):
    ref = np.asarray(T.CenterCrop(s)(T.Resize(s)(photo)), dtype=np.uint8)
    (out / f"torchvision-{s}.rgb").write_bytes(ref.tobytes())
    print(s, ref.shape)
