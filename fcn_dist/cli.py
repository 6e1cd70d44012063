"""Console scripts: their argument parsers, the shared inference flags, and error handling.

Every console script (``fcn-train``, ``fcn-eval``, ``fcn-predict``, ``fcn-export``, ``fcn-data``,
``fcn-compare``) starts here. Parsing, ``--help``, ``--print-config-reference`` and config errors
need no torch, so they answer in a fraction of a second; only then is the command's module
(``fcn_dist.train``, ``fcn_dist.evaluate``, ``fcn_dist.predict``, ``fcn_dist.export``,
``fcn_dist.data.cli``, ``fcn_dist.compare``) imported and run. Each of
those modules' ``main()`` comes back here, so ``python -m fcn_dist.<module>`` behaves the same.

Bad input of any kind ends as one line, ``<prog>: error: <message>``, and exit 2
(``fcn_dist.process``); see docs/DESIGN.md, "Exit codes".
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from .config import (DEFAULT_MAX_IMAGE_PIXELS, INFERENCE_MODES, ConfigError, DataConfig, InferenceOptions,
                     config_reference, load_config)
from .labels import IGNORE_INDEX, VOC_CLASSES
from .process import EXIT_BAD_INPUT, EXIT_EXPORT_FAILED, EXIT_NONFINITE, EXIT_PARTIAL, EXIT_PREEMPTED, fail


def bad_input_errors(with_torch: bool = True) -> tuple[type[Exception], ...]:
    """The exceptions that mean bad input (config, data, checkpoint, weights): exit 2 with one line.

    Imported here, not at module level, because ``model`` (``PretrainedWeightsError``) imports
    torch; ``with_torch=False`` leaves that one out, for ``fcn-predict --onnx``, which never imports torch.
    """
    from .datafiles import DataError
    from .files import OverwriteError
    from .metadata import CheckpointError

    errors: tuple[type[Exception], ...] = (ConfigError, DataError, CheckpointError, OverwriteError)
    if with_torch:
        from .model import PretrainedWeightsError

        errors += (PretrainedWeightsError,)
    return errors


EXPORT_EXTRA = 'pip install "fcn_dist[export]"'
"""What ``fcn-export`` and ``fcn-predict --onnx`` need beyond the package: onnx, onnxscript, onnxruntime."""


def missing_extra(modules: Sequence[str], what: str) -> Optional[str]:
    """The one-line message for the first of ``modules`` that cannot be imported, or None when all can.

    Args:
        modules: what ``what`` imports (``onnxruntime``, ...).
        what: the command, as the message calls it (``fcn-predict --onnx``).
    """
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            return f"{name} is not installed; {what} needs the export extra: {EXPORT_EXTRA}"
    return None


def in_cli_terms(message: str, terms: Mapping[str, str]) -> str:
    """A message that names ``data.*`` config keys, with each key in ``terms`` replaced by the flag that sets it.

    The readers speak config keys (``set data.root to such a folder``); fcn-data, fcn-eval and
    fcn-predict take flags instead, and pass their ``*_TERMS`` here. A key inside a path
    (``/srv/data.root/``) is left alone.
    """
    if not terms:
        return message
    keys = "|".join(re.escape(key) for key in sorted(terms, key=len, reverse=True))
    return re.sub(rf"(?<![\w./-])({keys})(?![\w/])", lambda match: terms[match.group(1)], message)


DATA_TERMS = {"data.root": "--data-root", "data.max_image_pixels": "--max-image-pixels",
              "data.classes": "--num-classes", "data.train_split / data.val_split": "--split",
              "data.val_fraction": "--val-fraction", "data.split_seed": "--split-seed"}
"""How fcn-data words the readers' config keys."""
EVAL_TERMS = {"data.root": "--data-root", "data.format": "--data-format",
              "data.max_image_pixels": "--max-image-pixels", "data.classes": "a --checkpoint trained with them",
              "data.train_split / data.val_split": "--split", "data.val_split": "--split",
              "data.val_fraction": "--val-fraction", "data.split_seed": "--split-seed"}
"""How fcn-eval words them (its classes are the checkpoint's)."""
PREDICT_TERMS = {"data.max_image_pixels": "--max-image-pixels"}
"""How fcn-predict words them."""


