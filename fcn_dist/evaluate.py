"""Evaluation: exact metrics over every image of a split, across any number of processes.

``evaluate(model, loader, accelerator, ...)`` is what training calls; ``main()`` is the
``fcn-eval`` / ``python -m fcn_dist.evaluate`` CLI on a self-describing safetensors file::

    fcn-eval --checkpoint runs/demo/model_best.safetensors --data-root data/synthetic --output m.json
    accelerate launch -m fcn_dist.evaluate --checkpoint X.safetensors --data-root DIR --output m.json
    torchrun --nproc_per_node 2 -m fcn_dist.evaluate --checkpoint X.safetensors --data-root DIR

Each image counts exactly once. Every process sums the confusion matrices of its own images
and the sums are all-reduced once at the end. A loader that Accelerate prepared with
``even_batches=True`` (its default) repeats the first samples in the last batch of some
processes; that one batch goes through ``gather_for_metrics``, which drops the repeats, and
its per-image matrices are added once. This fixes the double count of torchvision's
reference (pytorch/vision#4559). The CLI prepares its loader with ``even_batches=False``, so it
has no repeats at all.

Images are scored at full resolution, one forward per group of same-size images in a batch,
so the batch size never changes a prediction.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence, Union

import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.data_loader import DataLoaderDispatcher, DataLoaderShard
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from .checkpoint import META_PREFIX, load_model, read_metadata
from .cli import EVAL_TERMS, eval_main, model_from_args, run_guarded
from .config import DataConfig, InferenceOptions
from .data import build_dataset, list_collate, loader_kwargs
from .files import atomic_write, atomic_write_text, has_image_mark, image_mark, refuse_overwrites
from .inference import infer_logits
from .labels import class_names
from .metrics import compute_scores, confusion_matrix
from .precision import PRECISIONS, PrecisionChoice, resolve_precision
from .process import loader_worker_init, main_process_choice
from .tracking import progress_options


@dataclasses.dataclass
class EvalResult:
    """What one evaluation gives.

    Attributes:
        metrics: the docs/DESIGN.md "Evaluation JSON" without ``checkpoint`` and ``split``: mIoU,
            pixel_accuracy, mean_accuracy, fwIoU, mDice, mFscore, per_class_IoU,
            per_class_Dice, per_class_Fscore ({name: float or None} each), num_images,
            confusion_matrix (list of lists).
        confusion: int64 (C, C) confusion matrix summed over all processes, on the CPU.
        examples: up to ``num_examples`` (image uint8 (3, H, W), pred uint8 (H, W),
            label uint8 (H, W)) on the CPU, from the main process's images; empty elsewhere.
        per_image: up to ``per_image`` rows from all processes, on the main process (empty
            elsewhere): ``image`` (JPEG bytes), ``prediction`` and ``label`` (PNG bytes, mode L,
            class ids, 255 void), ``mIoU`` and ``pixel_accuracy`` of that image (None when it
            has no labelled pixel), ``labelled_pixels``.
    """

    metrics: dict
    confusion: torch.Tensor
    examples: list
    per_image: list = dataclasses.field(default_factory=list)


SUMMARY_SCORES = ("mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU", "mDice", "mFscore")
"""The evaluation JSON's scalar scores, in its order."""
PER_CLASS_SCORES = ("per_class_IoU", "per_class_Dice", "per_class_Fscore")
"""Its per-class scores: ``{class name: float or None}`` each."""


def metrics_from_confusion(cm: torch.Tensor, classes: Sequence[str], num_images: int) -> dict:
    """The docs/DESIGN.md "Evaluation JSON" dict (without checkpoint and split) of a confusion matrix.

    Args:
        cm: int64 (C, C), rows true, columns predicted.
        classes: C class names (keys of ``per_class_IoU``).
        num_images: images the matrix counts.
    """
    scores = compute_scores(cm)
    return {
        **{key: scores[key] for key in SUMMARY_SCORES},
        **{key: dict(zip(classes, scores[key])) for key in PER_CLASS_SCORES},
        "num_images": int(num_images), "confusion_matrix": cm.cpu().tolist(),
    }


