"""Image files to pixels, without torch: the decoders that every reader and fcn-predict share.

``open_image`` checks the size from the header before any pixel is decoded (``max_pixels``,
``data.max_image_pixels``, by default Pillow's decompression-bomb limit), then decodes fully, so
truncation is found here; ``read_image`` gives the stored pixels and the EXIF orientation (the
datasets read images as stored, as VOC annotation tools label them); ``decode_image(...,
apply_exif=True)`` turns them as viewers show them (prediction). Every bad input raises
``DataError`` with one line naming the file and the fix.

numpy and Pillow only: ``fcn-predict --onnx`` decodes with these and never imports torch
(``fcn_dist.data.voc`` re-exports them for the readers).
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Iterator, Union

import numpy as np
from PIL import Image, ImageOps

from .config import DEFAULT_MAX_IMAGE_PIXELS
from .datafiles import DataError

Source = Union[str, os.PathLike, bytes]
"""A file path, or the encoded bytes of a file (Arrow and hub rows)."""

EXIF_ORIENTATION = 0x0112
"""The EXIF tag that says how a viewer turns the stored pixels (1: as stored; 5-8 swap width and height)."""


@contextlib.contextmanager
def _pillow_limit_off() -> Iterator[None]:
    """Pillow's own decompression-bomb check off while a header is read; ``open_image`` applies ours.

    Pillow has no per-call limit: ``Image.open`` compares the size with the module global
    ``Image.MAX_IMAGE_PIXELS`` (a warning above it, ``DecompressionBombError`` above twice it).
    It is set back at once, so nothing else in the process loses the check; the decoders run in
    one thread per process (loader workers are processes).
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def too_large(name: str, width: int, height: int, max_pixels: int) -> DataError:
    """The error for an image above ``data.max_image_pixels``."""
    return DataError(f"{name}: {width}x{height} pixels ({width * height / 1e6:.1f} Mpx) is above "
                     f"data.max_image_pixels={max_pixels} (raise it if you trust the file); downscale the image "
                     f"or remove its id from the split file")


def open_image(src: Source, name: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               decode: bool = True) -> Image.Image:
    """Open an image, check its size from the header, then decode it fully.

    Decoding fully here finds truncation here, not in a worker later; the size is checked
    before any pixel is decoded, so an oversized file costs no memory.

    Args:
        src: a file path or the encoded bytes.
        name: what error messages call it.
        max_pixels: the largest width x height accepted (``data.max_image_pixels``).
        decode: False reads the header only (sizes, EXIF).

    Raises:
        DataError: missing, corrupt or truncated file, or more than ``max_pixels`` pixels.
    """
    try:
        with _pillow_limit_off():
            img = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
        if img.width * img.height > max_pixels:
            raise too_large(name, img.width, img.height, max_pixels)
        if decode:
            img.load()
    except FileNotFoundError:
        raise DataError(f"{name}: file not found; restore it or remove its id from the split file") from None
    except (OSError, SyntaxError) as err:  # PIL's signals for corrupt or truncated files
        raise DataError(f"{name}: corrupt or truncated image ({err}); replace the file or remove its id "
                        f"from the split file") from None
    return img


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation of an opened image: 1 (as stored) when there is none or it is invalid."""
    value = img.getexif().get(EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))


def read_image(src: Source, name: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[np.ndarray, int]:
    """The stored pixels of an RGB image and its EXIF orientation (docs/DESIGN.md, "EXIF orientation").

    Returns:
        (uint8 array (H, W, 3) as stored, EXIF orientation 1..8).
    """
    img = open_image(src, name, max_pixels)
    return _rgb(img), exif_orientation(img)


def decode_image(src: Source, name: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 apply_exif: bool = False) -> np.ndarray:
    """Decode an RGB image.

    Args:
        src: a file path or the encoded bytes.
        name: what error messages call it (the file path, or dataset and row).
        max_pixels: the largest width x height accepted.
        apply_exif: turn the pixels as the EXIF orientation says, as viewers show the photo
            (prediction); datasets read the stored pixels, which their masks label.

    Returns:
        uint8 array (H, W, 3).
    """
    img = open_image(src, name, max_pixels)
    if apply_exif:
        img = ImageOps.exif_transpose(img)
    return _rgb(img)
