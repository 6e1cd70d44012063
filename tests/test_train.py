"""Training: real launchers, sharding, 2-process = 1-process, exact resume, atomic saves, W&B, NaN."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from fcn_dist.checkpoint import complete_checkpoints, load_model, read_metadata, verify_checkpoint
from fcn_dist.data.synthetic import make_synthetic_voc
from fcn_dist.train import EXIT_NONFINITE, EXIT_PREEMPTED

sys.path.insert(0, str(Path(__file__).parent))
from wandb_records import artifacts, history, read_records, run_ids  # noqa: E402

HOOKS = str(Path(__file__).parent / "train_hooks.py")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_voc(out, num_train=16, num_val=5, seed=3, max_side=96)


def _env(**extra):
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1",
           "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_RUN_GROUP", None)
    env.pop("WANDB_SERVICE", None)  # an in-process wandb test's service (maybe gone since): children start their own
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _overrides(voc_root, out, run_name, **over):
    base = {"model.pretrained": "none", "data.format": "voc", "data.root": str(voc_root),
            "data.crop_size": "[64,64]", "data.batch_size": 2, "data.num_workers": 0, "log.wandb": "false",
            "log.every": 1, "train.checkpoint_every": 0, "train.eval_every": 0, "train.mixed_precision": "no",
            "train.channels_last": "false", "optim.lr": 0.02, "optim.warmup_steps": 0, "train.output_dir": str(out),
            "train.run_name": run_name, "train.epochs": 1}
    base.update(over)
    return [f"{k}={v}" for k, v in base.items()]


def _train(args, env=None, launcher=None, expect=0):
    cmd = (launcher or [sys.executable]) + [HOOKS] + args
    # A session of its own: the SIGTERM hook signals the whole group, as Slurm does.
    proc = subprocess.run(cmd, env=env or _env(), capture_output=True, text=True, timeout=600,
                          start_new_session=True)
    assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _losses(run_dir: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"], r["train/lr"]) for r in rows if "train/loss" in r]


def _params(path: Path) -> dict:
    return {k: v for k, v in load_file(str(path)).items() if "running_" not in k and "num_batches" not in k}


def test_torchrun_two_processes_shard_and_match_one_process(voc_root, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    common = {"train.max_steps": 3, "train.checkpoint_every": 3}
    two = _train(_overrides(voc_root, tmp_path, "two", **common), env=_env(FCN_TEST_DUMP_WEIGHTS=1),
                 launcher=torchrun)
    assert "rank=0 world_size=2" in two.stdout and "rank=1 world_size=2" in two.stdout
    _train(_overrides(voc_root, tmp_path, "one", **common, **{"train.grad_accum": 2}),
           env=_env(FCN_TEST_DUMP_WEIGHTS=1))

    rank0, rank1 = (_params(tmp_path / "two" / f"rank{r}_step3.safetensors") for r in (0, 1))
    single = _params(tmp_path / "one" / "rank0_step3.safetensors")
    initial = build_initial_params()
    assert any(not torch.equal(rank0[k], initial[k]) for k in rank0), "training did not change the weights"
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"ranks differ at {key}"
        # DDP all-reduces the two batches' gradients, one process accumulates them: the same two-term sums (0
        # difference measured). A kernel reordering a gradient sum (<= 8,192 pixels) would move a weight by
        # ~eps*sqrt(K) = 1e-5 of its 3-step update, which is at most the weight (~1e-2 of it typically): rtol 1e-4
        # (atol 1e-5 near 0) leaves 10x, and one whole update (a wrong average) exceeds it in every tensor
        assert torch.allclose(rank0[key], single[key], rtol=1e-4, atol=1e-5), f"2 procs != 1 proc at {key}"
    # The exported file is the same model, without DDP's "module." prefix.
    model, info = load_model(tmp_path / "two" / "model_last.safetensors")
    assert info.step == 3
    assert torch.equal(model.state_dict()["score.weight"], rank0["score.weight"])


def build_initial_params():
    from fcn_dist import ModelConfig, build_model
    torch.manual_seed(0)
    return {k: v for k, v in build_model(ModelConfig(pretrained="none")).state_dict().items()}


def test_two_process_shards_are_disjoint_cover_the_set_and_reshuffle(voc_root, tmp_path):
    worker = Path(__file__).parent / "dist_shards_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29532",
           str(worker), str(voc_root), str(tmp_path)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = [json.loads((tmp_path / f"shard{r}.json").read_text()) for r in (0, 1)]
    for epoch in ("0", "1"):
        a, b = (sorted(s[epoch]) for s in shards)
        assert not set(a) & set(b)
        assert sorted(a + b) == list(range(16))
    assert shards[0]["0"] != shards[0]["1"], "the shuffle must change per epoch"


def test_sigterm_mid_epoch_then_resume_is_exact(voc_root, tmp_path):
    # 16 images, batch 2: 8 steps per epoch; stop at step 5 of epoch 0, finish at 12 (epoch 1).
    over = {"train.max_steps": 12, "train.checkpoint_every": 4, "data.num_workers": 2}
    _train(_overrides(voc_root, tmp_path, "straight", **over))
    over_wandb = {**over, "log.wandb": "true"}
    stopped = _train(_overrides(voc_root, tmp_path, "resumed", **over_wandb), env=_env(FCN_TEST_SIGTERM_AT_CALL=5),
                     expect=EXIT_PREEMPTED)
    assert "stopped by signal 15 at step 5" in stopped.stdout + stopped.stderr
    run_dir = tmp_path / "resumed"
    assert complete_checkpoints(run_dir)[-1].name == "step_00000005"
    resumed = _train(_overrides(voc_root, tmp_path, "resumed", **over_wandb))
    assert "resumed from" in resumed.stdout and "at step 5 (epoch 0, batch 5)" in resumed.stdout

    straight = load_file(str(tmp_path / "straight" / "model_last.safetensors"))
    after_resume = load_file(str(run_dir / "model_last.safetensors"))
    for key in straight:
        assert torch.equal(straight[key], after_resume[key]), key
    assert _losses(run_dir) == _losses(tmp_path / "straight")
    assert [s for s, _, _ in _losses(run_dir)] == list(range(1, 13))

    # W&B offline: both halves wrote the same run id; the decoded records hold the design's keys.
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2
    assert run_ids(files[0]) == run_ids(files[1]) and len(run_ids(files[0])) == 1
    rows = [row for f in files for row in history(f)]
    keys = set().union(*rows)
    assert {"train/loss", "train/lr", "train/grad_norm", "train/images_per_sec", "val/mIoU",
            "val/pixel_accuracy"} <= keys
    assert any(k.startswith("val/IoU/") for k in keys)
    assert any(row.get("val/examples", {}).get("_type") == "images/separated"
               or row.get("val/examples/_type") == "images/separated" for row in rows)
    logged = sorted(row["_step"] for row in rows if "train/loss" in row)
    # Step 5 was logged after the group-wide SIGTERM had stopped wandb's service: metrics.jsonl has it.
    assert logged == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12]


def test_failed_save_keeps_previous_checkpoint_and_resume_uses_it(voc_root, tmp_path):
    over = {"train.max_steps": 4, "train.checkpoint_every": 2}
    crashed = _train(_overrides(voc_root, tmp_path, "run", **over), env=_env(FCN_TEST_FAIL_SAVE_AT_STEP=4),
                     expect=2)
    run_dir = tmp_path / "run"
    final = run_dir / "checkpoints" / "step_00000004"
    assert crashed.stderr.strip().splitlines()[-1].startswith(
        f"fcn-train: error: cannot save checkpoint {final}: injected failure: disk full while saving")
    folders = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert folders == ["step_00000002"]  # the temporary folder is removed, the previous checkpoint kept
    verify_checkpoint(run_dir / "checkpoints" / "step_00000002")
    assert load_model(run_dir / "model_last.safetensors")[1].step == 2
    resumed = _train(_overrides(voc_root, tmp_path, "run", **over))
    assert "step_00000002 at step 2" in resumed.stdout
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]


def test_nan_loss_stops_with_the_step_and_keeps_last_checkpoint(voc_root, tmp_path):
    over = {"train.max_steps": 8, "train.checkpoint_every": 2}
    proc = _train(_overrides(voc_root, tmp_path, "nan", **over), env=_env(FCN_TEST_NAN_AT_CALL=5),
                  expect=EXIT_NONFINITE)
    assert "fcn-train: error: non-finite loss at step 5" in proc.stderr
    run_dir = tmp_path / "nan"
    assert complete_checkpoints(run_dir)[-1].name == "step_00000004"
    model, info = load_model(run_dir / "model_last.safetensors")
    assert info.step == 4
    assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())
    weights = load_file(str(run_dir / "checkpoints" / "step_00000004" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_bad_config_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fcn_dist.train", "--config", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True, env=_env())
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"fcn-train: error: config file not found: {tmp_path / 'nope.yaml'}"]
    proc = subprocess.run([sys.executable, "-m", "fcn_dist.train", "optim.lrr=1"], capture_output=True, text=True,
                          env=_env())
    assert proc.returncode == 2 and "unknown config key 'optim.lrr'" in proc.stderr


def test_demo_config_learns(tmp_path):
    """configs/demo.yaml, shortened to 60 steps, reaches val mIoU >= 0.5 on its synthetic set."""
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    args = ["--config", str(demo), f"data.root={tmp_path / 'data'}", f"train.output_dir={tmp_path}",
            "train.max_steps=60", "train.eval_every=60", "train.checkpoint_every=0", "log.wandb=false",
            "data.synthetic_val=12"]
    proc = subprocess.run([sys.executable, "-m", "fcn_dist.train", *args], env=_env(OMP_NUM_THREADS=2),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if "val/mIoU" in r][-1]
    assert final["step"] == 60
    assert final["val/mIoU"] >= 0.5, final
    _, info = load_model(tmp_path / "demo" / "model_best.safetensors")
    assert info.metrics["mIoU"] == max(r["val/mIoU"] for r in rows if "val/mIoU" in r)


def test_folder_demo_learns_and_its_classes_reach_config_exports_eval_and_predict(tmp_path):
    """configs/folder_demo.yaml on the synthetic folder set (RGB masks), as configs/demo.yaml's test: 60 steps,
    val mIoU >= 0.5; classes.yaml's names are in config.yaml, the export, fcn-eval's table and fcn-predict's shares."""
    from fcn_dist.data.synthetic import FOLDER_CLASSES, make_synthetic_folder

    root = make_synthetic_folder(tmp_path / "data", 160, 12, max_side=192, mask_format="rgb")
    demo = Path(__file__).resolve().parents[1] / "configs" / "folder_demo.yaml"
    args = ["--config", str(demo), f"data.root={root}", f"train.output_dir={tmp_path}", "train.max_steps=60",
            "train.eval_every=60", "train.checkpoint_every=0", "log.wandb=false", "train.mixed_precision=no"]
    proc = subprocess.run([sys.executable, "-m", "fcn_dist.train", *args], env=_env(OMP_NUM_THREADS=2),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "folder_demo"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if "val/mIoU" in r][-1]
    assert final["step"] == 60 and final["val/mIoU"] >= 0.5, final
    names = list(FOLDER_CLASSES)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["classes"] == names
    best = run_dir / "model_best.safetensors"
    _, info = load_model(best)
    assert info.classes == names and info.model.num_classes == 7
    evaluated = subprocess.run([sys.executable, "-m", "fcn_dist.evaluate", "--checkpoint", str(best), "--data-root",
                                str(root), "--data-format", "folder", "--mixed-precision", "no", "--num-workers", "0",
                                "--no-fold-bn", "--output", str(tmp_path / "eval.json")], env=_env(), capture_output=True, text=True,
                               timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert list(metrics["per_class_IoU"]) == names and metrics["num_images"] == 12
    # the same model and images in fp32: the same score, up to a few pixels where the kernels round differently
    assert metrics["mIoU"] == pytest.approx(final["val/mIoU"], abs=1e-3)
    predicted = subprocess.run([sys.executable, "-m", "fcn_dist.predict", str(root / "images" / "img_00160.jpg"),
                                "--checkpoint", str(best), "--output", str(tmp_path / "pred")], env=_env(),
                               capture_output=True, text=True, timeout=600)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    shares = [line for line in predicted.stdout.splitlines() if line.startswith(str(root))]
    assert len(shares) == 1 and "background " in shares[0]
    assert set(re.findall(r"([a-z]+) [<\d.]+%", shares[0])) <= set(names)


def _enet_weights_of_masks(voc_root) -> list[float]:
    """ENet's 1 / ln(1.02 + p_c) over the train split's mask files, counted with numpy alone."""
    import numpy as np
    from PIL import Image

    voc = voc_root / "VOCdevkit" / "VOC2012" if (voc_root / "VOCdevkit").is_dir() else voc_root
    pixels = np.zeros(256, dtype=np.int64)
    for name in (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split():
        pixels += np.bincount(np.array(Image.open(voc / "SegmentationClass" / f"{name}.png")).ravel(), minlength=256)
    return (1 / np.log(1.02 + pixels[:21] / pixels[:21].sum())).tolist()


@pytest.mark.parametrize("processes, loss", [(1, "ce+dice"), (2, "dice")])
def test_auto_class_weights_are_resolved_recorded_and_kept_on_resume(voc_root, tmp_path, processes, loss):
    """optim.class_weights=auto with another loss, on 1 process and on 2 (the main process counts and broadcasts):
    it trains, config.yaml holds the weights of the training masks, and the same command then finds the run
    complete (auto meets the recorded list, not a changed experiment)."""
    launcher = None if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                            "--master_port", "29534"]
    args = _overrides(voc_root, tmp_path, "balanced", **{"optim.loss": loss, "optim.class_weights": "auto",
                                                         "train.max_steps": 2})
    first = _train(args, launcher=launcher)
    import yaml

    recorded = yaml.safe_load((tmp_path / "balanced" / "config.yaml").read_text())["optim"]
    assert recorded["loss"] == loss
    assert recorded["class_weights"] == pytest.approx(_enet_weights_of_masks(voc_root), rel=1e-12)
    assert first.stdout.count("class weights (auto: ENet") == 1  # printed once, by the main process
    rows = [json.loads(line) for line in (tmp_path / "balanced" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["train/loss"] < 10 for r in rows if "train/loss" in r) and len(_losses(tmp_path / "balanced")) == 2
    assert 0 <= [r for r in rows if "val/mDice" in r][-1]["val/mDice"] <= 1
    again = _train(args, launcher=launcher)
    assert "is complete" in again.stdout and "class weights (auto: kept from" in again.stdout


def test_resume_never_refuses_a_run_with_checkpoints_and_touches_nothing(voc_root, tmp_path):
    run_dir = tmp_path / "old"
    (run_dir / "checkpoints" / "step_00000007").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("original\n")
    proc = _train(_overrides(voc_root, tmp_path, "old", **{"train.resume": "never"}), expect=2)
    assert f"{run_dir} already holds checkpoints and train.resume=never" in proc.stderr
    assert (run_dir / "config.yaml").read_text() == "original\n"
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "config.yaml"]


def test_resize_on_device_trains_the_same_steps(voc_root, tmp_path):
    """data.resize_on=device finishes the batches in the training process: on CPU, the same losses and weights."""
    common = {"train.max_steps": 4, "data.scale_range": "[0.5,2.0]", "data.num_workers": 1}
    _train(_overrides(voc_root, tmp_path, "loader", **common))
    _train(_overrides(voc_root, tmp_path, "device", **common, **{"data.resize_on": "device"}))
    assert _losses(tmp_path / "device") == _losses(tmp_path / "loader") and len(_losses(tmp_path / "loader")) == 4
    loader = _params(tmp_path / "loader" / "model_last.safetensors")
    device = _params(tmp_path / "device" / "model_last.safetensors")
    assert loader.keys() == device.keys() and all(torch.equal(loader[k], device[k]) for k in loader)


@pytest.mark.parametrize("hook, signum", [("FCN_TEST_SIGUSR1_AT_CALL", 10), ("FCN_TEST_SIGTERM_AT_CALL", 15)])
def test_a_stop_signal_is_seen_at_the_next_step_whatever_the_log_and_eval_frequency(voc_root, tmp_path, hook, signum):
    """The stop flag is read after every optimizer step, not only at log or eval steps: a signal
    during step 3 saves step 3 and exits 75, with log.every and eval_every far away."""
    over = {"train.epochs": 50, "log.every": 1000, "train.eval_every": 1000, "train.checkpoint_every": 0}
    proc = _train(_overrides(voc_root, tmp_path, "stopped", **over), env=_env(**{hook: 3}), expect=EXIT_PREEMPTED)
    assert f"stopped by signal {signum} at step 3" in proc.stdout + proc.stderr
    run_dir = tmp_path / "stopped"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_00000003"]
    assert load_model(run_dir / "model_last.safetensors")[1].step == 3
    assert not (run_dir / "eval").exists()  # no evaluation was due, and none ran before stopping


def test_files_get_the_users_umask(voc_root, tmp_path):
    """Teammates on a shared filesystem can read the models: 0644 under umask 022, not mkstemp's 0600."""
    over = {"train.max_steps": 2, "train.checkpoint_every": 2}
    cmd = [sys.executable, HOOKS, *_overrides(voc_root, tmp_path, "shared", **over)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: os.umask(0o022))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "shared"
    written = [run_dir / "config.yaml", run_dir / "model_last.safetensors", run_dir / "model_best.safetensors",
               run_dir / "metrics.jsonl", *sorted((run_dir / "eval").iterdir())]
    assert len(written) == 6  # one evaluation: its JSON and its confusion PNG
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: "0o644" for p in written}
    assert not list(run_dir.rglob("*.tmp"))


