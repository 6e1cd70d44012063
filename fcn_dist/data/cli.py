"""``fcn-data``: prepare an Arrow copy of VOC, write the synthetic set, validate a dataset.

Examples::

    fcn-data synth --out data/synthetic --train 200 --val 40
    fcn-data check --data-root data/VOCdevkit            # every problem, one line each; exit 1 if any
    fcn-data prepare --data-root data --out data/voc_arrow --splits train val
    fcn-data prepare --data-root data --out data/voc_arrow_decoded --decoded   # raw pixels: no decoding

Also runnable as ``python -m fcn_dist.data.cli``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .voc import VOC_CLASSES, DataError


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


def _side(text: str) -> int:
    value = int(text)
    if value < 16:
        raise argparse.ArgumentTypeError(f"{text} must be >= 16")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcn-data", description="Prepare an Arrow copy of VOC, write the synthetic set, validate a dataset.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  fcn-data synth --out data/synthetic --train 200 --val 40\n"
               "  fcn-data check --data-root data/VOCdevkit\n"
               "  fcn-data prepare --data-root data --out data/voc_arrow --splits train val\n\n"
               "Run `fcn-data COMMAND --help` for the options of each command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prepare = sub.add_parser(
        "prepare", help="convert VOCdevkit splits to an Arrow dataset (data.format=arrow)",
        description="Validate and convert VOCdevkit splits into a datasets.DatasetDict saved with save_to_disk "
                    "(original JPEG/PNG bytes, or raw pixels with --decoded; memory-mapped when read). Train "
                    "with data.format=arrow data.root=OUT.")
    prepare.add_argument("--data-root", required=True, help="folder holding VOCdevkit/VOC2012, or VOC2012 itself")
    prepare.add_argument("--out", required=True, help="output folder (must not exist)")
    prepare.add_argument("--splits", nargs="+", default=["train", "val"],
                         help="split names from ImageSets/Segmentation; train_aug uses SegmentationClassAug "
                              "(default: train val)")
    prepare.add_argument("--num-classes", type=int, default=len(VOC_CLASSES),
                         help="mask values must be < this or 255 (default: 21)")
    prepare.add_argument("--decoded", action="store_true",
                         help="store decoded uint8 pixels instead of the JPEG/PNG files: reads skip decoding "
                              "(~9x faster per image) at ~12x the disk and page cache; for CPU-bound loaders "
                              "(few CPU cores per GPU)")

    synth = sub.add_parser(
        "synth", help="write the synthetic VOC-layout dataset",
        description="Write OUT/VOCdevkit/VOC2012: JPEGs of mixed sizes, palette PNG masks with void borders, "
                    "split files. The same arguments write byte-identical files.")
    synth.add_argument("--out", required=True, help="output folder (the set goes to OUT/VOCdevkit/VOC2012)")
    synth.add_argument("--train", type=_count, default=200, help="training images (default: 200)")
    synth.add_argument("--val", type=_count, default=40, help="validation images (default: 40)")
    synth.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    synth.add_argument("--max-side", type=_side, default=500, help="longest image side in pixels (default: 500)")

    check = sub.add_parser(
        "check", help="validate a dataset and list every problem",
        description="Decode every image and mask and report every problem, one line each: missing root, split "
                    "file or listed file; empty split; corrupt or truncated file; mask size differing from its "
                    "image; mask values outside 0..C-1 and not 255; RGB masks with non-VOC colours. Exits 1 if "
                    "there is any problem, 0 otherwise. DATA_ROOT may also be an Arrow dataset from "
                    "`fcn-data prepare`.")
    check.add_argument("--data-root", required=True, help="folder holding VOCdevkit/VOC2012, VOC2012 itself, "
                                                          "or a prepared Arrow dataset")
    check.add_argument("--split", nargs="+", default=None, help="splits to check (default: all split files)")
    check.add_argument("--num-classes", type=int, default=len(VOC_CLASSES),
                       help="mask values must be < this or 255 (default: 21)")
    return parser


def _check_arrow(root: Path, splits: Optional[list[str]], num_classes: int, progress: bool) -> list[str]:
    import json

    from .hub import load_arrow

    splits = splits or json.loads((root / "dataset_dict.json").read_text())["splits"]
    problems = []
    for split in splits:
        try:
            problems += load_arrow(root, split, num_classes).check(progress)
        except DataError as err:
            problems.append(str(err))
    return problems


def _check(args: argparse.Namespace) -> int:
    from .voc import check_voc

    root = Path(args.data_root).expanduser()
    if (root / "dataset_dict.json").is_file():
        problems = _check_arrow(root, args.split, args.num_classes, sys.stderr.isatty())
    else:
        problems = check_voc(root, args.split, args.num_classes, progress=sys.stderr.isatty())
    for problem in problems:
        print(problem)
    if problems:
        print(f"fcn-data check: {len(problems)} problem(s) in {root}", file=sys.stderr)
        return 1
    print(f"fcn-data check: {root} is valid")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``fcn-data``; returns the exit status."""
    args = _parser().parse_args(argv)
    progress = sys.stderr.isatty()
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "synth":
            from .synthetic import make_synthetic_voc
            voc = make_synthetic_voc(args.out, args.train, args.val, seed=args.seed, max_side=args.max_side,
                                     progress=progress)
            print(f"wrote {args.train} train and {args.val} val images to {voc}")
            return 0
        from .hub import prepare_arrow
        out = prepare_arrow(args.data_root, args.out, args.splits, args.num_classes, progress=progress,
                            decoded=args.decoded)
        form = "decoded pixels" if args.decoded else "encoded JPEG/PNG"
        print(f"wrote Arrow dataset {out} ({form}; splits: {' '.join(args.splits)}); train with "
              f"data.format=arrow data.root={out}")
        return 0
    except DataError as err:
        print(f"fcn-data {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
