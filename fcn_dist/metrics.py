"""Segmentation metrics: the confusion matrix by bincount, and the scores computed from it.

Pure functions on tensors, for any device and any shape; summing confusion matrices over
images, batches or processes (done by ``evaluate.py``) and then scoring gives exactly the
scores of the whole set. Conventions (docs/DESIGN.md, "Evaluation"):

- ``cm[i, j]`` counts pixels of true class ``i`` predicted as class ``j``;
- pixels labelled ``ignore_index`` (255, VOC's void border) are not counted;
- a class absent from both labels and predictions has IoU, Dice and F-score ``None`` and is
  left out of their means (nanmean); a class present only in the predictions (or only in the
  labels) scores 0.

Dice and F-score follow mmsegmentation (``mmseg.evaluation.metrics.IoUMetric``):
``Dice_c = 2 TP / (2 TP + FP + FN)``; ``F_c = (1 + beta^2) P R / (beta^2 P + R)`` with beta = 1,
precision ``P = TP / (TP + FP)`` and recall ``R = TP / (TP + FN)``. With beta = 1 the F-score is
Dice (up to rounding). One difference from mmsegmentation: a class that is labelled but never
predicted (or predicted but never labelled) has precision (recall) 0 here, so its F-score is 0
and counts in the mean; mmsegmentation's 0/0 = NaN would drop it from ``mFscore``.
"""

from __future__ import annotations

import torch

from .labels import IGNORE_INDEX

FSCORE_BETA = 1.0
"""The F-score's beta (mmsegmentation's default): precision and recall weigh the same."""


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Count (true class, predicted class) pairs with one ``bincount``.

    Args:
        preds: predicted class ids, any integer dtype and shape, e.g. (B, H, W).
        labels: true class ids, same shape as ``preds``; ``ignore_index`` marks void pixels.
        num_classes: C, the number of classes.
        ignore_index: label value that is not counted.

    Returns:
        int64 (C, C) tensor on the device of ``labels``: rows are true classes, columns
        predicted classes.

    Raises:
        ValueError: shapes differ, or a non-void label or a prediction outside ``0..C-1``
            (counting it would silently shift pixels into other cells).
    """
    if preds.shape != labels.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and labels {tuple(labels.shape)} must have the same shape")
    labels = labels.reshape(-1).long()
    preds = preds.reshape(-1).long()
    keep = labels != ignore_index
    labels, preds = labels[keep], preds[keep]
    bad = (labels < 0) | (labels >= num_classes) | (preds < 0) | (preds >= num_classes)
    if bool(bad.any()):
        raise ValueError(f"class ids must lie in 0..{num_classes - 1} (or be {ignore_index} in labels); found "
                         f"label {int(labels[bad][0])}, prediction {int(preds[bad][0])}")
    counts = torch.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def compute_scores(cm: torch.Tensor) -> dict:
    """Scores of a confusion matrix, all fractions in [0, 1].

    Args:
        cm: (C, C) integer confusion matrix, rows true, columns predicted.

    Returns:
        dict with ``pixel_accuracy`` (correct / labelled pixels), ``mean_accuracy`` (mean
        per-class recall over classes present in the labels), ``mIoU`` (mean IoU over classes
        whose IoU is defined), ``fwIoU`` (IoU weighted by label frequency), ``mDice`` and
        ``mFscore`` (means over the same classes) as floats, and ``per_class_IoU``,
        ``per_class_Dice``, ``per_class_Fscore``: lists of C floats, ``None`` for a class
        absent from both labels and predictions.

    Raises:
        ValueError: not a square matrix, or no labelled pixel at all (every score undefined).
    """
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be (C, C), got {tuple(cm.shape)}")
    cm = cm.detach().to("cpu", torch.float64)
    total = cm.sum()
    if total == 0:
        raise ValueError("empty confusion matrix: no labelled pixels to score")
    tp = cm.diagonal()
    gt = cm.sum(dim=1)
    predicted = cm.sum(dim=0)
    union = gt + predicted - tp
    iou = tp / union  # 0/0 = nan for classes absent from labels and predictions
    dice = 2 * tp / (gt + predicted)  # 2TP / (2TP + FP + FN), nan exactly where iou is
    defined = union > 0
    precision = torch.where(predicted > 0, tp / predicted, 0.0)
    recall = torch.where(gt > 0, tp / gt, 0.0)
    beta2 = FSCORE_BETA ** 2
    fscore = (1 + beta2) * precision * recall / (beta2 * precision + recall)  # 0/0 = nan: no TP
    fscore = torch.where(defined, torch.nan_to_num(fscore, nan=0.0), float("nan"))
    present = gt > 0
    return {
        "mIoU": float(iou.nanmean()),
        "pixel_accuracy": float(tp.sum() / total),
        "mean_accuracy": float((tp[present] / gt[present]).mean()),
        "fwIoU": float((gt[defined] / total * iou[defined]).sum()),
        "mDice": float(dice.nanmean()),
        "mFscore": float(fscore.nanmean()),
        "per_class_IoU": _per_class(iou),
        "per_class_Dice": _per_class(dice),
        "per_class_Fscore": _per_class(fscore),
    }


def _per_class(values: torch.Tensor) -> list:
    return [None if torch.isnan(v) else float(v) for v in values]
