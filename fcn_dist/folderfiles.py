"""The folder layout (``data.format=folder``) on disk, without torch: ``classes.yaml``, image/mask pairs, splits.

The layout most people's own data has::

    ROOT/images/<stem>.jpg            (.jpg .jpeg .png .tif .tiff, any case)
    ROOT/masks/<stem>.png             one mask per image, same stem
    ROOT/classes.yaml                 class names, and how mask pixels become class ids
    ROOT/splits/<split>.txt           optional: one stem per line (train.txt, val.txt, ...)

``classes.yaml`` (parsed with ``yaml.safe_load``; every malformed field is a ``DataError`` naming
the file and the field)::

    classes: [background, road, car]      # required: index = class id (at most 255 classes)
    colors: [[0, 0, 0], [128, 64, 128], [0, 0, 142]]   # optional: masks are RGB, one colour per class
    void_color: [255, 255, 255]           # optional, with colors: this colour (or a list of them) is void
    ignore: 255                           # index masks: the value that means void (default 255)
    remap: {7: 1, 26: 2}                  # index masks: stored value -> class id; unmapped values are void

- Index masks (no ``colors``): palette (P) or grayscale (L, I;16) PNGs. A pixel equal to ``ignore``
  is void (fcn_dist's ``IGNORE_INDEX``, 255); without ``remap`` every other value must be a class
  id ``0..C-1`` (another value is an error naming the file); with ``remap`` a value it maps
  becomes that class id (or void, for 255), and every value it does not map is void (as
  Cityscapes' ids that have no train id).
- RGB masks (``colors``): a pixel of class k's colour is class k; a ``void_color`` pixel is void;
  any other colour is an error naming the file and the colour (an antialiased or JPEG-saved mask
  has such colours: re-save it losslessly, or add the colour). ``ignore`` and ``remap`` are for
  index masks and refused with ``colors``.

Splits: with split files in ``ROOT/splits/``, a split is its file (``data.train_split``,
``data.val_split``), every stem it lists must have an image, and every image must be in at least
one split file (none is silently left out). Without split files the set is split into ``train``
and ``val`` by ``data.val_fraction`` and ``data.split_seed`` (``fraction_split``): deterministic,
disjoint, covering every image.

Pure Python (no torch, no numpy), as ``datafiles``: ``python -m fcn_dist.launcher check-data``
uses it. The reader that decodes the files is ``fcn_dist.data.folder``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import yaml

from .datafiles import DataError
from .labels import IGNORE_INDEX, class_names

CLASS_FILE = "classes.yaml"
IMAGE_DIR, MASK_DIR, SPLIT_DIR = "images", "masks", "splits"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
MASK_SUFFIXES = (".png",)
SKIPPED_NAMES = {"thumbs.db", "desktop.ini"}
"""Files that file managers leave in folders; skipped, as are hidden files (a leading dot)."""
FRACTION_SPLITS = ("train", "val")
"""The splits of a set without split files, made by ``data.val_fraction``."""
CLASS_FIELDS = ("classes", "colors", "void_color", "ignore", "remap")
MAX_MASK_VALUE = 65535
"""The largest stored mask value (16-bit PNGs): bound of ``ignore`` and of ``remap``'s keys."""

Colour = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class ClassSpec:
    """A parsed ``classes.yaml``.

    Attributes:
        path: the file.
        names: class names; class id = index.
        colors: one (R, G, B) per class for RGB masks, or None for index masks.
        void_colors: RGB colours that mean void (only with ``colors``).
        ignore: the index-mask value that means void.
        remap: stored index value -> class id (``IGNORE_INDEX`` for void), or None; with a remap,
            values it does not map are void.
    """

    path: Path
    names: tuple[str, ...]
    colors: Optional[tuple[Colour, ...]] = None
    void_colors: tuple[Colour, ...] = ()
    ignore: int = IGNORE_INDEX
    remap: Optional[dict[int, int]] = None

    @property
    def num_classes(self) -> int:
        return len(self.names)


