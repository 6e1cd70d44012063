"""Run tracking: W&B (its mode, the run, metric definitions, tables, model artifacts), the local
metrics.jsonl, and what the console shows (progress bars, evaluation lines, the end-of-run summary).

The entry points call these from the main process only; nothing here checks ranks. torch and
wandb are imported inside the functions that use them: ``fcn-compare`` and ``--help`` stay light.
W&B keys and their meaning are in docs/DESIGN.md, "W&B keys".
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from fcn_dist.config import Config, flat_dict
from fcn_dist.files import atomic_write_text
from fcn_dist.labels import IGNORE_INDEX

STEP_KEY = "train/step"
"""The x-axis of every W&B key: the optimizer step (fcn-eval: the checkpoint's step)."""
VAL_SCORES = ("mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU", "mDice", "mFscore")
"""The scalar scores of an evaluation, logged as ``<prefix>/<name>``."""
PER_CLASS_KEYS = {"IoU": "per_class_IoU", "Dice": "per_class_Dice", "Fscore": "per_class_Fscore"}
"""Per-class scores, logged as ``<prefix>/<name>/<class>`` from the metrics dict's ``per_class_*``."""
BEST_KEY = "val/best_mIoU"
"""The best val mIoU so far: a plain number in the summary, what configs/sweep.yaml ranks by."""
NON_TTY_INTERVAL_S = 30.0
"""Seconds between progress lines when the console is not a terminal (Slurm logs)."""


# ---- W&B: mode and run ------------------------------------------------------------------------

def wandb_mode() -> str:
    """The mode wandb's own settings give, except that missing credentials mean offline, never a prompt.

    wandb's settings are ``WANDB_MODE``, the settings files that ``wandb offline`` / ``wandb disabled``
    write, ``WANDB_BASE_URL`` (or ``base_url`` in those files). Credentials are looked up the way
    ``wandb.init`` does for that server: ``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, its
    ``.netrc`` entry, an ``api_key`` setting. Nothing here reaches the network.

    Returns:
        ``online``, ``offline``, ``disabled`` (or another mode wandb's settings name, e.g. ``shared``).
    """
    from wandb.errors import AuthenticationError
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    settings = wandb_setup.singleton().settings  # what wandb.init starts from (not the service)
    if settings.mode not in ("online", "run"):
        return "offline" if settings.mode == "dryrun" else settings.mode
    host = wbauth.HostUrl(settings.base_url, app_url=settings.app_url)
    try:
        found = wbauth.authenticate_session(host=host, source="fcn_dist", prompt=False, update_session=False)
    except AuthenticationError:  # malformed credentials: wandb.init says why, and start_wandb falls back
        return "online"
    return "online" if found else "offline"


def start_wandb(init_kwargs: dict[str, Any], config: dict[str, Any], prog: str):
    """``wandb.init`` in ``wandb_mode()``; an online init that fails is retried offline.

    The fallback prints one warning, naming the ``wandb sync`` command that uploads the run later.

    Args:
        init_kwargs: ``wandb.init`` arguments (``wandb_init_kwargs``, or fcn-eval's).
        config: the run's config; sent with ``allow_val_change`` (a resumed run updates it).
        prog: the command, for the warning.

    Returns:
        The wandb Run, with ``define_metrics`` applied.
    """
    import wandb

    mode = wandb_mode()
    try:
        run = wandb.init(mode=mode, **init_kwargs)
    except wandb.errors.Error as err:
        if mode != "online":
            raise
        run = wandb.init(mode="offline", **init_kwargs)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"{prog}: warning: W&B online init failed ({reason}); logging offline instead, upload later "
              f"with `wandb sync {run.settings.sync_dir}`", file=sys.stderr, flush=True)
    run.config.update(config, allow_val_change=True)
    define_metrics(run)
    return run


def define_metrics(run) -> None:
    """``train/step`` is every key's x-axis; val scores keep their maximum in the summary, the loss its minimum."""
    run.define_metric(STEP_KEY)
    run.define_metric("*", step_metric=STEP_KEY)
    for key in (*(f"val/{name}" for name in VAL_SCORES), *(f"val/{name}/*" for name in PER_CLASS_KEYS)):
        # BEST_KEY keeps the default (last) summary: its last value is its best
        run.define_metric(key, step_metric=STEP_KEY, summary="max")
    run.define_metric("train/loss", step_metric=STEP_KEY, summary="min")


