"""The training step: one function, used by ``fcn_dist.train`` and ``benchmarks/run.py``.

Plain PyTorch: the caller supplies what differs between a distributed run and a bare loop
(Accelerate's ``backward``, gradient clipping, an autocast context), so the benchmark times
exactly the step that training runs.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch

from .data.transforms import finish_windows
from .model import normalize
from .losses import LossFn, segmentation_loss


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch,
               memory_format: torch.memory_format = torch.contiguous_format,
               backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
               clip: Optional[Callable[[], torch.Tensor]] = None,
               autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
               loss_fn: Optional[LossFn] = None,
               ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Forward, fp32 loss, backward, optimizer step and ``zero_grad`` of one (micro-)batch.

    No host synchronisation: the loss stays on the device.

    Args:
        model: the FCN (prepared by Accelerate or not) on the batch's device.
        optimizer: its optimizer (Accelerate's skips the step inside gradient accumulation).
        batch: a train loader batch on the device: ``(images uint8 (B, 3, H, W), masks uint8 (B, H, W))``,
            or ``window_collate``'s ``(images, masks, geometry)`` (``data.resize_on=device``),
            finished here by ``finish_windows``.
        memory_format: the network's layout; the normalised images are converted to it.
        backward: ``accelerator.backward`` (loss scaling, accumulation) or plain ``Tensor.backward``.
        clip: called after backward and before the optimizer step, returning the gradient norm
            (``accelerator.clip_grad_norm_``); None skips it.
        autocast: a context for the forward pass (e.g. ``lambda: torch.autocast("cpu", torch.bfloat16)``);
            Accelerate's prepared model autocasts by itself.
        loss_fn: ``loss(logits, masks) -> fp32 scalar`` (``fcn_dist.losses.build_loss``); None is
            the plain cross-entropy, ``segmentation_loss``.

    Returns:
        (the loss, detached, fp32 scalar; the gradient norm from ``clip`` or None).
    """
    images, masks, *windows = batch
    if windows:  # data.resize_on=device: the loader cut source windows; resize, pad and flip here
        images, masks = finish_windows(images, masks, *windows)
    images = normalize(images).contiguous(memory_format=memory_format)
    with autocast():
        logits = model(images)
    loss = (segmentation_loss if loss_fn is None else loss_fn)(logits, masks)
    backward(loss)
    grad_norm = clip() if clip is not None else None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), grad_norm
