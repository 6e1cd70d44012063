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
PyTorch: nothing here knows about processes. ``InferenceOptions`` (``fcn_dist.config``) holds
the modes' settings and the only tile/stride defaults, and ``config.tile_windows`` the tiles
(re-exported here). ``fcn_dist.runtime`` does the same in numpy for an exported ONNX model.
"""

from __future__ import annotations

import os
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .config import InferenceOptions, tile_windows  # noqa: F401 (re-exported)
from .model import hwc_to_chw, normalize


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
                 options: InferenceOptions = InferenceOptions()) -> torch.Tensor:
    """Logits of a batch of same-size images at their own resolution.

    Call it under ``torch.inference_mode()`` (and, for mixed precision, inside an autocast
    context); the model should be in eval mode.

    Args:
        model: FCN mapping normalised (N, 3, h, w) to logits (N, C, h, w) for any h, w.
        images: uint8 (B, 3, H, W) on the model's device; made channels_last when the
            model's weights are.
        mean, std: normalisation of the checkpoint (``ModelInfo.mean``/``std``).
        options: mode (whole or slide), slide tile and stride (at each scale), flip, scales.

    Returns:
        float32 logits (B, C, H, W), averaged over scales and flips.
    """
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


def image_to_tensor(image: Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]) -> torch.Tensor:
    """An image file, PIL image, HWC uint8 array or (3, H, W) uint8 tensor as a (3, H, W) uint8 tensor.

    A file or a PIL image is turned as its EXIF orientation says (``PIL.ImageOps.exif_transpose``),
    as viewers show it; arrays and tensors are taken as they are.

    Raises:
        ValueError: other dtypes or shapes.
    """
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as img:
            image = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    elif isinstance(image, Image.Image):
        image = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
        return hwc_to_chw(image).contiguous()
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) uint8 tensor, got {image.dtype} {tuple(image.shape)}")
        return image
    raise ValueError(f"expected a PIL image, numpy array or tensor, got {type(image).__name__}")


def predict_image(model: torch.nn.Module, info, image: Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor],
                  options: InferenceOptions = InferenceOptions()) -> torch.Tensor:
    """Class map of one image, with the normalisation stored in the checkpoint.

    Args:
        model: FCN from ``fcn_dist.load_model`` (any device; eval mode is used).
        info: its ``ModelInfo`` (mean, std).
        image: image file path, PIL image (either turned by its EXIF orientation, as displayed), (H, W, 3)
            uint8 array or (3, H, W) uint8 tensor, any size.
        options: inference mode, tiles and test-time augmentation.

    Returns:
        int64 (H, W) class ids on the CPU, of the image as displayed.
    """
    device = next(model.parameters()).device
    images = image_to_tensor(image).unsqueeze(0).to(device)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        logits = infer_logits(model, images, info.mean, info.std, options)
    model.train(was_training)
    return logits.argmax(dim=1)[0].cpu()
