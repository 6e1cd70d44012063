"""fcn-train on bad data: one line naming the file, exit 2, from loader workers and from one rank of two."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fcn_dist.data.synthetic import make_synthetic_voc

pytestmark = pytest.mark.slow


def _env() -> dict:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1",
           "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    return env


def _voc(tmp_path: Path, num_train: int) -> Path:
    make_synthetic_voc(tmp_path / "data", num_train=num_train, num_val=2, seed=3, max_side=96)
    return tmp_path / "data" / "VOCdevkit" / "VOC2012"


def _overrides(voc: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["model.pretrained=none", f"data.root={voc}", "data.crop_size=[64,64]", "data.batch_size=2",
            "log.wandb=false", "train.mixed_precision=no", f"train.output_dir={tmp_path / 'runs'}",
            "train.run_name=bad", "train.max_steps=2", "train.checkpoint_every=0", *extra]


def _train(args: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable, "-m", "fcn_dist.train"]) + args
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, start_new_session=True)


def test_a_huge_jpeg_in_train_exits_2_naming_it(tmp_path, huge_jpeg):
    voc = _voc(tmp_path, num_train=2)  # one batch of 2: both images are read in the first step
    huge = voc / "JPEGImages" / "train_00001.jpg"
    shutil.copyfile(huge_jpeg, huge)
    proc = _train(_overrides(voc, tmp_path, "data.num_workers=0"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"fcn-train: error: {huge}: 14000x14000 pixels (196.0 Mpx) is above data.max_image_pixels=178956970 "
        "(raise it if you trust the file); downscale the image or remove its id from the split file"]


def test_a_truncated_jpeg_read_by_a_loader_worker_is_one_line_exit_2(tmp_path):
    voc = _voc(tmp_path, num_train=4)
    bad = voc / "JPEGImages" / "train_00002.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    proc = _train(_overrides(voc, tmp_path, "data.num_workers=2"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        f"fcn-train: error: {bad}: corrupt or truncated image (Truncated File Read); replace the file or remove its "
        "id from the split file"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(600)
def test_a_data_error_on_one_rank_ends_every_rank_with_its_line_first(tmp_path):
    """Two processes, one bad image: it lands in one rank's shard; the other rank ends with one line, no traceback."""
    voc = _voc(tmp_path, num_train=4)  # 2 processes x batch 2: the first step reads every image
    bad = voc / "JPEGImages" / "train_00002.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    launcher = [sys.executable, "-m", "fcn_dist.launcher", "accelerate", "--num_processes", "2", "--num_machines", "1",
                "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port()), "-m", "fcn_dist.train"]
    proc = _train(_overrides(voc, tmp_path, "data.num_workers=2"), launcher)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    # the launcher's own torch elastic log lines start with a level letter and a date (W1201 ..., E1201 ...)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fcn-train: error:")]
    assert errors[0] == (f"fcn-train: error: {bad}: corrupt or truncated image (Truncated File Read); replace the "
                         "file or remove its id from the split file"), proc.stderr
    assert len(errors) == 2 and errors[1].startswith("fcn-train: error: process ") and \
        "stopped: another process ended; its error comes first in the log" in errors[1], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
