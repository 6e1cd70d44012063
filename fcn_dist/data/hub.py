"""HF ``datasets`` sources: the Arrow copy of a VOCdevkit (``data.format=arrow``) and any hub
image-segmentation dataset (``data.format=hub``).

``prepare_arrow`` (``fcn-data prepare``) converts VOCdevkit splits, or a folder set's
(``data.format=folder``: masks stored as class ids, class names in ``OUT/classes.yaml``), into a
``DatasetDict`` saved with ``save_to_disk``. Columns: ``name`` (image id), ``height``, ``width`` (so the d2l filter
reads no pixels), ``image`` and ``mask`` in one of two forms:

- encoded (the default): ``datasets.Image`` columns holding the original JPEG and PNG bytes,
  verbatim: labels stay the exact palette indices, and readers decode through the same code as
  the VOCdevkit reader.
- decoded (``--decoded``): ``datasets.Value("binary")`` columns holding the validated pixels,
  uint8 ``H*W*3`` bytes in HWC order and ``H*W`` palette indices (255 kept), shaped back by
  ``height`` and ``width`` without decoding.

``load_from_disk`` memory-maps either, so every process on a node shares one page cache instead
of holding its own copy. ``ArrowSegmentation`` reads both and gives identical items.

A decoded read skips the JPEG/PNG decoding, most of an encoded read's cost: it is the row
(sliced straight out of the Arrow buffers, ``_Cells``), the mask value check and the copy into
tensors. Decoded pixels take 4 bytes per pixel, many times the encoded size, and so many times
the page cache per node. The default stays encoded: small, and fine for any dataset size.
``--decoded`` is for where decoding is the bottleneck (CPU-bound loaders, few CPU cores per GPU),
at the price of that larger page cache.
Measured figures: benchmarks/README.md, "Arrow reads".

``data.format=hub`` loads ``data.hub_name`` (a ``save_to_disk`` folder, a parquet file or folder,
or a hub dataset name) and reads ``data.hub_image_column`` and ``data.hub_mask_column``; masks
are class indices in ``0..len(data.classes)-1`` or 255. Either way items are the same uint8
``(image (3, H, W), mask (H, W))`` tuples as the VOCdevkit reader's.
"""

from __future__ import annotations

import bisect
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..config import DEFAULT_MAX_IMAGE_PIXELS
from ..datafiles import ARROW_MARKER, DataError, arrow_splits, find_split, read_split, resolve_voc_root
from .voc import (VOC_CLASSES, check_mask_values, decode_mask, image_size, load_pair, read_image, sample_paths,
                  to_tensors)


def _features(decoded: bool):
    import datasets

    pixels = datasets.Value("binary") if decoded else datasets.Image()
    return datasets.Features({
        "name": datasets.Value("string"), "height": datasets.Value("int32"), "width": datasets.Value("int32"),
        "image": pixels, "mask": pixels,
    })


def _voc_rows(voc_root: Path, split: str, num_classes: int, progress: bool, decoded: bool, max_pixels: int):
    """Rows of one split, each sample validated (decoded once) before it is written."""
    from tqdm.auto import tqdm

    ids = read_split(voc_root, split)
    for name, image_path, mask_path in tqdm(list(zip(ids, *sample_paths(voc_root, split, ids))),
                                            desc=f"prepare {split}", unit="img", disable=not progress):
        image, mask = load_pair(image_path, mask_path, (str(image_path), str(mask_path)), num_classes, max_pixels)
        if decoded:  # the validated arrays themselves: HWC image (the tensor is a view of it), HW mask
            pixels = {"image": image.permute(1, 2, 0).numpy().tobytes(), "mask": mask.numpy().tobytes()}
        else:
            pixels = {"image": {"bytes": image_path.read_bytes(), "path": None},
                      "mask": {"bytes": mask_path.read_bytes(), "path": None}}
        yield {"name": name, "height": image.shape[1], "width": image.shape[2], **pixels}


def _folder_rows(dataset, split: str, progress: bool, decoded: bool):
    """Rows of a folder set's split: images verbatim (or decoded), masks as class ids (an L PNG, or decoded)."""
    from tqdm.auto import tqdm

    for index in tqdm(range(len(dataset)), desc=f"prepare {split}", unit="img", disable=not progress):
        image, mask = dataset[index]  # validated: classes.yaml's mapping applied, void 255
        if decoded:
            pixels = {"image": image.permute(1, 2, 0).numpy().tobytes(), "mask": mask.numpy().tobytes()}
        else:
            png = io.BytesIO()
            Image.fromarray(mask.numpy(), "L").save(png, "PNG")
            pixels = {"image": {"bytes": dataset.images[index].read_bytes(), "path": None},
                      "mask": {"bytes": png.getvalue(), "path": None}}
        yield {"name": dataset.ids[index], "height": image.shape[1], "width": image.shape[2], **pixels}


