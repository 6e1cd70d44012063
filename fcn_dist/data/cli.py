"""``fcn-data``: prepare an Arrow copy of VOC, write the synthetic set, validate a dataset.

Examples::

    fcn-data synth --out data/synthetic --train 200 --val 40
    fcn-data check --data-root data/VOCdevkit            # every problem, one line each; exit 1 if any
    fcn-data prepare --data-root data --out data/voc_arrow --splits train val
    fcn-data prepare --data-root data --out data/voc_arrow_decoded --decoded   # raw pixels: no decoding

Also runnable as ``python -m fcn_dist.data.cli``. The parser lives in ``fcn_dist.cli``
(``data_parser``), so ``fcn-data --help`` needs no torch; this module runs the commands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .voc import DataError


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
