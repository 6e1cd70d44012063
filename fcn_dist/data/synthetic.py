"""A synthetic dataset in the true VOC layout, for the demo and the tests.

``make_synthetic_voc`` writes ``<out>/VOCdevkit/VOC2012`` with JPEGs of mixed sizes and
orientations (landscape and portrait, some smaller than 320x480 so the d2l preset drops
them), palette PNG masks with 3-5 px void (255) bands on object outlines, as VOC has, and the
split files train.txt, val.txt and trainval.txt.

The objects are learnable by a small FCN in a few CPU minutes: each of ``SYNTHETIC_CLASSES``
has its own saturated hue and its own shape, on desaturated textured backgrounds; 1-3 objects
per image. Mask values are VOC class indices, so every reader and metric treats the set as VOC.

Output is deterministic: the same arguments write byte-identical files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from ..labels import IGNORE_INDEX, VOC_PALETTE
from .voc import DataError

SYNTHETIC_CLASSES = {
    # VOC index: (RGB hue, shape)
    1: ((220, 40, 40), "triangle"),   # aeroplane: red
    3: ((40, 190, 60), "circle"),     # bird: green
    7: ((40, 80, 230), "square"),     # car: blue
    8: ((235, 200, 30), "diamond"),   # cat: yellow
    12: ((190, 50, 210), "ring"),     # dog: magenta
    15: ((30, 205, 215), "cross"),    # person: cyan
}
"""The classes the generator draws; others of the 21 never appear."""

_FORMAT_VERSION = 1
_MARKER = "synthetic.json"


def _sdf(shape: str, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) to a shape of size ``r`` centred at 0."""
    if shape == "circle":
        return np.hypot(dy, dx) - r
    if shape == "square":
        return np.maximum(np.abs(dy), np.abs(dx)) - 0.85 * r
    if shape == "diamond":
        return (np.abs(dy) + np.abs(dx) - 1.2 * r) / np.sqrt(2.0)
    if shape == "triangle":  # equilateral, pointing up: the max of three half-planes
        c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
        return np.maximum.reduce([-dy, c * dx + s * dy, -c * dx + s * dy]) - 0.55 * r
    if shape == "ring":
        return np.abs(np.hypot(dy, dx) - 0.72 * r) - 0.28 * r
    if shape == "cross":
        bar_h = np.maximum(np.abs(dy) - 0.33 * r, np.abs(dx) - r)
        bar_v = np.maximum(np.abs(dy) - r, np.abs(dx) - 0.33 * r)
        return np.minimum(bar_h, bar_v)
    raise ValueError(f"unknown shape {shape}")


