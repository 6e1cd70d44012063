"""Run integrity: one run directory is one experiment, checkpoints always resume, nothing is unpickled.

Real CLI runs in subprocesses (``tests/train_hooks.py``), on tiny synthetic data.
"""

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fcn_dist.checkpoint import CheckpointError, plan_resume, verify_checkpoint, write_manifest
from fcn_dist.config import ConfigError
from fcn_dist.data.synthetic import make_synthetic_voc
from fcn_dist.process import EXIT_BAD_INPUT, EXIT_NONFINITE

sys.path.insert(0, str(Path(__file__).parent))
from test_train import _env, _overrides, _params, _train  # noqa: E402
from wandb_records import read_records  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return make_synthetic_voc(tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=3, seed=5, max_side=80)


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with its bytes' sha256 (folders as 'dir')."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


# 8 images, batch 2: 4 steps an epoch; checkpoints at steps 2 and 4.
FOUR_STEPS = {"train.max_steps": 4, "train.checkpoint_every": 2}


@pytest.fixture(scope="module")
def finished(voc_root, tmp_path_factory):
    """A finished 4-step run (W&B offline on, so a rerun that opened a W&B run would show)."""
    out = tmp_path_factory.mktemp("runs")
    _train(_overrides(voc_root, out, "done", **FOUR_STEPS, **{"log.wandb": "true"}))
    return out / "done"


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


def _rerun(voc_root, run_dir: Path, expect: int, **over):
    settings = {**FOUR_STEPS, "log.wandb": "true", **over}
    return _train(_overrides(voc_root, run_dir.parent, run_dir.name, **settings), expect=expect)


def test_a_rerun_with_another_lr_is_refused_and_touches_nothing(voc_root, finished, tmp_path):
    run_dir = _copy(finished, tmp_path)
    before = tree_digest(run_dir)
    proc = _rerun(voc_root, run_dir, EXIT_BAD_INPUT, **{"optim.lr": 0.2})
    assert proc.stderr.strip().splitlines() == [
        f"fcn-train: error: {run_dir} is another experiment (optim.lr: 0.02 -> 0.2); start a new run beside it "
        f"with train.run_name=done-2, or continue this one with its old values (see {run_dir / 'config.yaml'})"]
    assert tree_digest(run_dir) == before


def test_a_rerun_of_a_finished_run_says_complete_and_touches_nothing(voc_root, finished, tmp_path):
    run_dir = _copy(finished, tmp_path)
    before = tree_digest(run_dir)
    proc = _rerun(voc_root, run_dir, 0)
    assert f"{run_dir} is complete: step 4 of 4, best val mIoU " in proc.stdout
    assert str(run_dir / "model_best.safetensors") in proc.stdout and "train.run_name=done-2" in proc.stdout
    assert tree_digest(run_dir) == before  # no export, no eval row, no new W&B run folder


def test_extending_max_steps_resumes_and_records_the_change(voc_root, finished, tmp_path):
    run_dir = _copy(finished, tmp_path)
    proc = _rerun(voc_root, run_dir, 0, **{"train.max_steps": 6})
    assert "at step 4 (epoch 1, batch 0)" in proc.stdout
    rows = [json.loads(line) for line in (run_dir / "resumes.jsonl").read_text().splitlines()]
    assert [(r["step"], r["changes"]) for r in rows] == [(4, {"train.max_steps": [4, 6]})]
    assert "max_steps: 6" in (run_dir / "config.yaml").read_text()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "step_00000006"
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2
    configs = [json.loads(item.value_json) for r in read_records(files[1]) if r.WhichOneof("record_type") == "config"
               for item in r.config.update if item.key == "resume/train.max_steps"]
    assert configs and set(configs) == {"4 -> 6"}  # wandb rewrites the whole config with each update


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # garble at equal size: flip a byte in the middle
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x55]) + data[i + 1:])


KINDS = ["model.safetensors", "optimizer.bin", "random_states_0.pkl", "train_state.json", "manifest.json"]


@pytest.mark.parametrize("how", ["truncate", "garble"])
@pytest.mark.parametrize("name", KINDS)
def test_verify_names_every_kind_of_bad_file(finished, tmp_path, name, how):
    folder = tmp_path / "step"
    shutil.copytree(finished / "checkpoints" / "step_00000004", folder)
    verify_checkpoint(folder)  # intact
    _corrupt(folder / name, how)
    with pytest.raises(CheckpointError, match=str(folder)):
        verify_checkpoint(folder)