def _predict_batch(model: torch.nn.Module, images, masks, mean: Sequence[float], std: Sequence[float],
                   options: InferenceOptions, device: torch.device) -> list[tuple[torch.Tensor, ...]]:
    """(image, pred, label) per sample of a batch, in batch order, on ``device``.

    Args:
        images, masks: stacked uint8 (B, 3, H, W) and (B, H, W), or lists of differently
            sized (3, H_i, W_i) and (H_i, W_i); same-size images share a forward pass.

    Returns:
        B triples: image uint8 (3, H, W), pred int64 (H, W), label uint8 (H, W).
    """
    if isinstance(images, torch.Tensor):
        groups = [(list(range(len(images))), images, masks)]
    else:
        by_size: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(tuple(image.shape), []).append(i)
        groups = [(idx, torch.stack([images[i] for i in idx]), torch.stack([masks[i] for i in idx]))
                  for idx in by_size.values()]
    triples: list = [None] * len(images)
    for idx, group_images, group_masks in groups:
        group_images, group_masks = group_images.to(device), group_masks.to(device)
        preds = infer_logits(model, group_images, mean, std, options).argmax(dim=1)
        for i, image, pred, label in zip(idx, group_images, preds, group_masks):
            triples[i] = (image, pred, label)
    return triples


def _encode_row(image: torch.Tensor, pred: torch.Tensor, label: torch.Tensor, cm: torch.Tensor) -> dict:
    """One per-image row (``EvalResult.per_image``): the image as JPEG, the masks as PNG, its scores."""
    def encoded(array, fmt: str, **kwargs) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, fmt, **kwargs)
        return buffer.getvalue()

    labelled = int(cm.sum())
    scores = compute_scores(cm) if labelled else {"mIoU": None, "pixel_accuracy": None}
    return {"image": encoded(image.permute(1, 2, 0).cpu().numpy(), "JPEG", quality=90),
            "prediction": encoded(pred.to(torch.uint8).cpu().numpy(), "PNG"),
            "label": encoded(label.cpu().numpy(), "PNG"),
            "mIoU": scores["mIoU"], "pixel_accuracy": scores["pixel_accuracy"], "labelled_pixels": labelled}


def _repeats_in_batch(accelerator: Accelerator, loader) -> bool:
    """True for the last batch of a loader that Accelerate padded with repeated samples."""
    state = accelerator.gradient_state
    if accelerator.num_processes == 1 or not state.end_of_dataloader or state.remainder <= 0:
        return False
    if isinstance(loader, DataLoaderDispatcher):
        return True
    return bool(getattr(getattr(loader, "batch_sampler", None), "even_batches", True))


