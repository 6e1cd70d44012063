"""Training losses: cross-entropy, soft Dice, their sum and focal loss, void ignored. Plain PyTorch.

Every loss is computed in fp32 from ``(logits (B, C, H, W), masks (B, H, W))``; pixels labelled
``IGNORE_INDEX`` (255) take no part in any sum or normaliser. ``build_loss(optim_cfg, ...)``
gives the loss ``optim.loss`` and ``optim.class_weights`` ask for.

**Exact under sharding.** Data parallelism averages the gradients of N processes; each process
sees a shard of the global batch. A loss here is "exact" when N processes with batch B give the
gradient that one process gives with the N*B batch, and its per-process values average to that
one process's value (so ``train/loss``, a mean over processes, is the global loss). Where the
global loss needs a sum over the whole batch (a normaliser, Dice's per-class sums), the process
knowledge comes from the caller as a ``Shards``: the number of processes and an ``all_sum``
callable that sums a detached tensor over them (``fcn_dist.train`` passes Accelerate's
``reduce``). This module never talks to other processes itself.

- A loss ``S / Z`` whose numerator ``S`` is a sum over pixels and whose normaliser ``Z`` is a
  constant (no gradient) uses the global ``Z``: each process returns ``N * S_local / Z_global``.
  Their mean is ``S_global / Z_global``, and the mean of their gradients is its gradient.
- Dice is a function of per-class sums ``s`` over the whole batch. Each process builds
  ``s_global.detach() + (s_local - s_local.detach())`` (the global value, the local gradient),
  computes ``L`` from it and returns ``N * L - (N - 1) * L.detach()``: the value ``L`` on every
  process, and ``N`` times the local share of the gradient, whose mean over processes is the
  whole gradient.

With ``train.grad_accum > 1`` every micro-batch is normalised by itself (over all processes):
the plain cross-entropy is still exact, the others weigh each micro-batch equally.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .config import LOSSES  # noqa: F401  (``optim.loss`` values, defined with the config)
from .labels import IGNORE_INDEX

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Shards:
    """How the global batch is split over processes, as the entry point knows it.

    Attributes:
        count: N, the processes whose gradients are averaged (1: no sharding).
        all_sum: returns the sum over the N processes of a detached tensor (same shape, dtype
            and device); every process must call it at the same point. None with one process.
    """

    count: int = 1
    all_sum: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def __post_init__(self) -> None:
        if self.count < 1 or (self.count > 1 and self.all_sum is None):
            raise ValueError(f"Shards(count={self.count}) needs count >= 1, and an all_sum when count > 1")

    def total(self, local: torch.Tensor) -> torch.Tensor:
        """The sum over processes of ``local``, detached."""
        local = local.detach()
        return local if self.count == 1 else self.all_sum(local)


ONE_PROCESS = Shards()


def _valid_labels(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int64 labels with void as 0, bool valid mask) of ``masks`` (B, H, W)."""
    labels = masks.long()
    valid = labels != IGNORE_INDEX
    return torch.where(valid, labels, 0), valid


def _weight_normaliser(labels: torch.Tensor, valid: torch.Tensor, num_classes: int,
                       weights: Optional[torch.Tensor]) -> torch.Tensor:
    """fp32 sum over labelled pixels of their class weight (their count without weights)."""
    counts = torch.bincount(labels[valid], minlength=num_classes)[:num_classes]
    return counts.float().sum() if weights is None else (counts.float() * weights).sum()