def wandb_init_kwargs(cfg: Config, run_dir: Path, run_id: str | None) -> dict[str, Any]:
    """``wandb.init`` arguments of a training run: one run per run directory, resumed by its id.

    No group unless ``log.group`` is set (wandb then still honours ``WANDB_RUN_GROUP``): a group
    is one experiment's parts, and W&B charts average it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {"project": cfg.log.project, "name": run_dir.name, "dir": str(run_dir), "resume": "allow",
              "job_type": "train", "tags": training_tags(cfg)}
    for key, value in (("id", run_id), ("entity", cfg.log.entity), ("group", cfg.log.group)):
        if value:
            kwargs[key] = value
    return kwargs


def training_tags(cfg: Config) -> list[str]:
    """W&B tags of a training run: arch, backbone, dataset and config name (64 characters at most each)."""
    data = cfg.data
    dataset = (Path(data.hub_name).name or data.hub_name) if data.format == "hub" else data.format
    if data.train_split != "train":
        dataset += f"-{data.train_split}"
    return list(dict.fromkeys(tag[:64] for tag in (cfg.model.arch, cfg.model.backbone, dataset, cfg.name)))


def run_reference(run) -> dict[str, Any]:
    """What an export records of the W&B run that wrote it: ``{"run": entity/project/id, "group"}``.

    Offline, the entity is the one configured (``log.entity``), else absent until ``wandb sync``.
    """
    path = "/".join(part for part in (run.entity, run.project, run.id) if part)
    return {"run": path, "group": run.group or None}


def run_location(run) -> str:
    """Where to find a run: its URL online, the ``wandb sync`` command offline."""
    if run.settings.mode in ("offline", "dryrun"):
        return f"W&B offline: upload with `wandb sync {run.settings.sync_dir}`"
    return f"W&B run: {run.url}"


def finish_wandb() -> None:
    """Finish the W&B run of this process, if one was started (wandb imported at all)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.run.finish()


def flat_config(cfg: Config) -> dict[str, Any]:
    """Config as a flat ``section.key`` dict (W&B config panel, sweeps)."""
    return flat_dict(cfg)


def run_facts(cfg: Config, processes: int, steps_per_epoch: int, total_steps: int, parameters: int,
              images: dict[str, int]) -> dict[str, Any]:
    """Derived facts for the W&B config, beside the resolved config (docs/DESIGN.md, "W&B keys").

    Args:
        cfg: the run's config.
        processes: training processes (world size).
        steps_per_epoch, total_steps: optimizer steps.
        parameters: parameters of the model.
        images: ``{"train": n, "val": n}`` dataset sizes.
    """
    import accelerate
    import torch

    import fcn_dist

    facts = {"run/processes": processes,
             "run/global_batch": processes * cfg.data.batch_size * cfg.train.grad_accum,
             "run/steps_per_epoch": steps_per_epoch, "run/total_steps": total_steps, "run/parameters": parameters,
             **{f"run/{split}_images": n for split, n in images.items()},
             "versions/fcn_dist": fcn_dist.__version__, "versions/torch": torch.__version__,
             "versions/accelerate": accelerate.__version__, "versions/python": sys.version.split()[0]}
    commit = git_commit()
    if commit:
        facts["run/git_commit"] = commit
    return facts


