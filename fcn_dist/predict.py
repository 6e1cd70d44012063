"""``fcn-predict``: images or folders of images to VOC palette masks and overlays.

::

    fcn-predict --checkpoint runs/demo/model_best.safetensors --output preds/ photo.jpg folder/

For every image ``<stem>.<ext>`` it writes ``<output>/<stem>.png``, a palette (mode P) PNG
whose indices are class ids in the VOC palette (VOC tools read it; ``--mask-format rgb``
writes the same colours as an RGB image, for viewers), and ``<output>/<stem>_overlay.jpg``:
the photo with every class but background tinted in its colour and outlined, and a legend of
the classes present with their pixel shares; background pixels are left as they are. It
prints each image's class shares.

Photos are turned as their EXIF orientation says (``PIL.ImageOps.exif_transpose``), as every
viewer shows them, so masks and overlays match the photo as displayed. Apart from that, images
are decoded as the dataset reader decodes them and inferred as ``fcn-eval`` infers them, so with
the same checkpoint and mode the PNGs of untagged images reproduce ``fcn-eval``'s confusion
matrix. A batch only holds images of one size, so ``--batch-size`` never changes a prediction.

Nothing of the user's is replaced: every output path is checked before anything is written,
and one that is an input, or an existing file that fcn-predict did not write (its images carry
``fcn_dist.files.image_mark``), is refused (``--overwrite`` allows the latter).

Two backends give the class maps, and everything else (reading, outputs, shares, the rule above)
is shared and torch-free (numpy and Pillow): ``--checkpoint`` runs the safetensors model in torch
(``torch_predictor``: ``fcn_dist.inference.infer_logits``), ``--onnx`` an ONNX model from
``fcn-export`` in onnxruntime (``onnx_predictor``: ``fcn_dist.runtime.infer_logits``, the same modes,
tiles, flips and scales in numpy), and then torch is never imported. Both are a ``Predictor``:
uint8 images (B, 3, H, W) in, class ids (B, H, W) out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from .cli import PREDICT_TERMS, in_cli_terms, model_from_args, predict_main, run_guarded
from .config import DEFAULT_MAX_IMAGE_PIXELS
from .datafiles import DataError
from .files import OverwriteError, atomic_write, has_image_mark, image_mark, refuse_overwrites
from .images import decode_image
from .labels import VOC_PALETTE
from .process import EXIT_PARTIAL

PROG = "fcn-predict"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
OVERLAY_ALPHA = 0.5
COLOURS = np.asarray(VOC_PALETTE, dtype=np.uint8).reshape(256, 3)
"""The VOC palette as (256, 3) RGB rows: the colour of class k is ``COLOURS[k]``."""


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


def output_paths(path: Path, out_dir: Path) -> tuple[Path, Path]:
    """(mask PNG, overlay JPEG) that ``path`` is predicted into."""
    return out_dir / f"{path.stem}.png", out_dir / f"{path.stem}_overlay.jpg"


def check_outputs(paths: list[Path], out_dir: Path, overwrite: bool) -> None:
    """Refuse, before anything is written, outputs that would replace an input or a file fcn-predict did not write.

    Raises:
        OverwriteError: naming the first such file and the fix.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise OverwriteError(f"--output {out_dir} is a file, not a folder; give a folder")
    outputs = [out for path in paths for out in output_paths(path, out_dir)]
    refuse_overwrites(outputs, paths, overwrite, has_image_mark, PROG)


def palette_mask(pred: np.ndarray) -> Image.Image:
    """(H, W) class ids (< 256; an array, or a CPU tensor) as a mode-P PIL image in the VOC palette."""
    png = Image.fromarray(np.asarray(pred).astype(np.uint8))
    png.putpalette(VOC_PALETTE)  # turns the L image into a P image whose indices are the class ids
    return png


def colour_mask(pred: np.ndarray) -> Image.Image:
    """(H, W) class ids as an RGB image in the VOC palette's colours (``--mask-format rgb``)."""
    return Image.fromarray(COLOURS[np.asarray(pred).astype(np.int64)])


def class_shares(pred: np.ndarray, num_classes: int) -> list[tuple[int, float]]:
    """(class id, fraction of the pixels) of every class present in an (H, W) class map, largest first."""
    counts = np.bincount(pred.ravel(), minlength=num_classes)
    return sorted(((k, n / pred.size) for k, n in enumerate(counts.tolist()) if n), key=lambda kv: (-kv[1], kv[0]))


