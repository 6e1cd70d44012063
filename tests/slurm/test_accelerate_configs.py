"""launch/accelerate/*.yaml: each loads in Accelerate as documented; cpu and multi_gpu (on CPU) train a step."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from slurm_jobs import DEMO_CONFIG, REPO, job_env

CONFIGS = REPO / "launch" / "accelerate"
PROCESS_LINE = re.compile(r"^fcn_dist process rank=(\d+) world_size=(\d+) local_rank=(\d+) host=\S+$", re.M)


@pytest.mark.parametrize("name, distributed_type, processes, machines, use_cpu", [
    ("single_gpu.yaml", DistributedType.NO, 1, 1, False),
    ("multi_gpu.yaml", DistributedType.MULTI_GPU, 2, 1, False),
    ("multi_node.yaml", DistributedType.MULTI_GPU, 16, 2, False),
    ("cpu.yaml", DistributedType.NO, 1, 1, True),
])
def test_accelerate_config_loads(name, distributed_type, processes, machines, use_cpu):
    cfg = load_config_from_file(str(CONFIGS / name))
    assert (cfg.distributed_type, cfg.num_processes, cfg.num_machines, cfg.use_cpu) == (
        distributed_type, processes, machines, use_cpu)
    assert cfg.mixed_precision == "no"  # precision comes from train.mixed_precision


def test_there_are_exactly_the_four_documented_configs():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == ["cpu.yaml", "multi_gpu.yaml", "multi_node.yaml",
                                                              "single_gpu.yaml"]


def _launch(tmp_path, launch_args: list[str], **env: str) -> subprocess.CompletedProcess:
    overrides = [f"data.root={tmp_path / 'data'}", "data.synthetic_train=8", "data.synthetic_val=2",
                 "data.synthetic_max_side=96", "data.crop_size=[64,64]", "data.batch_size=2", "data.num_workers=0",
                 "train.max_steps=1", "train.mixed_precision=no", "log.wandb=false",
                 f"train.output_dir={tmp_path / 'runs'}", "train.run_name=one"]
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *launch_args, "-m", "fcn_dist.train",
                           "--config", str(DEMO_CONFIG), *overrides],
                          cwd=tmp_path, env=job_env(**env), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_cpu_config_trains_one_step(tmp_path):
    proc = _launch(tmp_path, ["--config_file", str(CONFIGS / "cpu.yaml")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert PROCESS_LINE.findall(proc.stdout) == [("0", "1", "0")]
    assert (tmp_path / "runs" / "one" / "model_last.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_multi_gpu_config_on_cpu_runs_two_gloo_processes(tmp_path):
    proc = _launch(tmp_path, ["--config_file", str(CONFIGS / "multi_gpu.yaml"), "--num_processes", "2"],
                   ACCELERATE_USE_CPU="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(PROCESS_LINE.findall(proc.stdout)) == [("0", "2", "0"), ("1", "2", "1")]
    assert (tmp_path / "runs" / "one" / "model_last.safetensors").is_file()
