"""``fcn-data``: prepare an Arrow copy of VOC, write the synthetic set, validate a dataset.

Examples::

    fcn-data synth --out data/synthetic --train 200 --val 40
    fcn-data check --data-root data/VOCdevkit            # every problem, one line each; exit 1 if any
    fcn-data prepare --data-root data --out data/voc_arrow --splits train val
    fcn-data prepare --data-root data --out data/voc_arrow_decoded --decoded   # raw pixels: no decoding

Also runnable as ``python -m fcn_dist.data.cli``. The parser lives in ``fcn_dist.cli``
(``data_parser``), so ``fcn-data --help`` needs no torch; this module runs the commands. Its
messages name flags (``--data-root``), not the config keys the readers name
(``fcn_dist.cli.in_cli_terms``).

``check`` prints every problem (one line each), then every warning (``warning: ...``), then one
``split 'NAME': ...`` line of counts per split, on stdout; exit 1 if there is any problem.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..cli import DATA_TERMS, in_cli_terms
from ..datafiles import ARROW_MARKER, DataError, arrow_splits
from .check import DEFAULT_SPLITS, CheckReport, SplitSummary, missing_split


def _check_arrow(root: Path, splits: Optional[list[str]], num_classes: int, max_pixels: int,
                 progress: bool) -> CheckReport:
    from .hub import load_arrow

    report = CheckReport()
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


def _check(args: argparse.Namespace) -> int:
    from .check import check_voc

    root = Path(args.data_root).expanduser()
    progress = sys.stderr.isatty()
    if (root / ARROW_MARKER).is_file():
        report = _check_arrow(root, args.split, args.num_classes, args.max_image_pixels, progress)
    else:
        report = check_voc(root, args.split, args.num_classes, progress, args.max_image_pixels)
    for problem in report.problems:
        print(in_cli_terms(problem, DATA_TERMS))
    for warning in report.warnings:
        print(f"warning: {in_cli_terms(warning, DATA_TERMS)}")
    for summary in report.splits:
        print(summary.line(args.num_classes))
    warned = f" ({len(report.warnings)} warning(s))" if report.warnings else ""
    if report.problems:
        print(f"fcn-data check: {len(report.problems)} problem(s) in {root}{warned}", file=sys.stderr)
        return 1
    print(f"fcn-data check: {root} is valid{warned}")
    return 0


def _synth(args: argparse.Namespace, progress: bool) -> int:
    from .synthetic import make_synthetic_voc

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
                            decoded=args.decoded, max_pixels=args.max_image_pixels)
        form = "decoded pixels" if args.decoded else "encoded JPEG/PNG"
        print(f"wrote Arrow dataset {out} ({form}; splits: {' '.join(args.splits)}); train with "
              f"data.format=arrow data.root={out}")
        return 0
    except DataError as err:
        print(f"fcn-data {args.command}: error: {in_cli_terms(str(err), DATA_TERMS)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
