"""Checkpoints: run-directory layout, atomic resumable saves, and self-describing safetensors.

Two kinds of files:
- ``checkpoints/step_XXXXXXXX/``: Accelerate ``save_state`` plus the registered TrainState,
  for exact resume. Written to a temporary folder and renamed when complete.
- ``model_*.safetensors``: weights for others. The header metadata holds the model config,
  class names, normalisation, step and metrics, so ``load_model`` rebuilds the network with
  no training code and never unpickles.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .config import ConfigError, ModelConfig
from .files import atomic_write, fsync_dir
from .model import FCN

META_PREFIX = "fcn_dist."
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and why."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a self-describing checkpoint says about its model."""

    model: ModelConfig
    classes: list[str]
    mean: list[float]
    std: list[float]
    step: int
    metrics: dict[str, Any]


def export_model(model: torch.nn.Module, path: str | os.PathLike, model_cfg: ModelConfig, classes: list[str],
                 mean: list[float], std: list[float], step: int = 0, metrics: dict | None = None) -> Path:
    """Write ``model``'s weights as a self-describing safetensors file, atomically.

    Args:
        model: the (unwrapped) FCN; compiled models are unwrapped here too, so no
            ``_orig_mod.`` prefix reaches the file.
        path: destination ``.safetensors`` file.
        model_cfg, classes, mean, std, step, metrics: stored in the header metadata.

    Returns:
        The path written.
    """
    path = Path(path)
    model = getattr(model, "_orig_mod", model)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
             if v.is_floating_point()}
    state.update({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not v.is_floating_point()})
    metadata = {
        META_PREFIX + "model": json.dumps(dataclasses.asdict(model_cfg)),
        META_PREFIX + "classes": json.dumps(list(classes)),
        META_PREFIX + "normalize": json.dumps({"mean": list(mean), "std": list(std)}),
        META_PREFIX + "step": str(int(step)),
        META_PREFIX + "metrics": json.dumps(metrics or {}),
    }
    data = save(state, metadata=metadata)  # bytes: save_file would replace the file with a 0600 one
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header metadata of a safetensors file, validated to be an fcn_dist export.

    Raises:
        CheckpointError: missing file, pickle format, truncated/corrupt file, or no fcn_dist metadata.
    """
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: pickle checkpoints ({path.suffix}) are refused because loading them can run "
                              "arbitrary code; pass the model_*.safetensors file that training exports")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated or not a safetensors file ({size} bytes)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise CheckpointError(f"{path}: truncated or not a safetensors file (header says {header_len} bytes, "
                                  f"file has {size})")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path}: corrupt safetensors header") from None
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    if ends and 8 + header_len + max(ends) > size:
        raise CheckpointError(f"{path}: truncated safetensors file (tensor data ends at byte "
                              f"{8 + header_len + max(ends)}, file has {size}); re-export or copy it again")
    metadata = header.get("__metadata__") or {}
    if META_PREFIX + "model" not in metadata:
        raise CheckpointError(f"{path}: no fcn_dist metadata; it is not a model exported by fcn_dist "
                              "(use model_last.safetensors or model_best.safetensors from a run directory)")
    return metadata


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[FCN, ModelInfo]:
    """Rebuild an FCN from a self-describing safetensors file, without pickle or training config.

    Returns:
        (model in eval mode on ``device``, ModelInfo with classes, normalisation and config).

    Raises:
        CheckpointError: see ``read_metadata``; also tensors that do not fit the stored config.
    """
    path = Path(path)
    meta = read_metadata(path)
    try:
        model_cfg = ModelConfig(**{**json.loads(meta[META_PREFIX + "model"]), "pretrained": "none"})
        norm = json.loads(meta[META_PREFIX + "normalize"])
        info = ModelInfo(model=model_cfg, classes=json.loads(meta[META_PREFIX + "classes"]), mean=norm["mean"],
                         std=norm["std"], step=int(meta.get(META_PREFIX + "step", 0)),
                         metrics=json.loads(meta.get(META_PREFIX + "metrics", "{}")))
    except (KeyError, TypeError, ValueError, ConfigError) as err:
        raise CheckpointError(f"{path}: bad fcn_dist metadata ({err})") from None
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable safetensors ({err})") from None
    model = FCN(model_cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not match {model_cfg.arch}/{model_cfg.backbone}: "
                              f"{str(err).splitlines()[0]}") from None
    return model.to(device).eval(), info


# Resumable checkpoints: the only part of this module that knows about processes.

CHECKPOINTS = "checkpoints"


@dataclasses.dataclass
class TrainState:
    """Loop position and run identity, registered with Accelerate so save_state/load_state carry it."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_miou: float = -1.0
    wandb_run_id: str = ""
    last_eval: int = -1
    """Step of the latest evaluation (so the end of training does not repeat it)."""
    last_ckpt: int = -1
    """Step of the latest checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (temporary ``.tmp-*`` folders are ignored)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step_"))


def find_resume_checkpoint(run_dir: Path, resume: str) -> Path | None:
    """The checkpoint ``train.resume`` asks for: newest complete one (auto), none (never), or a path."""
    if resume == "never":
        return None
    if resume == "auto":
        found = complete_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not any(path.glob("custom_checkpoint_*")):
        raise CheckpointError(f"train.resume={resume}: not a complete checkpoint folder (expected "
                              f"{run_dir}/{CHECKPOINTS}/step_XXXXXXXX)")
    return path


def save_checkpoint(accelerator, run_dir: Path, step: int, keep_last: int) -> Path:
    """Accelerate ``save_state`` into a temporary folder, renamed when complete; keeps the last K.

    Every process must call this (each saves its own RNG state). An exception while saving
    leaves the temporary folder behind and the previous checkpoint as the newest complete one.
    """
    folder = Path(run_dir) / CHECKPOINTS
    final = folder / f"step_{step:08d}"
    tmp = folder / f".tmp-step_{step:08d}"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step saved twice (e.g. step and epoch end coincide)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(folder)
        for old in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old)
        for stale in folder.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
