"""Writes `tests/fixtures/colour/`: one 24x24 image in each colour mode and file format the
readers take, and what PIL's `Image.open(f).convert("RGB")` (torchvision's `ImageFolder`
loader) makes of it, as raw RGB bytes (`<file>.pil.rgb`, 24x24x3). `tests/data.rs` sets our
decoding beside them: grey, 1-bit, palette with transparency, grey-alpha, RGBA, CMYK; PNG,
JPEG (baseline, progressive, with an EXIF orientation that must not be applied), WebP,
TIFF, BMP; a PNG named `.JPEG` (the reader goes by content, not name); 16-bit RGB and RGBA
PNGs (written by hand: PIL writes no 16-bit colour PNG).

    /tmp/refvenv/bin/python scripts/reference/colour_fixture.py tests/fixtures/colour
"""
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

S = 24


def png16(path, samples, colour_type):
    """A 16-bit PNG of `samples` [S, S, C] (colour type 2: RGB, 6: RGBA)."""
    raw = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(S))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", S, S, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def main(out):
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:S, 0:S]
    # Smooth, and not symmetric: a rotation (an applied EXIF orientation) would show.
    rgb = np.stack([(x * 9) % 256, (y * 10) % 256, ((x + 2 * y) * 4) % 256], -1).astype(np.uint8)
    alpha = rng.integers(0, 256, (S, S, 1)).astype(np.uint8)
    im = Image.fromarray(rgb)
    rgba = Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA")
    im.save(out / "rgb.png")
    im.save(out / "rgb.jpg", quality=95)
    im.save(out / "progressive.jpg", quality=95, progressive=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": PIL's loader does not apply it
    im.save(out / "orientation6.jpg", quality=95, exif=exif.tobytes())
    im.convert("CMYK").save(out / "cmyk.jpg", quality=95)
    im.convert("L").save(out / "grey.jpg", quality=95)
    im.convert("L").save(out / "grey.png")
    Image.fromarray((rgb > 127).any(-1)).save(out / "bits.png")
    im.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(out / "palette.png", transparency=3)
    Image.fromarray(np.concatenate([rgb[..., :1], alpha], -1), "LA").save(out / "grey-alpha.png")
    rgba.save(out / "rgba.png")
    rgba.save(out / "rgba.webp", lossless=True)
    rgba.save(out / "rgba.tif")
    im.save(out / "rgb.webp", lossless=True)
    im.save(out / "rgb.tif")
    im.save(out / "rgb.bmp")
    im.save(out / "png-named.JPEG", format="PNG")
    png16(out / "rgb16.png", rng.integers(0, 65536, (S, S, 3)), 2)
    png16(out / "rgba16.png", rng.integers(0, 65536, (S, S, 4)), 6)
    for f in sorted(out.iterdir()):
        if f.suffix == ".rgb":
            continue
        img = Image.open(f)
        pil = np.asarray(img.convert("RGB"), dtype=np.uint8)
        (out / f"{f.name}.pil.rgb").write_bytes(pil.tobytes())
        print(f.name, img.mode, pil.shape)


main(Path(sys.argv[1]))
