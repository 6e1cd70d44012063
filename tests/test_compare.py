"""fcn-compare on run directories written here (config.yaml + metrics.jsonl) and on a stand-in W&B API."""

import json
import os
from pathlib import Path

import pytest
import wandb
from PIL import Image

from fcn_dist import tracking
from fcn_dist.cli import compare_main
from fcn_dist.compare import read_run, table
from fcn_dist.config import load_config, save_config


def _run_dir(root: Path, name: str, lr: float, evals: list[tuple[int, float]], partial: str = "") -> Path:
    run_dir = root / name
    save_config(load_config(None, [f"optim.lr={lr}", f"train.run_name={name}"]), run_dir / "config.yaml")
    rows = [{"step": s, "epoch": 0, "train/loss": 2.0 / s, "train/images_per_sec": 10.0 + s} for s in range(1, 9)]
    rows += [{"step": s, "epoch": 0, "val/mIoU": m, "val/pixel_accuracy": 0.5 + m / 2, "val/IoU/background": 0.9,
              "val/IoU/cat": m} for s, m in evals]
    rows.sort(key=lambda r: r["step"])
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + partial)
    return run_dir


def _cli(args, capsys):
    code = compare_main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_table_names_the_differing_key_and_each_runs_best(tmp_path, capsys):
    a = _run_dir(tmp_path, "lr0.05", 0.05, [(4, 0.40), (8, 0.35)])
    b = _run_dir(tmp_path, "lr0.01", 0.01, [(4, 0.20), (8, 0.30)])
    code, out, _ = _cli([a, b, "--output", tmp_path / "t.md", "--plot", tmp_path / "c.png"], capsys)
    assert code == 0
    lines = {line.split("  ")[0].strip(): line.split() for line in out.splitlines() if line.strip()}
    assert lines["optim.lr"][-2:] == ["0.05", "0.01"]
    assert "train.run_name" not in lines  # where a run is, not what it is
    assert out.count("\n") < 20 and "model.arch" not in out  # equal keys are left out
    assert lines["best val mIoU"][-2:] == ["0.4000", "0.3000"]
    assert lines["best at step"][-2:] == ["4", "8"]
    assert lines["final val mIoU"][-2:] == ["0.3500", "0.3000"]
    assert lines["steps"][-2:] == ["8", "8"]
    rows = [line for line in out.splitlines() if line.startswith("IoU ")]
    assert rows[0].startswith("IoU cat (at best)")  # the class that differs most comes first
    markdown = (tmp_path / "t.md").read_text().splitlines()
    assert markdown[0] == "| key | lr0.05 | lr0.01 |" and "| optim.lr | 0.05 | 0.01 |" in markdown
    with Image.open(tmp_path / "c.png") as png:
        assert png.format == "PNG" and png.width > 800


def test_a_run_in_progress_is_read_up_to_its_last_whole_line(tmp_path, capsys):
    run = _run_dir(tmp_path, "live", 0.05, [(4, 0.40)], partial='{"step": 9, "val/mIoU": 0.9')
    summary = read_run(run)
    assert summary.best["val/mIoU"] == 0.40 and summary.steps == 8
    code, out, _ = _cli([run, _run_dir(tmp_path, "other", 0.01, [(4, 0.1)]), "--output", tmp_path / "t.csv"], capsys)
    assert code == 0
    assert (tmp_path / "t.csv").read_text().splitlines()[0] == "key,live,other"


def test_bad_run_directory_and_arguments_exit_2(tmp_path, capsys):
    code, _, err = _cli([tmp_path / "nope", tmp_path], capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"fcn-compare: error: {tmp_path / 'nope'} is not a run directory: "
                                        "config.yaml not found"]
    with pytest.raises(SystemExit) as exc:
        compare_main([])
    assert exc.value.code == 2


def test_wandb_offline_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb.teardown()  # wandb reads its settings once per process
    try:
        code, out, err = _cli(["--wandb", "my-team/fcn_dist"], capsys)
    finally:
        wandb.teardown()
    assert code == 2 and not out
    assert err.strip().splitlines() == [
        "fcn-compare: error: --wandb my-team/fcn_dist needs W&B online, but wandb's settings give offline "
        "(WANDB_MODE, `wandb offline`, or no credentials); compare run directories instead, or `wandb sync` them "
        "and log in"]


class _ApiRun:
    def __init__(self, name: str, lr: float, rows: list[dict]):
        self.name, self.config, self._rows = name, {"optim.lr": lr, "model.arch": "fcn32s", "_wandb": {}}, rows
        self.summary = {key: 0 for row in rows for key in row}

    def scan_history(self, keys):
        return [{k: row[k] for k in keys} for row in self._rows if all(k in row for k in keys)]


def test_wandb_project_gives_the_same_table(monkeypatch, capsys):
    """The public API's runs, as a stand-in (no server): config keys and history rows as fcn-train logs them."""
    calls = {}

    def rows(evals):
        return ([{"train/step": s, "train/loss": 1.0 / s, "train/images_per_sec": 5.0} for s in (2, 4)]
                + [{"train/step": s, "val/mIoU": m, "val/pixel_accuracy": 0.9, "val/IoU/cat": m} for s, m in evals])

    class Api:
        def runs(self, path, filters):
            calls["runs"] = (path, filters)
            return [_ApiRun("a", 0.05, rows([(2, 0.3), (4, 0.2)])), _ApiRun("b", 0.01, rows([(4, 0.25)]))]

    monkeypatch.setattr(tracking, "wandb_mode", lambda: "online")
    monkeypatch.setattr(wandb, "Api", Api)
    code, out, err = _cli(["--wandb", "team/proj", "--filter", "group=lr", "--filter", "optim.lr=0.05"], capsys)
    assert code == 0, err
    assert calls["runs"] == ("team/proj", {"$and": [{"group": "lr"}, {"config.optim.lr": 0.05}, {"jobType": "train"}]})
    lines = {line.split("  ")[0].strip(): line.split() for line in out.splitlines() if line.strip()}
    assert lines["optim.lr"][-2:] == ["0.05", "0.01"] and "model.arch" not in lines
    assert lines["best val mIoU"][-2:] == ["0.3000", "0.2500"] and lines["best at step"][-2:] == ["2", "4"]


def test_table_of_runs_without_evaluations(tmp_path):
    run = _run_dir(tmp_path, "no-eval", 0.05, [])
    header, rows = table([read_run(run)])
    assert header == ["", "no-eval"]
    assert dict((r[0], r[1]) for r in rows)["best val mIoU"] == "-"
    assert os.path.getsize(run / "metrics.jsonl") > 0
