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
import json
import os
import sys
from pathlib import Path
from typing import Sequence, Union

import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.data_loader import DataLoaderDispatcher, DataLoaderShard
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from .checkpoint import load_model
from .cli import EVAL_TERMS, eval_main, model_from_args, run_guarded
from .config import DataConfig, InferenceOptions
from .data import build_dataset, list_collate, loader_kwargs
from .files import atomic_write, atomic_write_text, has_image_mark, image_mark, refuse_overwrites
from .inference import infer_logits
from .labels import class_names
from .metrics import compute_scores, confusion_matrix
from .precision import PRECISIONS, PrecisionChoice, resolve_precision
from .process import loader_worker_init, main_process_choice

WANDB_EXAMPLES = 4
"""(image, prediction, label) examples that ``fcn-eval --wandb`` logs as ``val/examples``."""


@dataclasses.dataclass
class EvalResult:
    """What one evaluation gives.

    Attributes:
        metrics: the docs/DESIGN.md "Evaluation JSON" without ``checkpoint`` and ``split``: mIoU,
            pixel_accuracy, mean_accuracy, fwIoU, per_class_IoU {name: float or None},
            num_images, confusion_matrix (list of lists).
        confusion: int64 (C, C) confusion matrix summed over all processes, on the CPU.
        examples: up to ``num_examples`` (image uint8 (3, H, W), pred uint8 (H, W),
            label uint8 (H, W)) on the CPU, from the main process's images; empty elsewhere.
    """

    metrics: dict
    confusion: torch.Tensor
    examples: list


def metrics_from_confusion(cm: torch.Tensor, classes: Sequence[str], num_images: int) -> dict:
    """The docs/DESIGN.md "Evaluation JSON" dict (without checkpoint and split) of a confusion matrix.

    Args:
        cm: int64 (C, C), rows true, columns predicted.
        classes: C class names (keys of ``per_class_IoU``).
        num_images: images the matrix counts.
    """
    scores = compute_scores(cm)
    return {
        "mIoU": scores["mIoU"], "pixel_accuracy": scores["pixel_accuracy"],
        "mean_accuracy": scores["mean_accuracy"], "fwIoU": scores["fwIoU"],
        "per_class_IoU": dict(zip(classes, scores["per_class_IoU"])),
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
             num_examples: int = 0, classes: Sequence[str] | None = None) -> EvalResult:
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

    Returns:
        EvalResult, identical on every process (except ``examples``).

    Raises:
        ValueError: several processes and a loader not prepared by Accelerate.
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
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), accelerator.autocast():
            for images, masks in tqdm(loader, desc="eval", unit="batch",
                                      disable=not accelerator.is_main_process or not sys.stderr.isatty()):
                triples = _predict_batch(model, images, masks, mean, std, options, device)
                per_image = torch.stack([confusion_matrix(pred, label, num_classes) for _, pred, label in triples])
                if accelerator.is_main_process:
                    examples += [(image.cpu(), pred.to(torch.uint8).cpu(), label.cpu())
                                 for image, pred, label in triples[:num_examples - len(examples)]]
                if _repeats_in_batch(accelerator, loader):
                    # every process receives the real images of all processes; one of them adds them
                    per_image = accelerator.gather_for_metrics(per_image)
                    if not accelerator.is_main_process:
                        per_image = per_image[:0]
                cm += per_image.sum(dim=0)
                num_images += len(per_image)
    finally:
        model.train(was_training)
    cm = accelerator.reduce(cm, reduction="sum").cpu()
    total = int(accelerator.reduce(num_images, reduction="sum"))
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "__len__") and total != len(dataset):
        raise RuntimeError(f"evaluation counted {total} images but the dataset has {len(dataset)}; "
                           "use a loader without drop_last, prepared by accelerator.prepare")
    return EvalResult(metrics=metrics_from_confusion(cm, names, total), confusion=cm, examples=examples)


