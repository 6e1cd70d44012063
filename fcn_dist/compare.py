"""``fcn-compare``: training runs side by side, without the W&B UI.

    fcn-compare runs/demo runs/demo-lr0.05 --plot curves.png --output table.md
    fcn-compare --wandb ENTITY/PROJECT --filter group=lr-study

A local run is its directory's ``config.yaml`` and ``metrics.jsonl``; the file is read line by
line and a line still being written (a run in progress) ends it. ``--wandb`` builds the same
summaries from W&B's public API (``scan_history`` pages through long runs). The table has the
config keys that differ between the runs, then best val mIoU and its step, final val mIoU,
pixel accuracy at the best evaluation, steps, median images/s, and the per-class IoU at each
run's best evaluation, largest differences first. Imports no torch.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from .files import atomic_write, atomic_write_text
from .process import fail

LOCATION_KEYS = ("train.output_dir", "train.run_name", "train.resume")
"""Config keys that say where a run is, not what it is: never listed as differences."""
CURVES = ("val/mIoU", "train/loss")


class CompareError(ValueError):
    """A run that cannot be read, or W&B that cannot be asked; the message says which and why."""


@dataclass
class RunSummary:
    """What fcn-compare knows of one run."""

    name: str
    config: dict[str, Any]
    """Flat ``section.key`` config."""
    best: dict[str, Any] | None = None
    """The evaluation row with the highest ``val/mIoU``."""
    final: dict[str, Any] | None = None
    """The last evaluation row."""
    steps: int = 0
    images_per_sec: list[float] = field(default_factory=list)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: {key: [] for key in CURVES})


def summarize(name: str, config: dict[str, Any], rows: Iterable[dict[str, Any]]) -> RunSummary:
    """Fold metrics rows (``metrics.jsonl``'s format) into a RunSummary, one row at a time."""
    run = RunSummary(name, config)
    for row in rows:
        step = int(row.get("step", 0))
        run.steps = max(run.steps, step)
        if "train/images_per_sec" in row:
            run.images_per_sec.append(float(row["train/images_per_sec"]))
        for key in CURVES:
            if row.get(key) is not None:
                run.curves[key].append((step, float(row[key])))
        if row.get("val/mIoU") is not None:
            run.final = row
            if run.best is None or row["val/mIoU"] > run.best["val/mIoU"]:
                run.best = row
    return run


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """A nested config.yaml as ``section.key`` (the form of the W&B config and of overrides)."""
    flat = {}
    for section, values in config.items():
        if isinstance(values, dict):
            flat.update({f"{section}.{key}": value for key, value in values.items()})
        else:
            flat[section] = values
    return flat


def metrics_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a metrics.jsonl, streamed; a last line without its newline (being written) ends it."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                return
            if line.strip():
                yield json.loads(line)


def read_run(run_dir: Path) -> RunSummary:
    """A run directory's summary.

    Raises:
        CompareError: no config.yaml or metrics.jsonl, or one that does not parse.
    """
    config_path, metrics_path = run_dir / "config.yaml", run_dir / "metrics.jsonl"
    for path in (config_path, metrics_path):
        if not path.is_file():
            raise CompareError(f"{run_dir} is not a run directory: {path.name} not found")
    try:
        config = flatten(yaml.safe_load(config_path.read_text()) or {})
        return summarize(run_dir.name, config, metrics_rows(metrics_path))
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise CompareError(f"{run_dir}: cannot parse {str(err).splitlines()[0]}") from None


def differing_keys(runs: list[RunSummary]) -> list[str]:
    """Config keys whose values are not the same in every run (location keys left out)."""
    keys = sorted({key for run in runs for key in run.config} - set(LOCATION_KEYS))
    return [key for key in keys if len({json.dumps(run.config.get(key), sort_keys=True) for run in runs}) > 1]


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def table(runs: list[RunSummary]) -> tuple[list[str], list[list[str]]]:
    """The comparison as (header, rows): one column per run, one row per differing key and measure."""
    header = ["", *(run.name for run in runs)]
    rows = [[key, *(repr(run.config[key]) if run.config.get(key) == "" else _fmt(run.config.get(key), "g")
                     for run in runs)] for key in differing_keys(runs)]

    def measure(label: str, get, spec: str = ".4f") -> None:
        rows.append([label, *(_fmt(get(run), spec) for run in runs)])

    measure("best val mIoU", lambda r: r.best and r.best["val/mIoU"])
    measure("best at step", lambda r: r.best and r.best["step"])
    measure("final val mIoU", lambda r: r.final and r.final["val/mIoU"])
    measure("pixel accuracy (at best)", lambda r: r.best and r.best.get("val/pixel_accuracy"))
    measure("steps", lambda r: r.steps)
    measure("images/s (median)", lambda r: statistics.median(r.images_per_sec) if r.images_per_sec else None, ".1f")
    classes = sorted({key for run in runs if run.best for key in run.best if key.startswith("val/IoU/")})

    def spread(key: str) -> float:
        values = [run.best.get(key) for run in runs if run.best and run.best.get(key) is not None]
        return max(values) - min(values) if len(values) > 1 else 0.0

    for key in sorted(classes, key=lambda k: (-spread(k), k)):
        measure(f"IoU {key.removeprefix('val/IoU/')} (at best)", lambda r, key=key: r.best and r.best.get(key))
    return header, rows


def format_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)


