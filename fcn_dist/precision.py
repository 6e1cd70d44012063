"""``mixed_precision: auto``: the autocast precision chosen by measurement on this machine.

Which precision is fastest is a property of the machine, not of the recipe: on a 2-core AMD
EPYC (Zen 4) bf16 autocast trained 1.7-1.9x faster than fp32, on a 2-core Intel Xeon with
AVX-512 BF16 but no AMX it was 27% slower, and on one with AMX 2.05x faster (probe: 4.3x;
benchmarks/README.md). So:

- CUDA: bf16 where the GPU supports it, else fp16 (Accelerate adds the GradScaler).
- CPU: bf16 only where ``probe_cpu`` measures it faster than fp32 by ``MARGIN``: a few
  forward (and, for training, backward) passes of 3x3 convolutions at the ResNet trunk's own
  widths and a late-stage spatial size, channels_last as the model runs, interleaved, best of
  ``repeats``; well under a second. A near tie keeps fp32 (same speed, better numbers).

The decision is cached per process and per kind (training or inference). Plain PyTorch: the
entry points make every process use the main process's decision (``fcn_dist.train.run``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch
import torch.nn.functional as F

PRECISIONS = ("no", "fp16", "bf16")
MARGIN = 1.10
"""bf16 must be at least this much faster than fp32 to be chosen on CPU."""

# (channels, height, width) of the probe's convolutions: ResNet-18's layer2 and layer3 widths at
# the feature sizes of a 320x480 crop (stride 8 and 16), batch 2.
_PROBE_SHAPES = ((128, 40, 60), (256, 20, 30))


@dataclasses.dataclass(frozen=True)
class PrecisionChoice:
    """A resolved ``mixed_precision`` and why (printed once, recorded with the run)."""

    precision: str
    reason: str


def _probe_step(weights: list[torch.Tensor], inputs: list[torch.Tensor], dtype: torch.dtype | None,
                backward: bool) -> None:
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        outs = [F.conv2d(x, w, padding=1) for x, w in zip(inputs, weights)]
    if backward:
        torch.autograd.backward([o.float().sum() for o in outs])


def probe_cpu(backward: bool = True, repeats: int = 4) -> tuple[float, float]:
    """Seconds per probe step in fp32 and under bf16 autocast, best of ``repeats``, interleaved."""
    generator = torch.Generator().manual_seed(0)
    weights, inputs = [], []
    for channels, height, width in _PROBE_SHAPES:
        w = torch.randn(channels, channels, 3, 3, generator=generator) * 0.05
        x = torch.randn(2, channels, height, width, generator=generator)
        weights.append(w.contiguous(memory_format=torch.channels_last).requires_grad_(backward))
        inputs.append(x.contiguous(memory_format=torch.channels_last).requires_grad_(backward))
    best = {None: float("inf"), torch.bfloat16: float("inf")}
    with torch.set_grad_enabled(backward):
        for dtype in best:  # warm-up: oneDNN picks and builds its kernels on the first call
            _probe_step(weights, inputs, dtype, backward)
        for _ in range(repeats):
            for dtype in best:
                start = time.perf_counter()
                _probe_step(weights, inputs, dtype, backward)
                best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[None], best[torch.bfloat16]


_cache: dict[tuple[str, bool], PrecisionChoice] = {}


def resolve_precision(requested: str, device_type: str, training: bool = True,
                      probe: Callable[[bool], tuple[float, float]] | None = None) -> PrecisionChoice:
    """The precision ``requested`` means on this device: itself, or ``auto``'s choice.

    Args:
        requested: ``auto``, ``no``, ``fp16`` or ``bf16`` (explicit values mean exactly that).
        device_type: ``cuda`` or ``cpu``.
        training: probe forward and backward (training) or forward only (evaluation, prediction).
        probe: a stand-in for ``probe_cpu`` with its signature (tests); None uses ``probe_cpu``.

    Returns:
        PrecisionChoice(precision in ``PRECISIONS``, reason).
    """
    if requested != "auto":
        return PrecisionChoice(requested, "set explicitly")
    key = (device_type, training)
    if key in _cache:
        return _cache[key]
    if device_type == "cuda":
        if torch.cuda.is_bf16_supported():
            choice = PrecisionChoice("bf16", f"auto: {torch.cuda.get_device_name()} supports bf16")
        else:
            choice = PrecisionChoice("fp16", f"auto: {torch.cuda.get_device_name()} has no bf16; fp16 with loss scaling")
    else:
        fp32_s, bf16_s = (probe or probe_cpu)(training)
        what = "training" if training else "inference"
        speedup = fp32_s / bf16_s
        if speedup >= MARGIN:
            choice = PrecisionChoice("bf16", f"auto: bf16 {speedup:.2f}x fp32's {what} speed on this CPU (probe)")
        else:
            choice = PrecisionChoice("no", f"auto: bf16 {speedup:.2f}x fp32's {what} speed on this CPU (probe; "
                                           f"bf16 needs {MARGIN:.2f}x): fp32")
    _cache[key] = choice
    return choice