def _bad(path: Path, field: str, problem: str) -> DataError:
    return DataError(f"{path}: field '{field}' {problem}")


def _is_int(value: Any) -> bool:
    return type(value) is int  # YAML's true/false are bools, which Python counts as ints


def _colour(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(_is_int(c) and 0 <= c <= 255 for c in value)


def _names(path: Path, value: Any) -> tuple[str, ...]:
    if value is None:
        raise _bad(path, "classes", "is missing: list the class names, index = class id, e.g. "
                                    "classes: [background, road, car]")
    if not isinstance(value, list) or not value:
        raise _bad(path, "classes", f"must be a non-empty list of class names, not {value!r}")
    bad = [v for v in value if not isinstance(v, str) or not v.strip()]
    if bad:
        raise _bad(path, "classes", f"has {bad[0]!r}, which is not a class name: every entry must be a "
                                    "non-empty string (quote names YAML reads as numbers or booleans)")
    repeated = sorted({v for v in value if value.count(v) > 1})
    if repeated:
        raise _bad(path, "classes", f"repeats {', '.join(map(repr, repeated))}: class names must differ")
    if len(value) > IGNORE_INDEX:
        raise _bad(path, "classes", f"has {len(value)} names: at most {IGNORE_INDEX} classes (masks are uint8 and "
                                    f"{IGNORE_INDEX} is void)")
    return tuple(value)


def _colours(path: Path, value: Any, num_classes: int) -> tuple[Colour, ...]:
    if not isinstance(value, list) or not all(_colour(c) for c in value):
        raise _bad(path, "colors", f"must be a list of [R, G, B] colours (integers 0-255), one per class, "
                                   f"not {value!r}")
    if len(value) != num_classes:
        raise _bad(path, "colors", f"has {len(value)} colours for {num_classes} classes: give one [R, G, B] per class, "
                                   "in class order")
    colours = tuple(tuple(c) for c in value)
    repeated = sorted({c for c in colours if colours.count(c) > 1})
    if repeated:
        raise _bad(path, "colors", f"gives {list(repeated[0])} to more than one class: every class needs its own "
                                   "colour")
    return colours


def _void_colours(path: Path, value: Any, colours: Optional[tuple[Colour, ...]]) -> tuple[Colour, ...]:
    if value is None:
        return ()
    if colours is None:
        raise _bad(path, "void_color", "needs colors: it names the RGB colour of void pixels in RGB masks (index "
                                       "masks use ignore)")
    if _colour(value):
        value = [value]
    if not isinstance(value, list) or not value or not all(_colour(c) for c in value):
        raise _bad(path, "void_color", f"must be an [R, G, B] colour (integers 0-255) or a list of them, not {value!r}")
    voids = tuple(tuple(c) for c in value)
    taken = [c for c in voids if c in colours]
    if taken:
        raise _bad(path, "void_color", f"{list(taken[0])} is also the colour of class "
                                       f"{colours.index(taken[0])}: void needs a colour of its own")
    return voids


def _ignore(path: Path, value: Any, colours: Optional[tuple[Colour, ...]]) -> int:
    if value is None:
        return IGNORE_INDEX
    if colours is not None:
        raise _bad(path, "ignore", "is for index masks, but colors makes the masks RGB: give void's colour as "
                                   "void_color instead")
    if not _is_int(value) or not 0 <= value <= MAX_MASK_VALUE:
        raise _bad(path, "ignore", f"must be the mask value that means void, an integer 0-{MAX_MASK_VALUE}, "
                                   f"not {value!r}")
    return value


def _remap(path: Path, value: Any, colours: Optional[tuple[Colour, ...]], ignore: int,
           num_classes: int) -> Optional[dict[int, int]]:
    if value is None:
        return None
    if colours is not None:
        raise _bad(path, "remap", "is for index masks, but colors makes the masks RGB: with colors, the colour's "
                                  "position in colors is the class id")
    if not isinstance(value, dict) or not value:
        raise _bad(path, "remap", f"must be a mapping of stored mask value to class id, e.g. {{7: 0, 8: 1}}, "
                                  f"not {value!r}")
    for key, target in value.items():
        if not _is_int(key) or not 0 <= key <= MAX_MASK_VALUE:
            raise _bad(path, "remap", f"key {key!r} is not a mask value (an integer 0-{MAX_MASK_VALUE}; write keys "
                                      "unquoted)")
        if key == ignore:
            raise _bad(path, "remap", f"maps {key}, the ignore value (void): remove it from remap, or set ignore "
                                      "to another value")
        if not _is_int(target) or not (0 <= target < num_classes or target == IGNORE_INDEX):
            raise _bad(path, "remap", f"maps {key} to {target!r}, which is not a class id 0-{num_classes - 1} "
                                      f"nor {IGNORE_INDEX} (void)")
    return dict(value)


def class_file(root: Union[str, os.PathLike]) -> Path:
    """``ROOT/classes.yaml``."""
    return Path(root).expanduser() / CLASS_FILE


def read_class_spec(root: Union[str, os.PathLike]) -> ClassSpec:
    """Parse and validate ``ROOT/classes.yaml``.

    Raises:
        DataError: the file is missing, is not YAML or not a mapping, has an unknown key, or a
            field is malformed; one line naming the file and the field.
    """
    path = class_file(root)
    if not path.is_file():
        raise DataError(f"{path} not found: a folder set (data.format=folder) needs it to list its class names, "
                        f"e.g. classes: [background, road, car]")
    try:
        loaded = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise DataError(f"{path}: cannot parse YAML: {problem}{where}") from None
    if not isinstance(loaded, dict):
        raise DataError(f"{path}: must hold a mapping with a 'classes' field, not {type(loaded).__name__}")
    unknown = [k for k in loaded if k not in CLASS_FIELDS]
    if unknown:
        raise _bad(path, str(unknown[0]), f"is not a classes.yaml field; valid fields: {', '.join(CLASS_FIELDS)}")
    names = _names(path, loaded.get("classes"))
    colours = _colours(path, loaded["colors"], len(names)) if loaded.get("colors") is not None else None
    voids = _void_colours(path, loaded.get("void_color"), colours)
    ignore = _ignore(path, loaded.get("ignore"), colours)
    remap = _remap(path, loaded.get("remap"), colours, ignore, len(names))
    return ClassSpec(path, names, colours, voids, ignore, remap)


def write_class_names(path: Union[str, os.PathLike], names: Sequence[str]) -> None:
    """A ``classes.yaml`` that holds only class names (an Arrow copy's: its masks hold class ids)."""
    Path(path).write_text(yaml.safe_dump({"classes": list(names)}, sort_keys=False))


# ---- files ------------------------------------------------------------------------------------

def is_folder_root(root: Union[str, os.PathLike]) -> bool:
    """Whether ``root`` looks like a folder set: a classes.yaml, or images/ and masks/ folders."""
    root = Path(root).expanduser()
    return (root / CLASS_FILE).is_file() or ((root / IMAGE_DIR).is_dir() and (root / MASK_DIR).is_dir())


@dataclasses.dataclass
class FolderScan:
    """What ``scan_folder`` found: the complete pairs, and a line per problem.

    Attributes:
        root: the data root.
        images, masks: stem -> file, for the stems that have both an image and a mask.
        problems: one line per unusable file (an image without mask, a mask without image, a file
            of another type, two images of one stem, a subfolder) or missing folder.
    """

    root: Path
    images: dict[str, Path] = dataclasses.field(default_factory=dict)
    masks: dict[str, Path] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)
    unpaired: set[str] = dataclasses.field(default_factory=set)
    """Stems of an image without mask or a mask without image (each a problem already)."""

    @property
    def stems(self) -> list[str]:
        """Stems of the complete pairs, sorted."""
        return sorted(self.images)

    def raise_first(self) -> None:
        """Raise the first problem, saying how many more there are."""
        raise_first(self.problems)