def _global_mean(local_sum: torch.Tensor, local_normaliser: torch.Tensor, shards: Shards) -> torch.Tensor:
    """``N * S_local / Z_global``; 0 (with a zero gradient) when the whole batch has no labelled pixel."""
    normaliser = shards.total(local_normaliser)
    normaliser = torch.where(normaliser > 0, normaliser, torch.ones_like(normaliser))
    return local_sum / normaliser * shards.count


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy in fp32, void (``IGNORE_INDEX``) ignored, averaged over all pixels of the batch.

    ``optim.loss=ce`` without class weights (the default). Dividing by every pixel, void
    included (mmsegmentation's default ``avg_non_ignore=False``), makes the loss of a batch the
    mean of its per-process losses whatever the split (every process's batch has the same
    number of pixels), so N processes with batch B give the same gradient as one process with
    batch N*B, and no process needs another's counts.

    Args:
        logits: (B, C, H, W) in any float dtype.
        masks: (B, H, W) integer class ids, ``IGNORE_INDEX`` = void.

    Returns:
        Scalar fp32 loss.
    """
    total = F.cross_entropy(logits.float(), masks.long(), ignore_index=IGNORE_INDEX, reduction="sum")
    return total / masks.numel()


def weighted_cross_entropy(logits: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor,
                           shards: Shards = ONE_PROCESS) -> torch.Tensor:
    """Class-weighted cross-entropy with PyTorch's ``weight=`` semantic, normalised over the global batch.

    ``sum_i w[y_i] * -log softmax(z_i)[y_i] / sum_i w[y_i]`` over the labelled pixels ``i`` of the
    whole (global) batch: ``F.cross_entropy(..., weight=w, ignore_index=255)`` on the N*B batch.
    The normaliser is summed over processes (``shards``).

    Args:
        logits: (B, C, H, W), any float dtype.
        masks: (B, H, W) class ids, 255 void.
        weights: fp32 (C,) class weights >= 0, on the logits' device.
        shards: how the batch is split over processes.

    Returns:
        Scalar fp32: this process's part (the mean over processes is the global loss).
    """
    labels, valid = _valid_labels(masks)
    total = F.cross_entropy(logits.float(), masks.long(), weight=weights, ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return _global_mean(total, _weight_normaliser(labels, valid, logits.shape[1], weights), shards)


def focal_loss(logits: torch.Tensor, masks: torch.Tensor, gamma: float = 2.0,
               weights: Optional[torch.Tensor] = None, shards: Shards = ONE_PROCESS) -> torch.Tensor:
    """Softmax focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017), void ignored.

    Per labelled pixel ``i`` with true class ``t``: ``FL_i = -w[t] (1 - p_t)^gamma log p_t``, with
    ``p_t = softmax(z_i)[t]`` and ``w`` the class weights (the paper's alpha-balancing; all 1
    without weights). The loss is ``sum_i FL_i / sum_i w[y_i]`` over the labelled pixels of the
    global batch: without weights, the mean over labelled pixels. ``gamma = 0`` is
    ``weighted_cross_entropy`` (the ``weight=`` semantic); note that the plain ``ce`` divides by
    all pixels, void included, so it is that times the labelled share.

    Args:
        logits: (B, C, H, W), any float dtype.
        masks: (B, H, W) class ids, 255 void.
        gamma: the focusing exponent, >= 0.
        weights: fp32 (C,) class weights, or None.
        shards: how the batch is split over processes.

    Returns:
        Scalar fp32: this process's part (the mean over processes is the global loss).
    """
    labels, valid = _valid_labels(masks)
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
    # 1 - p_t, from log p_t without cancellation; floored so that gamma < 1 has a finite gradient at p_t = 1
    factor = (-torch.expm1(log_p)).clamp_min(torch.finfo(torch.float32).tiny).pow(gamma)
    per_pixel = -factor * log_p
    if weights is not None:
        per_pixel = per_pixel * weights[labels]
    total = torch.where(valid, per_pixel, torch.zeros_like(per_pixel)).sum()
    return _global_mean(total, _weight_normaliser(labels, valid, logits.shape[1], weights), shards)


def dice_loss(logits: torch.Tensor, masks: torch.Tensor, weights: Optional[torch.Tensor] = None,
              shards: Shards = ONE_PROCESS) -> torch.Tensor:
    """Soft Dice loss over the softmax, per class, averaged over the classes present in the batch.

    With ``p = softmax(logits)`` (fp32) and ``g_c`` the one-hot labels, summed over the labelled
    pixels of the global batch (void pixels left out of every sum):

        I_c = sum p_c * g_c,   P_c = sum p_c,   G_c = sum g_c (pixels labelled c),
        Dice_c = 2 I_c / (P_c + G_c),
        loss = 1 - sum_{c: G_c > 0} w_c Dice_c / sum_{c: G_c > 0} w_c

    (the linear-denominator soft Dice of Milletari et al., V-Net, 2016; ``w`` = the class
    weights, all 1 without them). Only classes labelled somewhere in the global batch count, so
    every term's denominator is at least 1 and no smoothing constant is needed; a batch with no
    labelled pixel gives 0. ``I``, ``P`` and ``G`` are summed over processes before the ratio.

    Args:
        logits: (B, C, H, W), any float dtype.
        masks: (B, H, W) class ids, 255 void.
        weights: fp32 (C,) class weights, or None.
        shards: how the batch is split over processes.

    Returns:
        Scalar fp32, the global loss on every process (its gradient is N times this shard's share).
    """
    num_classes = logits.shape[1]
    labels, valid = _valid_labels(masks)
    probs = F.softmax(logits.float(), dim=1) * valid.unsqueeze(1)
    classes = torch.arange(num_classes, device=logits.device).view(1, -1, 1, 1)
    onehot = (labels.unsqueeze(1) == classes) & valid.unsqueeze(1)
    local = torch.stack([(probs * onehot).sum(dim=(0, 2, 3)), probs.sum(dim=(0, 2, 3)),
                         onehot.sum(dim=(0, 2, 3)).float()])  # (3, C): I, P, G of this shard
    sums = shards.total(local) + (local - local.detach())  # global values, this shard's gradient
    intersection, predicted, labelled = sums
    present = labelled.detach() > 0
    dice = 2 * intersection / torch.where(present, predicted + labelled, torch.ones_like(labelled))
    class_weights = present.float() if weights is None else weights * present
    mean = (class_weights * dice).sum() / class_weights.sum().clamp_min(torch.finfo(torch.float32).tiny)
    loss = torch.where(present.any(), 1 - mean, mean * 0)
    return loss * shards.count - loss.detach() * (shards.count - 1)


def build_loss(optim_cfg, num_classes: int, device: torch.device | str = "cpu",
               shards: Shards = ONE_PROCESS) -> LossFn:
    """The training loss of ``optim.loss``, ``optim.class_weights`` and ``optim.focal_gamma``.

    ``ce+dice`` is the sum of the two terms with weight 1 each: ``CE + Dice``, CE being the
    plain or the class-weighted one. Class weights apply to every term: weighted CE, focal's
    alpha, Dice's weighted mean over present classes.

    Args:
        optim_cfg: ``OptimConfig``; ``class_weights`` must be resolved (``none`` or a list of C
            numbers, not ``auto``: the entry point resolves it).
        num_classes: C.
        device: where the weights go (the logits' device).
        shards: how batches are split over processes (``fcn_dist.train`` builds it).

    Returns:
        ``loss(logits, masks) -> scalar fp32``. ``ce`` without weights is ``segmentation_loss``
        itself: the default run is unchanged, bit for bit.
    """
    name, weights = optim_cfg.loss, optim_cfg.class_weights
    if name not in LOSSES:
        raise ValueError(f"optim.loss={name!r} is not one of {', '.join(LOSSES)}")
    if isinstance(weights, str):
        if weights != "none":
            raise ValueError(f"optim.class_weights={weights!r} must be resolved to a list before the loss is built")
        weight_t = None
    else:
        weight_t = class_weight_tensor(weights, num_classes, device)

    def ce(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if weight_t is None:
            return segmentation_loss(logits, masks)
        return weighted_cross_entropy(logits, masks, weight_t, shards)

    if name == "ce":
        return segmentation_loss if weight_t is None else ce
    if name == "focal":
        gamma = optim_cfg.focal_gamma
        return lambda logits, masks: focal_loss(logits, masks, gamma, weight_t, shards)
    if name == "dice":
        return lambda logits, masks: dice_loss(logits, masks, weight_t, shards)
    return lambda logits, masks: ce(logits, masks) + dice_loss(logits, masks, weight_t, shards)


def class_weight_tensor(weights: Sequence[float], num_classes: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """fp32 (C,) tensor of class weights, checked: C finite numbers >= 0, not all 0."""
    tensor = torch.tensor([float(w) for w in weights], dtype=torch.float32, device=device)
    if tensor.shape != (num_classes,) or not bool(torch.isfinite(tensor).all()) or bool((tensor < 0).any()) \
            or not bool((tensor > 0).any()):
        raise ValueError(f"class weights {list(weights)} must be {num_classes} finite numbers >= 0, not all 0")
    return tensor