def evaluate(model: torch.nn.Module, loader, accelerator: Accelerator, num_classes: int,
             mean: Sequence[float], std: Sequence[float], mode: Union[str, InferenceOptions] = "whole",
             num_examples: int = 0, classes: Sequence[str] | None = None, per_image: int = 0,
             progress: bool = True) -> EvalResult:
    """Score a model on every image of a loader, each counted exactly once across processes.

    The model is put in eval mode and restored to its previous mode afterwards; inference
    runs under ``torch.inference_mode()`` and ``accelerator.autocast()``.

    Args:
        model: FCN (DDP-wrapped or not) on ``accelerator.device``; pass the prepared model
            during training so every process uses the same BatchNorm buffers.
        loader: batches of (images, masks): uint8 (B, 3, H, W) and (B, H, W) tensors, or
            lists of differently sized ones (``list_collate``). With several processes it
            must be prepared by ``accelerator.prepare``.
        accelerator: the run's Accelerator.
        num_classes: C.
        mean, std: normalisation of the model's inputs.
        mode: ``whole``, ``slide``, or InferenceOptions (tiles, flip, scales).
        num_examples: (image, prediction, label) triples to keep from the main process.
        classes: C class names for ``per_class_IoU``; None gives ``labels.class_names``' fallback.
        per_image: per-image rows to keep (``EvalResult.per_image``), gathered from every process;
            needs a loader without repeated samples (``even_batches=False``, as fcn-eval's).
        progress: show a progress bar on the main process (training passes False: no nested bars).

    Returns:
        EvalResult, identical on every process (except ``examples``).

    Raises:
        ValueError: several processes and a loader not prepared by Accelerate; ``per_image``
            with a loader that repeats samples.
        RuntimeError: the number of images counted differs from the dataset length.
    """
    options = mode if isinstance(mode, InferenceOptions) else InferenceOptions(mode=mode)
    names = class_names(classes, num_classes)
    if accelerator.num_processes > 1 and not isinstance(loader, (DataLoaderShard, DataLoaderDispatcher)):
        raise ValueError("evaluate() with several processes needs a loader prepared by accelerator.prepare; "
                         "otherwise every process would score every image")
    device = accelerator.device
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    num_images = torch.zeros((), dtype=torch.int64, device=device)
    examples: list = []
    rows: list = []
    was_training = model.training
    model.eval()
    bar = tqdm(loader, desc="eval", unit="batch", disable=not (progress and accelerator.is_main_process),
               **progress_options())
    try:
        with torch.inference_mode(), accelerator.autocast():
            for images, masks in bar:
                triples = _predict_batch(model, images, masks, mean, std, options, device)
                image_cms = torch.stack([confusion_matrix(pred, label, num_classes) for _, pred, label in triples])
                if accelerator.is_main_process:
                    examples += [(image.cpu(), pred.to(torch.uint8).cpu(), label.cpu())
                                 for image, pred, label in triples[:num_examples - len(examples)]]
                if _repeats_in_batch(accelerator, loader):
                    if per_image:
                        raise ValueError("per-image rows need a loader without repeated samples (even_batches=False)")
                    # every process receives the real images of all processes; one of them adds them
                    image_cms = accelerator.gather_for_metrics(image_cms)
                    if not accelerator.is_main_process:
                        image_cms = image_cms[:0]
                rows += [_encode_row(*triple, image_cm.cpu())
                         for triple, image_cm in zip(triples[:per_image - len(rows)], image_cms)]
                cm += image_cms.sum(dim=0)
                num_images += len(image_cms)
    finally:
        bar.close()
        model.train(was_training)
    if per_image and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        rows = gather_object(rows)[:per_image]  # a collective: every process takes part, the main one keeps them
        if not accelerator.is_main_process:
            rows = []
    cm = accelerator.reduce(cm, reduction="sum").cpu()
    total = int(accelerator.reduce(num_images, reduction="sum"))
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "__len__") and total != len(dataset):
        raise RuntimeError(f"evaluation counted {total} images but the dataset has {len(dataset)}; "
                           "use a loader without drop_last, prepared by accelerator.prepare")
    return EvalResult(metrics=metrics_from_confusion(cm, names, total), confusion=cm, examples=examples,
                      per_image=rows)


def format_table(metrics: dict) -> str:
    """Per-class IoU, Dice and F-score table and the summary scores, as printed by ``fcn-eval``."""
    per_class = metrics["per_class_IoU"]
    width = max(len("pixel_accuracy"), *(len(n) for n in per_class))
    rule = f"{'-' * width}  ------  ------  ------"

    def cell(value) -> str:
        return f"{'-' if value is None else f'{value:.4f}':>6}"

    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Dice':>6}  {'Fscore':>6}", rule]
    lines += [f"{name:<{width}}  " + "  ".join(cell(metrics[key][name]) for key in PER_CLASS_SCORES)
              for name in per_class]
    lines.append(rule)
    for key in SUMMARY_SCORES:
        lines.append(f"{key:<{width}}  {metrics[key]:.4f}")
    lines.append(f"{'num_images':<{width}}  {metrics['num_images']}")
    return "\n".join(lines)