def run_guarded(prog: str, body: Callable[[], int], terms: Optional[Mapping[str, str]] = None,
                with_torch: bool = True) -> int:
    """Run a command's body; bad input becomes one line on stderr (in ``terms``) and ``EXIT_BAD_INPUT``.

    ``with_torch=False``: the body imports no torch, and neither does this (``bad_input_errors``).
    """
    errors = bad_input_errors(with_torch)
    try:
        return body()
    except errors as err:
        return fail(prog, in_cli_terms(str(err), terms or {}) or type(err).__name__)


# ---- shared by fcn-eval and fcn-predict ---------------------------------------------------

def add_inference_args(parser: argparse.ArgumentParser) -> None:
    """Add --mode, --tile, --stride, --flip, --channels-last, --fold-bn and --scales."""
    default = InferenceOptions()
    group = parser.add_argument_group("inference")
    group.add_argument("--mode", choices=INFERENCE_MODES, default=default.mode,
                       help="whole: pad to a multiple of 32, run, crop; slide: tiles with averaged overlaps "
                            "(default: %(default)s)")
    group.add_argument("--tile", type=int, nargs=2, metavar=("H", "W"), default=list(default.tile),
                       help="slide tile size (default: %(default)s)")
    group.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), default=list(default.stride),
                       help="slide tile step (default: %(default)s)")
    group.add_argument("--flip", action="store_true", help="average logits with the horizontally flipped image")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                       help="run the network in channels_last memory format (faster on CPU and tensor cores; "
                            "default: %(default)s)")
    group.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=True,
                       help="fold each BatchNorm into the convolution before it (same function up to float "
                            "rounding, a few %% faster; default: %(default)s)")
    group.add_argument("--scales", type=float, nargs="+", default=list(default.scales),
                       help="average logits over these resize factors, e.g. 0.75 1.0 1.25 (default: %(default)s)")


def options_from_args(args: argparse.Namespace) -> InferenceOptions:
    """InferenceOptions from the arguments added by ``add_inference_args``.

    Raises:
        ValueError: invalid tile, stride or scales.
    """
    return InferenceOptions(args.mode, tuple(args.tile), tuple(args.stride), args.flip, tuple(args.scales))


def model_from_args(model, args: argparse.Namespace):
    """The model as ``--fold-bn`` and ``--channels-last`` ask, in eval mode (a copy when folded)."""
    import torch

    from .model import fold_batch_norms

    if args.fold_bn:
        model = fold_batch_norms(model)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


def _at_least(minimum: int):
    """An argparse ``type``: an int >= ``minimum`` (argparse's own message names the flag)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} must be >= {minimum}")
        return value

    parse.__name__ = "int"  # argparse says "invalid int value: 'x'" for a non-number
    return parse


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1 (exclusive)")
    return value


def add_folder_split_args(parser: argparse.ArgumentParser) -> None:
    """``--val-fraction`` and ``--split-seed``: the split of a folder set without split files, as the config's."""
    default = DataConfig()
    parser.add_argument("--val-fraction", type=_fraction, default=default.val_fraction, metavar="F",
                        help="folder sets without splits/*.txt: the share of images in 'val', as data.val_fraction "
                             "(give the training run's; default: %(default)s)")
    parser.add_argument("--split-seed", type=int, default=default.split_seed, metavar="N",
                        help="folder sets without splits/*.txt: the split's seed, as data.split_seed "
                             "(default: %(default)s)")


def add_max_pixels_arg(parser: argparse.ArgumentParser) -> None:
    """``--max-image-pixels``, the CLI form of ``data.max_image_pixels``."""
    parser.add_argument("--max-image-pixels", type=_at_least(1), default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                        help="largest image accepted, width x height; a larger file is refused from its header "
                             "(default: %(default)s, Pillow's decompression-bomb limit)")