def format_table(metrics: dict) -> str:
    """Per-class IoU table and the summary scores, as printed by ``fcn-eval``."""
    per_class = metrics["per_class_IoU"]
    width = max(len("pixel_accuracy"), *(len(n) for n in per_class))
    lines = [f"{'class':<{width}}  IoU", f"{'-' * width}  ------"]
    lines += [f"{name:<{width}}  {'-' if iou is None else f'{iou:.4f}'}" for name, iou in per_class.items()]
    lines.append(f"{'-' * width}  ------")
    for key in ("mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU"):
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
                          num_workers=args.num_workers, max_image_pixels=args.max_image_pixels)
    dataset = build_dataset(data_cfg, args.split, train=False)
    return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False, collate_fn=list_collate,
                                       **loader_kwargs(data_cfg, loader_worker_init()))


def _log_wandb(accelerator: Accelerator, args: argparse.Namespace, result: EvalResult, classes: list[str]) -> None:
    from .tracking import val_scalars, wandb_media, wandb_mode

    out_dir = (args.output.parent if args.output else Path.cwd()).resolve()
    accelerator.init_trackers(args.wandb_project, config={"checkpoint": str(args.checkpoint), "split": args.split,
                                                          **dataclasses.asdict(args.options)},
                              init_kwargs={"wandb": {"job_type": "eval", "dir": str(out_dir), "mode": wandb_mode()}})
    accelerator.log({**val_scalars(result.metrics, classes), "val/num_images": result.metrics["num_images"]})
    if accelerator.is_main_process:
        accelerator.get_tracker("wandb", unwrap=True).log(wandb_media(result.examples, result.confusion, classes))


def _run(args: argparse.Namespace, accelerator: Accelerator) -> None:
    model, info = load_model(args.checkpoint, device=accelerator.device)
    model = model_from_args(model, args)
    loader = accelerator.prepare(_build_loader(args, info.classes))
    result = evaluate(model, loader, accelerator, len(info.classes), info.mean, info.std,
                      mode=args.options, num_examples=WANDB_EXAMPLES if args.wandb else 0,
                      classes=info.classes)
    if args.wandb:
        _log_wandb(accelerator, args, result, info.classes)
    if accelerator.is_main_process:
        print(format_table(result.metrics))
        if args.output:
            metrics = {**result.metrics, "checkpoint": str(args.checkpoint), "split": args.split}
            json_path, png_path = write_eval_files(metrics, args.output, step=info.step)
            print(f"wrote {json_path} and {png_path}")


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``fcn-eval`` (``fcn_dist.cli.eval_parser``); returns the exit code."""
    refused = run_guarded("fcn-eval", lambda: check_outputs(args) or 0)  # before anything runs
    if refused:
        return refused
    processes = PartialState(cpu=not torch.cuda.is_available())
    choice = PrecisionChoice(args.mixed_precision, "set explicitly")
    if args.mixed_precision == "auto":  # measured once, by the main process (forward only)
        if processes.is_main_process:
            choice = resolve_precision("auto", processes.device.type, training=False)
        chosen = main_process_choice(processes, choice.precision, PRECISIONS)
        choice = choice if chosen == choice.precision else PrecisionChoice(chosen, "auto: the main process's choice")
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=choice.precision,
                              dataloader_config=DataLoaderConfiguration(even_batches=False),
                              log_with="wandb" if args.wandb else None)
    if args.mixed_precision == "auto":  # say what auto chose (stdout: stderr is for errors only)
        accelerator.print(f"mixed precision: {choice.precision} ({choice.reason})")
    try:
        return run_guarded("fcn-eval", lambda: _run(args, accelerator) or 0, EVAL_TERMS)
    finally:
        accelerator.end_training()  # finishes W&B and destroys the process group (gloo aborts otherwise)


def main(argv: Sequence[str] | None = None) -> int:
    """``fcn-eval`` / ``python -m fcn_dist.evaluate``; returns the exit code."""
    return eval_main(argv)


if __name__ == "__main__":
    sys.exit(main())
