"""configs/sweep.yaml and launch/slurm/sweep.sbatch.

- every swept parameter is a config key of fcn_dist.config with values of the field's type;
- the command that wandb's own agent code builds from the template, for one sampled point,
  trains for 1 step (W&B offline) under the agent's run id;
- wandb's sweep schema (the `sweeps` package) accepts the file, where that package can run:
  it pins numpy<2, so it lives in a separate interpreter named by FCN_SWEEPS_PYTHON;
- sweep.sbatch runs one `wandb agent --count 1` per array task on the local Slurm.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from fcn_dist.config import Config, load_config
from slurm_jobs import DEMO_CONFIG, REPO, job_env, run_job, tail

SWEEP_FILE = REPO / "configs" / "sweep.yaml"
SWEEP = yaml.safe_load(SWEEP_FILE.read_text())
# wandb's parameter distributions (docs: sweep configuration options)
FLOAT_DISTRIBUTIONS = {"uniform", "q_uniform", "log_uniform_values", "q_log_uniform_values",
                       "inv_log_uniform_values", "normal", "q_normal", "log_normal", "q_log_normal", "beta", "q_beta"}
INT_DISTRIBUTIONS = {"int_uniform"}
SHORT_RUN = {"train.max_steps": 1, "data.synthetic_train": 4, "data.synthetic_val": 2, "data.synthetic_max_side": 96,
             "data.crop_size": [64, 64], "data.batch_size": 2, "data.num_workers": 0, "train.mixed_precision": "no"}


def _config_field_types() -> dict[str, type]:
    """``section.key`` -> the annotated type, from the config dataclasses."""
    types = {}
    for section, cls in typing.get_type_hints(Config).items():
        if dataclasses.is_dataclass(cls):
            types.update({f"{section}.{name}": t for name, t in typing.get_type_hints(cls).items()})
    return types


def _values(spec: dict) -> list:
    """The concrete values a parameter spec names: its values, its value, or its range ends."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    return [spec["min"], spec["max"]]


def _sample(parameters: dict, rng: random.Random) -> dict:
    """One point, drawn as wandb's random search draws it."""
    point = {}
    for key, spec in parameters.items():
        if "values" in spec or "value" in spec:
            point[key] = rng.choice(_values(spec))
        elif spec["distribution"] == "log_uniform_values":
            point[key] = math.exp(rng.uniform(math.log(spec["min"]), math.log(spec["max"])))
        elif spec["distribution"] == "uniform":
            point[key] = rng.uniform(spec["min"], spec["max"])
        elif spec["distribution"] == "int_uniform":
            point[key] = rng.randint(spec["min"], spec["max"])
        else:
            raise NotImplementedError(f"test sampler lacks distribution {spec['distribution']} of {key}")
    return point


