"""Synthetic datasets in the true VOC layout and in the folder layout, for the demos and the tests.

``make_synthetic_voc`` writes ``<out>/VOCdevkit/VOC2012`` with JPEGs of mixed sizes and
orientations (landscape and portrait, some smaller than 320x480 so the d2l preset drops
them), palette PNG masks with 3-5 px void (255) bands on object outlines, as VOC has, and the
split files train.txt, val.txt and trainval.txt.

The objects are learnable by a small FCN in a few CPU minutes: each of ``SYNTHETIC_CLASSES``
has its own saturated hue and its own shape, on desaturated textured backgrounds; 1-3 objects
per image. Mask values are VOC class indices, so every reader and metric treats the set as VOC.

``make_synthetic_folder`` writes the same pictures in the folder layout (``data.format=folder``):
``images/``, ``masks/``, ``classes.yaml`` (``FOLDER_CLASSES``: background and the six shapes)
and split files, with index masks, RGB-coloured masks (``mask_format="rgb"``) or index masks of
other ids that classes.yaml's ``remap`` maps back (``remap=True``). ``folder_sample`` gives the
class ids each mask encodes.

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


FOLDER_CLASSES = ("background", "triangle", "circle", "square", "diamond", "ring", "cross")
"""Class names of the synthetic folder set: class id = position; each shape is one of ``SYNTHETIC_CLASSES``."""
_FOLDER_IDS = {0: 0, **{voc: k + 1 for k, voc in enumerate(SYNTHETIC_CLASSES)}, IGNORE_INDEX: IGNORE_INDEX}
FOLDER_COLORS = ((0, 0, 0), *(hue for hue, _ in SYNTHETIC_CLASSES.values()))
"""The RGB mask colour of each class (``--mask-format rgb``): black background, each shape's hue."""
FOLDER_VOID_COLOR = (255, 255, 255)
"""The colour of void pixels in RGB masks."""
REMAP_IDS = (7, 11, 17, 21, 24, 26, 33)
"""``--remap``: the stored value of each class (as Cityscapes' ids, which its train ids remap)."""
REMAP_IGNORE, REMAP_UNMAPPED, REMAP_VOID = 0, 3, 5
"""``--remap``: void is stored three ways, a third of its pixels each: the ``ignore`` value, a
value that ``remap`` does not map, and a value that ``remap`` maps to 255."""
MASK_FORMATS = ("index", "rgb")


def folder_stems(num_train: int, num_val: int) -> list[tuple[str, int, int]]:
    """(stem, split code, index in split) of every image of the synthetic folder set.

    ``img_00000`` .. : the first ``num_train`` are drawn as the VOC set's train images (split code
    0), the rest as its val images (1), so the same seed draws the same pictures in both layouts.
    """
    return [(f"img_{k:05d}", 0 if k < num_train else 1, k if k < num_train else k - num_train)
            for k in range(num_train + num_val)]


