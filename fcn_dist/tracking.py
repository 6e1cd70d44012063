"""Run tracking: W&B settings (offline without a key), the local metrics.jsonl, and W&B media.

train.py calls these from the main process only; nothing here checks ranks.
"""

from __future__ import annotations

import json
import netrc
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fcn_dist.config import Config, flat_dict
from fcn_dist.files import atomic_write_text
from fcn_dist.labels import IGNORE_INDEX


def wandb_mode() -> str:
    """``WANDB_MODE`` if set, else online when an API key is configured, else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError):
        hosts = {}
    return "online" if any("wandb" in host for host in hosts) else "offline"


def wandb_init_kwargs(cfg: Config, run_dir: Path, run_id: str | None) -> dict[str, Any]:
    """``wandb.init`` arguments: one run per training run, resumed by id, grouped by config name."""
    run_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {"name": run_dir.name, "group": cfg.name, "dir": str(run_dir), "mode": wandb_mode(),
              "resume": "allow"}
    if run_id:
        kwargs["id"] = run_id
    if cfg.log.entity:
        kwargs["entity"] = cfg.log.entity
    return kwargs


def flat_config(cfg: Config) -> dict[str, Any]:
    """Config as a flat ``section.key`` dict (W&B config panel, sweeps)."""
    return flat_dict(cfg)


class MetricsLog:
    """Append-only JSONL file of logged rows, flushed per row so a crash loses nothing logged.

    Args:
        path: the ``metrics.jsonl`` file.
        keep_until: rows of an existing file with a larger ``step`` are dropped (atomically)
            first: a resumed run logs those steps again.
    """

    def __init__(self, path: Path, keep_until: int = 0):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        if path.exists():
            rows = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= keep_until]
            atomic_write_text(path, "".join(row + "\n" for row in rows))
        self._file = open(path, "a", buffering=1)

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def val_scalars(metrics: dict[str, Any], classes: list[str]) -> dict[str, float]:
    """W&B/JSONL validation scalars: ``val/mIoU``, ``val/pixel_accuracy``, ``val/IoU/<class>``."""
    row = {"val/mIoU": metrics["mIoU"], "val/pixel_accuracy": metrics["pixel_accuracy"],
           "val/mean_accuracy": metrics["mean_accuracy"], "val/fwIoU": metrics["fwIoU"]}
    for name, iou in zip(classes, metrics["per_class_IoU"].values()):
        if iou is not None:
            row[f"val/IoU/{name}"] = iou
    return row


def wandb_media(examples: list, confusion: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """``val/examples`` (image with prediction and label masks) and ``val/confusion_matrix`` (a table)."""
    import wandb

    labels = {i: name for i, name in enumerate(classes)}
    labels[IGNORE_INDEX] = "void"
    images = []
    if examples:  # W&B shows a list of images at one size: pad to the largest (image 0, masks void)
        height = max(image.shape[1] for image, _, _ in examples)
        width = max(image.shape[2] for image, _, _ in examples)
    for image, pred, label in examples:
        pad = (0, width - image.shape[2], 0, height - image.shape[1])
        masks = {name: {"mask_data": F.pad(mask, pad, value=IGNORE_INDEX).cpu().numpy(), "class_labels": labels}
                 for name, mask in (("prediction", pred), ("label", label))}
        images.append(wandb.Image(F.pad(image, pad).permute(1, 2, 0).cpu().numpy(), masks=masks))
    table = wandb.Table(columns=["true \\ predicted", *classes],
                        data=[[classes[i], *row] for i, row in enumerate(confusion.tolist())])
    return {"val/examples": images, "val/confusion_matrix": table}