def _get(cfg: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def test_sweep_sweeps_the_four_parameters():
    assert sorted(SWEEP["parameters"]) == ["model.arch", "model.backbone", "optim.lr", "optim.weight_decay"]
    assert SWEEP["metric"] == {"name": "val/best_mIoU", "goal": "maximize"}


@pytest.mark.parametrize("key", sorted(SWEEP["parameters"]))
def test_swept_parameter_is_a_config_key_with_values_of_its_type(key):
    types = _config_field_types()
    assert key in types, f"{key} is not a config key; keys: {sorted(types)}"
    spec = SWEEP["parameters"][key]
    expected = types[key]
    if "distribution" in spec:
        assert spec["distribution"] in FLOAT_DISTRIBUTIONS | INT_DISTRIBUTIONS
        assert expected is (int if spec["distribution"] in INT_DISTRIBUTIONS else float)
    for value in _values(spec):
        assert type(value) is expected, f"{key}={value!r} is {type(value).__name__}, the field is {expected.__name__}"
        # the agent passes `key=value` (str(value)); it must parse back to the same value
        cfg = load_config(DEMO_CONFIG, [f"{key}={value}"])
        assert _get(cfg, key) == value


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sweep_command_for_a_sampled_point_trains_one_step(tmp_path, monkeypatch):
    from wandb.wandb_agent import Agent

    point = _sample(SWEEP["parameters"], random.Random(0))
    run_id = "swp00001"
    (tmp_path / "configs").mkdir()
    shutil.copy(DEMO_CONFIG, tmp_path / "configs" / "demo.yaml")  # the command reads it relative to the cwd
    monkeypatch.chdir(tmp_path)
    for key, value in job_env(WANDB_DIR=str(tmp_path), FCN_RUN_NAME="trial", FCN_OUTPUT_DIR=str(tmp_path / "runs"),
                              WANDB_PROJECT="fcn_dist", WANDB_RUN_ID="unset", WANDB_SWEEP_PARAM_PATH="unset").items():
        monkeypatch.setenv(key, value)  # restored afterwards, also the two the agent overwrites

    agent = Agent(api=None, queue=None, sweep_id="local")
    agent._sweep_command = list(SWEEP["command"])  # what Agent.run() takes from the sweep config
    args = {**point, **SHORT_RUN, "data.root": str(tmp_path / "data")}  # short-run settings as fixed parameters
    agent._command_run({"args": {k: {"value": v} for k, v in args.items()}, "program": SWEEP["program"],
                        "run_id": run_id})
    process = agent._run_processes[run_id]
    try:
        code = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()

    assert process._popen.args == [
        "/usr/bin/env", "python", "-m", "accelerate.commands.launch", "-m", "fcn_dist.train",
        "--config", "configs/demo.yaml", "train.run_name=trial", f"train.output_dir={tmp_path / 'runs'}",
        "log.project=fcn_dist", *(f"{k}={v}" for k, v in args.items())]
    assert code == 0
    run_dir = tmp_path / "runs" / "trial"
    trained = load_config(run_dir / "config.yaml")
    assert {key: _get(trained, key) for key in point} == point
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "train/loss" in row] == [1]
    # the trial logs to the run the agent was given, so the sweep sees it
    assert [p.name for p in (run_dir / "wandb").glob("offline-run-*/run-*.wandb")] == [f"run-{run_id}.wandb"]


def _sweeps_python() -> str | None:
    if os.environ.get("FCN_SWEEPS_PYTHON"):
        return os.environ["FCN_SWEEPS_PYTHON"]
    probe = subprocess.run([sys.executable, "-c", "import sweeps"], capture_output=True)
    return sys.executable if probe.returncode == 0 else None


def test_sweep_config_passes_wandb_sweeps_schema_and_sampler():
    python = _sweeps_python()
    if python is None:
        pytest.skip("wandb's `sweeps` package (schema + sampler) is not installed: it pins numpy<2, which this "
                    "environment does not downgrade; point FCN_SWEEPS_PYTHON at a separate venv with "
                    "`pip install sweeps pyyaml` to run this check")
    code = ("import json, sys, yaml\nfrom sweeps import SweepConfig, next_run\n"
            "cfg = SweepConfig(yaml.safe_load(open(sys.argv[1])))\n"
            "print(json.dumps({k: v['value'] for k, v in next_run(cfg, []).config.items()}))")
    proc = subprocess.run([python, "-c", code, str(SWEEP_FILE)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    point = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(point) == sorted(SWEEP["parameters"])
    cfg = load_config(DEMO_CONFIG, [f"{k}={v}" for k, v in point.items()])
    assert {k: _get(cfg, k) for k in point} == point


@pytest.mark.slurm
def test_sweep_sbatch_runs_one_agent_per_array_task(slurm, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A stand-in for wandb that records how the agent was started (the real one needs the W&B server).
    (bin_dir / "wandb").write_text('#!/bin/sh\necho "$FCN_OUTPUT_DIR/$FCN_RUN_NAME $*" '
                                   f'> {tmp_path}/agent-$SLURM_ARRAY_TASK_ID.txt\n')
    (bin_dir / "wandb").chmod(0o755)
    env = job_env(SWEEP_ID="me/fcn_dist/abc123", WANDB_MODE="online", OUTPUT_DIR=str(tmp_path / "runs"),
                  WANDB=str(bin_dir / "wandb"))
    result = run_job(slurm, "sweep.sbatch", tmp_path, env, ("--array=0-1",))
    jobs = slurm.jobs(result.job.job_id)
    assert [(j.state, j.exit_code) for j in jobs] == [("COMPLETED", 0)] * 2, tail(result)
    array_id = result.job.job_id
    for task in (0, 1):
        recorded = (tmp_path / f"agent-{task}.txt").read_text().strip()
        assert recorded == f"{tmp_path}/runs/sweep-abc123-{array_id}_{task} agent --count 1 me/fcn_dist/abc123"