def format_markdown(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(["key", *header[1:]]), "|---" * len(header) + "|", *(line(row) for row in rows)])


def format_csv(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows([["key", *header[1:]], *rows])
    return buffer.getvalue()


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    import math

    span = (high - low) or abs(high) or 1.0
    step = 10 ** math.floor(math.log10(span / count))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if span / (step * m) <= count)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def plot(runs: list[RunSummary], path: Path) -> Path:
    """Write a PNG: val/mIoU (left) and train/loss (right) against step, one colour per run, legend below."""
    from PIL import Image, ImageDraw, ImageFont

    panel_w, panel_h, margin = 560, 380, 60
    legend_h = 24 * len(runs) + 16
    img = Image.new("RGB", (2 * panel_w, panel_h + legend_h), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=14)
    small = ImageFont.load_default(size=11)
    for p, key in enumerate(CURVES):
        x0, y0, x1, y1 = p * panel_w + margin, 36, (p + 1) * panel_w - 20, panel_h - 40
        points = [pt for run in runs for pt in run.curves[key]]
        draw.text(((x0 + x1) // 2, 8), f"{key} against step", fill="black", font=font, anchor="mt")
        draw.rectangle((x0, y0, x1, y1), outline="black")
        if not points:
            draw.text(((x0 + x1) // 2, (y0 + y1) // 2), "no data", fill="gray", font=font, anchor="mm")
            continue
        low, high = min(v for _, v in points), max(v for _, v in points)
        pad = 0.05 * ((high - low) or abs(high) or 1.0)  # headroom: no point on the frame
        xs, ys = _ticks(0, max(s for s, _ in points)), _ticks(max(0.0, low - pad) if low >= 0 else low - pad, high + pad)

        def at(step: float, value: float) -> tuple[float, float]:
            return (x0 + (step - xs[0]) / ((xs[-1] - xs[0]) or 1) * (x1 - x0),
                    y1 - (value - ys[0]) / ((ys[-1] - ys[0]) or 1) * (y1 - y0))

        for tick in xs:
            x = at(tick, ys[0])[0]
            draw.line((x, y1, x, y1 + 4), fill="black")
            draw.text((x, y1 + 6), f"{tick:g}", fill="black", font=small, anchor="mt")
        for tick in ys:
            y = at(xs[0], tick)[1]
            draw.line((x0, y, x1, y), fill=(230, 230, 230))
            draw.text((x0 - 6, y), f"{tick:.3g}", fill="black", font=small, anchor="rm")
        draw.text(((x0 + x1) // 2, panel_h - 14), "optimizer step", fill="black", font=small, anchor="mm")
        draw.rectangle((x0, y0, x1, y1), outline="black")  # again, over the grid lines
        for k, run in enumerate(runs):
            line = [at(s, v) for s, v in run.curves[key]]
            colour = PALETTE[k % len(PALETTE)]
            if len(line) > 1:
                draw.line(line, fill=colour, width=2)
            for x, y in line if key == "val/mIoU" else line[-1:]:  # evaluations are few: mark each
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    for k, run in enumerate(runs):
        y = panel_h + 8 + 24 * k
        draw.line((margin, y + 8, margin + 30, y + 8), fill=PALETTE[k % len(PALETTE)], width=3)
        best = f"best val mIoU {run.best['val/mIoU']:.4f} at step {run.best['step']}" if run.best else "no evaluation"
        draw.text((margin + 40, y + 8), f"{run.name}: {best}", fill="black", font=font, anchor="lm")
    with atomic_write(path) as tmp:
        img.save(tmp, "PNG")
    return path


def wandb_filters(items: list[str]) -> dict[str, Any]:
    """``--filter KEY=VALUE`` items as a W&B API (MongoDB-style) filter; job_type=train unless given."""
    names = {"group": "group", "state": "state", "job_type": "jobType", "name": "display_name"}
    clauses, keys = [], set()
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise CompareError(f"--filter {item!r} must look like KEY=VALUE, e.g. group=lr-study or optim.lr=0.01")
        value = yaml.safe_load(text) if text else ""
        keys.add(key)
        if key == "tags":
            clauses.append({"tags": {"$in": [str(value)]}})
        else:
            clauses.append({names.get(key, f"config.{key}"): value})
    if "job_type" not in keys:
        clauses.append({"jobType": "train"})
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def wandb_runs(project: str, filters: list[str]) -> list[RunSummary]:
    """Summaries of a W&B project's runs (public API; needs W&B online).

    Raises:
        CompareError: W&B is offline (``wandb_mode``), the path is not ENTITY/PROJECT, or the API fails.
    """
    from .tracking import STEP_KEY, wandb_mode

    if project.count("/") != 1:
        raise CompareError(f"--wandb {project}: give ENTITY/PROJECT, e.g. my-team/fcn_dist")
    mode = wandb_mode()
    if mode != "online":
        raise CompareError(f"--wandb {project} needs W&B online, but wandb's settings give {mode} (WANDB_MODE, "
                           "`wandb offline`, or no credentials); compare run directories instead, or "
                           "`wandb sync` them and log in")
    import wandb

    try:
        api_runs = list(wandb.Api().runs(project, filters=wandb_filters(filters)))
        summaries = []
        for api_run in api_runs:
            config = {k: v for k, v in api_run.config.items() if not k.startswith("_")}
            val_keys = [k for k in api_run.summary.keys() if k.startswith("val/")]

            def rows(api_run=api_run, val_keys=val_keys) -> Iterator[dict[str, Any]]:
                for keys in (["train/loss", "train/images_per_sec"], ["val/mIoU", *val_keys]):
                    for row in api_run.scan_history(keys=[STEP_KEY, *dict.fromkeys(keys)]):
                        yield {"step": row[STEP_KEY], **row}

            summaries.append(summarize(api_run.name, config, sorted(rows(), key=lambda r: r["step"])))
    except wandb.errors.Error as err:
        raise CompareError(f"W&B API for {project}: {str(err).splitlines()[0]}") from None
    if not summaries:
        raise CompareError(f"no W&B runs in {project} match the filters")
    return summaries


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``fcn-compare`` (``fcn_dist.cli.compare_parser``); returns the exit code."""
    try:
        runs = wandb_runs(args.wandb, args.filter) if args.wandb else [read_run(Path(d)) for d in args.runs]
        header, rows = table(runs)
        print(format_text(header, rows))
        if args.output:
            text = format_csv(header, rows) if args.output.suffix == ".csv" else format_markdown(header, rows) + "\n"
            atomic_write_text(args.output, text)
            print(f"wrote {args.output}")
        if args.plot:
            print(f"wrote {plot(runs, args.plot)}")
    except (CompareError, OSError) as err:
        return fail("fcn-compare", err)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fcn_dist.compare``: as ``fcn-compare``."""
    from .cli import compare_main

    return compare_main(argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
