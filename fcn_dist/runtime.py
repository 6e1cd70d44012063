"""ONNX Runtime inference without torch: what ``fcn-predict --onnx`` runs.

An ONNX model written by ``fcn-export`` (``fcn_dist.export``) maps normalised float32 images
``(N, 3, H, W)`` of any batch size, height and width to float32 logits ``(N, C, H, W)``, and
carries the checkpoint's ``fcn_dist.*`` header entries in its ``metadata_props`` (class names,
normalisation, model config, step, ...) plus ``fcn_dist.onnx``, which describes the graph
(``ONNX_META``). ``OnnxModel`` opens it with onnxruntime's ``CPUExecutionProvider`` and checks
both; ``infer_logits`` is ``fcn_dist.inference.infer_logits`` in numpy: the same normalisation
(bit for bit), ``whole`` and ``slide`` modes (the same tiles, ``config.tile_windows``), flips,
and scales, resized as torch's ``F.interpolate(mode="bilinear", align_corners=False)`` does.

numpy and onnxruntime only, never torch (``tests/test_export.py`` checks it in a fresh
interpreter); onnxruntime is imported when a model is opened, and ``fcn_dist.cli`` says which
extra to install when it is missing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .config import InferenceOptions, tile_windows
from .metadata import META_PREFIX, CheckpointError, ModelInfo, model_info

ONNX_META = META_PREFIX + "onnx"
"""The metadata entry that describes an exported graph: a JSON object with ``format`` (1),
``input`` and ``output`` (tensor names), ``layout`` (NCHW), ``input_values`` (how the float input
is made from RGB 0..255), ``exporter`` (dynamo or torchscript), ``opset``, ``folded_bn``, ``head``,
``written_by`` (``fcn-export``: what lets a rerun replace its own file) and ``checkpoint`` (the
source file's name)."""
ONNX_FORMAT = 1


def onnx_spec(meta: dict[str, str], path: Path) -> dict:
    """The ``fcn_dist.onnx`` entry of an ONNX model's metadata, checked.

    Raises:
        CheckpointError: no fcn_dist metadata (not written by fcn-export), or a malformed entry.
    """
    if META_PREFIX + "model" not in meta or ONNX_META not in meta:
        raise CheckpointError(f"{path}: no fcn_dist metadata; it is not a model written by fcn-export "
                              "(export one with fcn-export --checkpoint model_best.safetensors --format onnx)")
    try:
        spec = json.loads(meta[ONNX_META])
    except json.JSONDecodeError:
        spec = None
    if not (isinstance(spec, dict) and spec.get("format") == ONNX_FORMAT
            and all(isinstance(spec.get(key), str) for key in ("input", "output"))):
        raise CheckpointError(f"{path}: bad fcn_dist metadata: {ONNX_META} is not a format-{ONNX_FORMAT} object "
                              "with input and output names; export the model again with fcn-export")
    return spec


class OnnxModel:
    """An ONNX model written by ``fcn-export``, run by onnxruntime on the CPU.

    Attributes:
        path: the file.
        info: its ``ModelInfo`` (classes, mean, std, model config), from the metadata.
        spec: the ``fcn_dist.onnx`` entry (``ONNX_META``).
        session: the ``onnxruntime.InferenceSession``.
    """

    def __init__(self, path: str | os.PathLike, threads: int = 0):
        """Open and check ``path``.

        Args:
            path: the ``.onnx`` file.
            threads: onnxruntime's intra-op threads (0: its default, one per physical core).

        Raises:
            CheckpointError: missing file, not an ONNX model, no or bad fcn_dist metadata, or a graph
                whose input is not float32 (N, 3, H, W).
        """
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: ONNX model file not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: its warnings about unused initialisers are not the user's
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's load errors are pybind classes whose only base is Exception
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(f"{self.path}: not a readable ONNX model ({reason})") from None
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.spec = onnx_spec(meta, self.path)
        try:
            self.info: ModelInfo = model_info(meta)
        except ValueError as err:
            raise CheckpointError(f"{self.path}: bad fcn_dist metadata: {err}") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        image = inputs.get(self.spec["input"])
        if (len(inputs) != 1 or image is None or image.type != "tensor(float)" or len(image.shape) != 4
                or image.shape[1] != 3 or self.spec["output"] not in outputs):
            found = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs.values())
            raise CheckpointError(f"{self.path}: the graph's input is {found or 'missing'}, not one float32 "
                                  f"{self.spec['input']} (N, 3, H, W) with an output {self.spec['output']}; "
                                  "export the model again with fcn-export")
        channels = outputs[self.spec["output"]].shape[1] if len(outputs[self.spec["output"]].shape) == 4 else None
        if isinstance(channels, int) and channels != len(self.info.classes):
            raise CheckpointError(f"{self.path}: the graph outputs {channels} classes but its metadata names "
                                  f"{len(self.info.classes)}; export the model again with fcn-export")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Logits float32 (N, C, H, W) of normalised float32 images (N, 3, H, W)."""
        return self.session.run([self.spec["output"]], {self.spec["input"]: np.ascontiguousarray(images)})[0]


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (B, 3, H, W) to float32 ``(images / 255 - mean) / std``, the same float32 operations as
    ``fcn_dist.model.normalize`` (so the same bits)."""
    mean_a = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    x = images.astype(np.float32)
    x /= np.float32(255.0)
    x -= mean_a
    x /= std_a
    return x


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's linear resize along one axis (align_corners=False, no antialias).

    As ``area_pixel_compute_source_index`` computes it: the float32 ratio ``in / out`` times
    ``i + 0.5`` (a double), minus 0.5, clamped at 0 and rounded to float32; the weights in float32.
    """
    scale = float(np.float32(in_size) / np.float32(out_size))
    src = np.maximum(scale * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5, 0.0).astype(np.float32)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    return i0, i1, np.float32(1) - w1, w1


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 (N, C, H, W) resized to ``size`` = (h, w) as ``F.interpolate(x, size, mode="bilinear",
    align_corners=False)``: the same taps and weights and torch's order of the sums, ``(a * wx0 + b * wx1) * wy0 +
    (c * wx0 + d * wx1) * wy1``; torch's vectorised kernels fuse some multiply-adds, so about a third of the
    values differ in the last bit or two (~1e-7 relative)."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    y0, y1, wy0, wy1 = _linear_taps(h, size[0])
    x0, x1, wx0, wx1 = _linear_taps(w, size[1])
    cols = x[..., x0] * wx0 + x[..., x1] * wx1
    return cols[..., y0, :] * wy0[:, None] + cols[..., y1, :] * wy1[:, None]


Forward = Callable[[np.ndarray], np.ndarray]
"""Normalised float32 (N, 3, h, w) -> logits float32 (N, C, h, w): an ``OnnxModel``."""


def _slide(forward: Forward, x: np.ndarray, tile: Sequence[int], stride: Sequence[int]) -> np.ndarray:
    """Sum of tile logits divided by the tile count per pixel, as ``fcn_dist.inference._slide``."""
    b, _, h, w = x.shape
    windows = tile_windows(h, w, tile, stride)
    crops = np.concatenate([x[:, :, y0:y1, x0:x1] for y0, y1, x0, x1 in windows])  # one batch: same size
    tile_logits = np.split(forward(crops), len(windows))
    logits = np.zeros((b, tile_logits[0].shape[1], h, w), dtype=np.float32)
    count = np.zeros((1, 1, h, w), dtype=np.float32)
    for (y0, y1, x0, x1), part in zip(windows, tile_logits):
        logits[:, :, y0:y1, x0:x1] += part
        count[:, :, y0:y1, x0:x1] += 1
    return logits / count


def infer_logits(forward: Forward, images: np.ndarray, mean: Sequence[float], std: Sequence[float],
                 options: InferenceOptions = InferenceOptions()) -> np.ndarray:
    """Logits of a batch of same-size uint8 images at their own resolution (``inference.infer_logits`` in numpy).

    Args:
        forward: the network, e.g. an ``OnnxModel``.
        images: uint8 (B, 3, H, W).
        mean, std: the model's normalisation (``ModelInfo.mean``/``std``).
        options: mode (whole or slide), slide tile and stride (at each scale), flip, scales.

    Returns:
        float32 logits (B, C, H, W), averaged over scales and flips.
    """
    x = normalize(images, mean, std)
    h, w = x.shape[-2:]
    total = None
    for scale in options.scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        scaled = resize_bilinear(x, size)
        for flipped in ((False, True) if options.flip else (False,)):
            inp = scaled[..., ::-1] if flipped else scaled
            if options.mode == "whole":
                logits = forward(np.ascontiguousarray(inp))
            else:
                logits = _slide(forward, inp, options.tile, options.stride)
            if flipped:
                logits = logits[..., ::-1]
            logits = resize_bilinear(logits, (h, w))
            total = logits.astype(np.float32, copy=True) if total is None else total + logits
    passes = len(options.scales) * (2 if options.flip else 1)
    return total if passes == 1 else total / np.float32(passes)
