"""``fcn-predict``: images or folders of images to VOC palette masks and overlays.

::

    fcn-predict --checkpoint runs/demo/model_best.safetensors --output preds/ photo.jpg folder/

For every image ``<stem>.<ext>`` it writes ``<output>/<stem>.png``, a palette (mode P) PNG
whose indices are class ids in the VOC palette (VOC tools read it), and
``<output>/<stem>_overlay.jpg``, the prediction blended over the image. Images of any size
work. Images are decoded as the dataset reader decodes them and inferred as ``fcn-eval`` infers
them, so with the same checkpoint and mode the PNGs reproduce ``fcn-eval``'s confusion matrix.
A batch only holds images of one size, so ``--batch-size`` never changes a prediction.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .checkpoint import load_model
from .cli import model_from_args, predict_main, run_guarded
from .config import InferenceOptions
from .data.voc import DataError, decode_image
from .files import atomic_write
from .labels import VOC_PALETTE
from .model import hwc_to_chw
from .inference import infer_logits
from .process import EXIT_PARTIAL

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
OVERLAY_ALPHA = 0.5


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named by ``inputs``: files as given, folders' image files sorted by name.

    A path that does not exist is kept, so that reading it reports it like any unreadable
    image.

    Raises:
        DataError: two inputs with the same stem (their outputs would overwrite each other),
            or no image at all.
    """
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise DataError(f"{seen[path.stem]} and {path} would both write {path.stem}.png; "
                            "predict them into different --output folders")
        seen[path.stem] = path
    if not paths:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    return paths


def palette_mask(pred: torch.Tensor) -> Image.Image:
    """(H, W) class ids (< 256) as a mode-P PIL image in the VOC palette."""
    png = Image.fromarray(pred.to(torch.uint8).cpu().numpy())
    png.putpalette(VOC_PALETTE)  # turns the L image into a P image whose indices are the class ids
    return png


def overlay(image: torch.Tensor, pred: torch.Tensor, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """The prediction's palette colours blended over the image.

    Args:
        image: uint8 (3, H, W).
        pred: (H, W) class ids.
        alpha: weight of the colours; background (class 0, black) darkens the image.
    """
    colours = np.asarray(VOC_PALETTE, dtype=np.float32).reshape(256, 3)[pred.cpu().numpy().astype(np.int64)]
    blend = (1 - alpha) * image.permute(1, 2, 0).cpu().numpy().astype(np.float32) + alpha * colours
    return Image.fromarray(np.clip(blend.round(), 0, 255).astype(np.uint8))


def _batches(paths: list[Path], batch_size: int, failed: list[str]) -> Iterator[list[tuple[Path, torch.Tensor]]]:
    """Same-size batches of decoded (path, image uint8 (3, H, W)); unreadable files go to ``failed``."""
    pending: dict[tuple[int, int], list[tuple[Path, torch.Tensor]]] = {}
    for path in paths:
        try:
            image = hwc_to_chw(decode_image(path, str(path)))
        except DataError as err:
            # the reader's message ends with a fix about split files, which does not apply here
            failed.append(str(err).split("; ")[0])
            continue
        bucket = pending.setdefault(tuple(image.shape[1:]), [])
        bucket.append((path, image))
        if len(bucket) == batch_size:
            yield pending.pop(tuple(image.shape[1:]))
    yield from pending.values()


def predict_files(model: torch.nn.Module, info, paths: list[Path], out_dir: Path,
                  options: InferenceOptions, batch_size: int = 1) -> list[str]:
    """Write ``<stem>.png`` and ``<stem>_overlay.jpg`` for every readable image.

    Args:
        model: FCN in eval mode.
        info: its ModelInfo (mean, std).
        paths: image files.
        out_dir: output folder (created).
        options: inference mode, tiles and test-time augmentation.
        batch_size: images of one size per forward pass.

    Returns:
        One message per image that could not be read (those are skipped).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    failed: list[str] = []
    with tqdm(total=len(paths), unit="img", desc="predict") as bar, torch.inference_mode():
        for batch in _batches(paths, batch_size, failed):
            images = torch.stack([image for _, image in batch]).to(device)
            preds = infer_logits(model, images, info.mean, info.std, options).argmax(dim=1).cpu()
            for (path, image), pred in zip(batch, preds):
                with atomic_write(out_dir / f"{path.stem}.png") as tmp:
                    palette_mask(pred).save(tmp, "PNG")
                with atomic_write(out_dir / f"{path.stem}_overlay.jpg") as tmp:
                    overlay(image, pred).save(tmp, "JPEG", quality=90)
            bar.update(len(batch))
        bar.update(len(failed))
    return failed


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run a parsed ``fcn-predict`` (``fcn_dist.cli.predict_parser``); returns the exit code."""
    name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        device = torch.device(name)
    except RuntimeError as err:
        parser.error(f"--device {args.device}: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu")

    def body() -> int:
        model, info = load_model(args.checkpoint, device)
        paths = collect_images(args.inputs)
        failed = predict_files(model_from_args(model, args), info, paths, args.output, args.options, args.batch_size)
        for message in failed:
            print(f"fcn-predict: skipped {message}", file=sys.stderr)
        skipped = f"; {len(failed)} images skipped" if failed else ""
        print(f"wrote {len(paths) - len(failed)} masks and overlays to {args.output}{skipped}")
        return EXIT_PARTIAL if failed else 0

    return run_guarded("fcn-predict", body)


def main(argv: Sequence[str] | None = None) -> int:
    """``fcn-predict`` / ``python -m fcn_dist.predict``; returns the exit code (0 ok, 1 some images unreadable, 2 bad input)."""
    return predict_main(argv)


if __name__ == "__main__":
    sys.exit(main())
