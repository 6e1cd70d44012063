"""Helpers of the Slurm tests: job environment, submission, waiting, short demo runs.

Kept out of conftest.py so test modules can import them by a unique name.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from local_slurm import Job, LocalSlurm

REPO = Path(__file__).resolve().parents[2]
SLURM_SCRIPTS = REPO / "launch" / "slurm"
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
# Settings the scripts read from the environment; a value left in the caller's shell must not leak in.
SCRIPT_SETTINGS = ("CONFIG", "OVERRIDES", "GPUS_PER_NODE", "OUTPUT_DIR", "RUN_NAME", "WANDB_PROJECT", "MAIN_PORT",
                   "FCN_MAX_REQUEUES", "PYTHON", "CHECKPOINT", "DATA_ROOT", "SPLIT", "OUTPUT", "EVAL_ARGS",
                   "SWEEP_ID", "WANDB", "CUDA_VISIBLE_DEVICES", "FCN_SLURM_COMMON")


def job_env(**settings: str) -> dict[str, str]:
    """Environment for sbatch: this interpreter's bin first, W&B offline, one thread, ``settings``."""
    env = {k: v for k, v in os.environ.items()
           if k not in SCRIPT_SETTINGS and not (k.startswith("SLURM_") or k.startswith("SBATCH_"))}
    env.update(PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}", PYTHON=sys.executable,
               WANDB_MODE="offline", OMP_NUM_THREADS="1")
    env.update(settings)
    return env


def demo_overrides(root: Path, max_steps: int, *extra: str, log_every: int | None = 1) -> str:
    """OVERRIDES for a short demo run: synthetic data under ``root/data``, 64x64 crops, fp32.

    ``extra`` come last, so they win over the same keys here. ``log_every=None`` keeps the
    config's ``log.every`` (10 in configs/demo.yaml).
    """
    log = (f"log.every={log_every}",) if log_every is not None else ()
    return " ".join((f"train.max_steps={max_steps}", f"data.root={root / 'data'}", "data.synthetic_train=16",
                     "data.synthetic_val=4", "data.synthetic_max_side=128", "data.crop_size=[64,64]",
                     "data.batch_size=2", "data.num_workers=0", "train.checkpoint_every=2", "train.eval_every=2",
                     *log, "train.mixed_precision=no", *extra))


@dataclass
class JobResult:
    """A finished job: Slurm's record, its output file's text and the seconds from submit to done."""

    job: Job
    output: str
    seconds: float


def submit(cluster: LocalSlurm, script: str, workdir: Path, env: dict, sbatch_args: tuple = (),
           submit_dir: Path = REPO) -> int:
    """``sbatch`` a script of launch/slurm/ with the job running in ``workdir`` (output there too).

    sbatch runs in ``submit_dir`` (the job's SLURM_SUBMIT_DIR), the repository root as documented:
    the scripts find launch/slurm/common.sh from there.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    return cluster.sbatch([f"--chdir={workdir}", f"--output={workdir}/slurm-%j.out", *sbatch_args,
                           str(SLURM_SCRIPTS / script)], env=env, cwd=submit_dir)


def finish(cluster: LocalSlurm, job_id: int, workdir: Path, start: float, timeout_s: float = 300) -> JobResult:
    """Wait for the job to leave the queue and collect its record and output."""
    job = cluster.wait(job_id, timeout_s=timeout_s)
    out = workdir / f"slurm-{job_id}.out"
    text = out.read_text(errors="replace") if out.exists() else ""
    return JobResult(job, text, time.monotonic() - start)


def run_job(cluster: LocalSlurm, script: str, workdir: Path, env: dict, sbatch_args: tuple = (),
            timeout_s: float = 300, submit_dir: Path = REPO) -> JobResult:
    """Submit and wait: the whole job, requeues included."""
    start = time.monotonic()
    job_id = submit(cluster, script, workdir, env, sbatch_args, submit_dir)
    return finish(cluster, job_id, workdir, start, timeout_s)


def train_steps(run_dir: Path) -> list[int]:
    """The steps of the training rows in the run's metrics.jsonl (one row every ``log.every`` steps)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if "train/loss" in row]


def wait_for_step(run_dir: Path, step: int, timeout_s: float = 180) -> None:
    """Wait until metrics.jsonl has a training row at ``step`` or later."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        path = run_dir / "metrics.jsonl"
        if path.exists() and any(s >= step for s in train_steps(run_dir)):
            return
        time.sleep(0.3)
    raise TimeoutError(f"no training step {step} in {run_dir}/metrics.jsonl after {timeout_s} s")


def tail(result: JobResult, lines: int = 40) -> str:
    """The end of a job's output, without c10d's noise, for assertion messages."""
    kept = [line for line in result.output.splitlines() if "socket.cpp" not in line]
    return f"job {result.job.job_id} {result.job.state} exit {result.job.exit_code}:\n" + "\n".join(kept[-lines:])

