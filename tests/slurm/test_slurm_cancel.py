"""A plain ``scancel`` of a 2-node train.sbatch job saves the step it reached, quietly.

scancel sends SIGTERM to every process of the job and SIGKILL ``KillWait`` seconds later (5 s on
the harness cluster, tests/slurm/local_slurm.py). The training processes must notice the stop at
the step they are in, not at the next ``log.every`` step, to save within that time; and the
launchers, the batch shell's trap and W&B must not fill the log with tracebacks on the way out.
"""

from __future__ import annotations

import re
import time

import pytest

from slurm_jobs import DEMO_CONFIG, demo_overrides, finish, job_env, submit, tail, wait_for_step

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

LOG_EVERY = 10  # configs/demo.yaml's log.every, which the job keeps
KILL_WAIT_S = 5


@pytest.mark.timeout(600)
def test_scancel_saves_the_step_reached_without_tracebacks(slurm, tmp_path):
    kill_wait = re.search(r"^KillWait=(\d+)$", slurm.conf.read_text(), re.M)
    assert kill_wait and int(kill_wait.group(1)) == KILL_WAIT_S, "the harness's KillWait changed"
    run_dir = tmp_path / "runs" / "cancel"
    # Small steps (64x64 crops, batch 2), so the step in flight and the save fit in KillWait on 2 cores;
    # 120 images = 30 steps an epoch over 2 processes: no epoch end, evaluation or checkpoint_every
    # saves before the stop. log.every stays the config's 10.
    overrides = demo_overrides(tmp_path, 1000, "data.synthetic_train=120", "train.checkpoint_every=0",
                               "train.eval_every=0", log_every=None)
    env = job_env(CONFIG=str(DEMO_CONFIG), OUTPUT_DIR=str(tmp_path / "runs"), RUN_NAME="cancel", OVERRIDES=overrides)
    start = time.monotonic()
    job_id = submit(slurm, "train.sbatch", tmp_path, env, ("--nodes=2",))
    wait_for_step(run_dir, LOG_EVERY, timeout_s=400)  # the first logged row
    slurm.run(["scancel", str(job_id)])
    result = finish(slurm, job_id, tmp_path, start, timeout_s=120)

    assert result.job.state == "CANCELLED", tail(result)
    saved = sorted((run_dir / "checkpoints").glob("step_*"))
    assert len(saved) == 1, f"{saved}\n{tail(result)}"
    step = int(saved[0].name.removeprefix("step_"))
    # The step in flight when the SIGTERM came. A stop read only at log steps saves step 20, or
    # nothing when SIGKILL comes first.
    assert LOG_EVERY < step < 2 * LOG_EVERY, tail(result)
    assert f"stopped by signal 15 at step {step}: checkpoint saved" in result.output, tail(result)
    # The batch shell's trap leaves this SIGTERM alone: Slurm signalled every process already.
    assert "train.sbatch: got SIGTERM: Slurm is ending the job" in result.output, tail(result)
    for noise in ("SignalException", "Traceback", "Invalid job id"):
        assert noise not in result.output, tail(result, 80)
