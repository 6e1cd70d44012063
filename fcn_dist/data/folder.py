"""The folder reader (``data.format=folder``): ``images/`` and ``masks/`` of matching stems, and a ``classes.yaml``.

Where the files are, what ``classes.yaml`` holds and how splits are made is
``fcn_dist.folderfiles`` (pure Python, shared with the launch scripts' data check). This module
decodes: ``decode_folder_mask`` turns a mask into class ids (index masks through ``ignore`` and
``remap``, RGB masks through ``colors`` and ``void_color``), and ``FolderSegmentation`` gives the
same ``(image uint8 (3, H, W), mask uint8 (H, W))`` items as the VOCdevkit reader, void = 255.

Every guarantee of the VOC reader holds: images are read as stored (``voc.read_image``: no EXIF
rotation; ``fcn-data check`` warns about tagged images), an image or mask above
``data.max_image_pixels`` is refused from its header, every bad file is a ``DataError`` naming
it, and every image of a split is an item (an image without mask, a mask without image, or an
image in no split file stops the reader: nothing is left out silently).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..config import DEFAULT_MAX_IMAGE_PIXELS
from ..datafiles import DataError
from ..folderfiles import MAX_MASK_VALUE, ClassSpec, check_model_classes, read_class_spec, scan_folder, split_stems
from ..labels import IGNORE_INDEX
from .voc import Source, image_size, open_image, read_image, to_tensors

INDEX_MODES = ("P", "L", "1", "I", "I;16", "I;16B", "I;16L")
"""PIL modes of index masks (palette, grayscale, bilevel, 16/32-bit grayscale)."""
RGB_MODES = ("RGB", "RGBA", "P")
"""PIL modes of RGB masks (alpha dropped; a palette PNG through its palette)."""


class MaskDecoder:
    """Class ids of a folder set's masks, as its ``classes.yaml`` says; picklable (loader workers).

    Index masks go through a lookup table over every stored value (``0..65535``): class ids stay,
    ``ignore`` is void, remapped values get their class id, anything else is void with a remap
    and an error without one. RGB masks are matched against the sorted colour codes.
    """

    def __init__(self, spec: ClassSpec) -> None:
        self.spec = spec
        if spec.colors is None:
            lut = np.full(MAX_MASK_VALUE + 1, IGNORE_INDEX if spec.remap is not None else -1, dtype=np.int16)
            if spec.remap is None:
                lut[:spec.num_classes] = np.arange(spec.num_classes)
            else:
                for value, target in spec.remap.items():
                    lut[value] = target
            lut[spec.ignore] = IGNORE_INDEX
            self.lut = lut
        else:
            pairs = [(_code(c), k) for k, c in enumerate(spec.colors)] + [(_code(c), IGNORE_INDEX)
                                                                          for c in spec.void_colors]
            pairs.sort()
            self.codes = np.array([code for code, _ in pairs], dtype=np.int32)
            self.ids = np.array([k for _, k in pairs], dtype=np.uint8)

    def __call__(self, src: Source, name: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
        """Decode the mask ``src`` into uint8 (H, W) class ids, 255 = void.

        Raises:
            DataError: unreadable or oversized file, a mode the class file does not describe,
                values that are not class ids (no remap), colours not in the list.
        """
        img = open_image(src, name, max_pixels)
        if self.spec.colors is not None:
            if img.mode not in RGB_MODES:
                raise DataError(f"{name}: mask has PIL mode {img.mode}, but {self.spec.path} gives colors: save masks "
                                "as RGB PNGs in those colours, or remove colors for index masks")
            return self.from_rgb(np.asarray(img.convert("RGB") if img.mode != "RGB" else img), name)
        if img.mode not in INDEX_MODES:
            hint = ("add colors (one [R, G, B] per class) to it for RGB masks, or save masks as index PNGs"
                    if img.mode in ("RGB", "RGBA") else "save masks as palette (P) or grayscale (L) PNGs of class ids")
            raise DataError(f"{name}: mask has PIL mode {img.mode}, but {self.spec.path} gives no colors: {hint}")
        return self.from_index(np.asarray(img), name)

    def from_index(self, values: np.ndarray, name: str) -> np.ndarray:
        """Class ids of stored index values (any integer (H, W) array)."""
        if values.ndim != 2:
            raise DataError(f"{name}: mask has shape {tuple(values.shape)}; expected (H, W) class indices")
        if values.dtype == np.bool_:
            values = values.view(np.uint8)
        if values.dtype != np.uint8 and values.size and (values.min() < 0 or values.max() > MAX_MASK_VALUE):
            raise DataError(f"{name}: mask values {int(values.min())}..{int(values.max())} are beyond 16 bits; save "
                            "the mask as an 8- or 16-bit PNG")
        ids = self.lut[values]
        bad = ids < 0
        if bad.any():
            found = np.unique(values[bad]).tolist()[:8]
            spec = self.spec
            raise DataError(f"{name}: mask values {found} are not class ids 0..{spec.num_classes - 1} nor the ignore "
                            f"value {spec.ignore} of {spec.path}; fix the mask, or map them with remap in "
                            f"{spec.path.name}")
        return ids.astype(np.uint8)

    def from_rgb(self, rgb: np.ndarray, name: str) -> np.ndarray:
        """Class ids of an RGB mask (H, W, 3)."""
        codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        pos = np.minimum(np.searchsorted(self.codes, codes), len(self.codes) - 1)
        known = self.codes[pos] == codes
        if not known.all():
            unknown = np.unique(codes[~known])
            first = int(unknown[0])
            colour = [first >> 16, (first >> 8) & 255, first & 255]
            more = f" (and {len(unknown) - 1} other unknown colours)" if len(unknown) > 1 else ""
            void = "nor a void_color" if self.spec.void_colors else "and it gives no void_color"
            raise DataError(f"{name}: colour {colour} on {int(np.count_nonzero(~known))} pixels{more} is not a class "
                            f"colour of {self.spec.path} ({void}); fix the mask (antialiased or JPEG-saved masks "
                            "blend colours: save them losslessly), or add the colour to colors or void_color")
        return self.ids[pos]


def _code(colour: Sequence[int]) -> int:
    return (colour[0] << 16) | (colour[1] << 8) | colour[2]


class FolderSegmentation(torch.utils.data.Dataset):
    """The folder-layout reader: one item per image of a split.

    Construction reads ``classes.yaml``, lists both folders and the split; files are decoded
    lazily in ``__getitem__``. Images are read as stored, without EXIF rotation.

    Args:
        root: the data root (``images/``, ``masks/``, ``classes.yaml``, optional ``splits/``).
        split: split name: a split file's, or ``train`` / ``val`` of the ``val_fraction`` split.
        transform: optional callable ``(image, mask) -> (image, mask)`` on tensors.
        classes: the model's class names; when given, they must be classes.yaml's.
        max_pixels: the largest width x height accepted (``data.max_image_pixels``).
        val_fraction, split_seed: ``data.val_fraction`` and ``data.split_seed`` (no split files).

    Raises:
        DataError: missing or malformed classes.yaml, an unpaired file, a missing or empty split,
            a split-file stem without image, an image in no split file (the first problem, with
            how many more).
    """

    def __init__(self, root: Union[str, os.PathLike], split: str, transform: Optional[Callable] = None,
                 classes: Optional[Sequence[str]] = None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 val_fraction: float = 0.1, split_seed: int = 0) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        self.transform = transform
        self.max_pixels = max_pixels
        scan = scan_folder(self.root)
        if not self.root.is_dir():
            scan.raise_first()
        self.spec = read_class_spec(self.root)
        check_model_classes(self.spec, classes)
        scan.raise_first()
        self.ids = split_stems(scan, split, val_fraction, split_seed)
        self.images = [scan.images[s] for s in self.ids]
        self.masks = [scan.masks[s] for s in self.ids]
        self.decoder = MaskDecoder(self.spec)

    @property
    def classes(self) -> list[str]:
        return list(self.spec.names)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns image uint8 (3, H, W) and mask uint8 (H, W) of class ids, 255 = void, after ``transform``."""
        image_path, mask_path = self.images[index], self.masks[index]
        image, orientation = read_image(image_path, str(image_path), self.max_pixels)
        mask = self.decoder(mask_path, str(mask_path), self.max_pixels)
        image, mask = to_tensors(image, mask, str(mask_path), orientation)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask

    def sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every image, from the file headers."""
        return [image_size(p, str(p), self.max_pixels) for p in self.images]


def load_folder(data_cfg, split: str) -> FolderSegmentation:
    """A split of ``data.root`` in the folder layout, as ``data_cfg`` says (classes checked against
    ``data.classes`` when set)."""
    return FolderSegmentation(data_cfg.root, split, classes=data_cfg.classes, max_pixels=data_cfg.max_image_pixels,
                              val_fraction=data_cfg.val_fraction, split_seed=data_cfg.split_seed)