def git_commit() -> str | None:
    """The commit of the fcn_dist checkout this code runs from (``+dirty`` with local changes), else None.

    Only when the package folder is the checkout's ``fcn_dist/``: an installed copy inside some other
    repository (a venv in a clone) is not that repository's code.
    """
    package = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != package.parent:
            return None
        commit = git("rev-parse", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout
        return None


def model_source(run, step: int, logged: bool) -> dict[str, Any]:
    """What an export's ``fcn_dist.wandb`` header records: ``run_reference`` and, when the export is
    logged as an artifact, its name at ``step-N`` (``<entity/project>/model-<run id>:step-N``)."""
    source = run_reference(run)
    project = source["run"].rsplit("/", 1)[0]
    source["artifact"] = f"{project}/{model_artifact_name(run.id)}:step-{step}" if logged else None
    return source


def log_model_artifact(run, path: Path, kind: str, step: int, metrics: dict[str, Any],
                       metadata: dict[str, Any]) -> None:
    """Log an export as a version of the run's ``model-<run id>`` artifact (type ``model``).

    Aliases: ``best``, ``latest``, ``step-N`` for model_best (``kind="best"``), ``latest``,
    ``step-N`` for model_last. Offline the artifact is recorded in the run file (wandb stages the
    file), so ``wandb sync`` uploads it.

    Args:
        metrics: the evaluation's metrics (the confusion matrix is left out of the metadata).
        metadata: more metadata (model config, config fingerprint).
    """
    import wandb

    scores = {k: v for k, v in metrics.items() if k != "confusion_matrix"}
    artifact = wandb.Artifact(model_artifact_name(run.id), type="model",
                              metadata={"step": step, "metrics": scores, "file": path.name, **metadata})
    artifact.add_file(str(path), name=path.name)
    aliases = ["best", "latest"] if kind == "best" else ["latest"]
    run.log_artifact(artifact, aliases=[*aliases, f"step-{step}"])


def model_artifact_name(run_id: str) -> str:
    """``model-<run id>``, as HF's and Lightning's W&B integrations name theirs."""
    return f"model-{run_id}"


# ---- metrics.jsonl ------------------------------------------------------------------------------

class MetricsLog:
    """Append-only JSONL file of logged rows, flushed per row so a crash loses nothing logged.

    Args:
        path: the ``metrics.jsonl`` file.
        keep_until: rows of an existing file with a larger ``step`` are dropped (atomically)
            first: a resumed run logs those steps again.
    """

    def __init__(self, path: Path, keep_until: int = 0):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        if path.exists():
            rows = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= keep_until]
            atomic_write_text(path, "".join(row + "\n" for row in rows))
        self._file = open(path, "a", buffering=1)

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# ---- evaluation scalars, tables and media ---------------------------------------------------------

def val_scalars(metrics: dict[str, Any], classes: Sequence[str], prefix: str = "val") -> dict[str, float]:
    """``<prefix>/<score>`` for ``VAL_SCORES`` (mIoU, pixel_accuracy, mean_accuracy, fwIoU, mDice, mFscore) and
    ``/IoU/<class>``, ``/Dice/<class>``, ``/Fscore/<class>`` for the classes where they are defined."""
    row = {f"{prefix}/{name}": metrics[name] for name in VAL_SCORES}
    for name, key in PER_CLASS_KEYS.items():
        for class_name, value in zip(classes, metrics[key].values()):
            if value is not None:
                row[f"{prefix}/{name}/{class_name}"] = value
    return row