def _parse_inference(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    args = parser.parse_args(argv)
    try:
        args.options = options_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    return args


# ---- fcn-train ----------------------------------------------------------------------------

TRAIN_DESCRIPTION = """Train an FCN with Accelerate: one CPU, one GPU, N GPUs or N nodes, the same code.

    fcn-train --config configs/demo.yaml [section.key=value ...]
    accelerate launch -m fcn_dist.train --config configs/demo.yaml
    torchrun --nproc_per_node 2 -m fcn_dist.train --config configs/demo.yaml
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m fcn_dist.train ...  # CPU, gloo
"""


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcn-train", formatter_class=argparse.RawDescriptionHelpFormatter, description=TRAIN_DESCRIPTION,
        epilog=f"exit codes: 0 done; {EXIT_BAD_INPUT} bad config, data or checkpoint (one line names the key or "
               f"file); {EXIT_NONFINITE} non-finite loss or weights (nothing non-finite saved); {EXIT_PREEMPTED} "
               "stopped by SIGUSR1/SIGTERM after saving a checkpoint: rerun the same command to resume.\n"
               "Config keys (section.key=value overrides): run `fcn-train --print-config-reference` or see "
               "README.md#configuration.")
    parser.add_argument("--config", help="YAML config file (e.g. configs/demo.yaml); defaults only if omitted")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="dotted overrides applied after the YAML, e.g. optim.lr=0.01 train.max_steps=100")
    parser.add_argument("--print-config-reference", action="store_true",
                        help="print every config key with its type, default and meaning, then exit")
    return parser


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """``fcn-train``; returns the exit code."""
    args = train_parser().parse_args(argv)
    if args.print_config_reference:
        print(config_reference(), end="")
        return 0
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        return fail("fcn-train", err)
    from .train import run

    return run(cfg)


# ---- fcn-eval -----------------------------------------------------------------------------

def eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcn-eval", description="Evaluate an exported fcn_dist model (.safetensors) on every image of a split, "
        "at full resolution; runs under accelerate launch / torchrun with any number of processes.",
        epilog=f"exit codes: 0 success; {EXIT_BAD_INPUT} bad checkpoint (missing, truncated, pickle, not an "
               "fcn_dist export, bad metadata or weights), bad data, an --output that would replace a file of "
               "yours, or bad arguments.")
    parser.add_argument("--checkpoint", required=True, type=Path, help="model_*.safetensors exported by fcn-train")
    parser.add_argument("--data-root", required=True, help="folder holding VOCdevkit/VOC2012, the VOC2012 folder, "
                        "images/ + masks/ + classes.yaml (--data-format folder), or an Arrow dataset "
                        "(--data-format arrow)")
    parser.add_argument("--data-format", choices=("voc", "folder", "arrow"), default="voc",
                        help="dataset reader (default: %(default)s); folder and an Arrow copy of a folder set "
                             "check the checkpoint's classes against the set's classes.yaml")
    parser.add_argument("--split", default="val", help="split to evaluate (default: %(default)s)")
    add_folder_split_args(parser)
    parser.add_argument("--batch-size", type=int, default=1, help="images per process per step; images of one "
                        "size in a batch share a forward pass (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers per process "
                        "(default: %(default)s)")
    parser.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default="auto",
                        help="autocast precision; auto: bf16 on a GPU that supports it, on CPU bf16 only where a "
                             "short probe measures it faster than fp32 (default: %(default)s)")
    parser.add_argument("--output", type=Path, help="metrics JSON to write; the confusion-matrix PNG goes beside it "
                        "as <stem>_confusion.png. An existing file that fcn_dist did not write is refused before "
                        "anything runs")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --output files that fcn_dist "
                        "did not write (never the checkpoint or a file in the data root)")
    add_max_pixels_arg(parser)
    parser.add_argument("--wandb", action="store_true", help="log the results to a W&B run (job_type eval) linked "
                        "to the training run; wandb's own settings pick online or offline, offline without "
                        "credentials")
    parser.add_argument("--wandb-project", default=None, help="W&B project (default: the training run's, else "
                        "fcn_dist)")
    parser.add_argument("--wandb-images", type=int, default=1500, metavar="N",
                        help="rows of the W&B per-image table (image with prediction and label masks, its mIoU "
                             "and pixel accuracy); 0 = none (default: %(default)s, all of VOC val's 1,449)")
    add_inference_args(parser)
    return parser


def eval_main(argv: Optional[Sequence[str]] = None) -> int:
    """``fcn-eval``; returns the exit code."""
    parser = eval_parser()
    args = _parse_inference(parser, argv)
    if args.batch_size < 1 or args.num_workers < 0 or args.wandb_images < 0:
        parser.error("--batch-size must be >= 1, --num-workers and --wandb-images >= 0")
    from .evaluate import run

    return run(args)


