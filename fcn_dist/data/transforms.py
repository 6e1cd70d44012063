"""Paired image/mask transforms on uint8 tensors and their seeding.

Presets (``build_transforms``), built on torchvision ``transforms.v2`` with ``tv_tensors.Image``
and ``tv_tensors.Mask`` so one draw of parameters moves both, and masks are resized nearest:

- ``train``: random scale in ``data.scale_range``, pad to ``data.crop_size`` (image 0, mask 255,
  so padding is ignored by the loss), random crop, horizontal flip if ``data.hflip``. Keeps
  every image, portrait ones included.
- ``d2l``: a plain random crop of ``data.crop_size``, as the seed; the dataset drops images
  smaller than the crop (see ``fcn_dist.data.build_dataset``).
- eval: the whole image, untouched.

Workers return uint8 (a quarter of float32's bytes through shared memory and pinned memory);
``fcn_dist.model.normalize`` turns a uint8 batch into normalised float32 on the device.

``AugmentedDataset`` seeds the random transform of sample ``index`` from ``(seed, epoch,
index)``, so an augmentation does not depend on the number of workers or processes, nor on
where a run resumed.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..labels import IGNORE_INDEX

def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for the augmentation of one sample in one epoch."""
    words = np.random.SeedSequence([seed % 2**64, epoch % 2**64, index % 2**64]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class PairTransform:
    """Applies a list of v2 transforms to an (image, mask) pair of plain tensors.

    Args:
        transforms: v2 transforms; an empty list is the identity (the eval preset).
    """

    def __init__(self, transforms: list) -> None:
        self.transforms = v2.Compose(transforms) if transforms else None

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image uint8 (3, H, W), mask uint8 (H, W) -> the same dtypes at the output size."""
        if self.transforms is None:
            return image, mask
        image, mask = self.transforms(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"PairTransform({self.transforms.transforms if self.transforms else []})"


def _nearest_indices(start: int, length: int, size: int) -> np.ndarray:
    """Source indices of torch's "nearest" resize of ``length`` pixels to ``size``, offset by ``start``."""
    # torch: min(floor(dst * scale), length - 1), scale = float32(length) / size, all in float32
    scale = np.float32(length) / np.float32(size)
    src = np.floor(np.arange(size, dtype=np.float32) * scale).astype(np.intp)
    return start + np.minimum(src, length - 1)


def resized_crop_nearest(mask: torch.Tensor, top: int, left: int, height: int, width: int,
                         size: Sequence[int]) -> torch.Tensor:
    """``F.resized_crop(mask, ..., interpolation=NEAREST)`` on a CPU tensor, by row and column indexing.

    The same pixels as torch's nearest interpolation (same index formula; a test compares them),
    several times faster on CPU: torch's kernel is not vectorised for one uint8 channel, numpy's
    row-then-column gather is. Measured figures: benchmarks/README.md, "Transforms".

    Args:
        mask: (..., H, W) on the CPU.
        top, left, height, width: the source window.
        size: output (h, w).

    Returns:
        A new (..., h, w) tensor of the mask's dtype.
    """
    rows = _nearest_indices(top, height, int(size[0]))
    cols = _nearest_indices(left, width, int(size[1]))
    pixels = mask.as_subclass(torch.Tensor).numpy()
    return torch.from_numpy(pixels[..., rows, :][..., cols])


class RandomScaleCrop(v2.Transform):
    """Rescale by a factor drawn uniformly from ``scale_range``, then take a random ``size`` crop.

    The same distribution as a random rescale followed by ``v2.RandomCrop(size,
    pad_if_needed=True)``: where the rescaled image is larger than the crop, a uniformly placed
    window; where it is smaller, the whole image at a uniformly drawn offset inside the crop,
    the rest filled with ``fill`` (image 0, mask 255). But only the window is resized
    (``F.resized_crop``), never the whole image: at most crop-size pixels come out instead of
    ``scale**2`` times the image's (1.75x the image on average for scales 0.5-2.0). The window
    is rounded to whole source pixels, so the effective scale differs from the drawn one by less
    than one source pixel over the window. Images are resized bilinearly with antialiasing,
    masks (``tv_tensors.Mask``) nearest, from the same window, so they stay aligned. Faster
    than the whole-image rescale + crop it replaces; the image resize is most of its cost.
    Measured figures: benchmarks/README.md, "Transforms".
    """

    def __init__(self, scale_range: Sequence[float], size: Sequence[int], fill: dict) -> None:
        super().__init__()
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.size = (int(size[0]), int(size[1]))
        self.fill = fill

    @staticmethod
    def _axis(length: int, scale: float, crop: int) -> tuple[int, int, int, int]:
        """(source start, source length, output offset, output length) along one axis."""
        scaled = max(1, round(length * scale))
        if scaled <= crop:  # the whole side fits: place it inside the crop
            offset = int(torch.randint(0, crop - scaled + 1, ()))
            return 0, length, offset, scaled
        start = int(torch.randint(0, scaled - crop + 1, ()))  # window start in rescaled pixels
        src_start = min(length - 1, round(start * length / scaled))
        src_len = max(1, min(length - src_start, round(crop * length / scaled)))
        return src_start, src_len, 0, crop

    def make_params(self, flat_inputs: list) -> dict:
        height, width = v2.query_size(flat_inputs)
        scale = torch.empty(()).uniform_(*self.scale_range).item()
        top, src_h, out_top, out_h = self._axis(height, scale, self.size[0])
        left, src_w, out_left, out_w = self._axis(width, scale, self.size[1])
        padding = [out_left, out_top, self.size[1] - out_left - out_w, self.size[0] - out_top - out_h]
        return {"window": (top, left, src_h, src_w), "out": [out_h, out_w], "padding": padding}

    def transform(self, inpt, params: dict):
        if isinstance(inpt, tv_tensors.Mask) and inpt.device.type == "cpu":
            out = tv_tensors.wrap(resized_crop_nearest(inpt, *params["window"], params["out"]), like=inpt)
        else:
            out = self._call_kernel(F.resized_crop, inpt, *params["window"], size=params["out"], antialias=True)
        if any(params["padding"]):
            out = self._call_kernel(F.pad, out, params["padding"], fill=self.fill[type(inpt)])
        return out


TRAIN_FILL = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}
"""Padding values of the train preset: image 0, mask 255 (void: ignored by the loss and metrics)."""


