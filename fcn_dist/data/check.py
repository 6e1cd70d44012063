"""``fcn-data check``'s checks: every problem of a dataset, warnings, and per-split counts.

``check_voc`` decodes every image and mask of the splits that training and evaluation read
(``train`` and ``val`` unless told otherwise, plus every other split file present) and returns a
``CheckReport``:

- problems (exit 1): missing root, split file or listed file; empty split; corrupt or
  truncated file; an image or mask above the pixel limit; mask size differing from its image;
  mask values outside 0..C-1 and not 255; RGB masks with non-VOC colours. Each is one line
  naming the file; one bad file never stops the check.
- warnings (exit 0): images whose EXIF orientation is not 1 (viewers show them turned, the
  readers use the stored pixels, which the masks must label), very large images.
- per split: images, the range of heights and widths, pixels per class.

The Arrow reader (``fcn_dist.data.hub.ArrowSegmentation.check``) fills the same report with the
same per-sample check, ``check_sample``; ``check_folder`` checks a folder set (``data.format=folder``)
the same way, its masks decoded as its classes.yaml says, and adds the folder layout's problems:
a malformed classes.yaml field, an image without mask, a mask without image, a file of another
type, a split-file stem without image, an image in no split file; and a warning for images in
both the train and the val split.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ..config import DEFAULT_MAX_IMAGE_PIXELS
from ..datafiles import DataError, available_splits, read_split, resolve_voc_root
from ..labels import IGNORE_INDEX, VOC_CLASSES, class_names
from .voc import Source, decode_mask, read_image, sample_paths, to_tensors

DEFAULT_SPLITS = ("train", "val")
"""What fcn-train reads unless told otherwise (``data.train_split``, ``data.val_split``), and fcn-eval's ``--split``."""

LARGE_IMAGE_PIXELS = 16_000_000
"""Above this (16 Mpx) an image is worth a warning: every read decodes all of it, and evaluation
and prediction run it whole (21 classes of fp32 logits alone are 1.3 GB)."""

EXIF_ORIENTATIONS = {2: "mirrored", 3: "rotated 180", 4: "flipped", 5: "transposed", 6: "rotated 90 clockwise",
                     7: "transverse", 8: "rotated 90 counter-clockwise"}
"""How a viewer turns the stored pixels for each EXIF orientation but 1."""


@dataclasses.dataclass
class SplitSummary:
    """Counts of one split: images, size range, pixels per class (void included)."""

    split: str
    images: int = 0
    decoded: int = 0
    heights: tuple[int, int] = (0, 0)
    widths: tuple[int, int] = (0, 0)
    pixels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(256, dtype=np.int64))

    def add(self, size: Optional[tuple[int, int]], pixels: Optional[np.ndarray]) -> None:
        """Count one listed sample: its image (H, W) when it decoded, its mask's pixels per value (256,) when
        it decoded and fits the image."""
        self.images += 1
        if size is not None:
            h, w = size
            self.heights = (min(self.heights[0], h), max(self.heights[1], h)) if self.decoded else (h, h)
            self.widths = (min(self.widths[0], w), max(self.widths[1], w)) if self.decoded else (w, w)
            self.decoded += 1
        if pixels is not None:
            self.pixels += pixels

    def line(self, num_classes: int, classes: Optional[Sequence[str]] = None) -> str:
        """``split 'train': 12 images, height 57-96, width 64-96; pixels per class: background 1,234 (61.0%), ...``.

        Pixels are counted over the samples whose image and mask both decode at one size; classes
        are named by ``classes`` (a folder set's), else by ``labels.class_names``' fallback.
        """
        unread = f" ({self.images - self.decoded} unreadable)" if self.decoded < self.images else ""
        sizes = (f", height {self.heights[0]}-{self.heights[1]}, width {self.widths[0]}-{self.widths[1]}"
                 if self.decoded else "")
        total = int(self.pixels.sum())
        names = {**dict(enumerate(class_names(classes, None if classes else num_classes))), IGNORE_INDEX: "void"}
        shares = ", ".join(f"{names.get(k, k)} {int(n):,} ({100 * n / total:.1f}%)"
                           for k, n in enumerate(self.pixels) if n)
        images = f"{self.images} image{'' if self.images == 1 else 's'}"
        return f"split {self.split!r}: {images}{unread}{sizes}; pixels per class: {shares or 'none'}"