def eval_tables(confusion, classes: Sequence[str], prefix: str) -> dict[str, Any]:
    """``<prefix>/confusion_matrix`` (W&B's confusion-matrix chart) and ``<prefix>/per_class`` (a table).

    The chart is the table wandb.plot.confusion_matrix builds (Actual, Predicted, nPredictions with
    the ``wandb/confusion_matrix/v1`` preset), filled with pixel counts: that function takes one
    label per sample, a segmentation has millions.

    Args:
        confusion: int (C, C) tensor, rows true, columns predicted.
        classes: C names.
    """
    import wandb

    cm = confusion.tolist()
    chart = wandb.plot_table(
        "wandb/confusion_matrix/v1",
        wandb.Table(columns=["Actual", "Predicted", "nPredictions"],
                    data=[[classes[i], classes[j], cm[i][j]] for i in range(len(cm)) for j in range(len(cm))]),
        {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
        {"title": f"{prefix}: pixels, true (rows) vs predicted"})
    rows = []
    for i, name in enumerate(classes):
        tp, labelled, predicted = cm[i][i], sum(cm[i]), sum(row[i] for row in cm)
        union = labelled + predicted - tp
        rows.append([name, tp / union if union else None, 2 * tp / (labelled + predicted) if union else None,
                     tp / labelled if labelled else None, labelled, predicted, tp])
    per_class = wandb.Table(columns=["class", "IoU", "Dice", "accuracy", "labelled_pixels", "predicted_pixels",
                                     "correct_pixels"], data=rows)
    return {f"{prefix}/confusion_matrix": chart, f"{prefix}/per_class": per_class}


def _class_labels(classes: Sequence[str]) -> dict[int, str]:
    return {**dict(enumerate(classes)), IGNORE_INDEX: "void"}


def example_images(examples: list, classes: Sequence[str]) -> list:
    """``wandb.Image`` per (image, prediction, label) example, padded to one size (W&B shows a list at one size)."""
    import torch.nn.functional as F
    import wandb

    labels = _class_labels(classes)
    if not examples:
        return []
    height = max(image.shape[1] for image, _, _ in examples)
    width = max(image.shape[2] for image, _, _ in examples)
    images = []
    for image, pred, label in examples:  # padding: image 0, masks void
        pad = (0, width - image.shape[2], 0, height - image.shape[1])
        masks = {name: {"mask_data": F.pad(mask, pad, value=IGNORE_INDEX).cpu().numpy(), "class_labels": labels}
                 for name, mask in (("prediction", pred), ("label", label))}
        images.append(wandb.Image(F.pad(image, pad).permute(1, 2, 0).cpu().numpy(), masks=masks))
    return images


PER_IMAGE_COLUMNS = ["image", "mIoU", "pixel_accuracy", "labelled_pixels", "height", "width"]


def per_image_table(rows: list[dict], classes: Sequence[str]):
    """The per-image table: each image (JPEG) with its prediction and label masks, and its scores.

    Args:
        rows: ``evaluate.EvalResult.per_image``: encoded ``image`` (JPEG), ``prediction`` and
            ``label`` (PNG), ``mIoU``, ``pixel_accuracy`` (None without labelled pixels),
            ``labelled_pixels``.
    """
    import numpy as np
    import wandb
    from PIL import Image

    labels = _class_labels(classes)
    table = wandb.Table(columns=PER_IMAGE_COLUMNS)
    for row in rows:
        masks = {name: {"mask_data": np.asarray(Image.open(io.BytesIO(row[name]))), "class_labels": labels}
                 for name in ("prediction", "label")}
        picture = Image.open(io.BytesIO(row["image"]))
        table.add_data(wandb.Image(np.asarray(picture.convert("RGB")), masks=masks, file_type="jpg"),
                       row["mIoU"], row["pixel_accuracy"], row["labelled_pixels"], picture.height, picture.width)
    return table


# ---- console -------------------------------------------------------------------------------------

def progress_options(stream=None) -> dict[str, Any]:
    """tqdm options: a redrawn bar on a terminal (stderr); plain lines every ``NON_TTY_INTERVAL_S``
    elsewhere, on stdout, so that stderr keeps only warnings and errors.

    A Slurm log is a file: a redrawn bar fills it with carriage returns and, for nested bars,
    cursor-up escapes. Callers open one bar at a time.

    Args:
        stream: where the bar goes; default stderr on a terminal, else stdout.
    """
    if stream is None:
        stream = sys.stderr if sys.stderr.isatty() else sys.stdout
    if getattr(stream, "isatty", lambda: False)():
        return {"dynamic_ncols": True, "file": stream}
    return {"file": stream, "mininterval": NON_TTY_INTERVAL_S, "maxinterval": NON_TTY_INTERVAL_S,
            "bar_format": "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]\n"}


def console(line: str) -> None:
    """Print a line under the progress bar: through tqdm on a terminal, plainly in a log file."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        tqdm.write(line)
    else:
        print(line, flush=True)


def eval_line(step: int, metrics: dict[str, Any], new_best: bool, seconds: float) -> str:
    """The one console line after an evaluation."""
    return (f"step {step}: val mIoU {metrics['mIoU']:.4f}, mDice {metrics['mDice']:.4f}, "
            f"pixel accuracy {metrics['pixel_accuracy']:.4f} ({seconds:.1f} s){', new best' if new_best else ''}")


def summary_lines(best: tuple[float, int] | None, final: float | None, seconds: float, models: Sequence[Path],
                  location: str) -> list[str]:
    """The end-of-run summary: best mIoU and its step, final mIoU, time, models, where W&B has the run."""
    minutes, secs = divmod(int(round(seconds)), 60)
    lines = ["done: " + (f"best val mIoU {best[0]:.4f} at step {best[1]}" if best else "no evaluation")
             + (f", final val mIoU {final:.4f}" if final is not None else "") + f", {minutes}m{secs:02d}s"]
    lines += [f"  {path}" for path in models if path.is_file()]
    lines.append(f"  {location}")
    return lines
