"""W&B as fcn_dist drives it, without network: the mode from wandb's own settings, the offline
fallback of a failing online init, metric definitions and what a sweep ranks by, the console."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import wandb

from fcn_dist import tracking
from fcn_dist.config import load_config

sys.path.insert(0, str(Path(__file__).parent))
from wandb_records import history, read_records  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEY = "0123456789abcdef0123456789abcdef01234567"  # the format of an API key; no server ever sees it
SELF_HOSTED = "https://ml.example.com"


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    """A clean wandb world: no WANDB_* variables, HOME (so ~/.netrc, ~/.config/wandb) and the cwd in tmp_path."""
    for name in list(os.environ):
        if name.startswith("WANDB_") or name == "NETRC":
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    wandb.teardown()  # wandb reads its settings once per process: forget the previous test's
    yield home
    wandb.teardown()


def _netrc(home: Path, host: str) -> None:
    (home / ".netrc").write_text(f"machine {host}\n  login user\n  password {KEY}\n")
    (home / ".netrc").chmod(0o600)


def _wandb_cli(*args: str) -> None:
    """The real `wandb offline` / `wandb disabled`: they write ./wandb/settings."""
    subprocess.run([sys.executable, "-m", "wandb", *args], check=True, capture_output=True, env=os.environ.copy())


def _token_file(home: Path) -> str:
    path = home / "token.jwt"
    path.write_text("aaa.bbb.ccc")
    return str(path)


MODE_CASES = {
    "nothing configured": ({}, None, None, "offline"),
    "WANDB_API_KEY": ({"WANDB_API_KEY": KEY}, None, None, "online"),
    "netrc entry for api.wandb.ai": ({}, "api.wandb.ai", None, "online"),
    "self-hosted WANDB_BASE_URL with its netrc entry": ({"WANDB_BASE_URL": SELF_HOSTED}, "ml.example.com", None,
                                                         "online"),
    "self-hosted WANDB_BASE_URL, netrc only for api.wandb.ai": ({"WANDB_BASE_URL": SELF_HOSTED}, "api.wandb.ai",
                                                                None, "offline"),
    "WANDB_IDENTITY_TOKEN_FILE": ({"WANDB_IDENTITY_TOKEN_FILE": "token"}, None, None, "online"),
    "WANDB_MODE=offline with a key": ({"WANDB_MODE": "offline", "WANDB_API_KEY": KEY}, None, None, "offline"),
    "WANDB_MODE=disabled with a key": ({"WANDB_MODE": "disabled", "WANDB_API_KEY": KEY}, None, None, "disabled"),
    "`wandb offline` with a key": ({"WANDB_API_KEY": KEY}, None, "offline", "offline"),
    "`wandb disabled` with a key": ({"WANDB_API_KEY": KEY}, None, "disabled", "disabled"),
    "`wandb disabled` then WANDB_MODE=online": ({"WANDB_API_KEY": KEY, "WANDB_MODE": "online"}, None, "disabled",
                                                "online"),
}


@pytest.mark.parametrize("case", list(MODE_CASES))
def test_mode_follows_wandbs_own_settings(case, wandb_home, monkeypatch):
    env, netrc_host, cli, expected = MODE_CASES[case]
    if netrc_host:
        _netrc(wandb_home, netrc_host)
    for name, value in env.items():
        monkeypatch.setenv(name, _token_file(wandb_home) if name == "WANDB_IDENTITY_TOKEN_FILE" else value)
    if cli:
        _wandb_cli(cli)
    assert tracking.wandb_mode() == expected


def test_mode_never_prompts_without_credentials(wandb_home, monkeypatch):
    """No key, a terminal on stdin: still offline, and wandb's prompt is never reached."""
    from wandb.sdk.lib.wbauth import prompt

    def no_prompt(*args, **kwargs):
        raise AssertionError("wandb prompted for an API key")

    monkeypatch.setattr(prompt, "prompt_and_save_api_key", no_prompt)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    assert tracking.wandb_mode() == "offline"