def raise_first(problems: Sequence[str]) -> None:
    """Raise ``DataError`` with the first of ``problems`` (and how many more), if any."""
    if problems:
        more = f" (and {len(problems) - 1} more; run fcn-data check)" if len(problems) > 1 else ""
        raise DataError(problems[0] + more)


def _listed(folder: Path, suffixes: tuple[str, ...], kind: str, problems: list[str]) -> dict[str, Path]:
    """stem -> file of a folder's files of ``suffixes``; every other entry a problem (hidden files skipped)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name.lower() in SKIPPED_NAMES:
            continue
        if path.is_dir():
            problems.append(f"{path}: a folder inside {folder}; the folder layout is flat, its files are not read: "
                            f"move them into {folder}")
        elif path.suffix.lower() not in suffixes:
            allowed = ", ".join(suffixes[:-1]) + f" or {suffixes[-1]}" if len(suffixes) > 1 else suffixes[0]
            problems.append(f"{path}: not a {allowed} {kind}; convert it, or move it out of {folder}")
        elif path.stem in found:
            problems.append(f"{path}: {found[path.stem].name} has the same stem {path.stem!r}; every {kind} needs "
                            "its own stem: rename or remove one")
        else:
            found[path.stem] = path
    return found


def scan_folder(root: Union[str, os.PathLike]) -> FolderScan:
    """List ``ROOT/images`` and ``ROOT/masks`` and pair them by stem, reading no image.

    Returns:
        The scan; ``problems`` is empty when every image has its mask and every mask its image.
    """
    root = Path(root).expanduser()
    scan = FolderScan(root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        scan.problems.append(f"data root {root} {what}: a folder set (data.format=folder) is {root}/{IMAGE_DIR}/, "
                             f"{root}/{MASK_DIR}/ and {root}/{CLASS_FILE}; set data.root to such a folder")
        return scan
    folders = {}
    for name in (IMAGE_DIR, MASK_DIR):
        if not (root / name).is_dir():
            scan.problems.append(f"{root / name} not found: a folder set (data.format=folder) keeps its images in "
                                 f"{root / IMAGE_DIR}/ and their masks, of the same stems, in {root / MASK_DIR}/")
        else:
            folders[name] = root / name
    if len(folders) < 2:
        return scan
    images = _listed(folders[IMAGE_DIR], IMAGE_SUFFIXES, "image", scan.problems)
    masks = _listed(folders[MASK_DIR], MASK_SUFFIXES, "mask", scan.problems)
    for stem, path in images.items():
        if stem not in masks:
            scan.problems.append(f"{path}: image without mask: {folders[MASK_DIR] / (stem + '.png')} not found; "
                                 "add its mask, or move the image out of images/")
    for stem, path in masks.items():
        if stem not in images:
            scan.problems.append(f"{path}: mask without image: no {stem}.jpg (.jpeg, .png, .tif, .tiff) in "
                                 f"{folders[IMAGE_DIR]}; add its image, or remove the mask")
    scan.unpaired = set(images).symmetric_difference(masks)
    scan.images = {s: p for s, p in images.items() if s in masks}
    scan.masks = {s: masks[s] for s in scan.images}
    return scan


# ---- splits -----------------------------------------------------------------------------------

def split_dir(root: Union[str, os.PathLike]) -> Path:
    return Path(root).expanduser() / SPLIT_DIR


def split_files(root: Union[str, os.PathLike]) -> dict[str, Path]:
    """split name -> ``ROOT/splits/<name>.txt``; empty when the set has no split files."""
    folder = split_dir(root)
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.txt")) if p.is_file()}


def fraction_split(stems: Sequence[str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """Split stems into ``train`` and ``val`` by ``val_fraction``, the same way on every machine.

    ``val`` is the ``round(N * val_fraction)`` stems (at least 1, at most N - 1) whose
    ``sha256(f"{seed}:{stem}")`` is smallest; ``train`` is every other stem. Each part is in
    stem order. The result depends only on the stems, the fraction and the seed (not on file
    order or the file system), each stem lands in exactly one part, and adding images moves
    only a few others across the boundary.

    Raises:
        DataError: fewer than 2 stems.
    """
    stems = sorted(set(stems))
    if len(stems) < 2:
        raise DataError(f"{len(stems)} image(s): data.val_fraction needs at least 2 images to make a train and a "
                        "val split; add images or write split files")
    count = min(max(1, round(len(stems) * val_fraction)), len(stems) - 1)
    ranked = sorted(stems, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).digest())
    val = set(ranked[:count])
    return {"train": [s for s in stems if s not in val], "val": [s for s in stems if s in val]}


def _read_split_file(path: Path) -> list[str]:
    stems = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not stems:
        raise DataError(f"split file {path} is empty: list one image stem per line")
    return stems


def split_problems(scan: FolderScan) -> list[str]:
    """Problems of the split files: a stem listed twice or without image, an image in no split file.

    None when the set has no split files (``fraction_split`` covers every image).
    """
    files = split_files(scan.root)
    problems: list[str] = []
    listed: set[str] = set()
    for name, path in files.items():
        try:
            stems = _read_split_file(path)
        except DataError as err:
            problems.append(str(err))
            continue
        listed.update(stems)
        seen: set[str] = set()
        for stem in stems:
            if stem in seen:
                problems.append(f"split file {path} lists {stem!r} twice: list each image once")
            seen.add(stem)
        problems += [_unlisted_stem(scan, path, stem) for stem in dict.fromkeys(stems)
                     if stem not in scan.images and stem not in scan.unpaired]
    if files:
        names = ", ".join(p.name for p in files.values())
        problems += [f"{scan.images[s]}: in no split file of {split_dir(scan.root)} ({names}); list its stem in one, "
                     "or move the image out of images/" for s in scan.stems if s not in listed]
    return problems


def _unlisted_stem(scan: FolderScan, path: Path, stem: str) -> str:
    return (f"split file {path} lists {stem!r}, which has no image and no mask in {scan.root}; add the files or "
            "remove the line")


def split_stems(scan: FolderScan, split: str, val_fraction: float, seed: int, strict: bool = True) -> list[str]:
    """The stems of a split: its split file's, in file order, or its ``fraction_split`` part.

    Args:
        scan: the set (its problems already raised).
        split: the split name (``data.train_split`` / ``data.val_split``).
        val_fraction, seed: ``data.val_fraction`` and ``data.split_seed``, used without split files.
        strict: raise the split files' problems (``split_problems``) first; ``fcn-data check``
            lists them itself and passes False.

    Raises:
        DataError: the split does not exist, is empty or lists a stem without image; a split file
            problem (``split_problems``); or, without split files, fewer than 2 images.
    """
    files = split_files(scan.root)
    if not files:
        if split not in FRACTION_SPLITS:
            raise DataError(f"{scan.root} has no split files ({split_dir(scan.root)}/<split>.txt), so it is split "
                            f"by data.val_fraction into 'train' and 'val', not {split!r}; use those names, or write "
                            f"{split_dir(scan.root) / (split + '.txt')}")
        return fraction_split(scan.stems, val_fraction, seed)[split]
    if split not in files:
        raise DataError(f"split file {split_dir(scan.root) / (split + '.txt')} not found; available splits: "
                        f"{', '.join(files)}")
    if strict:
        raise_first(split_problems(scan))
    return _read_split_file(files[split])


# ---- classes ----------------------------------------------------------------------------------

def class_source(data_cfg) -> Optional[Path]:
    """The classes.yaml that names a data config's classes: a folder set's (required), an Arrow copy's (if any)."""
    if data_cfg.format == "folder":
        return class_file(data_cfg.root)
    if data_cfg.format == "arrow" and class_file(data_cfg.root).is_file():
        return class_file(data_cfg.root)
    return None