def _image_size(rng: np.random.Generator, max_side: int) -> tuple[int, int]:
    """(H, W): half the images have the full long side (as most VOC images), 30% are portrait."""
    long_side = max_side if rng.random() < 0.5 else int(rng.integers(int(0.55 * max_side), max_side + 1))
    short_side = int(round(long_side * rng.uniform(0.6, 0.8)))
    long_side, short_side = max(long_side, 16), max(short_side, 16)
    return (long_side, short_side) if rng.random() < 0.3 else (short_side, long_side)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Desaturated texture: grey level, coarse blobs, optional stripes, fine noise. float32 (H, W, 3)."""
    grey = rng.uniform(60, 190)
    tint = rng.uniform(-12, 12, size=3)
    coarse = rng.uniform(-35, 35, size=(max(2, height // 24), max(2, width // 24))).astype(np.float32)
    blobs = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    img = grey + tint + blobs[..., None]
    if rng.random() < 0.5:
        period, angle = rng.uniform(8, 30), rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        img += (12 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / period))[..., None]
    img += rng.normal(0, 6, size=(height, width, 1)).astype(np.float32)
    return img.astype(np.float32)


def _draw_sample(rng: np.random.Generator, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """One image uint8 (H, W, 3) and its mask uint8 (H, W)."""
    height, width = _image_size(rng, max_side)
    img = _background(rng, height, width)
    mask = np.zeros((height, width), dtype=np.uint8)
    classes = list(SYNTHETIC_CLASSES)
    for _ in range(int(rng.integers(1, 4))):
        cls = classes[int(rng.integers(len(classes)))]
        hue, shape = SYNTHETIC_CLASSES[cls]
        r = rng.uniform(0.14, 0.32) * min(height, width)
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        border = int(rng.integers(3, 6))
        reach = int(np.ceil(1.25 * r + border))
        y0, y1 = max(0, int(cy) - reach), min(height, int(cy) + reach + 1)
        x0, x1 = max(0, int(cx) - reach), min(width, int(cx) + reach + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dist = _sdf(shape, yy - cy, xx - cx, r)
        inside = dist < 0
        colour = np.clip(np.asarray(hue, np.float32) + rng.uniform(-25, 25, size=3), 0, 255)
        shading = 1.0 + 0.25 * ((yy - cy) / (2 * r))[..., None]
        patch = colour * shading + rng.normal(0, 8, size=(y1 - y0, x1 - x0, 1))
        img[y0:y1, x0:x1][inside] = patch[inside]
        mask[y0:y1, x0:x1][inside] = cls
        # void band on the outline, as VOC's annotators drew it
        mask[y0:y1, x0:x1][np.abs(dist) <= border / 2] = IGNORE_INDEX
    return np.clip(img, 0, 255).astype(np.uint8), mask


def make_synthetic_voc(out_dir: Union[str, os.PathLike], num_train: int, num_val: int, seed: int = 0,
                       max_side: int = 500, progress: bool = False) -> Path:
    """Write a synthetic VOC2012 folder.

    Args:
        out_dir: parent folder; the set goes to ``out_dir/VOCdevkit/VOC2012``.
        num_train, num_val: images in train.txt and val.txt (trainval.txt lists both).
        seed: generator seed; the same arguments give byte-identical files.
        max_side: longest image side (at least 16).
        progress: show a tqdm bar.

    Returns:
        The VOC2012 folder.
    """
    from tqdm.auto import tqdm

    if max_side < 16:
        raise ValueError(f"max_side={max_side} must be >= 16")
    voc = Path(out_dir) / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    splits = {"train": num_train, "val": num_val}
    bar = tqdm(total=num_train + num_val, desc="synthetic VOC", unit="img", disable=not progress)
    for split_code, (split, count) in enumerate(splits.items()):
        ids = [f"{split}_{i:05d}" for i in range(count)]
        for index, name in enumerate(ids):
            image, mask = _draw_sample(np.random.default_rng([seed, split_code, index]), max_side)
            Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=90)
            png = Image.fromarray(mask)
            png.putpalette(VOC_PALETTE)  # makes it a palette (P) image whose indices are the classes
            png.save(voc / "SegmentationClass" / f"{name}.png")
            bar.update()
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    bar.close()
    trainval = [f"{s}_{i:05d}\n" for s, n in splits.items() for i in range(n)]
    (voc / "ImageSets" / "Segmentation" / "trainval.txt").write_text("".join(trainval))
    return voc


def ensure_synthetic(data_cfg) -> Path:
    """Generate the synthetic set into ``data_cfg.root`` on first use; later calls reuse it.

    Safe when several processes call it at once: each writes into a temporary folder under the
    root and renames it into place; a process that loses the race keeps the winner's files
    (they are identical, the generator being deterministic).

    Args:
        data_cfg: ``DataConfig`` (root, synthetic_train, synthetic_val, synthetic_seed,
            synthetic_max_side).

    Returns:
        The root (it holds ``VOCdevkit/VOC2012``).

    Raises:
        DataError: the root holds a VOC2012 folder that is not this synthetic set.
    """
    root = Path(data_cfg.root).expanduser()
    params = {"version": _FORMAT_VERSION, "num_train": data_cfg.synthetic_train, "num_val": data_cfg.synthetic_val,
              "seed": data_cfg.synthetic_seed, "max_side": data_cfg.synthetic_max_side}
    voc = root / "VOCdevkit" / "VOC2012"
    marker = voc / _MARKER
    if not marker.is_file():
        if voc.exists():
            raise DataError(f"{voc} exists but is not a complete synthetic set ({_MARKER} missing); "
                            f"point data.root at an empty folder or delete {voc}")
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=root))
        try:
            made = make_synthetic_voc(tmp, data_cfg.synthetic_train, data_cfg.synthetic_val,
                                      seed=data_cfg.synthetic_seed, max_side=data_cfg.synthetic_max_side)
            (made / _MARKER).write_text(json.dumps(params, sort_keys=True))
            try:
                os.rename(tmp / "VOCdevkit", root / "VOCdevkit")
            except OSError:
                if not marker.is_file():  # not another process's finished copy: a real failure
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    found = json.loads(marker.read_text())
    if found != params:
        raise DataError(f"{marker} was generated with {found}, not {params}; delete {root / 'VOCdevkit'} "
                        f"or choose another data.root")
    return root