# ---- fcn-predict --------------------------------------------------------------------------

def predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcn-predict", description="Predict class masks for images of any size with an exported fcn_dist "
        "model: writes OUTPUT/<stem>.png (palette PNG, indices = class ids, VOC palette) and "
        "OUTPUT/<stem>_overlay.jpg (classes tinted, outlined and named in a legend), and prints each image's "
        "class shares. Photos are turned as their EXIF orientation says, as viewers show them. Nothing it did "
        "not write is replaced: an output path that exists and was not written by fcn-predict is refused "
        "before anything is written (--overwrite allows it), and an input is never replaced. With --onnx "
        "(a model from fcn-export) it runs onnxruntime on the CPU and never imports torch.",
        epilog=f"exit codes: 0 every image written; {EXIT_PARTIAL} some images could not be read or are above "
               f"--max-image-pixels (each is named on stderr and skipped; the others are written); "
               f"{EXIT_BAD_INPUT} bad checkpoint or ONNX model (missing, truncated, pickle, not an fcn_dist "
               "export, bad metadata or weights), no images, outputs that would replace your files, --onnx "
               f"without the export extra ({EXPORT_EXTRA}), or bad arguments.")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders of images")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", type=Path, help="model_*.safetensors exported by fcn-train (runs in torch)")
    model.add_argument("--onnx", type=Path, metavar="MODEL.onnx",
                       help="an ONNX model written by fcn-export: runs in onnxruntime (CPUExecutionProvider), "
                            "no torch; classes and normalisation come from its metadata; --fold-bn and "
                            "--channels-last do not apply (the graph was fixed at export)")
    parser.add_argument("--output", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files that fcn-predict "
                        "did not write (an input image is never replaced)")
    parser.add_argument("--mask-format", choices=("palette", "rgb"), default="palette",
                        help="<stem>.png as a palette PNG whose indices are class ids (VOC tools read it), or as an "
                             "RGB image in the same colours, for viewers (default: %(default)s)")
    add_max_pixels_arg(parser)
    parser.add_argument("--device", default="auto",
                        help="torch device: auto (cuda when available, else cpu), cpu, cuda, cuda:1, ...; with "
                             "--onnx only auto or cpu (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1, help="same-size images per forward pass "
                        "(default: %(default)s)")
    parser.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default="auto",
                        help="autocast precision of the torch model; auto: bf16 on a GPU that supports it, on CPU "
                             "bf16 only where a short probe measures it faster than fp32; with --onnx only auto "
                             "or no (onnxruntime runs the graph in fp32) (default: %(default)s)")
    add_inference_args(parser)
    return parser


