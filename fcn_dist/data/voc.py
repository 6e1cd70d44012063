"""Pascal VOC: the VOCdevkit reader and the shared decoders.

Reads the VOCdevkit layout (found by ``fcn_dist.datafiles``, which also defines ``DataError``)::

    VOC2012/JPEGImages/<id>.jpg
    VOC2012/SegmentationClass/<id>.png          palette PNGs: index = class, 255 = void
    VOC2012/SegmentationClassAug/<id>.png       SBD "VOC aug" masks (split train_aug)
    VOC2012/ImageSets/Segmentation/<split>.txt  one id per line

Labels are read as palette indices, never through RGB colours: 0..C-1 are classes and 255
(void, the object outlines) stays 255 so the loss and the metrics ignore it. An RGB mask is
accepted only when every colour is a VOC palette colour.

Images are read as stored: an EXIF orientation tag is not applied, because VOC-style
annotation tools label the stored pixels (``fcn-data check`` warns about every tagged image;
prediction applies the tag: ``decode_image(..., apply_exif=True)``). An image above
``max_pixels`` (``data.max_image_pixels``, by default Pillow's decompression-bomb limit) is
refused from its header, before any pixel is decoded.

The decoders (``decode_image``, ``read_image`` and ``open_image``, which live in the torch-free
``fcn_dist.images`` and are re-exported here, ``decode_mask``, ``load_pair``) are shared by the
Arrow and hub readers, the checks and fcn-predict, so every source gives the same tensors and the
same errors. Every bad input raises ``DataError`` with a one-line message that names the
offending file and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch

from ..config import DEFAULT_MAX_IMAGE_PIXELS
from ..datafiles import (MASK_DIRS, DataError, available_splits, find_voc_root, mask_dir, read_split,  # noqa: F401
                         resolve_voc_root, split_file)
from ..images import (EXIF_ORIENTATION, Source, decode_image, exif_orientation, open_image, read_image,  # noqa: F401
                      too_large)
from ..labels import IGNORE_INDEX, VOC_CLASSES, VOC_PALETTE
from ..model import hwc_to_chw

_COLOUR_TO_INDEX = {
    (VOC_PALETTE[3 * i] << 16) | (VOC_PALETTE[3 * i + 1] << 8) | VOC_PALETTE[3 * i + 2]: i for i in range(256)
}


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


def decode_mask(src: Source, name: str, num_classes: int = len(VOC_CLASSES),
                max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode a class-index mask and check its values.

    Palette (P) and grayscale (L, I) PNGs hold the indices themselves; an RGB mask is mapped
    back through the VOC palette and must use palette colours only.

    Args:
        src: a file path or the encoded bytes.
        name: what error messages call it.
        num_classes: values must be in ``0..num_classes-1`` or 255.
        max_pixels: the largest width x height accepted.

    Returns:
        uint8 array (H, W) of class indices, 255 = void.
    """
    img = open_image(src, name, max_pixels)
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
                        f"fix the mask, or use classes that include these values (data.classes)")
    return mask.astype(np.uint8, copy=False)


def _size_hint(image_hw: tuple[int, int], mask_hw: tuple[int, int], orientation: int) -> str:
    """Why an image and its mask may differ in size: transposed sizes point at a rotation."""
    if image_hw[::-1] != mask_hw:
        return ""
    if orientation >= 5:  # orientations 5-8 swap width and height for display
        return (f"; the image has EXIF orientation {orientation}, which viewers show as {image_hw[0]}x{image_hw[1]}, "
                "the mask's size: EXIF is the likely cause (the mask was drawn on the rotated view, but images are "
                "read as stored, as VOC tools do): rotate the mask to the stored pixels, or save the image rotated "
                "without the EXIF tag")
    return "; the sizes are transposed: one of them was likely rotated"


def to_tensors(image: np.ndarray, mask: np.ndarray, name: str,
               orientation: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Check sizes and convert to tensors.

    Args:
        image: uint8 (H, W, 3).
        mask: uint8 (H, W).
        name: what the error calls the mask.
        orientation: the image's EXIF orientation, named by the error when it explains a mismatch.

    Returns:
        image uint8 (3, H, W), a channels-last view (``fcn_dist.model.hwc_to_chw``), mask uint8 (H, W).
    """
    if image.shape[:2] != mask.shape:
        raise DataError(f"{name}: mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from the image size "
                        f"{image.shape[1]}x{image.shape[0]}; every mask must match its image"
                        + _size_hint(image.shape[:2], mask.shape, orientation))
    image_t = hwc_to_chw(image)
    mask_t = torch.from_numpy(np.array(mask, dtype=np.uint8))
    return image_t, mask_t


def load_pair(image_src: Source, mask_src: Source, names: tuple[str, str], num_classes: int = len(VOC_CLASSES),
              max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and validate one (image, mask) sample; the image's stored pixels (no EXIF rotation).

    Args:
        image_src, mask_src: file paths or encoded bytes.
        names: what error messages call the image and the mask.
        num_classes: number of classes the mask may use.
        max_pixels: the largest width x height accepted.

    Returns:
        image uint8 (3, H, W), mask uint8 (H, W) with 255 kept.
    """
    image, orientation = read_image(image_src, names[0], max_pixels)
    mask = decode_mask(mask_src, names[1], num_classes, max_pixels)
    return to_tensors(image, mask, names[1], orientation)


def image_size(src: Source, name: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(H, W) of an image from its header only (nothing is decoded).

    Raises:
        DataError: missing or unreadable file, or more than ``max_pixels`` pixels.
    """
    img = open_image(src, name, max_pixels, decode=False)
    img.close()
    return img.height, img.width


class VOCSegmentation(torch.utils.data.Dataset):
    """The VOCdevkit reader: one item per id of ``ImageSets/Segmentation/<split>.txt``.

    Files are decoded lazily in ``__getitem__``; construction only lists and stats them, so
    start-up does not read the dataset. Images are read as stored, without EXIF rotation.

    Args:
        root: a folder holding ``VOCdevkit/VOC2012``, or the VOC2012 folder.
        split: split file name (train, val, trainval, or train_aug for SBD's masks).
        transform: optional callable ``(image, mask) -> (image, mask)`` on tensors.
        num_classes: mask values must be in ``0..num_classes-1`` or 255.
        max_pixels: the largest width x height accepted (``data.max_image_pixels``).

    Raises:
        DataError: missing root or split file, empty split, or listed files missing.
    """

    def __init__(self, root: Union[str, os.PathLike], split: str, transform: Optional[Callable] = None,
                 num_classes: int = len(VOC_CLASSES), max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.voc_root = resolve_voc_root(root)
        self.split = split
        self.transform = transform
        self.num_classes = num_classes
        self.max_pixels = max_pixels
        self.ids = read_split(self.voc_root, split)
        self.images, self.masks = sample_paths(self.voc_root, split, self.ids)
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
                                (str(self.images[index]), str(self.masks[index])), self.num_classes, self.max_pixels)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask

    def sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every image, from the JPEG headers."""
        return [image_size(p, str(p), self.max_pixels) for p in self.images]


def sample_paths(voc_root: Path, split: str, ids: list[str]) -> tuple[list[Path], list[Path]]:
    """The image and mask files of ``ids`` in a split: ``JPEGImages/<id>.jpg`` and ``<mask dir>/<id>.png``."""
    masks = mask_dir(voc_root, split)
    return [voc_root / "JPEGImages" / f"{i}.jpg" for i in ids], [masks / f"{i}.png" for i in ids]
