"""Datasets and loaders: one entry point for every data source of a config.

``build_dataset`` reads ``data.format`` (voc, folder, arrow, hub, synthetic), applies the preset
(``fcn_dist.data.transforms``) and, for the d2l preset, drops images smaller than the crop using
sizes from image headers. ``build_dataloaders`` makes the train and val DataLoaders. Items are
always ``(image uint8 (3, H, W), mask uint8 (H, W))`` with 255 = void kept; normalisation is
done on the device by the training and evaluation code (``fcn_dist.model.normalize``). Train
batches of un-resized crops are channels-last (``crop_collate``): same values, no transpose on
the CPU. With ``data.resize_on=device`` train batches are source windows, packed flat, plus their
geometry (``window_collate``), finished on the device by ``transforms.finish_windows``.

Plain PyTorch: nothing here knows about processes or signals (the entry points pass the
loader workers' ``worker_init_fn``, ``fcn_dist.process.loader_worker_init()``). Call ``train_loader.dataset.set_epoch(epoch)``
before iterating each epoch, also under Accelerate: its prepared loader forwards ``set_epoch`` to
the dataset only when the sampler has no ``set_epoch`` of its own, and with several processes and
``use_seedable_sampler=True`` it has one, so the dataset would keep epoch 0's augmentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch

from ..folderfiles import checked_classes, data_classes
from .transforms import AugmentedDataset, WindowScaleCrop, build_transforms
from ..datafiles import DataError, find_voc_root
from .voc import VOCSegmentation, download_voc


def build_reader(data_cfg, split: str):
    """The untransformed dataset of a split, for any ``data.format``.

    Returns:
        A dataset of ``(image uint8 (3, H, W), mask uint8 (H, W))`` with a ``sizes()`` method
        giving every image's (H, W) without decoding it.
    """
    if data_cfg.format == "folder":
        from .folder import load_folder
        return load_folder(data_cfg, split)
    num_classes = len(data_classes(data_cfg))
    if data_cfg.format == "arrow":
        from .hub import load_arrow
        return load_arrow(data_cfg.root, split, num_classes, data_cfg.max_image_pixels)
    if data_cfg.format == "hub":
        from .hub import load_hub
        return load_hub(data_cfg, split, num_classes)
    if data_cfg.format == "synthetic":
        from .synthetic import ensure_synthetic
        root = ensure_synthetic(data_cfg)
    else:
        root = Path(data_cfg.root).expanduser()
        if data_cfg.download and find_voc_root(root) is None:
            download_voc(root)
    return VOCSegmentation(root, split, num_classes=num_classes, max_pixels=data_cfg.max_image_pixels)


def build_dataset(data_cfg, split: str, train: bool, seed: int = 0):
    """A split with its transform preset.

    Args:
        data_cfg: ``DataConfig``.
        split: split name (``data.train_split`` or ``data.val_split``).
        train: True gives the random train preset, seeded per sample from (seed, epoch, index),
            with ``set_epoch``; False gives whole, untouched images.
        seed: the run seed (``train.seed``).

    Returns:
        A dataset of ``(image uint8 (3, H, W), mask uint8 (H, W))``; train items are
        ``data.crop_size``.

    Raises:
        DataError: bad or missing data (the message names the file), or, for the d2l preset, no
            image at least as large as the crop.
    """
    base = build_reader(data_cfg, split)
    if not train:
        return base
    indices = None
    if data_cfg.preset == "d2l":
        crop_h, crop_w = data_cfg.crop_size
        indices = [i for i, (h, w) in enumerate(base.sizes()) if h >= crop_h and w >= crop_w]
        if not indices:
            raise DataError(f"split {split!r} of {data_cfg.root} has no image of at least {crop_h}x{crop_w} (HxW), "
                            f"which the d2l preset needs; use data.preset=train or a smaller data.crop_size")
    return AugmentedDataset(base, build_transforms(data_cfg, train=True), seed, indices)


def _new_batch(shape: tuple[int, ...], like: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """An uninitialised tensor of ``like``'s dtype and ``memory_format``, in shared memory inside a worker."""
    out = torch.empty(shape, dtype=like.dtype, memory_format=memory_format)
    if torch.utils.data.get_worker_info() is not None:
        # as default_collate does: a batch built in shared memory is sent without another copy
        storage = like._typed_storage()._new_shared(out.numel(), device=out.device)
        out = like.new(storage).as_strided(shape, out.stride())
    return out


def _stack(tensors: tuple[torch.Tensor, ...], memory_format: torch.memory_format) -> torch.Tensor:
    """``torch.stack`` into a new tensor of ``memory_format``, in shared memory inside a worker."""
    return torch.stack(tensors, 0, out=_new_batch((len(tensors), *tensors[0].shape), tensors[0], memory_format))