def predict_main(argv: Optional[Sequence[str]] = None) -> int:
    """``fcn-predict``; returns the exit code."""
    parser = predict_parser()
    args = _parse_inference(parser, argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.onnx is not None:
        if args.device not in ("auto", "cpu"):
            parser.error(f"--device {args.device}: --onnx runs on the CPU (onnxruntime's CPUExecutionProvider); "
                         "use --device cpu, or --checkpoint for a torch device")
        if args.mixed_precision not in ("auto", "no"):
            parser.error(f"--mixed-precision {args.mixed_precision}: --onnx runs the graph in fp32 (onnxruntime); "
                         "use --checkpoint for autocast")
        missing = missing_extra(("onnxruntime",), "fcn-predict --onnx")
        if missing:
            return fail("fcn-predict", missing)
    from .predict import run

    return run(args, parser)


# ---- fcn-export ---------------------------------------------------------------------------

def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcn-export", description="Export a self-describing fcn_dist model (.safetensors) for deployment: "
        "an ONNX graph with dynamic batch, height and width (any size, not only multiples of 32) that maps "
        "normalised float32 images (N, 3, H, W) to logits (N, C, H, W), BatchNorms folded, with the class names, "
        "the normalisation (mean, std) and the model config in its metadata. It is checked (onnx.checker, and "
        "onnxruntime against torch) before it is written. Run it with fcn-predict --onnx MODEL.onnx.",
        epilog=f"exit codes: 0 written; {EXIT_EXPORT_FAILED} no exporter gave a graph that passes the checks "
               f"(nothing written); {EXIT_BAD_INPUT} bad checkpoint (missing, truncated, pickle, not an fcn_dist "
               "export, bad metadata or weights), an --output that would replace a file of yours, the export "
               f"extra missing ({EXPORT_EXTRA}), or bad arguments.")
    parser.add_argument("--checkpoint", required=True, type=Path, help="model_*.safetensors exported by fcn-train")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="output format (default: %(default)s)")
    parser.add_argument("--output", type=Path, metavar="MODEL.onnx",
                        help="file to write (default: <checkpoint stem>.onnx beside the checkpoint). An existing "
                             "file that fcn-export did not write is refused")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output that fcn-export "
                        "did not write (never the checkpoint)")
    parser.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=True,
                        help="fold each BatchNorm into the convolution before it, as fcn-predict does "
                             "(default: %(default)s)")
    return parser


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    """``fcn-export``; returns the exit code."""
    parser = export_parser()
    args = parser.parse_args(argv)
    if args.output is not None and args.output.suffix != ".onnx":
        parser.error(f"--output {args.output}: the name must end in .onnx")
    missing = missing_extra(("onnx", "onnxscript", "onnxruntime"), "fcn-export")
    if missing:
        return fail("fcn-export", missing)
    from .export import run

    return run(args)


# ---- fcn-data -----------------------------------------------------------------------------