def class_edges(pred: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of non-background classes within ``width`` pixels (4-neighbourhood steps) of another class.

    Args:
        pred: int (H, W) class ids.
        width: outline thickness, inside each region.

    Returns:
        bool (H, W); background (class 0) pixels are never marked.
    """
    edge = np.zeros(pred.shape, dtype=bool)
    padded = np.pad(pred, width, mode="edge")
    h, w = pred.shape
    for d in range(1, width + 1):
        for dy, dx in ((d, 0), (-d, 0), (0, d), (0, -d)):
            edge |= padded[width + dy:width + dy + h, width + dx:width + dx + w] != pred
    return edge & (pred != 0)


def share_text(share: float) -> str:
    """A pixel share as people read it: ``12.3%``, and ``<0.1%`` for a class present on a few pixels."""
    return f"{100 * share:.1f}%" if share >= 0.0005 else "<0.1%"


def legend_font_size(height: int, width: int) -> int:
    """The legend's font size for an image: a 30th of its short side, within 8-48 px."""
    return min(48, max(8, min(height, width) // 30))


def _legend(shares: list[tuple[int, float]], classes: Sequence[str], font_size: int,
            max_height: int | None = None) -> Image.Image:
    """The legend box: a swatch, the name and the pixel share per class (background's swatch is empty: untinted).

    Rows that would make it taller than ``max_height`` become one last row, ``+N more (share)``.
    """
    font = ImageFont.load_default(size=font_size)
    pad = max(2, font_size // 2)
    rows = len(shares) if max_height is None else max(1, (max_height - pad) // (font_size + pad))
    entries = [(k, f"{classes[k] if k < len(classes) else k} {share_text(share)}") for k, share in shares]
    if len(entries) > rows:
        rest = shares[rows - 1:]
        entries = entries[:rows - 1] + [(None, f"+{len(rest)} more ({share_text(sum(v for _, v in rest))})")]
    text_w = int(max(font.getlength(line) for _, line in entries))
    box = Image.new("RGB", (3 * pad + font_size + text_w, pad + len(entries) * (font_size + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(box)
    draw.rectangle((0, 0, box.width - 1, box.height - 1), outline=(0, 0, 0))
    for row, (k, line) in enumerate(entries):
        top = pad + row * (font_size + pad)
        if k is not None:
            swatch = (pad, top, pad + font_size - 1, top + font_size - 1)
            draw.rectangle(swatch, fill=None if k == 0 else tuple(int(c) for c in COLOURS[k]), outline=(0, 0, 0))
        draw.text((2 * pad + font_size, top + font_size // 2), line, fill=(0, 0, 0), font=font, anchor="lm")
    return box


def overlay(image: np.ndarray, pred: np.ndarray, classes: Sequence[str],
            alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """The prediction drawn over the image: tinted classes, their outlines, and a legend.

    Background (class 0) pixels keep the image's values, except under the legend; every other
    class is blended with its VOC colour (weight ``alpha``) and outlined in that colour. The
    legend lists the classes present with their pixel shares (as many as fit the image's height,
    then ``+N more``) and sits in the corner where it hides the fewest non-background pixels.

    Args:
        image: uint8 (3, H, W), an array or a CPU tensor.
        pred: (H, W) class ids, likewise.
        classes: the class names (``ModelInfo.classes``).
        alpha: weight of the colours in the tint.

    Returns:
        RGB image of the image's size.
    """
    rgb = np.asarray(image).transpose(1, 2, 0)
    ids = np.asarray(pred).astype(np.int64)
    colours = COLOURS[ids]
    tinted = np.clip(((1 - alpha) * rgb.astype(np.float32) + alpha * colours).round(), 0, 255).astype(np.uint8)
    out = np.where((ids != 0)[..., None], tinted, rgb)
    h, w = ids.shape
    edges = class_edges(ids, max(1, min(h, w) // 200))
    out[edges] = colours[edges]
    legend = _legend(class_shares(ids, len(classes)), classes, legend_font_size(h, w), max_height=h)
    lw, lh = min(legend.width, w), min(legend.height, h)
    corners = [(0, 0), (w - lw, 0), (0, h - lh), (w - lw, h - lh)]
    x, y = min(corners, key=lambda xy: np.count_nonzero(ids[xy[1]:xy[1] + lh, xy[0]:xy[0] + lw]))
    out[y:y + lh, x:x + lw] = np.asarray(legend)[:lh, :lw]
    return Image.fromarray(out)


def _batches(paths: list[Path], batch_size: int, failed: list[str],
             max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Iterator[list[tuple[Path, np.ndarray]]]:
    """Same-size batches of decoded (path, image uint8 (3, H, W), as displayed); unreadable files go to ``failed``."""
    pending: dict[tuple[int, int], list[tuple[Path, np.ndarray]]] = {}
    for path in paths:
        try:
            image = decode_image(path, str(path), max_pixels, apply_exif=True).transpose(2, 0, 1)
        except DataError as err:
            # the reader's message ends with a fix about split files, which does not apply here
            failed.append(in_cli_terms(str(err).split("; ")[0], PREDICT_TERMS))
            continue
        bucket = pending.setdefault(tuple(image.shape[1:]), [])
        bucket.append((path, image))
        if len(bucket) == batch_size:
            yield pending.pop(tuple(image.shape[1:]))
    yield from pending.values()


Predictor = Callable[[np.ndarray], np.ndarray]
"""uint8 images (B, 3, H, W) -> class ids (B, H, W): ``torch_predictor`` or ``onnx_predictor``."""


def torch_predictor(args: argparse.Namespace, device) -> tuple[list[str], Predictor]:
    """``--checkpoint``: the safetensors model in torch on ``device``, as ``--fold-bn``/``--channels-last`` ask,
    under autocast as ``--mixed-precision`` asks (``auto``: ``precision.resolve_precision``, forward only).

    Returns:
        (class names, predictor).

    Raises:
        CheckpointError: see ``checkpoint.load_model``.
    """
    import torch

    from .checkpoint import load_model
    from .inference import infer_logits

    from .precision import resolve_precision

    model, info = load_model(args.checkpoint, device)
    model = model_from_args(model, args)
    choice = resolve_precision(args.mixed_precision, device.type, training=False)
    if args.mixed_precision == "auto":  # say what auto chose (stdout: stderr is for errors only), as fcn-eval does
        print(f"mixed precision: {choice.precision} ({choice.reason})")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(choice.precision)

    def predict(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            batch = torch.from_numpy(images).to(device)
            return infer_logits(model, batch, info.mean, info.std, args.options).argmax(dim=1).cpu().numpy()

    return info.classes, predict


def onnx_predictor(args: argparse.Namespace) -> tuple[list[str], Predictor]:
    """``--onnx``: an ONNX model from fcn-export in onnxruntime on the CPU; imports no torch.

    Returns:
        (class names, predictor), classes and normalisation from the model's metadata.

    Raises:
        CheckpointError: see ``runtime.OnnxModel``.
    """
    from .runtime import OnnxModel, infer_logits

    model = OnnxModel(args.onnx)
    info = model.info

    def predict(images: np.ndarray) -> np.ndarray:
        return infer_logits(model, images, info.mean, info.std, args.options).argmax(axis=1)

    return info.classes, predict


def predict_files(predict: Predictor, classes: Sequence[str], paths: list[Path], out_dir: Path,
                  batch_size: int = 1, mask_format: str = "palette",
                  max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> list[str]:
    """Write ``<stem>.png`` and ``<stem>_overlay.jpg`` for every readable image; print each one's class shares.

    Args:
        predict: the model (``torch_predictor``, ``onnx_predictor``), its inference options included.
        classes: its class names.
        paths: image files, checked with ``check_outputs`` first.
        out_dir: output folder (created).
        batch_size: images of one size per forward pass.
        mask_format: ``palette`` (mode P, indices = class ids) or ``rgb``.
        max_pixels: the largest image accepted (``--max-image-pixels``).

    Returns:
        One message per image that could not be read (those are skipped).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    with tqdm(total=len(paths), unit="img", desc="predict", disable=not sys.stderr.isatty()) as bar:
        for batch in _batches(paths, batch_size, failed, max_pixels):
            preds = predict(np.stack([image for _, image in batch]))
            for (path, image), pred in zip(batch, preds):
                mask_path, overlay_path = output_paths(path, out_dir)
                with atomic_write(mask_path) as tmp:
                    mask = palette_mask(pred) if mask_format == "palette" else colour_mask(pred)
                    mask.save(tmp, "PNG", **image_mark(PROG, "PNG"))
                with atomic_write(overlay_path) as tmp:
                    overlay(image, pred, classes).save(tmp, "JPEG", quality=90, **image_mark(PROG, "JPEG"))
                shares = class_shares(pred, len(classes))
                bar.write(f"{path}: " + ", ".join(f"{classes[k]} {share_text(s)}" for k, s in shares),
                          file=sys.stdout)
            bar.update(len(batch))
        bar.update(len(failed))
    return failed


def _torch_device(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The torch device ``--device`` names; a bad name or CUDA without CUDA is a parser error."""
    import torch

    name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        device = torch.device(name)
    except RuntimeError as err:
        parser.error(f"--device {args.device}: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu")
    return device


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run a parsed ``fcn-predict`` (``fcn_dist.cli.predict_parser``); returns the exit code.

    With ``args.onnx`` torch is never imported; otherwise ``args.checkpoint`` runs in torch.
    """
    device = None if args.onnx is not None else _torch_device(args, parser)

    def body() -> int:
        paths = collect_images(args.inputs)
        check_outputs(paths, args.output, args.overwrite)
        classes, predict = onnx_predictor(args) if device is None else torch_predictor(args, device)
        failed = predict_files(predict, classes, paths, args.output, args.batch_size, args.mask_format,
                               args.max_image_pixels)
        for message in failed:
            print(f"{PROG}: skipped {message}", file=sys.stderr)
        skipped = f"; {len(failed)} images skipped" if failed else ""
        print(f"wrote {len(paths) - len(failed)} masks and overlays to {args.output}{skipped}")
        return EXIT_PARTIAL if failed else 0

    return run_guarded(PROG, body, PREDICT_TERMS, with_torch=device is not None)


def main(argv: Sequence[str] | None = None) -> int:
    """``fcn-predict`` / ``python -m fcn_dist.predict``; returns the exit code (0 ok, 1 some images unreadable, 2 bad input)."""
    return predict_main(argv)


if __name__ == "__main__":
    sys.exit(main())
