"""Whole-image inference: logits at the input resolution for images of any size.

Modes (``infer_logits``):

- ``whole``: one forward pass per image. ``FCN.forward`` pads to a multiple of the output
  stride (32) at the bottom and right and crops the logits back, so any size works.
- ``slide``: the seed's method. Tiles of ``tile`` = (h, w) every ``stride`` pixels, the last
  row and column aligned to the border, so their union covers the image; overlapping logits
  are summed and divided by the number of tiles covering each pixel, before the argmax. A
  tile larger than the image is clipped to it, so ``slide`` with a tile covering the image
  is exactly ``whole``.
- test-time augmentation, as mmsegmentation's "ms+flip": logits averaged (before softmax)
  over ``scales`` (resize, infer, resize back) and, with ``flip``, horizontal flips.

Images come in as uint8 and are normalised here with the checkpoint's mean/std. Plain
PyTorch: nothing here knows about processes.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data.transforms import normalize
from .model import fold_batch_norms

MODES = ("whole", "slide")


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """How ``infer_logits`` covers an image (see the module docstring)."""

    mode: str = "whole"
    tile: tuple[int, int] = (320, 480)
    stride: tuple[int, int] = (213, 320)
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"inference mode {self.mode!r} is not one of {', '.join(MODES)}")
        if len(self.tile) != 2 or min(self.tile) < 1 or len(self.stride) != 2 or min(self.stride) < 1:
            raise ValueError(f"tile {self.tile} and stride {self.stride} must be (H, W) with positive sizes")
        if any(s > t for s, t in zip(self.stride, self.tile)):
            raise ValueError(f"stride {self.stride} larger than tile {self.tile} would leave pixels uncovered")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales {self.scales} must be positive")

    def kwargs(self) -> dict:
        """The options as keyword arguments of ``infer_logits``."""
        return dataclasses.asdict(self)


def tile_windows(height: int, width: int, tile: Sequence[int],
                 stride: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Tiles covering an image, the last row and column aligned to its border.

    Args:
        height, width: image size.
        tile: (h, w) tile size; clipped to the image when larger.
        stride: (h, w) step between tile origins.

    Returns:
        (y0, y1, x0, x1) windows, all of the same size ``min(tile, image)``, whose union is
        the whole image.
    """
    def starts(size: int, t: int, s: int) -> list[int]:
        t = min(t, size)
        last = size - t
        return sorted(set(list(range(0, last, s)) + [last]))

    th, tw = min(tile[0], height), min(tile[1], width)
    return [(y, y + th, x, x + tw) for y in starts(height, tile[0], stride[0])
            for x in starts(width, tile[1], stride[1])]


def _slide(model: torch.nn.Module, images: torch.Tensor, tile: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """Sum of tile logits divided by the tile count per pixel; images (B, 3, H, W) normalised."""
    b, _, h, w = images.shape
    windows = tile_windows(h, w, tile, stride)
    # all windows have the same size, so every tile of every image goes through in one batch
    crops = torch.cat([images[:, :, y0:y1, x0:x1] for y0, y1, x0, x1 in windows])
    tile_logits = model(crops).float().split(b)
    logits = images.new_zeros((b, tile_logits[0].shape[1], h, w), dtype=torch.float32)
    count = images.new_zeros((1, 1, h, w), dtype=torch.float32)
    for (y0, y1, x0, x1), part in zip(windows, tile_logits):
        logits[:, :, y0:y1, x0:x1] += part
        count[:, :, y0:y1, x0:x1] += 1
    return logits / count


def _is_channels_last(model: torch.nn.Module) -> bool:
    weight = next((p for p in model.parameters() if p.ndim == 4), None)
    return weight is not None and not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)


def _forward(model: torch.nn.Module, images: torch.Tensor, mode: str, tile: Sequence[int],
             stride: Sequence[int]) -> torch.Tensor:
    if mode == "whole":
        return model(images).float()
    return _slide(model, images, tile, stride)


