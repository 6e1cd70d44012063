"""Bad launches of the sbatch scripts fail fast, before srun, with exit 2 and a one-line reason."""

from __future__ import annotations

import sys

import pytest

from slurm_jobs import DEMO_CONFIG, REPO, job_env, run_job, tail

pytestmark = pytest.mark.slurm

FAST_S = 30  # submit to done; a launch that reached srun/rendezvous would take longer or hang


def _fake_nvidia_smi(tmp_path, gpus: int) -> str:
    """A bin folder whose nvidia-smi lists ``gpus`` GPUs, to put first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    lines = "".join(f"echo 'GPU {i}: NVIDIA Fake (UUID: GPU-{i})'\n" for i in range(gpus))
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\n{lines}")
    (bin_dir / "nvidia-smi").chmod(0o755)
    return str(bin_dir)


def _expect_fast_failure(slurm, tmp_path, script: str, env: dict, *messages: str, submit_dir=REPO) -> None:
    result = run_job(slurm, script, tmp_path, env, ("--nodes=2",), timeout_s=120, submit_dir=submit_dir)
    assert (result.job.state, result.job.exit_code) == ("FAILED", 2), tail(result)
    assert len(result.output.splitlines()) == 1, tail(result)
    for message in messages:
        assert message in result.output, tail(result)
    assert "runs machine_rank" not in result.output, tail(result)  # no srun task started
    assert result.seconds < FAST_S, tail(result)


def test_missing_config_file(slurm, tmp_path):
    missing = tmp_path / "no_such.yaml"
    _expect_fast_failure(slurm, tmp_path, "train.sbatch", job_env(CONFIG=str(missing)),
                         f"train.sbatch: error: config file not found: {missing} (from {tmp_path}); "
                         "set CONFIG=path/to/config.yaml")


def test_more_gpus_per_node_than_the_cpu_node_has(slurm, tmp_path):
    _expect_fast_failure(slurm, tmp_path, "train.sbatch", job_env(CONFIG=str(DEMO_CONFIG), GPUS_PER_NODE="1"),
                         "train.sbatch: error: GPUS_PER_NODE=1 but node fcn-n1 has 0 GPU(s) visible")


def test_more_gpus_per_node_than_nvidia_smi_lists(slurm, tmp_path):
    env = job_env(CONFIG=str(DEMO_CONFIG), GPUS_PER_NODE="4")
    env["PATH"] = f"{_fake_nvidia_smi(tmp_path, 2)}:{env['PATH']}"
    _expect_fast_failure(slurm, tmp_path, "train.sbatch", env,
                         "train.sbatch: error: GPUS_PER_NODE=4 but node fcn-n1 has 2 GPU(s) visible")


def test_unknown_override(slurm, tmp_path):
    _expect_fast_failure(slurm, tmp_path, "train.sbatch",
                         job_env(CONFIG=str(DEMO_CONFIG), OVERRIDES="train.max_steps=2 optim.lrr=0.1"),
                         "train.sbatch: error: bad config: unknown config key 'optim.lrr'")


def test_override_with_a_wrong_type(slurm, tmp_path):
    _expect_fast_failure(slurm, tmp_path, "train.sbatch",
                         job_env(CONFIG=str(DEMO_CONFIG), OVERRIDES="train.max_steps=many"),
                         "train.sbatch: error: bad config: bad value for config key 'train.max_steps'")


def test_missing_data_root(slurm, tmp_path):
    """Checked in the batch shell: before, every rank of both nodes failed on it ~11 s in, among gloo tracebacks."""
    missing = tmp_path / "no_data"
    _expect_fast_failure(slurm, tmp_path, "train.sbatch",
                         job_env(CONFIG=str(DEMO_CONFIG), OVERRIDES=f"data.format=voc data.root={missing}"),
                         f"train.sbatch: error: bad data: data root {missing} does not exist: expected "
                         f"{missing}/VOCdevkit/VOC2012 or a VOC2012 folder with JPEGImages/ and "
                         "ImageSets/Segmentation/; set data.root to such a folder")


def test_missing_split_file(slurm, tmp_path, synthetic_voc):
    split = synthetic_voc / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "test.txt"
    _expect_fast_failure(slurm, tmp_path, "train.sbatch",
                         job_env(CONFIG=str(DEMO_CONFIG),
                                 OVERRIDES=f"data.format=voc data.root={synthetic_voc} data.val_split=test"),
                         f"train.sbatch: error: bad data: split file {split} not found; available splits: ")


def test_eval_missing_data_root(slurm, tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"exists; the data root is checked first by its path")
    _expect_fast_failure(slurm, tmp_path, "eval.sbatch",
                         job_env(CHECKPOINT=str(checkpoint), DATA_ROOT=str(tmp_path / "none")),
                         f"eval.sbatch: error: data root not found: {tmp_path / 'none'}")


def test_eval_missing_checkpoint(slurm, tmp_path):
    missing = tmp_path / "model.safetensors"
    _expect_fast_failure(slurm, tmp_path, "eval.sbatch", job_env(CHECKPOINT=str(missing), DATA_ROOT=str(tmp_path)),
                         f"eval.sbatch: error: checkpoint not found: {missing}")


def test_sweep_without_sweep_id(slurm, tmp_path):
    _expect_fast_failure(slurm, tmp_path, "sweep.sbatch", job_env(WANDB_MODE="online"),
                         "sweep.sbatch: error: set SWEEP_ID=ENTITY/PROJECT/SWEEP_ID")


def test_sweep_with_wandb_offline(slurm, tmp_path):
    _expect_fast_failure(slurm, tmp_path, "sweep.sbatch", job_env(SWEEP_ID="me/fcn_dist/abc123"),
                         "sweep.sbatch: error: WANDB_MODE=offline: a sweep agent needs W&B online")


def test_python_without_fcn_dist(slurm, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # an interpreter that cannot import fcn_dist (isolated mode: no site-packages, no cwd)
    (bin_dir / "bare-python").write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    (bin_dir / "bare-python").chmod(0o755)
    _expect_fast_failure(slurm, tmp_path, "train.sbatch",
                         job_env(CONFIG=str(DEMO_CONFIG), PYTHON=str(bin_dir / "bare-python")),
                         f"train.sbatch: error: cannot check the config with {bin_dir / 'bare-python'} (is fcn_dist "
                         "installed there? set PYTHON=...): ", "No module named 'fcn_dist'")


@pytest.mark.parametrize("script", ["train.sbatch", "eval.sbatch"])
def test_submitted_away_from_the_repository_root(slurm, tmp_path, script):
    """sbatch runs a copy of the script: common.sh is found from the submit directory, or not at all."""
    _expect_fast_failure(slurm, tmp_path, script, job_env(CONFIG=str(DEMO_CONFIG)),
                         f"{script}: error: {tmp_path}/launch/slurm/common.sh not found: submit from the repository "
                         "root, or set FCN_SLURM_COMMON=/path/to/fcn_dist/launch/slurm/common.sh", submit_dir=tmp_path)


def test_common_sh_from_fcn_slurm_common(slurm, tmp_path):
    """FCN_SLURM_COMMON names common.sh when submitting from elsewhere: the job gets past it (to a bad config)."""
    _expect_fast_failure(slurm, tmp_path, "train.sbatch",
                         job_env(CONFIG=str(DEMO_CONFIG), OVERRIDES="optim.lrr=0.1",
                                 FCN_SLURM_COMMON=str(REPO / "launch" / "slurm" / "common.sh")),
                         "train.sbatch: error: bad config: unknown config key 'optim.lrr'", submit_dir=tmp_path)
