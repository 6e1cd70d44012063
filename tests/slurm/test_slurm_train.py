"""launch/slurm/train.sbatch on the real local 2-node Slurm: ranks, checkpoints, W&B, preemption, requeue."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from safetensors import safe_open

from fcn_dist.data.synthetic import make_synthetic_voc

from slurm_jobs import (DEMO_CONFIG, JobResult, demo_overrides, finish, job_env, run_job, submit, tail, train_steps,
                        wait_for_step)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PROCESS_LINE = re.compile(r"^fcn_dist process rank=(\d+) world_size=(\d+) local_rank=(\d+) host=(\S+)$", re.M)
MACHINE_RANK_LINE = re.compile(r"^train\.sbatch: (\S+) runs machine_rank=(\d+)$", re.M)


@dataclass
class TrainRun:
    """The 2-node demo training job and where it wrote."""

    result: JobResult
    workdir: Path
    run_dir: Path


@pytest.fixture(scope="module")
def two_node_run(slurm, tmp_path_factory) -> TrainRun:
    """``sbatch --nodes=2 train.sbatch`` with the demo config shortened to 4 steps, run once."""
    workdir = tmp_path_factory.mktemp("two_node_train")
    env = job_env(CONFIG=str(DEMO_CONFIG), OUTPUT_DIR=str(workdir / "runs"), RUN_NAME="two-nodes",
                  OVERRIDES=demo_overrides(workdir, 4))
    result = run_job(slurm, "train.sbatch", workdir, env, ("--nodes=2",))
    return TrainRun(result, workdir, workdir / "runs" / "two-nodes")


def _wandb_run_files(root: Path) -> list[Path]:
    """Every W&B offline run file under ``root``: ``.../offline-run-<time>-<id>/run-<id>.wandb``."""
    return sorted(root.rglob("offline-run-*/run-*.wandb"))


def test_two_nodes_each_run_their_own_machine_rank(two_node_run):
    result = two_node_run.result
    assert (result.job.state, result.job.exit_code) == ("COMPLETED", 0), tail(result)
    assert sorted(MACHINE_RANK_LINE.findall(result.output)) == [("fcn-n1", "0"), ("fcn-n2", "1")], tail(result)


def test_two_nodes_form_one_process_group_of_size_2(two_node_run):
    result = two_node_run.result
    processes = sorted(PROCESS_LINE.findall(result.output))
    # rank, world_size, local_rank, host: one process per node, both in the same group of 2
    assert processes == [("0", "2", "0", "fcn-n1"), ("1", "2", "0", "fcn-n2")], tail(result)
    # Accelerate's save_state writes one RNG file per process of the group.
    last = two_node_run.run_dir / "checkpoints" / "step_00000004"
    assert sorted(p.name for p in last.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]


def test_two_nodes_write_checkpoints_and_model_last(two_node_run):
    run_dir = two_node_run.run_dir
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    with safe_open(str(run_dir / "model_last.safetensors"), "pt") as f:
        assert f.metadata()["fcn_dist.step"] == "4"
    assert train_steps(run_dir) == [1, 2, 3, 4]


def test_two_nodes_create_exactly_one_wandb_run(two_node_run):
    files = _wandb_run_files(two_node_run.workdir)
    assert len(files) == 1, files
    assert files[0].parent.parent == two_node_run.run_dir / "wandb"


def _preempted_job(slurm, tmp_path: Path, max_steps: int, **settings: str):
    """Start a 2-node run, wait for its first step, send USR1 to the batch shell, wait for the end."""
    run_dir = tmp_path / "runs" / "preempt"
    env = job_env(CONFIG=str(DEMO_CONFIG), OUTPUT_DIR=str(tmp_path / "runs"), RUN_NAME="preempt",
                  OVERRIDES=demo_overrides(tmp_path, max_steps, "data.synthetic_train=32",
                                           "train.checkpoint_every=0", "train.eval_every=0"), **settings)
    start = time.monotonic()
    job_id = submit(slurm, "train.sbatch", tmp_path, env, ("--nodes=2",))
    wait_for_step(run_dir, 1)
    slurm.run(["scancel", "--signal=USR1", "--batch", str(job_id)])
    return finish(slurm, job_id, tmp_path, start, timeout_s=400), run_dir


@pytest.mark.timeout(600)
def test_preempted_job_checkpoints_requeues_and_resumes_same_wandb_run(slurm, tmp_path):
    max_steps = 8  # 32 images / (2 per batch x 2 processes) = 8 steps: one epoch, no epoch-end checkpoint before
    result, run_dir = _preempted_job(slurm, tmp_path, max_steps)
    assert (result.job.state, result.job.exit_code, result.job.restarts) == ("COMPLETED", 0, 1), tail(result)
    assert "train.sbatch: got SIGUSR1" in result.output, tail(result)
    assert "checkpoint saved (SIGUSR1, exit 75): requeue 1/20" in result.output, tail(result)
    stopped = {int(s) for s in re.findall(r"stopped by signal 10 at step (\d+)", result.output)}
    # accelerator.print: once per node (local main process)
    resumed = set(re.findall(r"resumed from (\S+)/checkpoints/step_(\d{8}) at step (\d+)", result.output))
    assert len(stopped) == 1 and 0 < min(stopped) < max_steps, tail(result)
    step = stopped.pop()
    assert resumed == {(str(run_dir), f"{step:08d}", str(step))}, tail(result)
    # Every step logged exactly once, ending at max_steps; the final checkpoint is complete.
    assert train_steps(run_dir) == list(range(1, max_steps + 1))
    assert f"step_{max_steps:08d}" in {p.name for p in (run_dir / "checkpoints").iterdir()}
    with safe_open(str(run_dir / "model_last.safetensors"), "pt") as f:
        assert f.metadata()["fcn_dist.step"] == str(max_steps)
    # One W&B run, resumed: two offline-run folders (one per attempt), one run id.
    files = _wandb_run_files(tmp_path)
    assert len(files) == 2, files
    assert len({f.name for f in files}) == 1, files


@pytest.mark.timeout(600)
def test_requeues_stop_at_the_cap(slurm, tmp_path):
    result, run_dir = _preempted_job(slurm, tmp_path, 8, FCN_MAX_REQUEUES="0")
    assert (result.job.state, result.job.exit_code, result.job.restarts) == ("FAILED", 75, 0), tail(result)
    assert "not requeued: 0 requeues reached FCN_MAX_REQUEUES=0" in result.output, tail(result)
    assert len(list((run_dir / "checkpoints").iterdir())) == 1  # the preemption checkpoint is kept


@pytest.mark.timeout(300)
def test_a_data_error_on_one_node_fails_the_job_with_its_line_first_and_is_not_requeued(slurm, tmp_path):
    """A failure other than exit 75 ends the job with that code. Here a truncated JPEG in one rank's shard
    (a missing data root no longer gets this far: the batch shell refuses it, test_slurm_bad_launch.py):
    that rank's one line comes first, the other node's rank ends with one line after it, no traceback."""
    make_synthetic_voc(tmp_path / "data", num_train=4, num_val=2, seed=3, max_side=96)
    bad = tmp_path / "data" / "VOCdevkit" / "VOC2012" / "JPEGImages" / "train_00002.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # 2 nodes x batch 2: the first step reads all 4 images
    env = job_env(CONFIG=str(DEMO_CONFIG), OUTPUT_DIR=str(tmp_path / "runs"),
                  OVERRIDES=f"data.format=voc data.root={tmp_path / 'data'} data.crop_size=[64,64] "
                            "data.batch_size=2 data.num_workers=2 train.max_steps=2 train.mixed_precision=no")
    result = run_job(slurm, "train.sbatch", tmp_path, env, ("--nodes=2",))
    assert (result.job.state, result.job.exit_code, result.job.restarts) == ("FAILED", 2, 0), tail(result)
    assert "training failed with exit code 2; not requeued" in result.output, tail(result)
    errors = [line for line in result.output.splitlines() if line.startswith("fcn-train: error:")]
    assert errors[0] == (f"fcn-train: error: {bad}: corrupt or truncated image (Truncated File Read); replace the "
                         "file or remove its id from the split file"), tail(result)
    assert len(errors) == 2 and "of 2 stopped: another process ended; its error comes first" in errors[1], tail(result)
    assert "Traceback" not in result.output, tail(result)