@pytest.mark.parametrize("name, how", list(zip(KINDS, ["garble", "truncate", "garble", "truncate", "garble"])))
def test_a_corrupt_newest_checkpoint_is_set_aside_and_the_previous_one_resumes_exactly(
        voc_root, finished, tmp_path, name, how):
    run_dir = _copy(finished, tmp_path)
    _corrupt(run_dir / "checkpoints" / "step_00000004" / name, how)
    (run_dir / "model_last.safetensors").unlink()  # so the resumed run's export is what we compare
    proc = _rerun(voc_root, run_dir, 0)
    assert f"checkpoint {run_dir / 'checkpoints' / 'step_00000004'} is unusable" in proc.stderr
    assert "set aside as corrupt-step_00000004" in proc.stderr
    assert "at step 2 (epoch 0, batch 2)" in proc.stdout
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "corrupt-step_00000004", "step_00000002", "step_00000004"]
    straight, resumed = (_params(d / "model_last.safetensors") for d in (finished, run_dir))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_with_every_checkpoint_corrupt_it_exits_2_naming_each(voc_root, finished, tmp_path):
    run_dir = _copy(finished, tmp_path)
    for step in ("step_00000002", "step_00000004"):
        _corrupt(run_dir / "checkpoints" / step / "optimizer.bin", "garble")
    proc = _rerun(voc_root, run_dir, EXIT_BAD_INPUT, **{"train.max_steps": 6})
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"fcn-train: error: no usable checkpoint in {run_dir / 'checkpoints'}")
    assert "step_00000004: " in last and "step_00000002: " in last and "optimizer.bin" in last


class Payload:
    """Unpickling this creates a marker file: what a crafted checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("name", ["optimizer.bin", "random_states_0.pkl"])
@pytest.mark.parametrize("remanifest", [False, True])
def test_a_crafted_pickle_never_runs(voc_root, finished, tmp_path, name, remanifest):
    """Each pickled file replaced by one whose unpickling creates a marker. With the manifest
    rewritten to match (an attacker can do that too), the weights_only load still refuses it."""
    run_dir = _copy(finished, tmp_path)
    marker = tmp_path / "marker"
    for folder in sorted((run_dir / "checkpoints").iterdir()):
        with open(folder / name, "wb") as f:
            pickle.dump({"state": Payload(str(marker))}, f)
        if remanifest:
            write_manifest(folder)
    newest = run_dir / "checkpoints" / "step_00000004"
    by_path = _rerun(voc_root, run_dir, EXIT_BAD_INPUT, **{"train.resume": str(newest), "train.max_steps": 6})
    assert by_path.stderr.strip().splitlines()[-1].startswith(f"fcn-train: error: {newest / name}: ")
    assert not marker.exists()
    auto = _rerun(voc_root, run_dir, EXIT_BAD_INPUT, **{"train.max_steps": 6})
    assert f"{run_dir / 'checkpoints'}" in auto.stderr and name in auto.stderr.strip().splitlines()[-1]
    assert not marker.exists()


def test_nan_lr_is_a_config_error(voc_root, tmp_path):
    proc = _train(_overrides(voc_root, tmp_path, "nan", **{"optim.lr": "nan"}), expect=EXIT_BAD_INPUT)
    assert proc.stderr.strip().splitlines() == ["fcn-train: error: optim.lr=nan must be a finite number"]
    assert not (tmp_path / "nan").exists()


def test_diverging_weights_are_never_evaluated_or_exported(voc_root, tmp_path):
    proc = _train(_overrides(voc_root, tmp_path, "boom", **{"optim.lr": 1e8, "log.every": 10, "train.epochs": 1}),
                  expect=EXIT_NONFINITE)
    run_dir = tmp_path / "boom"
    assert proc.stderr.strip().splitlines()[-1].startswith("fcn-train: error: non-finite ")
    assert f"no checkpoint was saved in {run_dir}" in proc.stderr
    for path in run_dir.glob("model_*.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(str(path)).values() if t.is_floating_point()), path
    assert not (run_dir / "eval").exists()


def test_a_full_disk_during_a_save_is_one_line_and_a_rerun_after_freeing_space_finishes(voc_root, tmp_path):
    """A small tmpfs (CI runs as root): the step-2 checkpoint and model_last fit, the step-4 one does not."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs: run it as root (CI does)")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=190m", "tmpfs", str(disk)], check=True)
    try:
        proc = _train(_overrides(voc_root, disk, "full", **FOUR_STEPS), expect=EXIT_BAD_INPUT)
        run_dir = disk / "full"
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith(f"fcn-train: error: cannot save checkpoint {run_dir / 'checkpoints'}/step_000000")
        assert "No space left on device" in lines[-1] or "write" in lines[-1].lower()
        assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name]
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000002"]
        verify_checkpoint(run_dir / "checkpoints" / "step_00000002")
        subprocess.run(["mount", "-o", "remount,size=600m", str(disk)], check=True)
        resumed = _train(_overrides(voc_root, disk, "full", **FOUR_STEPS))
        assert "at step 2 (epoch 0, batch 2)" in resumed.stdout
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_plan_resume_keeps_the_global_batch_or_says_why_not():
    # 2 processes x batch 2 x accum 1, stopped after 3 batches each: 6 global batches consumed
    same = plan_resume(2, 1, 3, 2, 1, 2, accum_from_user=False)
    assert (same.grad_accum, same.skip_batches, same.notes) == (1, 3, ())
    halved = plan_resume(2, 1, 3, 1, 1, 2, accum_from_user=False)
    assert (halved.grad_accum, halved.skip_batches) == (2, 6) and "keep the global batch of 4" in halved.notes[0]
    doubled = plan_resume(1, 2, 6, 2, 2, 2, accum_from_user=False)
    assert (doubled.grad_accum, doubled.skip_batches) == (1, 3)
    changed = plan_resume(2, 1, 3, 3, 1, 2, accum_from_user=False)  # 2 x 1 is not a multiple of 3
    assert (changed.grad_accum, changed.skip_batches) == (1, 2) and "global batch changes from 4" in changed.notes[0]
    with pytest.raises(ConfigError, match="cannot split evenly"):
        plan_resume(2, 1, 3, 4, 1, 2, accum_from_user=False)  # 6 consumed batches over 4 processes
    with pytest.raises(ConfigError, match="train.grad_accum: 1 -> 2 on the same 2 process"):
        plan_resume(2, 1, 3, 2, 2, 2, accum_from_user=True)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _consumed(log_dir: Path) -> list[int]:
    return sorted(i for f in log_dir.glob("rank*.jsonl") for line in f.read_text().splitlines()
                  for i in json.loads(line)["ids"] if json.loads(line)["epoch"] == 0)


