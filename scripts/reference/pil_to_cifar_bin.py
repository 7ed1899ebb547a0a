"""Decodes a tar of `<split>/<class>/<image>.jpg` members with PIL (the decoder the PyTorch peer
trains on) and writes the pixels as one CIFAR-10 binary batch (label byte, then the R, G and B
planes of 32x32), so that `simsiam` can read the very pixels PIL gives (BENCHMARKS.md: our kNN
evaluator against the reference's). Labels follow the sorted class names.

    python scripts/reference/pil_to_cifar_bin.py .../train.tar.gz pil_train.bin
"""

import io
import sys
import tarfile

import numpy as np
from PIL import Image


def main():
    src, dst = sys.argv[1], sys.argv[2]
    items = []
    with tarfile.open(src) as tar:
        for m in tar:
            if m.isfile() and m.name.lower().endswith((".jpg", ".jpeg", ".png")):
                a = np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB"))
                assert a.shape == (32, 32, 3), (m.name, a.shape)
                items.append((m.name.split("/")[-2], a))
    classes = sorted({c for c, _ in items})
    out = bytearray()
    for c, a in items:
        out.append(classes.index(c))
        out += a.transpose(2, 0, 1).tobytes()
    with open(dst, "wb") as f:
        f.write(out)
    print(f"{dst}: {len(items)} images, classes {classes}")


if __name__ == "__main__":
    main()