def _wrap(text: str, font, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels, broken at spaces."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def present_classes(cm: torch.Tensor) -> list[int]:
    """Indices of the classes in the labels or the predictions of a (C, C) confusion matrix."""
    return [k for k in range(len(cm)) if cm[k].sum() > 0 or cm[:, k].sum() > 0]


def render_confusion(cm: torch.Tensor, classes: Sequence[str], cell: int = 28, title: str = "") -> Image.Image:
    """Row-normalised confusion matrix as a heat map with class labels (white 0 to dark blue 1).

    Classes absent from both labels and predictions (an empty row and column) are left out, and
    the picture says which.

    Args:
        cm: int (C, C), rows true, columns predicted.
        classes: C names.
        cell: pixels per cell.
        title: the first line, e.g. ``model_best.safetensors (step 240), split val, mIoU 0.781``.

    Returns:
        RGB image; each cell shows the percentage of its row's pixels.
    """
    cm = cm.detach().cpu().to(torch.float64)
    shown = present_classes(cm)
    absent = [classes[k] for k in range(len(classes)) if k not in shown]
    cm = cm[shown][:, shown]
    names = [classes[k] for k in shown]
    rows = cm / cm.sum(dim=1, keepdim=True).clamp_min(1)
    font = ImageFont.load_default(size=max(8, cell // 2 - 2))
    small = ImageFont.load_default(size=max(7, cell // 3))
    label_w = int(max((font.getlength(n) for n in names), default=0)) + 10
    n = len(names)
    width = max(label_w + n * cell + 10, 16 * cell)  # the header wraps to this width
    header = [title] if title else []
    header.append("true (rows) vs predicted (columns), % of row")
    if absent:
        header.append(f"not shown, absent from labels and predictions ({len(absent)}): {', '.join(absent)}")
    header_lines = [line for text in header for line in _wrap(text, font, width - 10)]
    line_h = cell * 3 // 4
    title_h = 4 + line_h * len(header_lines) + cell // 2
    img = Image.new("RGB", (width, title_h + label_w + n * cell + 10), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(header_lines):
        draw.text((5, 4 + i * line_h), line, fill="black", font=font)
    top = title_h + label_w
    for j, name in enumerate(names):  # column labels, rotated to read bottom-up
        text = Image.new("RGB", (label_w, cell), "white")
        ImageDraw.Draw(text).text((label_w - 5, cell // 2), name, fill="black", font=font, anchor="rm")
        img.paste(text.rotate(90, expand=True), (label_w + j * cell, title_h))
    for i, name in enumerate(names):
        draw.text((label_w - 5, top + i * cell + cell // 2), name, fill="black", font=font, anchor="rm")
        for j in range(n):
            v = float(rows[i, j])
            colour = tuple(int(255 - v * (255 - c)) for c in (8, 48, 107))
            box = (label_w + j * cell, top + i * cell, label_w + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
            draw.rectangle(box, fill=colour, outline=(220, 220, 220))
            if cm[i, j] > 0:
                draw.text(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2), f"{round(100 * v)}", font=small,
                          fill="white" if v > 0.5 else "black", anchor="mm")
    return img


def confusion_title(metrics: dict, step: int | None = None) -> str:
    """``<checkpoint> (step N), split <split>, mIoU <m>``: what a confusion-matrix PNG shows."""
    at = f" (step {step})" if step is not None else ""
    return f"{metrics['checkpoint']}{at}, split {metrics['split']}, mIoU {metrics['mIoU']:.4f}"


def write_eval_files(metrics: dict, path: Union[str, os.PathLike], step: int | None = None) -> tuple[Path, Path]:
    """Write the metrics JSON and, beside it, ``<stem>_confusion.png``; both atomically.

    Args:
        metrics: the docs/DESIGN.md "Evaluation JSON" dict (``metrics_from_confusion`` + checkpoint, split).
        path: the JSON file.
        step: the checkpoint's training step, for the PNG's title (training's ``checkpoint`` already says it).

    Returns:
        (JSON path, PNG path).
    """
    path = Path(path)
    png = confusion_png(path)
    atomic_write_text(path, json.dumps(metrics, indent=1) + "\n")
    cm, classes = torch.tensor(metrics["confusion_matrix"]), list(metrics["per_class_IoU"])
    title = confusion_title(metrics, step)
    mark = image_mark("evaluate", "PNG")
    shown = present_classes(cm)
    mark["pnginfo"].add_text("Title", title)  # what the picture says, also for tools that read PNG text
    mark["pnginfo"].add_text("Description", f"classes shown: {', '.join(classes[k] for k in shown)}; not shown, "
                                            "absent from labels and predictions: "
                                            f"{', '.join(c for k, c in enumerate(classes) if k not in shown) or 'none'}")
    with atomic_write(png) as tmp:
        render_confusion(cm, classes, title=title).save(tmp, "PNG", **mark)
    return path, png


def confusion_png(path: Path) -> Path:
    """The confusion-matrix PNG written beside an evaluation JSON."""
    return path.with_name(f"{path.stem}_confusion.png")


EVAL_KEYS = {"mIoU", "per_class_IoU", "num_images", "confusion_matrix"}


def _is_eval_json(path: Path) -> bool:
    """Whether ``path`` is an evaluation JSON that fcn_dist wrote (a small JSON object with its keys)."""
    try:
        if path.stat().st_size > 10 * 2**20:
            return False
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and EVAL_KEYS <= set(data)


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before anything runs, an ``--output`` that would replace a file fcn-eval did not write.

    Never replaced: the checkpoint and any file in the data root. Replaced only with
    ``--overwrite``: an existing JSON that is not an evaluation JSON, or a PNG without fcn_dist's mark.

    Raises:
        OverwriteError: naming the file and the fix.
    """
    if args.output is None:
        return
    outputs = [args.output, confusion_png(args.output)]
    refuse_overwrites(outputs, [args.checkpoint], args.overwrite,
                      lambda p: _is_eval_json(p) if p.suffix == ".json" else has_image_mark(p),
                      "fcn-eval", input_dirs=(Path(args.data_root),))


def _build_loader(args: argparse.Namespace, classes: list[str]):
    data_cfg = DataConfig(root=args.data_root, format=args.data_format, classes=list(classes),
                          num_workers=args.num_workers, max_image_pixels=args.max_image_pixels,
                          val_fraction=args.val_fraction, split_seed=args.split_seed)
    dataset = build_dataset(data_cfg, args.split, train=False)
    return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False, collate_fn=list_collate,
                                       **loader_kwargs(data_cfg, loader_worker_init()))


def _wandb_config(args: argparse.Namespace, info, meta: dict, source: dict, accelerator: Accelerator) -> dict:
    """fcn-eval's W&B config: the checkpoint's metadata (its metrics without the matrix) and the eval options."""
    metrics = {k: v for k, v in info.metrics.items() if k != "confusion_matrix"}
    return {"checkpoint": str(args.checkpoint), "checkpoint/step": info.step,
            "checkpoint/model": dataclasses.asdict(info.model), "checkpoint/classes": info.classes,
            "checkpoint/metrics": metrics, "checkpoint/config_fingerprint": meta.get(META_PREFIX + "config_fingerprint"),
            "train/run": source.get("run"), "train/group": source.get("group"), "train/artifact": source.get("artifact"),
            "split": args.split, "data_root": str(args.data_root), "data_format": args.data_format,
            "batch_size": args.batch_size, "mixed_precision": accelerator.mixed_precision,
            "processes": accelerator.num_processes,
            **dataclasses.asdict(args.options)}


def _log_wandb(args: argparse.Namespace, result: EvalResult, info, accelerator: Accelerator, seconds: float):
    """The eval run: linked to the training run, everything at one step (the checkpoint's ``train/step``)."""
    import wandb

    from .tracking import STEP_KEY, eval_tables, per_image_table, run_location, start_wandb, val_scalars

    meta = read_metadata(args.checkpoint)
    source = json.loads(meta.get(META_PREFIX + "wandb", "{}"))  # {"run", "group", "artifact"}; {} without W&B
    train_path = (source.get("run") or "").split("/")
    kwargs = {"project": args.wandb_project or (train_path[-2] if len(train_path) >= 2 else "fcn_dist"),
              "job_type": "eval", "name": f"{args.checkpoint.parent.name}/{args.checkpoint.stem}-step{info.step}",
              "dir": str((args.output.parent if args.output else Path.cwd()).resolve()),
              "tags": [info.model.arch, info.model.backbone, args.split]}
    if len(train_path) == 3 and not args.wandb_project:
        kwargs["entity"] = train_path[0]
    if source.get("group"):
        kwargs["group"] = source["group"]
    run = start_wandb(kwargs, _wandb_config(args, info, meta, source, accelerator), "fcn-eval")
    if source.get("artifact") and run.settings.mode not in ("offline", "dryrun"):  # wandb refuses it offline
        try:
            run.use_artifact(source["artifact"], type="model")
        except wandb.errors.Error as err:
            print(f"fcn-eval: warning: cannot link the model artifact {source['artifact']} ({err}); the config "
                  "names the training run", file=sys.stderr)
    prefix = f"eval/{args.split}"
    row = {STEP_KEY: info.step, **val_scalars(result.metrics, info.classes, prefix),
           f"{prefix}/num_images": result.metrics["num_images"], f"{prefix}/seconds": seconds,
           **eval_tables(result.confusion, info.classes, prefix),
           f"{prefix}/confusion_png": wandb.Image(render_confusion(result.confusion, info.classes))}
    if result.per_image:
        row[f"{prefix}/per_image"] = per_image_table(result.per_image, info.classes)
    run.log(row)
    return run_location(run)


def _run(args: argparse.Namespace, accelerator: Accelerator) -> None:
    model, info = load_model(args.checkpoint, device=accelerator.device)
    model = model_from_args(model, args)
    loader = accelerator.prepare(_build_loader(args, info.classes))
    start = time.perf_counter()
    result = evaluate(model, loader, accelerator, len(info.classes), info.mean, info.std, mode=args.options,
                      classes=info.classes, per_image=args.wandb_images if args.wandb else 0)
    seconds = time.perf_counter() - start
    if accelerator.is_main_process:
        print(format_table(result.metrics))
        if args.output:
            metrics = {**result.metrics, "checkpoint": str(args.checkpoint), "split": args.split}
            json_path, png_path = write_eval_files(metrics, args.output, step=info.step)
            print(f"wrote {json_path} and {png_path}")
        if args.wandb:
            print(_log_wandb(args, result, info, accelerator, seconds))


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``fcn-eval`` (``fcn_dist.cli.eval_parser``); returns the exit code."""
    refused = run_guarded("fcn-eval", lambda: check_outputs(args) or 0)  # before anything runs
    if refused:
        return refused
    from .tracking import finish_wandb

    processes = PartialState(cpu=not torch.cuda.is_available())
    choice = PrecisionChoice(args.mixed_precision, "set explicitly")
    if args.mixed_precision == "auto":  # measured once, by the main process (forward only)
        if processes.is_main_process:
            choice = resolve_precision("auto", processes.device.type, training=False)
        chosen = main_process_choice(processes, choice.precision, PRECISIONS)
        choice = choice if chosen == choice.precision else PrecisionChoice(chosen, "auto: the main process's choice")
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=choice.precision,
                              dataloader_config=DataLoaderConfiguration(even_batches=False))
    if args.mixed_precision == "auto":  # say what auto chose (stdout: stderr is for errors only)
        accelerator.print(f"mixed precision: {choice.precision} ({choice.reason})")
    try:
        return run_guarded("fcn-eval", lambda: _run(args, accelerator) or 0, EVAL_TERMS)
    finally:
        finish_wandb()
        accelerator.end_training()  # destroys the process group (gloo aborts otherwise)


def main(argv: Sequence[str] | None = None) -> int:
    """``fcn-eval`` / ``python -m fcn_dist.evaluate``; returns the exit code."""
    return eval_main(argv)


if __name__ == "__main__":
    sys.exit(main())
