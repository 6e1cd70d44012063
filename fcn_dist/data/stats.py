"""Class statistics of a split: pixels and images per class, and the class weights they suggest.

``count_classes(dataset, C)`` reads the masks of any dataset that yields ``(image, mask)``
pairs (``fcn_dist.data.build_reader`` for every ``data.format``), so ``fcn-data stats`` and
``optim.class_weights=auto`` count the same pixels whatever the format. ``enet_weights`` is the
formula both use. Plain PyTorch: the caller passes the loader workers' ``worker_init_fn``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..datafiles import DataError
from ..labels import IGNORE_INDEX

ENET_C = 1.02
"""ENet's constant c in ``w = 1 / ln(c + p)``: it bounds every weight to (1 / ln(1 + c), 1 / ln(c)], 1.42 to 50.5."""
WEIGHTS_FORMULA = "ENet (Paszke et al. 2016): w_c = 1 / ln(1.02 + p_c), p_c = pixels of class c / labelled pixels"
"""What ``enet_weights`` computes, in words (``fcn-data stats`` prints it, its JSON records it)."""


@dataclasses.dataclass
class ClassCounts:
    """Counts of one split's masks.

    Attributes:
        images: samples read.
        pixels: int64 (C,): pixels labelled with each class.
        void: pixels labelled ``IGNORE_INDEX``.
        images_per_class: int64 (C,): images in which each class has at least one pixel.
    """

    images: int
    pixels: np.ndarray
    void: int
    images_per_class: np.ndarray

    @property
    def labelled(self) -> int:
        """Pixels with a class (void excluded)."""
        return int(self.pixels.sum())


class _MaskHistograms(torch.utils.data.Dataset):
    """A dataset's items reduced to their mask's histogram over 0..255 (int64 (256,)), in the worker."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        mask = self.dataset[index][1]
        return torch.bincount(torch.as_tensor(mask).reshape(-1).long(), minlength=256)


def count_classes(dataset, num_classes: int, num_workers: int = 0,
                  worker_init_fn: Optional[Callable[[int], None]] = None, progress: bool = False,
                  desc: str = "count") -> ClassCounts:
    """Pixels and images per class over every mask of a dataset.

    Args:
        dataset: yields ``(image, mask)`` with ``mask`` (H, W) of class ids, 255 void (a reader
            from ``build_reader``: its masks are checked to lie in ``0..C-1`` or 255).
        num_classes: C.
        num_workers: DataLoader workers that decode the samples (0: this process).
        worker_init_fn: run in each worker (the entry points pass ``process.loader_worker_init()``).
        progress: show a tqdm bar.
        desc: the bar's label.

    Returns:
        The counts.

    Raises:
        DataError: a sample that cannot be read (the reader's one-line message), or a mask value
            in ``C..254`` (which a reader given C classes refuses first).
    """
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(_MaskHistograms(dataset), batch_size=None, num_workers=num_workers,
                                         worker_init_fn=worker_init_fn if num_workers > 0 else None)
    histogram = np.zeros(256, dtype=np.int64)
    present = np.zeros(256, dtype=np.int64)
    for counts in tqdm(loader, desc=desc, unit="img", disable=not progress):
        counts = counts.numpy()
        histogram += counts
        present += counts > 0
    stray = [v for v in range(num_classes, 256) if v != IGNORE_INDEX and histogram[v]]
    if stray:
        raise DataError(f"mask values {stray[:8]} are outside 0..{num_classes - 1} and not {IGNORE_INDEX}; "
                        f"fix the masks, or use classes that include these values (data.classes)")
    return ClassCounts(images=len(dataset), pixels=histogram[:num_classes].copy(), void=int(histogram[IGNORE_INDEX]),
                       images_per_class=present[:num_classes].copy())


def enet_weights(pixels: Sequence[int]) -> list[float]:
    """Class weights by ENet's inverse log frequency: ``w_c = 1 / ln(1.02 + p_c)``.

    Paszke et al., "ENet: A Deep Neural Network Architecture for Real-Time Semantic
    Segmentation" (2016, arXiv:1606.02147), its class weighing: ``p_c`` is the class's share of the labelled pixels
    (void excluded) and c = 1.02 bounds the weights to 1.42..50.5. A class with no pixel gets the
    largest, 1 / ln(1.02), which changes nothing while it stays absent.

    Args:
        pixels: C per-class pixel counts.

    Returns:
        C floats (``optim.class_weights``).

    Raises:
        ValueError: no labelled pixel at all.
    """
    total = sum(int(n) for n in pixels)
    if total == 0:
        raise ValueError("no labelled pixel: class weights are undefined")
    return [1.0 / math.log(ENET_C + int(n) / total) for n in pixels]
