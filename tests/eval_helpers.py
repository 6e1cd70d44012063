"""Small models, checkpoints and datasets shared by the inference, evaluate and predict tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from fcn_dist.checkpoint import export_model
from fcn_dist.config import ModelConfig
from fcn_dist.data.synthetic import make_synthetic_voc
from fcn_dist.model import IMAGENET_MEAN, IMAGENET_STD
from fcn_dist.labels import VOC_CLASSES
from fcn_dist.model import build_model

REPO = Path(__file__).resolve().parents[1]
MODEL_CFG = ModelConfig(arch="fcn32s", backbone="resnet18", num_classes=len(VOC_CLASSES), pretrained="none")


def tiny_model(seed: int = 0, cfg: ModelConfig = MODEL_CFG) -> torch.nn.Module:
    """A random FCN in eval mode with random BatchNorm statistics, so eval-mode outputs vary by pixel."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        model.score.weight.mul_(20)  # spread the logits so several classes win somewhere
    return model.eval()


def make_checkpoint(path: Path, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """Export ``tiny_model(seed)`` as a self-describing safetensors file."""
    model = tiny_model(seed)
    export_model(model, path, MODEL_CFG, list(VOC_CLASSES), list(IMAGENET_MEAN), list(IMAGENET_STD),
                 step=7, metrics={"mIoU": 0.5})
    return path, model


def make_voc(root: Path, num_val: int = 5, max_side: int = 96) -> Path:
    """A synthetic VOC set under ``root`` with ``num_val`` val images of mixed sizes; returns ``root``."""
    make_synthetic_voc(root, num_train=1, num_val=num_val, seed=3, max_side=max_side)
    return root


def subprocess_env(tmp_path: Path) -> dict:
    """Environment for CLI subprocesses: one thread, W&B offline and in tmp_path, CPU only."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline",
               WANDB_DIR=str(tmp_path), WANDB_DATA_DIR=str(tmp_path / "wandb-data"), CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(REPO))
    return env


def run_torchrun(args: list[str], tmp_path: Path, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node nproc ARGS`` in tmp_path; on timeout every process is killed."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    proc = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node", str(nproc), *map(str, args)],
                            env=subprocess_env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers too, not only torchrun
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def random_images(num: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(image uint8 (3, H, W), mask uint8 (H, W)) pairs of different sizes, masks with void pixels."""
    rng = np.random.default_rng(seed)
    pairs = []
    for k in range(num):
        h, w = 40 + 9 * k, 70 - 5 * k
        image = torch.from_numpy(rng.integers(0, 256, size=(3, h, w), dtype=np.uint8))
        mask = torch.from_numpy(rng.integers(0, len(VOC_CLASSES), size=(h, w), dtype=np.uint8))
        mask[: 3] = 255
        pairs.append((image, mask))
    return pairs