def preview_names(names: Sequence[str], most: int = 4) -> str:
    """``[a, b, c, d, ... (21)]``: class names for a one-line message."""
    shown = ", ".join(names[:most]) + (f", ... ({len(names)})" if len(names) > most else "")
    return f"[{shown}]"


def data_classes(data_cfg) -> list[str]:
    """The class names of a data config's data.

    A folder set's come from its ``classes.yaml`` (so does an Arrow copy's that ``fcn-data
    prepare`` wrote with one); when ``data.classes`` is set too (fcn-eval passes the
    checkpoint's) it must be the same list. Other formats: ``labels.class_names(data.classes)``.

    Raises:
        DataError: classes.yaml is missing or malformed, or differs from ``data.classes``.
    """
    source = class_source(data_cfg)
    if source is None:
        return class_names(data_cfg.classes)
    spec = read_class_spec(source.parent)
    check_model_classes(spec, data_cfg.classes)
    return list(spec.names)


def check_model_classes(spec: ClassSpec, classes: Optional[Sequence[str]]) -> None:
    """``classes`` (the model's, when given: fcn-eval passes the checkpoint's) must be the class file's names.

    Raises:
        DataError: they differ.
    """
    if classes and list(classes) != list(spec.names):
        raise DataError(f"{spec.path} names the classes {preview_names(list(spec.names))}, the model "
                        f"{preview_names(list(classes))}: use a model trained on this set's classes.yaml")