def infer_logits(model: torch.nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 mode: str = "whole", tile: Sequence[int] = (320, 480), stride: Sequence[int] = (213, 320),
                 flip: bool = False, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """Logits of a batch of same-size images at their own resolution.

    Call it under ``torch.inference_mode()`` (and, for mixed precision, inside an autocast
    context); the model should be in eval mode.

    Args:
        model: FCN mapping normalised (N, 3, h, w) to logits (N, C, h, w) for any h, w.
        images: uint8 (B, 3, H, W) on the model's device; made channels_last when the
            model's weights are.
        mean, std: normalisation of the checkpoint (``ModelInfo.mean``/``std``).
        mode: ``whole`` or ``slide``.
        tile, stride: (h, w) tile size and step of ``slide``, at each scale.
        flip: also average the horizontally flipped pass.
        scales: resize factors averaged over (1.0 alone runs no resize).

    Returns:
        float32 logits (B, C, H, W), averaged over scales and flips.
    """
    options = InferenceOptions(mode, tuple(tile), tuple(stride), flip, tuple(scales))
    x = normalize(images, mean, std)
    if _is_channels_last(model):  # convolutions run faster when input and weights share the layout
        x = x.contiguous(memory_format=torch.channels_last)
    h, w = x.shape[-2:]
    total = None
    for scale in options.scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for flipped in ((False, True) if options.flip else (False,)):
            inp = scaled.flip(-1) if flipped else scaled
            logits = _forward(model, inp, options.mode, options.tile, options.stride)
            if flipped:
                logits = logits.flip(-1)
            if size != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).float()
            total = logits if total is None else total + logits
    passes = len(options.scales) * (2 if options.flip else 1)
    return total if passes == 1 else total / passes


def image_to_tensor(image: Union[Image.Image, np.ndarray, torch.Tensor]) -> torch.Tensor:
    """A PIL image, HWC uint8 array or (3, H, W) uint8 tensor as a (3, H, W) uint8 tensor.

    Raises:
        ValueError: other dtypes or shapes.
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) uint8 tensor, got {image.dtype} {tuple(image.shape)}")
        return image
    raise ValueError(f"expected a PIL image, numpy array or tensor, got {type(image).__name__}")


def predict_image(model: torch.nn.Module, info, image: Union[Image.Image, np.ndarray, torch.Tensor],
                  options: InferenceOptions = InferenceOptions()) -> torch.Tensor:
    """Class map of one image, with the normalisation stored in the checkpoint.

    Args:
        model: FCN from ``fcn_dist.load_model`` (any device; eval mode is used).
        info: its ``ModelInfo`` (mean, std).
        image: PIL image, (H, W, 3) uint8 array or (3, H, W) uint8 tensor, any size.
        options: inference mode, tiles and test-time augmentation.

    Returns:
        int64 (H, W) class ids on the CPU.
    """
    device = next(model.parameters()).device
    images = image_to_tensor(image).unsqueeze(0).to(device)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        logits = infer_logits(model, images, info.mean, info.std, **options.kwargs())
    model.train(was_training)
    return logits.argmax(dim=1)[0].cpu()


def add_inference_args(parser: argparse.ArgumentParser) -> None:
    """Add --mode, --tile, --stride, --flip, --channels-last, --fold-bn and --scales (fcn-eval and fcn-predict)."""
    default = InferenceOptions()
    group = parser.add_argument_group("inference")
    group.add_argument("--mode", choices=MODES, default=default.mode,
                       help="whole: pad to a multiple of 32, run, crop; slide: tiles with averaged overlaps "
                            "(default: %(default)s)")
    group.add_argument("--tile", type=int, nargs=2, metavar=("H", "W"), default=list(default.tile),
                       help="slide tile size (default: %(default)s)")
    group.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), default=list(default.stride),
                       help="slide tile step (default: %(default)s)")
    group.add_argument("--flip", action="store_true", help="average logits with the horizontally flipped image")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                       help="run the network in channels_last memory format (faster on CPU and tensor cores; "
                            "default: %(default)s)")
    group.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=True,
                       help="fold each BatchNorm into the convolution before it (same function up to float "
                            "rounding, a few %% faster; default: %(default)s)")
    group.add_argument("--scales", type=float, nargs="+", default=list(default.scales),
                       help="average logits over these resize factors, e.g. 0.75 1.0 1.25 (default: %(default)s)")


def model_from_args(model: torch.nn.Module, args: argparse.Namespace) -> torch.nn.Module:
    """The model as ``--fold-bn`` and ``--channels-last`` ask, in eval mode (a copy when folded)."""
    if args.fold_bn:
        model = fold_batch_norms(model)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


def options_from_args(args: argparse.Namespace) -> InferenceOptions:
    """InferenceOptions from the arguments added by ``add_inference_args``.

    Raises:
        ValueError: invalid tile, stride or scales.
    """
    return InferenceOptions(args.mode, tuple(args.tile), tuple(args.stride), args.flip, tuple(args.scales))
