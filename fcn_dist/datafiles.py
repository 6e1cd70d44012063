"""Data on disk, without torch: ``DataError``, the VOCdevkit layout and the launch scripts' data check.

Owns where a dataset's files are (``find_voc_root``, ``resolve_voc_root``, split files, mask
folders, the Arrow copy's ``dataset_dict.json``; the folder layout is ``fcn_dist.folderfiles``)
and ``check_data_root(data_cfg)``, the check
that ``python -m fcn_dist.launcher check-data`` runs in a batch shell before any ``srun``. The
readers in ``fcn_dist.data`` use the same functions, so a launch script and fcn-train say the
same thing about the same folder.

Pure Python (no torch, no numpy), as ``config`` is: the launch scripts import it.

Messages name ``data.*`` config keys; the CLIs that take flags instead (fcn-data, fcn-eval,
fcn-predict) reword them with ``fcn_dist.cli.in_cli_terms``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

MASK_DIRS = {"train_aug": "SegmentationClassAug"}
"""Mask folder of splits that do not use SegmentationClass (SBD's augmented set)."""

ARROW_MARKER = "dataset_dict.json"
"""The file ``datasets.DatasetDict.save_to_disk`` writes: an Arrow data root holds it."""

SPLIT_ALIASES = {"val": ("validation", "valid"), "validation": ("val",), "valid": ("val", "validation")}
"""Other names under which a split may be stored in a ``datasets`` set (hub sets often say validation)."""

_WORKER_PREFIX = "Caught DataError in DataLoader worker process"


def _original_message(message: str) -> str:
    """The message a loader worker raised, out of torch's re-raised text; other messages unchanged.

    A DataLoader worker's exception reaches the main process as ``DataError(text)`` where text
    is ``Caught DataError in DataLoader worker process N.\\nOriginal Traceback ...`` ending with
    ``<module>.DataError: <the original message>`` (``torch.utils.data._utils.ExceptionWrapper``).
    """
    if not message.startswith(_WORKER_PREFIX):
        return message
    last = message.rstrip("\n").rsplit("\n", 1)[-1]
    kind, sep, original = last.partition(": ")
    return original if sep and kind.endswith("DataError") else message


class DataError(ValueError):
    """Unusable input data; the one-line message names the offending file and the fix.

    Raised in a DataLoader worker, it reaches the main process re-raised by torch as a
    ``DataError`` of the worker's traceback text; the constructor keeps only the original
    message, so every entry point prints the same one line at any ``data.num_workers``.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(_original_message(str(message)))


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
                        f"JPEGImages/ and ImageSets/Segmentation/; set data.root to such a folder")
    return found


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


def arrow_splits(root: Union[str, os.PathLike]) -> list[str]:
    """The split names of an Arrow data root (``fcn-data prepare`` output).

    Raises:
        DataError: ``root`` holds no readable ``dataset_dict.json``.
    """
    root = Path(root).expanduser()
    marker = root / ARROW_MARKER
    if not marker.is_file():
        raise DataError(f"{root} is not an Arrow dataset (no {ARROW_MARKER}); create it with "
                        f"`fcn-data prepare --data-root VOC_DIR --out {root}`, or set data.root to one")
    try:
        return list(json.loads(marker.read_text())["splits"])
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{marker}: unreadable ({type(err).__name__}: {err}); re-create the dataset with "
                        "`fcn-data prepare`") from None


def find_split(present, split: str) -> Optional[str]:
    """The name under which ``split`` is among ``present`` (itself or an alias), or None."""
    return next((name for name in (split, *SPLIT_ALIASES.get(split, ())) if name in present), None)


def check_data_root(data_cfg, num_classes: Optional[int] = None) -> Optional[str]:
    """What would stop training from finding its data, found without reading any image; None if nothing.

    ``data.format=voc``: the VOC2012 folder and the split files of ``data.train_split`` and
    ``data.val_split`` (skipped with ``data.download=true``, which fetches it). ``arrow``: the
    dataset and both splits. ``folder``: classes.yaml, every image paired with its mask, and
    both splits (``fcn_dist.folderfiles.check_folder_root``). ``synthetic`` is generated on first
    use and ``hub`` may be a hub name: neither is checked. Used by the launch scripts before
    ``srun`` (a missing root otherwise fails every rank at once, seconds later, inside the job).

    Args:
        data_cfg: ``fcn_dist.config.DataConfig``.
        num_classes: ``model.num_classes``, checked against the data's classes (``data.classes``,
            a folder set's or an Arrow copy's classes.yaml), as ``build_dataloaders`` does.

    Returns:
        The one-line message fcn-train would give, or None.
    """
    from .config import ConfigError

    splits = list(dict.fromkeys((data_cfg.train_split, data_cfg.val_split)))
    try:
        if data_cfg.format == "folder":
            from .folderfiles import check_folder_root

            check_folder_root(data_cfg, num_classes)
        elif data_cfg.format == "voc" and not data_cfg.download:
            voc = resolve_voc_root(data_cfg.root)
            for split in splits:
                read_split(voc, split)
        elif data_cfg.format == "arrow":
            present = arrow_splits(data_cfg.root)
            for split in splits:
                if find_split(present, split) is None:
                    raise DataError(f"{data_cfg.root} has no split {split!r} (splits: {', '.join(present)}); "
                                    "set data.train_split / data.val_split")
        if num_classes is not None and data_cfg.format != "folder":
            from .folderfiles import checked_classes

            checked_classes(data_cfg, num_classes)  # data.classes (an Arrow copy's classes.yaml) against it
    except (DataError, ConfigError) as err:  # ConfigError: a folder set's classes against model.num_classes
        return str(err)
    return None