def test_a_failing_online_init_falls_back_offline_with_one_warning(wandb_home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("WANDB_SILENT", "true")
    real_init, modes = wandb.init, []

    def init(**kwargs):
        modes.append(kwargs["mode"])
        if kwargs["mode"] == "online":  # what an unreachable server gives, without contacting one
            raise wandb.errors.CommError("Run initialization has timed out after 90.0 sec.")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", init)
    run = tracking.start_wandb({"project": "p", "dir": str(tmp_path), "name": "fallback"}, {"a": 1}, "fcn-train")
    try:
        assert modes == ["online", "offline"]
        assert run.settings.mode == "offline"
    finally:
        run.finish()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("fcn-train: warning: W&B online init failed (Run initialization has timed out")
    assert f"`wandb sync {run.settings.sync_dir}`" in warnings[0]


def test_summaries_keep_the_best_and_the_sweep_ranks_by_a_plain_best(wandb_home, tmp_path, monkeypatch):
    """val scores keep their max, the loss its min; configs/sweep.yaml's metric is a number that is the best."""
    import yaml

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="p", dir=str(tmp_path))
    tracking.define_metrics(run)
    best = -1.0
    for step, miou, loss in [(5, 0.30, 2.0), (10, 0.50, 1.0), (15, 0.40, 1.5)]:  # the last evaluation is not the best
        best = max(best, miou)
        run.log({tracking.STEP_KEY: step, "val/mIoU": miou, tracking.BEST_KEY: best, "train/loss": loss,
                 "val/mDice": miou + 0.1, "val/Dice/cat": miou + 0.2, "val/Fscore/cat": miou + 0.2}, step=step)
    run.finish()
    records = read_records(run.settings.sync_file)
    summary = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary.update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in record.summary.update})
    assert summary["val/mIoU"] == {"max": 0.50}
    assert summary["val/mDice"] == {"max": 0.60}
    # per-class keys get summary="max" from glob definitions (wandb applies those to the summary nondeterministically
    # in offline run files, so the definitions are what is checked)
    globs = {r.metric.glob_name for r in records if r.WhichOneof("record_type") == "metric" and r.metric.summary.max}
    assert {"val/IoU/*", "val/Dice/*", "val/Fscore/*"} <= globs
    assert summary["train/loss"] == {"min": 1.0}
    metric = yaml.safe_load((REPO / "configs" / "sweep.yaml").read_text())["metric"]
    assert metric == {"name": tracking.BEST_KEY, "goal": "maximize"}
    # wandb's sweep code reads the summary value of metric.name; a dict like {"max": ...} is not a number to it
    assert summary[metric["name"]] == 0.50
    assert [row[tracking.STEP_KEY] for row in history(run.settings.sync_file)] == [5, 10, 15]


def test_training_run_init_has_no_group_unless_one_is_set(tmp_path):
    cfg = load_config(REPO / "configs" / "demo.yaml")
    kwargs = tracking.wandb_init_kwargs(cfg, tmp_path / "demo-lr0.05", None)
    assert "group" not in kwargs  # so wandb itself honours WANDB_RUN_GROUP
    assert kwargs["job_type"] == "train" and kwargs["name"] == "demo-lr0.05"
    assert kwargs["tags"] == ["fcn32s", "resnet18", "synthetic", "demo"]
    grouped = load_config(REPO / "configs" / "demo.yaml", ["log.group=lr-study", "data.format=hub",
                                                            "data.hub_name=/data/ade20k"])
    kwargs = tracking.wandb_init_kwargs(grouped, tmp_path / "x", "abc123")
    assert kwargs["group"] == "lr-study" and kwargs["id"] == "abc123"
    assert kwargs["tags"] == ["fcn32s", "resnet18", "ade20k", "demo"]


def test_git_commit_is_this_checkouts():
    commit = tracking.git_commit()
    if not (REPO / ".git").exists():
        assert commit is None
        return
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert commit.removesuffix("+dirty") == head


def test_progress_lines_in_a_log_file_are_plain():
    """Not a terminal: newline-ended lines at most every NON_TTY_INTERVAL_S, no cursor movement."""
    from tqdm.auto import tqdm

    log = io.StringIO()
    with tqdm(total=50, desc="train", **tracking.progress_options(log)) as bar:
        for _ in range(50):
            bar.update(1)
            bar.set_postfix(loss="0.5000", refresh=False)
    text = log.getvalue()
    assert "\x1b[" not in text
    lines = [line for line in text.replace("\r", "\n").split("\n") if line.strip()]
    assert lines[0].startswith("train: 0/50") and lines[-1].startswith("train: 50/50")
    assert len(lines) <= 4  # the first, the last (twice, as tqdm closes), nothing in between at this speed
    assert tracking.progress_options(TTY())["dynamic_ncols"] is True


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_summary_lines_name_best_final_models_and_where_the_run_is(tmp_path):
    best = tmp_path / "model_best.safetensors"
    best.write_bytes(b"x")
    lines = tracking.summary_lines((0.79, 200), 0.781, 111, [best, tmp_path / "missing"], "W&B run: https://w/r")
    assert lines == ["done: best val mIoU 0.7900 at step 200, final val mIoU 0.7810, 1m51s", f"  {best}",
                     "  W&B run: https://w/r"]
    assert tracking.eval_line(40, {"mIoU": 0.4431, "mDice": 0.5512, "pixel_accuracy": 0.91}, True, 2.04) == (
        "step 40: val mIoU 0.4431, mDice 0.5512, pixel accuracy 0.9100 (2.0 s), new best")


def test_val_scalars_hold_every_score_and_the_defined_per_class_ones():
    import torch

    from fcn_dist.evaluate import metrics_from_confusion

    names = ["background", "cat", "dog"]
    metrics = metrics_from_confusion(torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]]), names, 1)
    row = tracking.val_scalars(metrics, names)
    assert set(row) == {"val/mIoU", "val/pixel_accuracy", "val/mean_accuracy", "val/fwIoU", "val/mDice", "val/mFscore",
                        *(f"val/{score}/{name}" for score in ("IoU", "Dice", "Fscore") for name in ("background", "cat"))}
    assert row["val/Dice/cat"] == metrics["per_class_Dice"]["cat"] == 4 / 5
    assert row["val/mDice"] == metrics["mDice"]