def data_parser() -> argparse.ArgumentParser:
    num_classes_help = (f"mask values must be < this or {IGNORE_INDEX} (default: a folder set's or Arrow copy's "
                        f"classes.yaml, else {len(VOC_CLASSES)})")
    parser = argparse.ArgumentParser(
        prog="fcn-data", description="Prepare an Arrow copy of VOC, write the synthetic set, validate a dataset, "
                                     "count its classes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  fcn-data synth --out data/synthetic --train 200 --val 40\n"
               "  fcn-data check --data-root data/VOCdevkit\n"
               "  fcn-data prepare --data-root data --out data/voc_arrow --splits train val\n"
               "  fcn-data synth --layout folder --out data/folder_demo --train 160 --val 24 --max-side 192\n"
               "  fcn-data check --data-root data/folder_demo    # images/ masks/ classes.yaml [splits/]\n"
               "  fcn-data stats --data-root data/synthetic --output stats.json\n\n"
               f"exit codes: 0 success; {EXIT_PARTIAL} check found problems, or bad input.\n"
               "Run `fcn-data COMMAND --help` for the options of each command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prepare = sub.add_parser(
        "prepare", help="convert VOCdevkit or folder-set splits to an Arrow dataset (data.format=arrow)",
        description="Validate and convert VOCdevkit splits, or a folder set's (images/, masks/, classes.yaml), "
                    "into a datasets.DatasetDict saved with save_to_disk (original JPEG/PNG bytes, or raw pixels "
                    "with --decoded; memory-mapped when read). A folder set's masks are stored as class ids "
                    "(after its colors or remap) and its classes.yaml's names go to OUT/classes.yaml. Train "
                    "with data.format=arrow data.root=OUT.")
    prepare.add_argument("--data-root", required=True, help="folder holding VOCdevkit/VOC2012, VOC2012 itself, or "
                                                            "a folder set (images/, masks/, classes.yaml)")
    prepare.add_argument("--out", required=True, help="output folder; it must not exist (nothing is ever replaced)")
    prepare.add_argument("--splits", nargs="+", default=["train", "val"],
                         help="split names from ImageSets/Segmentation (train_aug uses SegmentationClassAug) or a "
                              "folder set's splits/ (default: train val)")
    prepare.add_argument("--num-classes", type=int, default=None, help=num_classes_help)
    add_folder_split_args(prepare)
    prepare.add_argument("--decoded", action="store_true",
                         help="store decoded uint8 pixels instead of the JPEG/PNG files: reads skip decoding "
                              "(~9x faster per image) at ~12x the disk and page cache; for CPU-bound loaders "
                              "(few CPU cores per GPU)")
    add_max_pixels_arg(prepare)

    synth = sub.add_parser(
        "synth", help="write the synthetic dataset (VOC or folder layout)",
        description="Write OUT/VOCdevkit/VOC2012 (--layout voc): JPEGs of mixed sizes, palette PNG masks with void "
                    "borders, split files. --layout folder writes the same pictures as OUT/images/, OUT/masks/, "
                    "OUT/classes.yaml (background and six shapes) and OUT/splits/, for data.format=folder. The "
                    "same arguments write byte-identical files.")
    synth.add_argument("--out", required=True, help="output folder (the set goes to OUT/VOCdevkit/VOC2012, which "
                                                     "must not exist; --layout folder: OUT itself, which must not "
                                                     "exist)")
    synth.add_argument("--layout", choices=("voc", "folder"), default="voc",
                       help="voc (VOCdevkit) or folder (images/ masks/ classes.yaml splits/) (default: %(default)s)")
    synth.add_argument("--mask-format", choices=("index", "rgb"), default="index",
                       help="--layout folder: index PNGs of class ids, or RGB PNGs in class colours with a void "
                            "colour (classes.yaml gets colors and void_color) (default: %(default)s)")
    synth.add_argument("--remap", action="store_true",
                       help="--layout folder: masks hold other ids (as Cityscapes' label ids), which classes.yaml's "
                            "remap maps to class ids; void stored as its ignore value and as unmapped ids")
    synth.add_argument("--no-split-files", action="store_true",
                       help="--layout folder: write no splits/; readers then split by --val-fraction / "
                            "data.val_fraction")
    synth.add_argument("--train", type=_at_least(0), default=200, help="training images (default: 200)")
    synth.add_argument("--val", type=_at_least(0), default=40, help="validation images (default: 40)")
    synth.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    synth.add_argument("--max-side", type=_at_least(16), default=500, help="longest image side in pixels (default: 500)")

    check = sub.add_parser(
        "check", help="validate a dataset and list every problem",
        description="Decode every image and mask of the splits that training and evaluation read and report "
                    "every problem, one line each: missing root, split file or listed file; empty split; corrupt "
                    "or truncated file; an image above --max-image-pixels; mask size differing from its image; "
                    f"mask values outside 0..C-1 and not {IGNORE_INDEX}; RGB masks with non-VOC colours. A folder "
                    "set (images/, masks/, classes.yaml) adds a malformed classes.yaml field, an image without "
                    "mask, a mask without image, a split-file stem without image, an image in no split file, and "
                    "mask values or colours that classes.yaml does not describe. Then warnings (images with an EXIF "
                    "orientation, which are read as stored; very large images) and, per split, the images, their "
                    "range of sizes and the pixels per class. Exits 1 if there is any problem, 0 otherwise "
                    "(warnings too). DATA_ROOT may also be an Arrow dataset from `fcn-data prepare`.")
    check.add_argument("--data-root", required=True, help="folder holding VOCdevkit/VOC2012, VOC2012 itself, "
                                                          "a folder set, or a prepared Arrow dataset")
    check.add_argument("--split", nargs="+", default=None,
                       help="splits to check (default: train and val, which fcn-train and fcn-eval read unless "
                            "told otherwise, a missing one being a problem, and every other split present)")
    check.add_argument("--num-classes", type=int, default=None, help=num_classes_help)
    add_folder_split_args(check)
    add_max_pixels_arg(check)

    stats = sub.add_parser(
        "stats", help="pixels and images per class per split, and the class weights they suggest",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Count, over every mask of each split, the pixels of each class (void apart) and the\n"
                    "images that contain it; print them with the class weights that optim.class_weights=auto\n"
                    "would use with that split as the training split: ENet's w_c = 1 / ln(1.02 + p_c), p_c the\n"
                    "class's share of the labelled pixels. Reads what fcn-train reads: a data root (VOCdevkit,\n"
                    "an `fcn-data synth` set, an Arrow dataset) or the data section of a training config.\n\n"
                    "  fcn-data stats --data-root data/synthetic --output stats.json\n"
                    "  fcn-data stats --config configs/demo.yaml --split train")
    source = stats.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-root", help="folder holding VOCdevkit/VOC2012, VOC2012 itself, or an Arrow dataset")
    source.add_argument("--config", help="a training config: its data.* keys (and model.num_classes) say what to "
                                         "read; section.key=value overrides may follow")
    stats.add_argument("overrides", nargs="*", metavar="section.key=value",
                       help="with --config: dotted overrides, as fcn-train takes them")
    stats.add_argument("--data-format", default=None,
                       help="with --data-root: the reader, as data.format (default: found from DATA_ROOT's files: arrow "
                            "for dataset_dict.json, voc for a VOC2012 folder, folder for classes.yaml or "
                            "images/ + masks/)")
    stats.add_argument("--split", nargs="+", default=None,
                       help="splits to count (default: train and val; with --config, data.train_split and "
                            "data.val_split)")
    stats.add_argument("--num-classes", type=int, default=None,
                       help=f"with --data-root: {num_classes_help}")
    stats.add_argument("--num-workers", type=_at_least(0), default=2, help="loader workers decoding the samples "
                                                                      "(default: %(default)s)")
    add_max_pixels_arg(stats)
    stats.add_argument("--output", type=Path, help="also write the counts and weights as JSON; an existing file "
                       "that fcn-data stats did not write is refused before anything is read")
    stats.add_argument("--overwrite", action="store_true", help="replace an existing --output that fcn-data "
                       "stats did not write (never a file in the data root)")
    return parser