def checked_classes(data_cfg, num_classes: int) -> list[str]:
    """``data_classes``, checked against ``model.num_classes`` and, for a folder set, ``data.classes``.

    Raises:
        ConfigError: ``data.classes`` differs from classes.yaml's list, or ``num_classes``
            (``model.num_classes``) is not the number of classes.
        DataError: classes.yaml is missing or malformed.
    """
    from .config import ConfigError

    source = class_source(data_cfg)
    if source is not None and data_cfg.classes:
        names = list(read_class_spec(source.parent).names)
        if list(data_cfg.classes) != names:
            raise ConfigError(f"data.classes={list(data_cfg.classes)} differs from the classes of {source}, "
                              f"{names}; remove data.classes (a folder set's class names come from its classes.yaml)")
    names = data_classes(data_cfg)
    if num_classes != len(names):
        if source is not None:
            raise ConfigError(f"model.num_classes={num_classes} but {source} names {len(names)} classes; set "
                              f"model.num_classes={len(names)}")
        raise ConfigError(f"model.num_classes={num_classes} but the data has {len(names)} classes "
                          f"(data.classes); make them equal")
    return names


def resolve_classes(cfg):
    """The run config with ``data.classes`` set from classes.yaml (folder sets and their Arrow copies).

    So the run's ``config.yaml``, its fingerprint, its resume check and its exported models all
    carry the names: a changed classes.yaml is a changed experiment. Other configs come back
    unchanged (after the same ``model.num_classes`` check as ``build_dataloaders``).

    Raises:
        ConfigError, DataError: as ``checked_classes``.
    """
    names = checked_classes(cfg.data, cfg.model.num_classes)
    if class_source(cfg.data) is None or cfg.data.classes:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, classes=names))


def check_folder_root(data_cfg, num_classes: Optional[int] = None) -> None:
    """What ``check_data_root`` checks of a folder set: classes.yaml, the pairs and both splits, no image read.

    Args:
        data_cfg: ``DataConfig``.
        num_classes: ``model.num_classes``, when checking a run config (``checked_classes``).

    Raises:
        DataError, ConfigError: the first problem (saying how many more there are).
    """
    if num_classes is None:
        data_classes(data_cfg)
    else:
        checked_classes(data_cfg, num_classes)
    scan = scan_folder(data_cfg.root)
    scan.raise_first()
    for split in dict.fromkeys((data_cfg.train_split, data_cfg.val_split)):
        split_stems(scan, split, data_cfg.val_fraction, data_cfg.split_seed)