@dataclasses.dataclass
class CheckReport:
    """What ``check_voc`` (or an Arrow check) found: problems, warnings and a summary per split."""

    problems: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    splits: list[SplitSummary] = dataclasses.field(default_factory=list)
    classes: Optional[list[str]] = None
    """The class names, when the data names them (a folder set's classes.yaml)."""


@dataclasses.dataclass
class _Sample:
    """One checked sample: what it adds to a report, kept so a split that repeats it (trainval) needs no decode."""

    problems: list[str]
    warnings: list[str]
    size: Optional[tuple[int, int]]
    pixels: Optional[np.ndarray]
    """int64 (256,): the mask's pixels per value (not the mask: a whole VOC split of masks is ~2 GB)."""


def _image_warnings(name: str, image: np.ndarray, orientation: int) -> list[str]:
    warnings = []
    if orientation != 1:
        warnings.append(f"{name}: EXIF orientation {orientation} ({EXIF_ORIENTATIONS[orientation]}): viewers show "
                        "it turned, training and evaluation read the stored pixels (as VOC annotation tools label "
                        "them); check that its mask matches the stored pixels, or save it turned without the tag")
    h, w = image.shape[:2]
    if h * w > LARGE_IMAGE_PIXELS:
        warnings.append(f"{name}: {w}x{h} pixels ({h * w / 1e6:.1f} Mpx) is very large: every read decodes all of "
                        "it, and evaluation runs it whole; downscale it unless you need that resolution")
    return warnings


def _check_sample(image_src: Source, mask_src: Source, names: tuple[str, str], num_classes: int,
                  max_pixels: int, decode: Optional[Callable[[Source, str, int], np.ndarray]] = None) -> _Sample:
    problems: list[str] = []
    warnings: list[str] = []
    image = mask = None
    orientation = 1
    try:
        image, orientation = read_image(image_src, names[0], max_pixels)
        warnings = _image_warnings(names[0], image, orientation)
    except DataError as err:
        problems.append(str(err))
    try:
        mask = (decode(mask_src, names[1], max_pixels) if decode is not None
                else decode_mask(mask_src, names[1], num_classes, max_pixels))
    except DataError as err:
        problems.append(str(err))
    if image is not None and mask is not None and image.shape[:2] != mask.shape:
        try:
            to_tensors(image, mask, names[1], orientation)
        except DataError as err:
            problems.append(str(err))
        mask = None
    # only the pixels of samples that train: a mask whose image is unreadable or of another size does not
    pixels = None if mask is None or image is None else np.bincount(mask.ravel(), minlength=256)
    return _Sample(problems, warnings, None if image is None else image.shape[:2], pixels)