def folder_sample(seed: int, split_code: int, index: int, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic folder sample: image uint8 (H, W, 3) and its class ids uint8 (H, W), 255 = void.

    What the files of ``make_synthetic_folder`` encode (and what a reader must give back).
    """
    image, voc_mask = _draw_sample(np.random.default_rng([seed, split_code, index]), max_side)
    lut = np.zeros(256, dtype=np.uint8)
    for voc, k in _FOLDER_IDS.items():
        lut[voc] = k
    return image, lut[voc_mask]


def _encode_mask(ids: np.ndarray, mask_format: str, remap: bool) -> Image.Image:
    """The mask file of class ids: an L PNG of ids, of stored ids (remap), or an RGB PNG of colours."""
    if mask_format == "rgb":
        palette = np.zeros((256, 3), dtype=np.uint8)
        palette[:len(FOLDER_COLORS)] = FOLDER_COLORS
        palette[IGNORE_INDEX] = FOLDER_VOID_COLOR
        return Image.fromarray(palette[ids], "RGB")
    if not remap:
        return Image.fromarray(ids, "L")
    stored = np.asarray(REMAP_IDS, dtype=np.uint8)[np.minimum(ids, len(REMAP_IDS) - 1)]
    yy, xx = np.mgrid[0:ids.shape[0], 0:ids.shape[1]]
    third = ((yy + xx) // 4) % 3
    void = ids == IGNORE_INDEX
    stored[void] = np.choose(third[void], [REMAP_IGNORE, REMAP_UNMAPPED, REMAP_VOID])
    return Image.fromarray(stored, "L")


def _folder_class_file(mask_format: str, remap: bool) -> str:
    spec: dict = {"classes": list(FOLDER_CLASSES)}
    if mask_format == "rgb":
        spec["colors"] = [list(c) for c in FOLDER_COLORS]
        spec["void_color"] = list(FOLDER_VOID_COLOR)
    elif remap:
        spec["ignore"] = REMAP_IGNORE
        spec["remap"] = {**{stored: k for k, stored in enumerate(REMAP_IDS)}, REMAP_VOID: IGNORE_INDEX}
    import yaml

    head = ("# Written by `fcn-data synth --layout folder` (fcn_dist). Class id = position in classes.\n"
            + ("# RGB masks: a pixel of colors[k] is class k, void_color is void.\n" if mask_format == "rgb" else "")
            + (f"# Index masks of stored ids: remap gives each its class id; {REMAP_IGNORE} (ignore) and every id "
               "remap does not map are void.\n" if remap else ""))
    return head + yaml.safe_dump(spec, sort_keys=False, default_flow_style=None)


def make_synthetic_folder(out_dir: Union[str, os.PathLike], num_train: int, num_val: int, seed: int = 0,
                          max_side: int = 500, mask_format: str = "index", remap: bool = False,
                          split_files: bool = True, progress: bool = False) -> Path:
    """Write a synthetic set in the folder layout (``data.format=folder``).

    ``out_dir/images/img_NNNNN.jpg``, ``out_dir/masks/img_NNNNN.png``, ``out_dir/classes.yaml``
    (``FOLDER_CLASSES``) and, with ``split_files``, ``out_dir/splits/train.txt`` and ``val.txt``.
    The pictures are the VOC set's (``folder_sample``); class ids are ``FOLDER_CLASSES``' positions.
    The folder appears complete or not at all (written aside, then renamed).

    Args:
        out_dir: the folder to create; it must not exist.
        num_train, num_val: images in each split (the split files', or just the count without them).
        seed: generator seed; the same arguments give byte-identical files.
        max_side: longest image side (at least 16).
        mask_format: ``index`` (L PNGs of class ids, 255 void) or ``rgb`` (RGB PNGs in
            ``FOLDER_COLORS``, void ``FOLDER_VOID_COLOR``; classes.yaml gets ``colors`` and ``void_color``).
        remap: index masks of stored ids (``REMAP_IDS``; void as ``REMAP_IGNORE``, ``REMAP_UNMAPPED``
            and ``REMAP_VOID``) with classes.yaml's ``ignore`` and ``remap`` mapping them back.
        split_files: write ``splits/``; without it the readers split by ``data.val_fraction``.
        progress: show a tqdm bar.

    Returns:
        ``out_dir``.

    Raises:
        DataError: ``out_dir`` exists.
        ValueError: bad arguments.
    """
    from tqdm.auto import tqdm

    if max_side < 16:
        raise ValueError(f"max_side={max_side} must be >= 16")
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format={mask_format!r} is not one of {', '.join(MASK_FORMATS)}")
    if remap and mask_format != "index":
        raise ValueError("remap applies to index masks (classes.yaml refuses remap with colors)")
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() or out_dir.is_symlink():
        raise DataError(f"{out_dir} already exists: fcn-data synth only writes a new set; choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        for sub in ("images", "masks"):
            (work / sub).mkdir()
        stems = folder_stems(num_train, num_val)
        for stem, split_code, index in tqdm(stems, desc="synthetic folder set", unit="img", disable=not progress):
            image, ids = folder_sample(seed, split_code, index, max_side)
            Image.fromarray(image).save(work / "images" / f"{stem}.jpg", quality=90)
            _encode_mask(ids, mask_format, remap).save(work / "masks" / f"{stem}.png")
        (work / "classes.yaml").write_text(_folder_class_file(mask_format, remap))
        if split_files:
            (work / "splits").mkdir()
            for code, split in enumerate(("train", "val")):
                (work / "splits" / f"{split}.txt").write_text("".join(f"{s}\n" for s, c, _ in stems if c == code))
        os.chmod(work, 0o777 & ~_umask())
        os.rename(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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