class WindowScaleCrop:
    """The loader half of the train preset when ``data.resize_on=device``.

    It makes the train preset's random draws (``RandomScaleCrop``'s scale and window, then the
    flip of ``v2.RandomHorizontalFlip(p=0.5)``, in that order: the same draws for a seed) but
    only cuts the source window, a view. ``finish_windows`` does the rest on the training
    device: resize, pad and flip. The antialiased resize is most of a sample's CPU cost; on a
    GPU it is a few small kernels per window. Measured figures: benchmarks/README.md, "Transforms".

    Args:
        scale_range, size: as ``RandomScaleCrop``.
        hflip: draw a horizontal flip.

    Returns (when called on image uint8 (3, H, W) and mask uint8 (H, W)):
        (image window (3, h, w), mask window (h, w), geometry): ``geometry`` is the tuple of ints
        ``(h, w, out_h, out_w, pad_left, pad_top, pad_right, pad_bottom, flip)``.
    """

    def __init__(self, scale_range: Sequence[float], size: Sequence[int], hflip: bool) -> None:
        self.scale_crop = RandomScaleCrop(scale_range, size, TRAIN_FILL)
        self.hflip = hflip

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        params = self.scale_crop.make_params([tv_tensors.Image(image), tv_tensors.Mask(mask)])
        flip = self.hflip and bool(torch.rand(1) < 0.5)  # v2.RandomHorizontalFlip's draw, after the crop's
        top, left, height, width = params["window"]
        geometry = (height, width, *params["out"], *params["padding"], int(flip))
        return image[:, top:top + height, left:left + width], mask[top:top + height, left:left + width], geometry

    def __repr__(self) -> str:
        return f"WindowScaleCrop({self.scale_crop.scale_range}, {list(self.scale_crop.size)}, hflip={self.hflip})"


