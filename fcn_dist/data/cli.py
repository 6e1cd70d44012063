"""``fcn-data``: prepare an Arrow copy of VOC or a folder set, write the synthetic sets, validate a dataset.

Examples::

    fcn-data synth --out data/synthetic --train 200 --val 40
    fcn-data synth --layout folder --out data/folder_demo [--mask-format rgb | --remap] [--no-split-files]
    fcn-data check --data-root data/folder_demo          # images/ masks/ classes.yaml [splits/]
    fcn-data check --data-root data/VOCdevkit            # every problem, one line each; exit 1 if any
    fcn-data prepare --data-root data --out data/voc_arrow --splits train val
    fcn-data prepare --data-root data --out data/voc_arrow_decoded --decoded   # raw pixels: no decoding

Also runnable as ``python -m fcn_dist.data.cli``. The parser lives in ``fcn_dist.cli``
(``data_parser``), so ``fcn-data --help`` needs no torch; this module runs the commands. Its
messages name flags (``--data-root``), not the config keys the readers name
(``fcn_dist.cli.in_cli_terms``).

The layout of ``--data-root`` is found from its files (``layout``): an Arrow dataset, a VOCdevkit,
or a folder set (``fcn_dist.folderfiles``), whose class names and count come from its classes.yaml.

``check`` prints every problem (one line each), then every warning (``warning: ...``), then one
``split 'NAME': ...`` line of counts per split, on stdout; exit 1 if there is any problem.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..cli import DATA_TERMS, in_cli_terms
from ..datafiles import ARROW_MARKER, DataError, arrow_splits, find_voc_root
from ..folderfiles import class_file, is_folder_root, read_class_spec
from ..labels import VOC_CLASSES
from .check import DEFAULT_SPLITS, CheckReport, SplitSummary, missing_split


def _check_arrow(root: Path, splits: Optional[list[str]], num_classes: Optional[int], max_pixels: int,
                 progress: bool) -> CheckReport:
    from .hub import load_arrow

    report = CheckReport()
    if class_file(root).is_file():  # an Arrow copy of a folder set: its class names
        try:
            report.classes = list(read_class_spec(root).names)
        except DataError as err:
            report.problems.append(str(err))
            return report
        if num_classes is not None and num_classes != len(report.classes):
            report.problems.append(f"{class_file(root)} names {len(report.classes)} classes but --num-classes is "
                                   f"{num_classes}; leave --num-classes out")
            return report
        num_classes = len(report.classes)
    num_classes = num_classes or len(VOC_CLASSES)
    splits = splits or list(dict.fromkeys([*DEFAULT_SPLITS, *arrow_splits(root)]))
    for split in splits:
        try:
            dataset = load_arrow(root, split, num_classes, max_pixels)
        except DataError as err:
            report.problems.append(missing_split(err, split))
            continue
        summary = SplitSummary(split)
        report.splits.append(summary)
        dataset.check(report, summary, progress)
    return report


def layout(root: Path) -> str:
    """The layout of a data root: ``arrow`` (dataset_dict.json), ``voc`` (a VOC2012 folder), else
    ``folder`` when it has a classes.yaml or images/ and masks/, else ``voc`` (whose error says what is missing)."""
    if (root / ARROW_MARKER).is_file():
        return "arrow"
    if find_voc_root(root) is None and is_folder_root(root):
        return "folder"
    return "voc"


def _check(args: argparse.Namespace) -> int:
    from .check import check_folder, check_voc

    root = Path(args.data_root).expanduser()
    progress = sys.stderr.isatty()
    kind = layout(root)
    if kind == "arrow":
        report = _check_arrow(root, args.split, args.num_classes, args.max_image_pixels, progress)
    elif kind == "folder":
        report = check_folder(root, args.split, progress, args.max_image_pixels, args.val_fraction, args.split_seed,
                              args.num_classes)
    else:
        report = check_voc(root, args.split, args.num_classes or len(VOC_CLASSES), progress, args.max_image_pixels)
    num_classes = len(report.classes) if report.classes else args.num_classes or len(VOC_CLASSES)
    for problem in report.problems:
        print(in_cli_terms(problem, DATA_TERMS))
    for warning in report.warnings:
        print(f"warning: {in_cli_terms(warning, DATA_TERMS)}")
    for summary in report.splits:
        print(summary.line(num_classes, report.classes))
    warned = f" ({len(report.warnings)} warning(s))" if report.warnings else ""
    if report.problems:
        print(f"fcn-data check: {len(report.problems)} problem(s) in {root}{warned}", file=sys.stderr)
        return 1
    print(f"fcn-data check: {root} is valid{warned}")
    return 0


def _synth(args: argparse.Namespace, progress: bool) -> int:
    from .synthetic import make_synthetic_folder, make_synthetic_voc

    if args.layout == "folder":
        out = make_synthetic_folder(args.out, args.train, args.val, seed=args.seed, max_side=args.max_side,
                                    mask_format=args.mask_format, remap=args.remap,
                                    split_files=not args.no_split_files, progress=progress)
        splits = "splits/train.txt and splits/val.txt" if not args.no_split_files else "no split files"
        print(f"wrote {args.train + args.val} images ({args.mask_format} masks{', remapped' if args.remap else ''}; "
              f"{splits}) to {out}; train with data.format=folder data.root={out} model.num_classes=7")
        return 0
    target = Path(args.out) / "VOCdevkit" / "VOC2012"
    if target.exists():  # the generator would write into it: never over files the user made
        raise DataError(f"{target} already exists: fcn-data synth only writes a new set; choose another --out")
    voc = make_synthetic_voc(args.out, args.train, args.val, seed=args.seed, max_side=args.max_side,
                             progress=progress)
    print(f"wrote {args.train} train and {args.val} val images to {voc}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``fcn-data`` (``fcn_dist.cli.data_main``); returns the exit status."""
    from fcn_dist.cli import data_main

    return data_main(argv)


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``fcn-data`` command; returns the exit status."""
    progress = sys.stderr.isatty()
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "synth":
            return _synth(args, progress)
        from .hub import prepare_arrow
        out = prepare_arrow(args.data_root, args.out, args.splits, args.num_classes, progress=progress,
                            decoded=args.decoded, max_pixels=args.max_image_pixels, val_fraction=args.val_fraction,
                            split_seed=args.split_seed)
        form = "decoded pixels" if args.decoded else "encoded JPEG/PNG"
        print(f"wrote Arrow dataset {out} ({form}; splits: {' '.join(args.splits)}); train with "
              f"data.format=arrow data.root={out}")
        return 0
    except DataError as err:
        print(f"fcn-data {args.command}: error: {in_cli_terms(str(err), DATA_TERMS)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
