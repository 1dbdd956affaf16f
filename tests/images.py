"""A generated image folder for the ingest tests, and Pillow's own decoding to compare against."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Relative path -> what it is. Two class folders ("cat", "dog"), nested folders, every format
# ingest claims, each odd kind of image once, and two files that are not images at all.
GOOD = [
    "cat/a_rgb.jpg",
    "cat/b_rgba.png",
    "cat/c_gray.png",
    "cat/d_palette.gif",
    "cat/e_exif6.jpg",
    "cat/f.bmp",
    "cat/g_upper.PNG",
    "cat/h_palette_alpha.png",
    "dog/deep/i.jpeg",
    "dog/j.tif",
    "dog/k.webp",
    "dog/l.ppm",
    "dog/m_gray.pgm",
    "dog/n_exif8.JPG",
]
BAD = ["cat/0_truncated.jpg", "dog/0_not_an_image.png"]
IGNORED = ["dog/notes.txt", ".hidden/x.jpg", "cat/.ipynb_checkpoints/y.jpg", "dog/._z.jpg"]


def _pixels(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    # Smooth gradients plus noise: JPEG-like content, and a resize has something to average.
    y, x = np.mgrid[0:h, 0:w]
    base = (x * 255 // max(w - 1, 1) + y * 255 // max(h - 1, 1)) // 2
    noise = rng.integers(0, 40, (h, w, c))
    return np.clip(base[..., None] + noise, 0, 255).astype(np.uint8)


def make_tree(root: Path, seed: int = 0, extra: int = 0) -> Path:
    """Write GOOD, BAD and IGNORED under ``root`` (plus ``extra`` more JPEGs per class)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)

    def size() -> tuple[int, int]:
        # Many sizes, all under 4x the tests' resize targets (no JPEG draft scaling there).
        return int(rng.integers(9, 60)), int(rng.integers(9, 60))

    def path(rel: str) -> Path:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    for rel in GOOD:
        h, w = size()
        rgb = Image.fromarray(_pixels(rng, h, w, 3))
        p = path(rel)
        name = p.name.lower()
        if "rgba" in name:
            alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
            Image.fromarray(np.dstack([np.asarray(rgb), alpha])).save(p)
        elif "gray" in name:
            rgb.convert("L").save(p)
        elif "palette_alpha" in name:
            rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(p, transparency=2)
        elif "palette" in name:
            rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(p)
        elif "exif" in name:
            exif = Image.Exif()
            exif[0x0112] = 6 if "exif6" in name else 8
            rgb.save(p, format="JPEG", exif=exif)
        elif name.endswith((".jpg", ".jpeg")):
            rgb.save(p, format="JPEG", quality=85)
        else:
            rgb.save(p)
    for i in range(extra):
        for cls in ("cat", "dog"):
            h, w = size()
            Image.fromarray(_pixels(rng, h, w, 3)).save(path(f"{cls}/x{i:04d}.jpg"), quality=80)
    full = path(BAD[0])
    h, w = 50, 40
    Image.fromarray(_pixels(rng, h, w, 3)).save(full, format="JPEG")
    data = full.read_bytes()
    full.write_bytes(data[: len(data) // 2])
    path(BAD[1]).write_text("this is not an image\n")
    for rel in IGNORED:
        if rel.endswith(".txt"):
            path(rel).write_text("notes\n")
        else:
            Image.fromarray(_pixels(rng, 10, 10, 3)).save(path(rel), format="JPEG")
    return root


def good_paths(extra: int = 0) -> list[str]:
    """The images ingest should store, in its order."""
    more = [f"{cls}/x{i:04d}.jpg" for i in range(extra) for cls in ("cat", "dog")]
    return sorted(GOOD + more)


def pillow_decode(path: Path, mode: str = "RGB", size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode with Pillow directly: load, exif_transpose, convert, resize -> (H, W, C) uint8."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "palette images with transparency..."
        with Image.open(path) as im:
            im.load()
            out = ImageOps.exif_transpose(im).convert(mode)
        if size is not None:
            out = out.resize((size[1], size[0]), Image.Resampling.BICUBIC)
        arr = np.asarray(out)
    return arr.reshape(arr.shape[0], arr.shape[1], -1)