def prepare_arrow(voc_root: Union[str, os.PathLike], out_dir: Union[str, os.PathLike],
                  splits: Sequence[str] = ("train", "val"), num_classes: Optional[int] = None,
                  progress: bool = False, decoded: bool = False, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                  val_fraction: float = 0.1, split_seed: int = 0) -> Path:
    """Convert VOCdevkit splits, or a folder set's, into an Arrow ``DatasetDict`` on disk.

    Every sample is validated first (the same checks as the reader), so a prepared dataset
    holds no bad file. The folder appears only when complete (written aside, then renamed).
    A folder set (``fcn_dist.folderfiles``: a root without VOC2012 that has a classes.yaml, or
    images/ and masks/) keeps its image files; its masks are stored as class ids, after
    classes.yaml's colours, ``ignore`` and ``remap``, as L PNGs (255 void), and its class names go
    to ``out_dir/classes.yaml``, which ``data.format=arrow`` reads them from.

    Args:
        voc_root: data root holding ``VOCdevkit/VOC2012``, the VOC2012 folder, or a folder set.
        out_dir: the folder to create; it must not exist (nothing of the user's is ever replaced).
        splits: split names (train_aug reads SBD's SegmentationClassAug masks).
        num_classes: number of classes masks may use (default: 21; a folder set: its classes.yaml's,
            which this must equal when given).
        progress: show tqdm bars.
        decoded: store raw uint8 pixels (``image`` H*W*3 bytes in HWC order, ``mask`` H*W palette
            indices) as binary columns instead of the JPEG/PNG files: no decoding when read, about
            12x the disk and page cache.
        max_pixels: the largest width x height accepted (``--max-image-pixels``).
        val_fraction, split_seed: a folder set without split files: its split (``data.val_fraction``,
            ``data.split_seed``).

    Returns:
        ``out_dir``, readable with ``datasets.load_from_disk`` and ``data.format=arrow``.

    Raises:
        DataError: bad input (names the file) or ``out_dir`` already exists.
    """
    import datasets

    from ..datafiles import find_voc_root
    from ..folderfiles import is_folder_root, read_class_spec, write_class_names
    from .folder import FolderSegmentation

    folder = find_voc_root(voc_root) is None and is_folder_root(voc_root)
    if folder:
        spec = read_class_spec(voc_root)
        if num_classes is not None and num_classes != spec.num_classes:
            raise DataError(f"{spec.path} names {spec.num_classes} classes but data.classes gives {num_classes}; "
                            "leave it out: a folder set's classes.yaml says how many")
        sources = {split: FolderSegmentation(voc_root, split, max_pixels=max_pixels, val_fraction=val_fraction,
                                             split_seed=split_seed) for split in splits}
    else:
        voc = resolve_voc_root(voc_root)
        num_classes = num_classes or len(VOC_CLASSES)
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() or out_dir.is_symlink():
        raise DataError(f"{out_dir} already exists: fcn-data prepare only creates a new folder, it never replaces or "
                        "adds to one; choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    bars_were_off = datasets.are_progress_bars_disabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        parts = {}
        for split in splits:
            if folder:
                rows, gen_kwargs = _folder_rows, {"dataset": sources[split], "split": split, "progress": progress,
                                                  "decoded": decoded}
            else:
                read_split(voc, split)  # a missing or empty split fails here, before any conversion
                rows, gen_kwargs = _voc_rows, {"voc_root": voc, "split": split, "num_classes": num_classes,
                                               "progress": progress, "decoded": decoded, "max_pixels": max_pixels}
            try:
                # record batches of 100 rows, as datasets does for Image columns: 1000 rows of raw
                # pixels (its default for binary columns) overflow a batch's 2 GiB above ~0.7 Mpx
                parts[split] = datasets.Dataset.from_generator(
                    rows, features=_features(decoded), cache_dir=str(work / "cache"), gen_kwargs=gen_kwargs,
                    split=datasets.NamedSplit(split), writer_batch_size=100)
            except datasets.exceptions.DatasetGenerationError as err:
                if isinstance(err.__cause__, DataError):  # datasets wraps our error: show it, it names the file
                    raise err.__cause__ from None
                raise
        datasets.DatasetDict(parts).save_to_disk(str(work / "dataset"))
        if folder:
            write_class_names(work / "dataset" / "classes.yaml", spec.names)
        try:
            os.rename(work / "dataset", out_dir)  # the folder appears complete, or not at all
        except OSError as err:  # it was created meanwhile (a non-empty folder is never replaced)
            raise DataError(f"{out_dir} appeared while the dataset was written ({err.strerror}); nothing was "
                            "written into it: choose another --out") from None
    finally:
        if not progress and not bars_were_off:
            datasets.enable_progress_bars()
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def _encoded(value, name: str):
    """An Image cell (``decode=False``) as a path or bytes, for the shared decoders."""
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        return value["bytes"] if value.get("bytes") else value["path"]
    raise DataError(f"{name}: empty image cell; every row needs an image and a mask")


def _pixels(data, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A raw pixel cell (bytes-like or None) as a read-only uint8 array of ``shape`` (``to_tensors`` copies it)."""
    expected = int(np.prod(shape))
    if data is None or len(data) != expected:
        got = "no pixels" if data is None else f"{len(data)} bytes"
        raise DataError(f"{name}: {got}, expected {expected} ({'x'.join(map(str, shape))} uint8); the row is "
                        f"corrupt: re-create the dataset with `fcn-data prepare --decoded`")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


class _Cells:
    """Row ``i`` of a memory-mapped Arrow column without ``datasets``' or pyarrow's per-row objects.

    The Arrow columnar format keeps a binary or string column as an offsets buffer and a data
    buffer per chunk (row ``i`` is ``data[offsets[i]:offsets[i + 1]]``), and a fixed-width column
    as one values buffer. Both are read here as numpy views of the memory map, shared by every
    process and never copied, so a decoded row costs a small fraction of a read through
    ``with_format("arrow")[i]`` or pyarrow scalars, which build Python objects per row or per
    cell (measured figures: benchmarks/README.md, "Arrow reads"). Private memory is O(chunks),
    not O(rows).

    Args:
        column: a ``pyarrow.ChunkedArray``; binary, string and integer columns are read zero-copy.
    """

    def __init__(self, column) -> None:
        import pyarrow as pa

        large = pa.types.is_large_binary(column.type) or pa.types.is_large_string(column.type)
        self.variable = large or pa.types.is_binary(column.type) or pa.types.is_string(column.type)
        self.first_rows, self.chunks = [], []
        first = 0
        for chunk in column.chunks:
            if len(chunk) == 0:
                continue
            validity, *buffers = chunk.buffers()
            if self.variable:
                offsets = np.frombuffer(buffers[0], np.int64 if large else np.int32)
                values = (offsets[chunk.offset:chunk.offset + len(chunk) + 1],
                          np.frombuffer(buffers[1], np.uint8) if buffers[1] is not None else np.empty(0, np.uint8))
            elif pa.types.is_integer(chunk.type):
                values = np.frombuffer(buffers[0], chunk.type.to_pandas_dtype())[chunk.offset:chunk.offset + len(chunk)]
            else:  # any other type (a non-string name column): Python values
                values = chunk.to_pylist()
            valid = np.frombuffer(validity, np.uint8) if validity is not None and chunk.null_count else None
            self.first_rows.append(first)
            self.chunks.append((values, valid, chunk.offset))
            first += len(chunk)

    def __getitem__(self, row: int):
        """The cell of ``row``: a read-only uint8 array for binary and string columns, a Python value
        for others, None when null."""
        k = bisect.bisect_right(self.first_rows, row) - 1
        values, valid, bit = self.chunks[k]
        i = row - self.first_rows[k]
        if valid is not None and not (valid[(bit + i) >> 3] >> ((bit + i) & 7)) & 1:
            return None
        if self.variable:
            offsets, data = values
            return data[offsets[i]:offsets[i + 1]]
        return values[i].item() if isinstance(values, np.ndarray) else values[i]


class ArrowSegmentation(torch.utils.data.Dataset):
    """A ``datasets.Dataset`` with an image column and a mask column, read lazily.

    Images must be a ``datasets.Image`` column; masks an Image column (palette, grayscale or
    VOC-coloured RGB PNGs) or a 2-D integer array column. Cells are decoded by the VOC
    reader's code, so values, errors and tensor types are the same. The decoded form of
    ``prepare_arrow`` (image and mask ``Value("binary")`` columns of raw uint8 HWC and HW pixels,
    shaped by the ``height`` and ``width`` columns; ``self.decoded`` is then True) is read
    without decoding, its masks checked the same way.

    Args:
        table: the split, memory-mapped (``load_from_disk`` / ``load_dataset``).
        columns: (image column, mask column).
        num_classes: mask values must be in ``0..num_classes-1`` or 255.
        source: what error messages call the dataset (path or hub name, and split).
        max_pixels: the largest width x height accepted (``data.max_image_pixels``).

    Raises:
        DataError: a column is missing, has an unusable type, or the split is empty.
    """

    def __init__(self, table, columns: tuple[str, str], num_classes: int, source: str,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        import datasets

        self.image_column, self.mask_column = columns
        self.num_classes = num_classes
        self.source = source
        self.max_pixels = max_pixels
        for column, key in zip(columns, ("data.hub_image_column", "data.hub_mask_column")):
            if column not in table.column_names:
                raise DataError(f"{source}: no column {column!r} (columns: {', '.join(table.column_names)}); "
                                f"set {key}")
        raw = datasets.Value("binary")
        self.decoded = table.features[self.image_column] == raw
        if not self.decoded and not isinstance(table.features[self.image_column], datasets.Image):
            raise DataError(f"{source}: column {self.image_column!r} is {table.features[self.image_column]}, "
                            f"not an Image column; set data.hub_image_column to the image column")
        if self.decoded and (table.features[self.mask_column] != raw
                             or not {"height", "width"} <= set(table.column_names)):
            raise DataError(f"{source}: column {self.image_column!r} holds raw pixels, which need a binary "
                            f"{self.mask_column!r} column and height and width columns; re-create the dataset "
                            f"with `fcn-data prepare --decoded`")
        if len(table) == 0:
            raise DataError(f"{source}: the split is empty")
        keep = [c for c in ("name", "height", "width") if c in table.column_names and c not in columns]
        table = table.select_columns([*columns, *keep])
        for column in columns:
            if isinstance(table.features[column], datasets.Image):
                # raw bytes: decode with our code, not datasets' (exact palette indices, our errors)
                table = table.cast_column(column, datasets.Image(decode=False))
        self.table = table
        # decoded rows are read straight from the memory-mapped Arrow buffers (``_Cells``): the
        # python formatting of ``table[i]`` copies every row's bytes (figures: benchmarks/README.md, "Arrow reads")
        self._cells = {column: _Cells(table.data.table.column(column)) for column in table.column_names} \
            if self.decoded else None
        indices = getattr(table, "_indices", None)  # a select()ed or shuffled Dataset maps rows through it
        self._rows = _Cells(indices.column(0)) if self.decoded and indices is not None else None

    def __len__(self) -> int:
        return len(self.table)

    def _name(self, index: int, row: dict) -> str:
        return f"{self.source} row {index}" + (f" ({row['name']})" if "name" in row else "")

    def _decoded_row(self, index: int) -> dict:
        """A decoded-form row: ints and the name as Python values, pixel cells as read-only uint8
        views of the memory-mapped file (None when null), not copied."""
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} of {self.source}, which has {len(self)} rows")
        row_in_file = index if self._rows is None else self._rows[index]
        row = {column: cells[row_in_file] for column, cells in self._cells.items()}
        if isinstance(row.get("name"), np.ndarray):
            row["name"] = row["name"].tobytes().decode()
        return row

    def _raw_pair(self, row: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Image (H, W, 3) and checked mask (H, W) of a decoded-form row, read-only views of its cells."""
        height, width = row["height"], row["width"]
        if height is None or width is None or height <= 0 or width <= 0:
            raise DataError(f"{name}: height {height} and width {width} cannot shape its raw pixels; re-create "
                            f"the dataset with `fcn-data prepare --decoded`")
        image = _pixels(row[self.image_column], (height, width, 3), f"{name} image")
        mask = _pixels(row[self.mask_column], (height, width), f"{name} mask")
        return image, check_mask_values(mask, f"{name} mask", self.num_classes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns image uint8 (3, H, W) and mask uint8 (H, W) with 255 kept."""
        if self.decoded:
            row = self._decoded_row(int(index))
            name = self._name(index, row)
            image, mask = self._raw_pair(row, name)
            return to_tensors(image, mask, f"{name} mask")
        row = self.table[int(index)]
        name = self._name(index, row)
        image, orientation = read_image(_encoded(row[self.image_column], name), f"{name} image", self.max_pixels)
        cell = row[self.mask_column]
        if isinstance(cell, dict):
            mask = decode_mask(_encoded(cell, name), f"{name} mask", self.num_classes, self.max_pixels)
        else:
            mask = check_mask_values(np.asarray(cell), f"{name} mask", self.num_classes)
        return to_tensors(image, mask, f"{name} mask", orientation)

    def sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every image: the height/width columns when present, else image headers."""
        if {"height", "width"} <= set(self.table.column_names):
            return list(zip(self.table["height"], self.table["width"]))
        sizes = []
        for index in range(len(self)):
            cell = self.table[index][self.image_column]
            sizes.append(image_size(_encoded(cell, self.source), f"{self.source} row {index} image", self.max_pixels))
        return sizes

    def check(self, report, summary, progress: bool = False) -> None:
        """Validate every row into ``report`` (``fcn_dist.data.check.CheckReport``), counting it in ``summary``."""
        from tqdm.auto import tqdm

        from .check import check_sample

        for index in tqdm(range(len(self)), desc=f"check {self.source}", unit="img", disable=not progress):
            row = self._decoded_row(index) if self.decoded else self.table[index]
            name = self._name(index, row)
            try:
                if self.decoded:
                    image, mask = self._raw_pair(row, name)
                    summary.add(image.shape[:2], np.bincount(mask.ravel(), minlength=256))
                elif isinstance(row[self.mask_column], dict):
                    check_sample(_encoded(row[self.image_column], name), _encoded(row[self.mask_column], name),
                                 (f"{name} image", f"{name} mask"), self.num_classes, report, summary, self.max_pixels)
                else:
                    image, mask = self[index]
                    summary.add(tuple(mask.shape), np.bincount(mask.numpy().ravel(), minlength=256))
            except DataError as err:  # a row-level problem (empty cell, bad array mask, wrong pixel count): go on
                report.problems.append(str(err))
                summary.add(None, None)


def _pick_split(dataset_dict, split: str, source: str):
    found = find_split(dataset_dict, split)
    if found is None:
        raise DataError(f"{source} has no split {split!r} (splits: {', '.join(dataset_dict)}); "
                        f"set data.train_split / data.val_split")
    return dataset_dict[found]


def _is_saved_dataset(path: Path) -> bool:
    return (path / ARROW_MARKER).is_file() or (path / "state.json").is_file()


def load_arrow(root: Union[str, os.PathLike], split: str, num_classes: int = len(VOC_CLASSES),
               max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ArrowSegmentation:
    """A split of a ``prepare_arrow`` dataset, memory-mapped.

    Raises:
        DataError: ``root`` is not a saved DatasetDict, or has no such split.
    """
    import datasets

    root = Path(root).expanduser()
    arrow_splits(root)  # a folder that is no Arrow dataset fails here, with the fix
    table = _pick_split(datasets.load_from_disk(str(root)), split, str(root))
    return ArrowSegmentation(table, ("image", "mask"), num_classes, f"{root}[{split}]", max_pixels)


def load_hub(data_cfg, split: str, num_classes: Optional[int] = None) -> ArrowSegmentation:
    """A split of ``data.hub_name`` with the configured image and mask columns.

    ``hub_name`` may be a ``save_to_disk`` folder, a parquet file, a data folder that
    ``datasets.load_dataset`` understands, or a hub dataset name (downloaded and cached by
    ``datasets``, then memory-mapped).

    Args:
        data_cfg: ``DataConfig`` (hub_name, hub_image_column, hub_mask_column, classes).
        split: split name; ``val`` also finds ``validation``.
        num_classes: defaults to ``len(data.classes)`` (21 when unset).

    Raises:
        DataError: the dataset cannot be loaded, has no such split, or lacks a column.
    """
    import datasets

    name = data_cfg.hub_name
    num_classes = num_classes or len(data_cfg.classes or VOC_CLASSES)
    path = Path(name).expanduser()
    try:
        if path.is_dir() and _is_saved_dataset(path):
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file():
            builder = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json",
                       ".jsonl": "json"}.get(path.suffix, "parquet")
            loaded = datasets.load_dataset(builder, data_files=str(path))
        else:
            loaded = datasets.load_dataset(str(path) if path.is_dir() else name)
    except (OSError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"cannot load data.hub_name={name!r}: {first}; give a save_to_disk folder, a parquet file "
                        f"or folder, or a reachable hub dataset name") from err
    if isinstance(loaded, datasets.Dataset):
        raise DataError(f"{name} holds one Dataset without splits; save a DatasetDict with "
                        f"{data_cfg.train_split!r} and {data_cfg.val_split!r} splits")
    table = _pick_split(loaded, split, name)
    return ArrowSegmentation(table, (data_cfg.hub_image_column, data_cfg.hub_mask_column), num_classes,
                             f"{name}[{split}]", data_cfg.max_image_pixels)
