"""Pascal VOC: class names, the palette, the VOCdevkit reader and input validation.

Owns the VOCdevkit layout::

    VOC2012/JPEGImages/<id>.jpg
    VOC2012/SegmentationClass/<id>.png          palette PNGs: index = class, 255 = void
    VOC2012/SegmentationClassAug/<id>.png       SBD "VOC aug" masks (split train_aug)
    VOC2012/ImageSets/Segmentation/<split>.txt  one id per line

Labels are read as palette indices, never through RGB colours: 0..C-1 are classes and 255
(void, the object outlines) stays 255 so the loss and the metrics ignore it. An RGB mask is
accepted only when every colour is a VOC palette colour.

The decoders here (``decode_image``, ``decode_mask``, ``load_pair``) are shared by the Arrow
and hub readers, so every source gives the same tensors and the same errors. Every bad input
raises ``DataError`` with a one-line message that names the offending file and the fix.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from PIL import Image

from ..labels import IGNORE_INDEX, VOC_CLASSES, VOC_PALETTE
from ..model import hwc_to_chw

MASK_DIRS = {"train_aug": "SegmentationClassAug"}
"""Mask folder of splits that do not use SegmentationClass (SBD's augmented set)."""

_COLOUR_TO_INDEX = {
    (VOC_PALETTE[3 * i] << 16) | (VOC_PALETTE[3 * i + 1] << 8) | VOC_PALETTE[3 * i + 2]: i for i in range(256)
}

Source = Union[str, os.PathLike, bytes]
"""A file path, or the encoded bytes of a file (Arrow and hub rows)."""


class DataError(ValueError):
    """Unusable input data; the one-line message names the offending file and the fix."""


def find_voc_root(root: Union[str, os.PathLike]) -> Optional[Path]:
    """The VOC2012 folder under ``root`` (``root/VOCdevkit/VOC2012`` or ``root`` itself), or None."""
    root = Path(root).expanduser()
    for candidate in (root / "VOCdevkit" / "VOC2012", root):
        if (candidate / "JPEGImages").is_dir() and (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    return None


def resolve_voc_root(root: Union[str, os.PathLike]) -> Path:
    """Find the VOC2012 folder from a data root.

    Args:
        root: a folder holding ``VOCdevkit/VOC2012``, or the ``VOC2012`` folder itself.

    Returns:
        The VOC2012 folder (it holds ``JPEGImages`` and ``ImageSets/Segmentation``).

    Raises:
        DataError: neither layout is there.
    """
    found = find_voc_root(root)
    if found is None:
        root = Path(root).expanduser()
        what = "does not exist" if not root.exists() else "holds no VOC layout"
        raise DataError(f"data root {root} {what}: expected {root}/VOCdevkit/VOC2012 or a VOC2012 folder with "
                        f"JPEGImages/ and ImageSets/Segmentation/; set data.root (or data.download=true)")
    return found


def download_voc(root: Union[str, os.PathLike]) -> Path:
    """Download and extract VOC2012 trainval into ``root`` with torchvision's code.

    Returns:
        The VOC2012 folder.

    Raises:
        DataError: the download failed (for example offline); the message says where to put
            VOCdevkit by hand.
    """
    from urllib.error import URLError

    from torchvision.datasets import VOCSegmentation as TorchvisionVOC

    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    try:
        TorchvisionVOC(str(root), year="2012", image_set="train", download=True)
    except (URLError, OSError, RuntimeError) as err:
        raise DataError(f"VOC2012 download into {root} failed ({type(err).__name__}: {err}); download "
                        f"VOCtrainval_11-May-2012.tar yourself and extract it so that {root}/VOCdevkit/VOC2012 "
                        f"exists, then set data.download=false") from err
    return resolve_voc_root(root)


def split_file(voc_root: Path, split: str) -> Path:
    """The id list ``ImageSets/Segmentation/<split>.txt`` of a VOC2012 folder."""
    return voc_root / "ImageSets" / "Segmentation" / f"{split}.txt"


def available_splits(voc_root: Path) -> list[str]:
    """Split names that have a file in ``ImageSets/Segmentation``."""
    return sorted(p.stem for p in (voc_root / "ImageSets" / "Segmentation").glob("*.txt"))


def read_split(voc_root: Path, split: str) -> list[str]:
    """Image ids of a split, in file order.

    Raises:
        DataError: the split file is missing or lists no id.
    """
    path = split_file(voc_root, split)
    if not path.is_file():
        known = ", ".join(available_splits(voc_root)) or "none"
        raise DataError(f"split file {path} not found; available splits: {known}")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"split file {path} is empty: list one image id per line")
    return ids


def mask_dir(voc_root: Path, split: str) -> Path:
    """Mask folder of a split: SegmentationClassAug for train_aug, else SegmentationClass."""
    return voc_root / MASK_DIRS.get(split, "SegmentationClass")


def _open_full(src: Source, name: str) -> Image.Image:
    """Open and fully decode an image, so truncation is found here and not in a worker later."""
    try:
        img = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
        img.load()
    except FileNotFoundError:
        raise DataError(f"{name}: file not found; restore it or remove its id from the split file") from None
    except (OSError, SyntaxError) as err:  # PIL's signals for corrupt or truncated files
        raise DataError(f"{name}: corrupt or truncated image ({err}); replace the file or remove its id "
                        f"from the split file") from None
    return img


def decode_image(src: Source, name: str) -> np.ndarray:
    """Decode an RGB image.

    Args:
        src: a file path or the encoded bytes.
        name: what error messages call it (the file path, or dataset and row).

    Returns:
        uint8 array (H, W, 3).
    """
    img = _open_full(src, name)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def _rgb_to_index(rgb: np.ndarray, name: str) -> np.ndarray:
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    colours, inverse = np.unique(codes, return_inverse=True)
    lut = np.empty(len(colours), dtype=np.uint8)
    for k, code in enumerate(colours.tolist()):
        if code not in _COLOUR_TO_INDEX:
            rgb_str = (code >> 16, (code >> 8) & 255, code & 255)
            raise DataError(f"{name}: RGB mask has colour {rgb_str}, which is not a VOC palette colour; save masks "
                            f"as palette PNGs (mode P) or grayscale PNGs holding class indices")
        lut[k] = _COLOUR_TO_INDEX[code]
    return lut[inverse.reshape(codes.shape)]


def decode_mask(src: Source, name: str, num_classes: int = len(VOC_CLASSES)) -> np.ndarray:
    """Decode a class-index mask and check its values.

    Palette (P) and grayscale (L, I) PNGs hold the indices themselves; an RGB mask is mapped
    back through the VOC palette and must use palette colours only.

    Args:
        src: a file path or the encoded bytes.
        name: what error messages call it.
        num_classes: values must be in ``0..num_classes-1`` or 255.

    Returns:
        uint8 array (H, W) of class indices, 255 = void.
    """
    img = _open_full(src, name)
    if img.mode in ("P", "L"):
        mask = np.asarray(img)
    elif img.mode in ("I", "I;16", "I;16B", "I;16L"):
        mask = np.asarray(img).astype(np.int64)
    elif img.mode == "RGB":
        mask = _rgb_to_index(np.asarray(img), name)
    else:
        raise DataError(f"{name}: mask has PIL mode {img.mode}; use a palette (P) or grayscale (L) PNG "
                        f"of class indices")
    return check_mask_values(mask, name, num_classes)


def check_mask_values(mask: np.ndarray, name: str, num_classes: int) -> np.ndarray:
    """Check that a mask holds only ``0..num_classes-1`` and 255.

    Args:
        mask: integer array (H, W).

    Returns:
        The mask as uint8 (H, W).
    """
    if mask.ndim != 2:
        raise DataError(f"{name}: mask has shape {tuple(mask.shape)}; expected (H, W) class indices")
    def bad() -> np.ndarray:
        return (mask >= num_classes) & (mask != IGNORE_INDEX) | (mask < 0)

    if mask.dtype == np.uint8 and num_classes <= IGNORE_INDEX:  # common case, two passes: values >= C all 255
        ok = np.count_nonzero(mask >= num_classes) == np.count_nonzero(mask == IGNORE_INDEX)
    else:
        ok = not bad().any()
    if not ok:
        values = sorted(set(np.unique(mask[bad()]).tolist()))
        raise DataError(f"{name}: mask values {values[:8]} are outside 0..{num_classes - 1} and not {IGNORE_INDEX}; "
                        f"fix the mask or set data.classes to the dataset's classes")
    return mask.astype(np.uint8, copy=False)


def to_tensors(image: np.ndarray, mask: np.ndarray, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check sizes and convert to tensors.

    Args:
        image: uint8 (H, W, 3).
        mask: uint8 (H, W).

    Returns:
        image uint8 (3, H, W), a channels-last view (``fcn_dist.model.hwc_to_chw``), mask uint8 (H, W).
    """
    if image.shape[:2] != mask.shape:
        raise DataError(f"{name}: mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from the image size "
                        f"{image.shape[1]}x{image.shape[0]}; every mask must match its image")
    image_t = hwc_to_chw(image)
    mask_t = torch.from_numpy(np.array(mask, dtype=np.uint8))
    return image_t, mask_t


def load_pair(image_src: Source, mask_src: Source, names: tuple[str, str],
              num_classes: int = len(VOC_CLASSES)) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and validate one (image, mask) sample.

    Args:
        image_src, mask_src: file paths or encoded bytes.
        names: what error messages call the image and the mask.
        num_classes: number of classes the mask may use.

    Returns:
        image uint8 (3, H, W), mask uint8 (H, W) with 255 kept.
    """
    image = decode_image(image_src, names[0])
    mask = decode_mask(mask_src, names[1], num_classes)
    return to_tensors(image, mask, names[1])


def image_size(src: Source, name: str) -> tuple[int, int]:
    """(H, W) of an image from its header only (nothing is decoded)."""
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as img:
            return img.height, img.width
    except FileNotFoundError:
        raise DataError(f"{name}: file not found; restore it or remove its id from the split file") from None
    except (OSError, SyntaxError) as err:
        raise DataError(f"{name}: unreadable image header ({err}); replace the file or remove its id "
                        f"from the split file") from None


class VOCSegmentation(torch.utils.data.Dataset):
    """The VOCdevkit reader: one item per id of ``ImageSets/Segmentation/<split>.txt``.

    Files are decoded lazily in ``__getitem__``; construction only lists and stats them, so
    start-up does not read the dataset.

    Args:
        root: a folder holding ``VOCdevkit/VOC2012``, or the VOC2012 folder.
        split: split file name (train, val, trainval, or train_aug for SBD's masks).
        transform: optional callable ``(image, mask) -> (image, mask)`` on tensors.
        num_classes: mask values must be in ``0..num_classes-1`` or 255.

    Raises:
        DataError: missing root or split file, empty split, or listed files missing.
    """

    def __init__(self, root: Union[str, os.PathLike], split: str,
                 transform: Optional[Callable] = None, num_classes: int = len(VOC_CLASSES)) -> None:
        self.voc_root = resolve_voc_root(root)
        self.split = split
        self.transform = transform
        self.num_classes = num_classes
        self.ids = read_split(self.voc_root, split)
        masks = mask_dir(self.voc_root, split)
        self.images = [self.voc_root / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        self.masks = [masks / f"{i}.png" for i in self.ids]
        missing = [p for pair in zip(self.images, self.masks) for p in pair if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more; run fcn-data check)" if len(missing) > 1 else ""
            raise DataError(f"{missing[0]}: listed in {split_file(self.voc_root, split)} but not found{more}; "
                            f"restore the file or remove its id from the split file")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns image uint8 (3, H, W) and mask uint8 (H, W), after ``transform`` if set."""
        image, mask = load_pair(self.images[index], self.masks[index],
                                (str(self.images[index]), str(self.masks[index])), self.num_classes)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask

    def sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every image, from the JPEG headers."""
        return [image_size(p, str(p)) for p in self.images]


def check_sample(image_src: Source, mask_src: Source, names: tuple[str, str], num_classes: int) -> list[str]:
    """Every problem of one sample (image and mask checked independently), one line each."""
    problems = []
    image = mask = None
    try:
        image = decode_image(image_src, names[0])
    except DataError as err:
        problems.append(str(err))
    try:
        mask = decode_mask(mask_src, names[1], num_classes)
    except DataError as err:
        problems.append(str(err))
    if image is not None and mask is not None and image.shape[:2] != mask.shape:
        try:
            to_tensors(image, mask, names[1])
        except DataError as err:
            problems.append(str(err))
    return problems


def check_voc(root: Union[str, os.PathLike], splits: Optional[list[str]] = None,
              num_classes: int = len(VOC_CLASSES), progress: bool = False) -> list[str]:
    """Validate a VOCdevkit dataset and report every problem, not only the first.

    Args:
        root: data root (see ``resolve_voc_root``).
        splits: split names; None means every split file present.
        num_classes: number of classes masks may use.
        progress: show a tqdm bar per split.

    Returns:
        One line per problem (missing root, split file, listed file; corrupt file; size mismatch;
        bad mask values or colours; empty split). Empty when the dataset is good.
    """
    from tqdm.auto import tqdm

    try:
        voc_root = resolve_voc_root(root)
    except DataError as err:
        return [str(err)]
    splits = splits or available_splits(voc_root)
    if not splits:
        return [f"{voc_root / 'ImageSets' / 'Segmentation'}: no split files (train.txt, val.txt, ...)"]
    problems = []
    checked: set[tuple[Path, Path]] = set()
    for split in splits:
        try:
            ids = read_split(voc_root, split)
        except DataError as err:
            problems.append(str(err))
            continue
        masks = mask_dir(voc_root, split)
        for i in tqdm(ids, desc=f"check {split}", disable=not progress, unit="img"):
            pair = (voc_root / "JPEGImages" / f"{i}.jpg", masks / f"{i}.png")
            if pair in checked:  # trainval repeats train and val
                continue
            checked.add(pair)
            problems += check_sample(pair[0], pair[1], (str(pair[0]), str(pair[1])), num_classes)
    return problems