def _wandb_run(run_dir: Path):
    """The decoded records of a run directory's (only) offline W&B run: run record, summary, history."""
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    records = read_records(files[0])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in r.summary.update})
    return run, summary, history(files[0]), files[0]


def test_wandb_runs_compare_group_only_on_request_and_link_models(voc_root, tmp_path):
    """Acceptance (issue 16): no forced group; job_type and tags; the summary keeps the best mIoU; log_model=best
    records a model artifact; the eval run of that checkpoint records the training run."""
    common = {"log.wandb": "true", "train.max_steps": 6, "train.eval_every": 2, "log.every": 2}
    env = _env(FCN_TEST_MIOU="0.2,0.6,0.4", WANDB_DATA_DIR=tmp_path / "wandb-data")  # the last evaluation is not the best
    _train(_overrides(voc_root, tmp_path, "lr0.02", **common, **{"log.log_model": "best"}), env=env)
    _train(_overrides(voc_root, tmp_path, "lr0.05", **common, **{"optim.lr": 0.05}),
           env=_env(FCN_TEST_MIOU="0.1,0.2,0.3", WANDB_RUN_GROUP="env-group", WANDB_DATA_DIR=tmp_path / "wandb-data"))
    _train(_overrides(voc_root, tmp_path, "grouped", **{**common, "train.max_steps": 2, "optim.lr": 0.05,
                                                         "log.group": "lr-study", "log.log_model": "best"}),
           env=_env(WANDB_DATA_DIR=tmp_path / "wandb-data"))

    run, summary, rows, run_file = _wandb_run(tmp_path / "lr0.02")
    assert run.run_group == "" and run.job_type == "train" and run.display_name == "lr0.02"
    assert list(run.tags) == ["fcn32s", "resnet18", "voc", "default"]
    mious = [row["val/mIoU"] for row in rows if "val/mIoU" in row]
    assert mious == [0.2, 0.6, 0.4] and mious[-1] != max(mious)
    assert summary["val/mIoU"] == {"max": max(mious)}
    assert summary["val/best_mIoU"] == max(mious)  # what configs/sweep.yaml ranks by
    assert summary["train/loss"] == {"min": min(row["train/loss"] for row in rows if "train/loss" in row)}
    assert all(row["train/step"] == row["_step"] and "epoch" in row for row in rows)
    config = {u.key: json.loads(u.value_json) for r in read_records(run_file) if r.WhichOneof("record_type") == "config"
              for u in r.config.update}
    assert config["optim.lr"] == 0.02 and config["run/processes"] == 1 and config["run/total_steps"] == 6
    assert config["run/global_batch"] == 2 and config["run/train_images"] == 16 and config["run/parameters"] > 0
    assert {"versions/fcn_dist", "versions/torch", "versions/accelerate"} <= set(config)
    models = [a for a in artifacts(run_file) if a.type == "model"]
    assert [(a.name, sorted(a.aliases)) for a in models] == [(f"model-{run.run_id}", ["best", "latest", "step-2"]),
                                                              (f"model-{run.run_id}", ["best", "latest", "step-4"])]
    assert json.loads(models[-1].metadata)["step"] == 4 and [c.path for c in models[-1].manifest.contents] == [
        "model_best.safetensors"]

    env_run, _, _, _ = _wandb_run(tmp_path / "lr0.05")
    assert env_run.run_group == "env-group" and env_run.job_type == "train"  # WANDB_RUN_GROUP, honoured
    grouped, _, _, grouped_file = _wandb_run(tmp_path / "grouped")
    assert grouped.run_group == "lr-study" and grouped.job_type == "train"
    assert sorted(next(a for a in artifacts(grouped_file) if a.type == "model").aliases) == ["best", "latest", "step-2"]

    checkpoint = tmp_path / "grouped" / "model_best.safetensors"
    meta = read_metadata(checkpoint)
    assert json.loads(meta["fcn_dist.wandb"]) == {"run": f"fcn_dist/{grouped.run_id}", "group": "lr-study",
                                                   "artifact": f"fcn_dist/model-{grouped.run_id}:step-2"}
    assert len(meta["fcn_dist.config_fingerprint"]) == 16
    proc = subprocess.run([sys.executable, "-m", "fcn_dist.evaluate", "--checkpoint", str(checkpoint), "--data-root",
                           str(voc_root), "--num-workers", "0", "--wandb", "--output", str(tmp_path / "ev" / "m.json")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    eval_run, _, eval_rows, eval_file = _wandb_run(tmp_path / "ev")
    assert eval_run.job_type == "eval" and eval_run.run_group == "lr-study"
    assert eval_run.display_name == "grouped/model_best-step2"
    eval_config = {u.key: json.loads(u.value_json) for r in read_records(eval_file)
                   if r.WhichOneof("record_type") == "config" for u in r.config.update}
    assert eval_config["train/run"] == f"fcn_dist/{grouped.run_id}"
    assert eval_config["checkpoint/config_fingerprint"] == meta["fcn_dist.config_fingerprint"]
    assert [row["train/step"] for row in eval_rows] == [2]


@pytest.fixture(scope="module")
def throughput_runs(tmp_path_factory):
    """Two runs of 20 steps, W&B off: evaluating every 5 steps (lr 0.02) and not before the end (lr 0.05).

    The val set is large next to a step (12 images up to 160 px against 2 crops of 64), so an evaluation
    takes several steps' time; 48 training images keep every epoch end past step 20.
    """
    root = tmp_path_factory.mktemp("runs")
    voc = make_synthetic_voc(root / "voc", num_train=48, num_val=12, seed=5, max_side=160)
    common = {"train.max_steps": 20, "train.epochs": 5, "log.every": 5}
    procs = {}
    for name, over in (("eval5", {"train.eval_every": 5}), ("noeval", {"optim.lr": 0.05})):
        procs[name] = _train(_overrides(voc, root, name, **common, **over))
    return root, procs


def _images_per_sec(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/images_per_sec"] for r in rows if "train/images_per_sec" in r]


def test_images_per_sec_counts_training_steps_only(throughput_runs):
    import statistics

    root, _ = throughput_runs
    with_eval, without = _images_per_sec(root / "eval5"), _images_per_sec(root / "noeval")
    assert len(with_eval) == len(without) == 4
    # Loose (a shared machine is noisy; 0.70 was seen with two other test runs on the 2 cores): evaluations take
    # most of eval5's wall clock; counted, they would halve it
    ratio = statistics.median(with_eval) / statistics.median(without)
    assert ratio > 0.6, (with_eval, without)
    rows = [json.loads(line) for line in (root / "eval5" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["train/data_wait_fraction"] <= 1 for r in rows if "train/loss" in r)
    assert [r["step"] for r in rows if "val/seconds" in r] == [5, 10, 15, 20]


def test_console_reports_each_evaluation_and_a_summary_without_cursor_escapes(throughput_runs):
    import re

    root, procs = throughput_runs
    out = procs["eval5"].stdout
    log = out + procs["eval5"].stderr
    assert "\x1b[A" not in log and "\x1b[" not in log  # a non-TTY log (pipes here, a file under Slurm)
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [int(line.split(":")[0].split()[1]) for line in lines] == [5, 10, 15, 20]
    pattern = r"step \d+: val mIoU \d\.\d{4}, mDice \d\.\d{4}, pixel accuracy \d\.\d{4} \(\d+\.\d s\)(, new best)?"
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    assert lines[0].endswith(", new best")
    rows = [json.loads(line) for line in (root / "eval5" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val/mIoU" in r]
    best = max(evals, key=lambda r: r["val/mIoU"])
    summary = out[out.index("done: "):].splitlines()
    assert summary[0].startswith(f"done: best val mIoU {best['val/mIoU']:.4f} at step {best['step']}, "
                                 f"final val mIoU {evals[-1]['val/mIoU']:.4f}, ")
    assert summary[1:] == [f"  {root / 'eval5' / 'model_best.safetensors'}",
                           f"  {root / 'eval5' / 'model_last.safetensors'}", "  W&B: off (log.wandb=false)"]


def test_fcn_compare_on_two_real_runs(throughput_runs, tmp_path):
    from PIL import Image

    root, _ = throughput_runs
    png = tmp_path / "curves.png"
    proc = subprocess.run([sys.executable, "-m", "fcn_dist.compare", str(root / "eval5"), str(root / "noeval"),
                           "--plot", str(png), "--output", str(tmp_path / "t.md")], capture_output=True, text=True,
                          env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split("  ")[0]: line.split() for line in proc.stdout.splitlines()}
    assert lines["optim.lr"][-2:] == ["0.02", "0.05"]
    for k, name in ((-2, "eval5"), (-1, "noeval")):
        rows = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
        assert lines["best val mIoU"][k] == f"{max(r['val/mIoU'] for r in rows if 'val/mIoU' in r):.4f}"
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] >= 800
