"""Helpers of the data tests: private copies of the synthetic set, EXIF-tagged files, fcn-data check's output."""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

EXIF_ORIENTATION = 0x0112


def copy_voc(src_root: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic set; returns its VOC2012 folder."""
    shutil.copytree(src_root / "VOCdevkit", tmp_path / "VOCdevkit")
    return tmp_path / "VOCdevkit" / "VOC2012"


def save_with_orientation(image: Image.Image, path: Path, orientation: int, **kwargs) -> Path:
    """Save ``image``'s pixels as they are, tagged with an EXIF orientation (as a phone camera does)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    image.save(path, exif=exif, **kwargs)
    return path


def problem_lines(out: str) -> list[str]:
    """fcn-data check's problem lines: stdout without its warnings, per-split counts and verdict."""
    return [line for line in out.strip().splitlines() if not line.startswith(("warning: ", "split '", "fcn-data check:"))]
