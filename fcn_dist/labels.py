"""Labels: class names, the void value and the VOC palette, defined once for the whole package.

Metrics, the loss, inference, prediction and the data readers all import these from here, so
none of them needs ``fcn_dist.data``. Pure Python: no torch, no numpy (the CLIs' ``--help``
and config checks import it cheaply).
"""

from __future__ import annotations

from typing import Optional, Sequence

IGNORE_INDEX = 255
"""The void label (VOC's object outlines, the train preset's padding): ignored by loss and metrics.
Masks are uint8, so classes are 0..254."""

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv/monitor",
)


def _voc_palette() -> list[int]:
    """The VOC colour map: bit i of the index goes to bit 7 - i // 3 of channel i % 3."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


VOC_PALETTE = _voc_palette()
"""The 256-entry VOC palette, flat [r0, g0, b0, r1, ...] for ``PIL.Image.putpalette``."""


def class_names(classes: Optional[Sequence[str]] = None, num_classes: Optional[int] = None) -> list[str]:
    """The class names of a model or dataset: the fallback every part of the package uses.

    Args:
        classes: explicit names (``data.classes``, a checkpoint's metadata); None or empty when unset.
        num_classes: C, when known; checked against ``classes``.

    Returns:
        ``classes``; else the 21 VOC names (when ``num_classes`` is None or 21); else
        ``class_0 .. class_<C-1>``.

    Raises:
        ValueError: ``classes`` does not have ``num_classes`` names.
    """
    if classes:
        if num_classes is not None and len(classes) != num_classes:
            raise ValueError(f"{len(classes)} class names for {num_classes} classes")
        return list(classes)
    if num_classes is None or num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    return [f"class_{i}" for i in range(num_classes)]