def crop_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack equal-size train crops, keeping the images' memory layout.

    The readers keep images in their decoded (H, W, 3) order (``voc.to_tensors``), so an
    un-resized crop (the d2l preset, or the train preset at scale 1) is a channels-last view.
    ``default_collate`` would stack it into a contiguous (B, 3, H, W) batch, a transpose that
    costs many times a plain copy on the CPU; this collate gives such batches channels-last
    strides instead (same shape and values). The training step converts every batch to the
    network's layout on the device. Measured figures: benchmarks/README.md, "Collates".

    Args:
        batch: ``(image uint8 (3, H, W), mask uint8 (H, W))`` pairs of one size.

    Returns:
        images uint8 (B, 3, H, W), channels-last when most crops are; masks uint8 (B, H, W).
    """
    images, masks = zip(*batch)
    channels_last = sum(image.stride(0) == 1 for image in images) * 2 > len(images)
    images = _stack(images, torch.channels_last if channels_last else torch.contiguous_format)
    return images, _stack(masks, torch.contiguous_format)


def window_collate(batch: list[tuple[torch.Tensor, torch.Tensor, tuple]]) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Batch ``WindowScaleCrop`` items (``data.resize_on=device``) for ``finish_windows``.

    Windows differ in size, so they are packed back to back, each as its (h, w, 3) pixels
    (channels-last) and its (h, w) mask, into one flat image tensor and one flat mask tensor.
    Padding every window to the batch's largest would send about twice the bytes, and inside
    workers every byte goes through a fresh shared-memory segment, whose page faults are paid per
    MB. Measured figures: benchmarks/README.md, "Collates".

    Args:
        batch: (image window uint8 (3, h, w), mask window uint8 (h, w), geometry tuple) items.

    Returns:
        (images uint8 (3 * sum(h * w),), masks uint8 (sum(h * w),), [geometry]); the geometry
        (``WindowScaleCrop``) gives each window's h and w, so ``finish_windows`` can unpack them.
    """
    images, masks, geometry = zip(*batch)
    sizes = [mask.numel() for mask in masks]
    out_images = _new_batch((3 * sum(sizes),), images[0], torch.contiguous_format)
    out_masks = _new_batch((sum(sizes),), masks[0], torch.contiguous_format)
    start = 0
    for image, mask, size in zip(images, masks, sizes):
        out_images[3 * start:3 * (start + size)].view(*mask.shape, 3).copy_(image.permute(1, 2, 0))
        out_masks[start:start + size].view(mask.shape).copy_(mask)
        start += size
    return out_images, out_masks, list(geometry)


def list_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Collate whole images of different sizes as lists, without padding.

    Padding would change the predictions near the padded border (the trunk sees the padding),
    so evaluation batches keep every image at its own size; ``fcn_dist.evaluate`` runs the
    images of one size together.

    Args:
        batch: ``(image uint8 (3, H_i, W_i), mask uint8 (H_i, W_i))`` pairs.

    Returns:
        ([image (3, H_i, W_i)], [mask (H_i, W_i)]).
    """
    images, masks = zip(*batch)
    return list(images), list(masks)


def loader_kwargs(data_cfg, worker_init_fn: Optional[Callable[[int], None]] = None) -> dict:
    """DataLoader keyword arguments of ``data.*``: workers, pinning, persistence and prefetch."""
    workers = data_cfg.num_workers
    return {
        "num_workers": workers,
        "worker_init_fn": worker_init_fn if workers > 0 else None,
        "pin_memory": data_cfg.pin_memory and torch.cuda.is_available(),
        "persistent_workers": workers > 0,
        "prefetch_factor": data_cfg.prefetch_factor if workers > 0 else None,
    }


def build_dataloaders(cfg, worker_init_fn: Optional[Callable[[int], None]] = None
                      ) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """Train and val DataLoaders of a config.

    Train: ``data.batch_size`` crops, ``drop_last``, shuffled by a ``torch.Generator`` seeded with
    ``train.seed``. Val: ``data.eval_batch_size`` whole images in file order, as lists
    (``list_collate``): never padded.

    Args:
        cfg: the run ``Config``.
        worker_init_fn: run in each loader worker (the entry points pass
            ``fcn_dist.process.loader_worker_init()``: workers ignore stop signals).

    Returns:
        (train_loader, val_loader) yielding ``images uint8 (B, 3, H, W)``, ``masks uint8 (B, H, W)``;
        with ``data.resize_on=device`` (and a rescale) train batches are ``window_collate``'s
        (images, masks, geometry), finished on the device by ``transforms.finish_windows``.

    Raises:
        DataError: bad data, or fewer training images than one batch.
        ConfigError: ``model.num_classes`` differs from the number of class names (``data.classes``,
            or a folder set's classes.yaml).
    """
    checked_classes(cfg.data, cfg.model.num_classes)
    train_set = build_dataset(cfg.data, cfg.data.train_split, train=True, seed=cfg.train.seed)
    if len(train_set) < cfg.data.batch_size:
        raise DataError(f"split {cfg.data.train_split!r} of {cfg.data.root} has {len(train_set)} usable images, "
                        f"fewer than data.batch_size={cfg.data.batch_size}; lower the batch size")
    val_set = build_dataset(cfg.data, cfg.data.val_split, train=False)
    generator = torch.Generator()
    generator.manual_seed(cfg.train.seed)
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=cfg.data.batch_size, shuffle=True, drop_last=True, generator=generator,
        collate_fn=window_collate if isinstance(train_set.transform, WindowScaleCrop) else crop_collate,
        **loader_kwargs(cfg.data, worker_init_fn))
    val_loader = torch.utils.data.DataLoader(
        val_set, batch_size=cfg.data.eval_batch_size, shuffle=False, collate_fn=list_collate,
        **loader_kwargs(cfg.data, worker_init_fn))
    return train_loader, val_loader


__all__ = ["build_dataset", "build_dataloaders", "build_reader", "crop_collate", "list_collate", "loader_kwargs",
           "window_collate", "DataError"]