def data_main(argv: Optional[Sequence[str]] = None) -> int:
    """``fcn-data``; returns the exit code."""
    parser = data_parser()
    args = parser.parse_args(argv)
    if args.command == "synth" and args.layout == "voc" and (args.mask_format != "index" or args.remap
                                                             or args.no_split_files):
        parser.error("--mask-format, --remap and --no-split-files are for --layout folder")
    if args.command == "synth" and args.remap and args.mask_format == "rgb":
        parser.error("--remap is for index masks: RGB masks map colours to classes (--mask-format index)")
    if args.command == "stats" and args.config is None and (args.overrides or []):
        parser.error("section.key=value overrides need --config")
    if args.command == "stats" and args.config is not None and (args.data_format or args.num_classes):
        parser.error("--data-format and --num-classes go with --data-root; with --config set data.format and "
                     "model.num_classes as overrides")
    from .data.cli import run

    return run(args)


# ---- fcn-compare --------------------------------------------------------------------------

COMPARE_DESCRIPTION = """Compare training runs without the W&B UI: the config keys that differ, best mIoU and its step,
final mIoU, pixel accuracy, steps, images/s and per-class IoU differences.

    fcn-compare runs/demo runs/demo-lr0.05 --plot curves.png --output table.md
    fcn-compare --wandb ENTITY/PROJECT --filter group=lr-study --filter model.arch=fcn8s

Local runs are read from each run directory's config.yaml and metrics.jsonl (line by line; a run
still in progress is fine). --wandb reads the same from W&B's public API and needs W&B online.
"""


def compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcn-compare", formatter_class=argparse.RawDescriptionHelpFormatter, description=COMPARE_DESCRIPTION,
        epilog=f"exit codes: 0 done; {EXIT_BAD_INPUT} bad arguments, a run directory without config.yaml or "
               "metrics.jsonl, or --wandb while W&B is offline.")
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run directories (train.output_dir/run_name)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="compare the W&B training runs of this project")
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help="with --wandb: keep runs whose KEY equals VALUE; KEY is group, tags, state, job_type, "
                             "name or a config key such as optim.lr (repeatable; default: job_type=train)")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="write val/mIoU and train/loss against step, "
                        "all runs, as a PNG")
    parser.add_argument("--output", type=Path, metavar="FILE", help="also write the table as Markdown (.md) or "
                        "CSV (.csv)")
    return parser


def compare_main(argv: Optional[Sequence[str]] = None) -> int:
    """``fcn-compare``; returns the exit code."""
    parser = compare_parser()
    args = parser.parse_args(argv)
    if bool(args.runs) == bool(args.wandb):
        parser.error("give run directories or --wandb ENTITY/PROJECT (one of the two)")
    if args.filter and not args.wandb:
        parser.error("--filter needs --wandb")
    if args.output and args.output.suffix not in (".md", ".csv"):
        parser.error(f"--output {args.output}: the name must end in .md or .csv")
    from .compare import run

    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
