"""launch/slurm/eval.sbatch on 2 nodes gives the same JSON as a single-process fcn-eval."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from fcn_dist.checkpoint import export_model
from fcn_dist.config import ModelConfig
from fcn_dist.data.synthetic import make_synthetic_voc
from fcn_dist.model import IMAGENET_MEAN, IMAGENET_STD
from fcn_dist.labels import VOC_CLASSES
from fcn_dist.model import build_model
from slurm_jobs import job_env, run_job, tail

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.mark.timeout(400)
def test_eval_on_two_nodes_equals_single_process_fcn_eval(slurm, tmp_path):
    # A random FCN-8s predicts many classes, so the comparison covers a full confusion matrix.
    torch.manual_seed(0)
    model_cfg = ModelConfig(arch="fcn8s", pretrained="none")
    checkpoint = export_model(build_model(model_cfg).eval(), tmp_path / "random.safetensors", model_cfg,
                              list(VOC_CLASSES), IMAGENET_MEAN, IMAGENET_STD)
    data_root = make_synthetic_voc(tmp_path / "data", num_train=2, num_val=5, seed=0, max_side=96)

    env = job_env(CHECKPOINT=str(checkpoint), DATA_ROOT=str(data_root), OUTPUT=str(tmp_path / "two_nodes.json"),
                  EVAL_ARGS="--num-workers 0 --mixed-precision no")
    result = run_job(slurm, "eval.sbatch", tmp_path / "job", env, ("--nodes=2",))
    assert (result.job.state, result.job.exit_code) == ("COMPLETED", 0), tail(result)
    assert sorted(re.findall(r"^eval\.sbatch: (\S+) runs machine_rank=(\d)$", result.output, re.M)) == [
        ("fcn-n1", "0"), ("fcn-n2", "1")], tail(result)

    single = subprocess.run(
        [sys.executable, "-m", "fcn_dist.evaluate", "--checkpoint", str(checkpoint), "--data-root", str(data_root),
         "--split", "val", "--num-workers", "0", "--mixed-precision", "no", "--output", str(tmp_path / "one.json")],
        env=job_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]

    two_nodes = json.loads((tmp_path / "two_nodes.json").read_text())
    one = json.loads((tmp_path / "one.json").read_text())
    # 5 images over 2 processes (3 + 2): each counted once, none repeated to even the shards
    assert two_nodes["num_images"] == 5
    assert sum(1 for column in zip(*one["confusion_matrix"]) if sum(column)) > 1  # several classes predicted
    assert two_nodes == one