@pytest.mark.parametrize("first, second", [(2, 1), (1, 2)])
def test_a_resume_on_another_number_of_processes_uses_each_sample_once(voc_root, tmp_path, first, second):
    """Stopped mid-epoch on `first` processes, resumed on `second`: across both halves the epoch's
    samples are consumed once each, and with the global batch kept the weights match a straight run."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    launcher = {1: None, 2: torchrun}
    accum = {1: 2, 2: 1}  # global batch 4 either way
    # 8 images in batches of 2, global batch 4: an epoch is 2 optimizer steps; stop after the first
    over = {"train.max_steps": 0, "train.checkpoint_every": 0, "train.epochs": 1}
    straight_logs, halves_logs = tmp_path / "straight_logs", tmp_path / "halves_logs"
    straight_logs.mkdir(), halves_logs.mkdir()
    _train(_overrides(voc_root, tmp_path, "straight", **over, **{"train.grad_accum": accum[first]}),
           env=_env(FCN_TEST_LOG_SAMPLES=straight_logs), launcher=launcher[first])
    # every process signals itself during its first micro-batch; the stop is taken after optimizer step 1
    stopped = subprocess.run((launcher[first] or [sys.executable]) + [str(Path(__file__).parent / "train_hooks.py")]
                             + _overrides(voc_root, tmp_path, "halves", **over, **{"train.grad_accum": accum[first]}),
                             env=_env(FCN_TEST_LOG_SAMPLES=halves_logs, FCN_TEST_SIGUSR1_AT_CALL=1),
                             capture_output=True, text=True, timeout=600, start_new_session=True)
    assert stopped.returncode != 0 and "stopped by signal 10" in stopped.stdout + stopped.stderr, stopped.stderr[-2000:]
    resumed = _train(_overrides(voc_root, tmp_path, "halves", **over, **{"train.grad_accum": accum[second]}),
                     env=_env(FCN_TEST_LOG_SAMPLES=halves_logs), launcher=launcher[second])
    assert f"{first} -> {second} processes" in resumed.stdout
    assert _consumed(halves_logs) == _consumed(straight_logs) == list(range(8))
    straight, halves = (_params(tmp_path / d / "model_last.safetensors") for d in ("straight", "halves"))
    for key in straight:
        # the same global batches in the same order: only the reduction order across processes differs
        # (gloo's all-reduce against local accumulation), ~1e-7 relative per step, 4 steps
        assert torch.allclose(halves[key], straight[key], rtol=1e-4, atol=1e-6), key