def finish_windows(images: torch.Tensor, masks: torch.Tensor, geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """The device half of the train preset (``data.resize_on=device``): windows to crops.

    Runs ``RandomScaleCrop``'s own resize and padding, then the flip, on whatever device the
    windows are on, one sample at a time (their sizes differ). On the CPU the result equals the
    loader-side preset exactly (a test checks it); on a GPU torchvision resizes uint8 through
    float32 and rounds, so image pixels may differ by one level.

    Args:
        images: uint8 (3 * sum(h * w),): the windows' (h, w, 3) pixels back to back (``window_collate``).
        masks: uint8 (sum(h * w),): their (h, w) masks back to back.
        geometry: B tuples from ``WindowScaleCrop`` (plain ints: no device synchronisation).

    Returns:
        images uint8 (B, 3, crop_h, crop_w) and masks uint8 (B, crop_h, crop_w) on the same device.

    Raises:
        ValueError: the geometry does not describe the packed pixels.
    """
    pixels = sum(height * width for height, width, *_ in geometry)
    if masks.numel() != pixels or images.numel() != 3 * pixels:
        raise ValueError(f"the geometry covers {pixels} pixels but the batch packs {masks.numel()} mask and "
                         f"{images.numel()} image values; pass window_collate's (images, masks, geometry) unchanged")
    resize = RandomScaleCrop((1.0, 1.0), (1, 1), TRAIN_FILL).transform  # uses only the params given
    out_images, out_masks = [], []
    start = 0
    for height, width, out_h, out_w, *rest in geometry:
        size = height * width
        image = images[3 * start:3 * (start + size)].view(height, width, 3).permute(2, 0, 1)  # channels-last
        mask = masks[start:start + size].view(height, width)
        start += size
        params = {"window": (0, 0, height, width), "out": [out_h, out_w], "padding": list(rest[:4])}
        image, mask = resize(tv_tensors.Image(image), params), resize(tv_tensors.Mask(mask), params)
        if rest[4]:
            image, mask = F.horizontal_flip(image), F.horizontal_flip(mask)
        out_images.append(image.as_subclass(torch.Tensor))
        out_masks.append(mask.as_subclass(torch.Tensor))
    return torch.stack(out_images), torch.stack(out_masks)


def build_transforms(data_cfg, train: bool):
    """The transform preset of a config.

    Args:
        data_cfg: ``DataConfig`` (preset, crop_size, scale_range, hflip).
        train: False gives the eval preset (identity: whole images).

    Returns:
        A callable ``(image uint8 (3, H, W), mask uint8 (H, W)) -> (image, mask)``; train
        presets return ``data.crop_size`` crops. With ``data.resize_on=device`` and a rescale, a
        ``WindowScaleCrop`` instead, returning (window, mask window, geometry).
    """
    if not train:
        return PairTransform([])
    crop = list(data_cfg.crop_size)
    if data_cfg.preset == "d2l":
        return PairTransform([v2.RandomCrop(crop)])
    if tuple(data_cfg.scale_range) == (1.0, 1.0):
        steps = [v2.RandomCrop(crop, pad_if_needed=True, fill=TRAIN_FILL)]
    elif data_cfg.resize_on == "device":
        return WindowScaleCrop(data_cfg.scale_range, crop, data_cfg.hflip)
    else:
        steps = [RandomScaleCrop(data_cfg.scale_range, crop, TRAIN_FILL)]
    if data_cfg.hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    return PairTransform(steps)


class AugmentedDataset(torch.utils.data.Dataset):
    """A dataset whose random transform is seeded per sample from (seed, epoch, index).

    The epoch lives in a shared-memory tensor, so ``set_epoch`` reaches persistent DataLoader
    workers. Call it before iterating the loader for that epoch (see ``fcn_dist.data`` on when
    Accelerate's prepared loader does and does not call it).

    Args:
        base: dataset of ``(image uint8 (3, H, W), mask uint8 (H, W))`` without a transform.
        transform: ``(image, mask) -> (image, mask)`` using torch's global RNG (or a
            ``WindowScaleCrop``, whose items are (window, mask window, geometry)).
        seed: the run seed (``train.seed``).
        indices: the base indices to keep (the d2l preset drops small images); None keeps all.
    """

    def __init__(self, base, transform: Callable, seed: int = 0, indices: Optional[Sequence[int]] = None) -> None:
        self.base = base
        self.transform = transform
        self.seed = int(seed)
        self.indices = list(range(len(base))) if indices is None else list(indices)
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (visible to running workers)."""
        self.epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple:
        """Returns the transformed image uint8 (3, h, w) and mask uint8 (h, w) (see ``transform``)."""
        index = self.indices[i]
        image, mask = self.base[index]
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also seeds every lazy accelerator RNG, which
            # without CUDA records a traceback each time, as slow as the crop (benchmarks/README.md, "Transforms")
            torch.default_generator.manual_seed(sample_seed(self.seed, int(self.epoch), index))
            return self.transform(image, mask)