def check_sample(image_src: Source, mask_src: Source, names: tuple[str, str], num_classes: int,
                 report: CheckReport, summary: SplitSummary, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Check one sample (image and mask independently) into ``report`` and count it in ``summary``.

    Args:
        image_src, mask_src: file paths or encoded bytes.
        names: what messages call the image and the mask.
        num_classes: mask values must be in ``0..num_classes-1`` or 255.
        report: gets one line per problem and per warning.
        summary: the split's counts.
        max_pixels: the largest width x height accepted.
    """
    sample = _check_sample(image_src, mask_src, names, num_classes, max_pixels)
    report.problems += sample.problems
    report.warnings += sample.warnings
    summary.add(sample.size, sample.pixels)


def missing_split(err: DataError, split: str) -> str:
    """The problem line of a split that cannot be read; a default split's says why it is wanted."""
    if split not in DEFAULT_SPLITS:
        return str(err)
    return f"{err}; fcn-train and fcn-eval read {split!r} unless told otherwise: add it, or name your splits with --split"


def check_voc(root: Union[str, os.PathLike], splits: Optional[Sequence[str]] = None,
              num_classes: int = len(VOC_CLASSES), progress: bool = False,
              max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> CheckReport:
    """Validate a VOCdevkit dataset and report every problem, not only the first.

    Args:
        root: data root (see ``fcn_dist.datafiles.resolve_voc_root``).
        splits: split names; None means ``DEFAULT_SPLITS`` (a missing one is a problem) and every
            other split file present.
        num_classes: number of classes masks may use.
        progress: show a tqdm bar per split.
        max_pixels: the largest width x height accepted (``--max-image-pixels``).

    Returns:
        The report; no problems when the dataset is good.
    """
    from tqdm.auto import tqdm

    report = CheckReport()
    try:
        voc_root = resolve_voc_root(root)
    except DataError as err:
        report.problems.append(str(err))
        return report
    if splits is None:
        splits = list(dict.fromkeys([*DEFAULT_SPLITS, *available_splits(voc_root)]))
    checked: dict[tuple[Path, Path], _Sample] = {}
    for split in splits:
        try:
            ids = read_split(voc_root, split)
        except DataError as err:
            report.problems.append(missing_split(err, split))
            continue
        summary = SplitSummary(split)
        report.splits.append(summary)
        for pair in tqdm(list(zip(*sample_paths(voc_root, split, ids))), desc=f"check {split}", unit="img",
                         disable=not progress):
            sample = checked.get(pair)
            if sample is None:
                sample = checked[pair] = _check_sample(pair[0], pair[1], (str(pair[0]), str(pair[1])), num_classes,
                                                       max_pixels)
                report.problems += sample.problems  # once, though trainval repeats train and val
                report.warnings += sample.warnings
            summary.add(sample.size, sample.pixels)
    return report


def check_folder(root: Union[str, os.PathLike], splits: Optional[Sequence[str]] = None, progress: bool = False,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, val_fraction: float = 0.1, split_seed: int = 0,
                 num_classes: Optional[int] = None) -> CheckReport:
    """Validate a folder set (``fcn_dist.folderfiles``) and report every problem, not only the first.

    Args:
        root: the data root (``images/``, ``masks/``, ``classes.yaml``, optional ``splits/``).
        splits: split names; None means ``DEFAULT_SPLITS`` (a missing one is a problem) and every
            other split file present (without split files: the ``val_fraction`` split's train and val).
        progress: show a tqdm bar per split.
        max_pixels: the largest width x height accepted (``--max-image-pixels``).
        val_fraction, split_seed: the split of a set without split files.
        num_classes: when given (``--num-classes``), it must be classes.yaml's number of classes.

    Returns:
        The report, with ``classes`` set when classes.yaml is usable.
    """
    from tqdm.auto import tqdm

    from ..folderfiles import read_class_spec, scan_folder, split_files, split_problems, split_stems
    from .folder import MaskDecoder

    report = CheckReport()
    scan = scan_folder(root)
    if not scan.root.is_dir():
        report.problems += scan.problems
        return report
    decode = None
    try:
        spec = read_class_spec(scan.root)
        report.classes = list(spec.names)
        decode = MaskDecoder(spec)
        if num_classes is not None and num_classes != spec.num_classes:
            report.problems.append(f"{spec.path} names {spec.num_classes} classes but --num-classes is {num_classes}; "
                                   "leave --num-classes out: a folder set's classes.yaml says how many")
    except DataError as err:
        report.problems.append(str(err))
    report.problems += scan.problems
    report.problems += split_problems(scan)
    present = list(split_files(scan.root))
    if splits is None:
        splits = list(dict.fromkeys([*DEFAULT_SPLITS, *present]))
    if decode is None:  # masks still read (unreadable, oversized, size mismatch), their values not: no class file
        def decode(src: Source, name: str, limit: int) -> np.ndarray:
            from .voc import open_image

            img = open_image(src, name, limit)
            return np.full((img.height, img.width), IGNORE_INDEX, dtype=np.uint8)
    checked: dict[str, _Sample] = {}
    members: dict[str, set[str]] = {}
    for split in splits:
        try:
            stems = split_stems(scan, split, val_fraction, split_seed, strict=False)
        except DataError as err:
            report.problems.append(missing_split(err, split))
            continue
        stems = [s for s in stems if s in scan.images]  # the others are problems already
        members[split] = set(stems)
        summary = SplitSummary(split)
        report.splits.append(summary)
        for stem in tqdm(stems, desc=f"check {split}", unit="img", disable=not progress):
            sample = checked.get(stem)
            if sample is None:
                image, mask = scan.images[stem], scan.masks[stem]
                sample = checked[stem] = _check_sample(image, mask, (str(image), str(mask)), 0, max_pixels, decode)
                report.problems += sample.problems
                report.warnings += sample.warnings
            summary.add(sample.size, sample.pixels if report.classes is not None else None)
    both = sorted(members.get(DEFAULT_SPLITS[0], set()) & members.get(DEFAULT_SPLITS[1], set()))
    if both:
        report.warnings.append(f"{scan.root / 'splits'}: {len(both)} image(s) are in both {DEFAULT_SPLITS[0]!r} and "
                               f"{DEFAULT_SPLITS[1]!r} (first: {both[0]}): validation then scores images the model "
                               "trained on")
    return report
