"""``fcn-data``: prepare an Arrow copy of VOC or a folder set, write the synthetic sets, validate a dataset.

Examples::

    fcn-data synth --out data/synthetic --train 200 --val 40
    fcn-data synth --layout folder --out data/folder_demo [--mask-format rgb | --remap] [--no-split-files]
    fcn-data check --data-root data/folder_demo          # images/ masks/ classes.yaml [splits/]
    fcn-data check --data-root data/VOCdevkit            # every problem, one line each; exit 1 if any
    fcn-data prepare --data-root data --out data/voc_arrow --splits train val
    fcn-data prepare --data-root data --out data/voc_arrow_decoded --decoded   # raw pixels: no decoding
    fcn-data stats --data-root data/synthetic --output stats.json   # pixels per class, class weights

Also runnable as ``python -m fcn_dist.data.cli``. The parser lives in ``fcn_dist.cli``
(``data_parser``), so ``fcn-data --help`` needs no torch; this module runs the commands. Its
messages name flags (``--data-root``), not the config keys the readers name
(``fcn_dist.cli.in_cli_terms``).

The layout of ``--data-root`` is found from its files (``layout``): an Arrow dataset, a VOCdevkit,
or a folder set (``fcn_dist.folderfiles``), whose class names and count come from its classes.yaml.

``check`` prints every problem (one line each), then every warning (``warning: ...``), then one
``split 'NAME': ...`` line of counts per split, on stdout; exit 1 if there is any problem.

``stats`` counts pixels and images per class of each split through ``build_reader`` (any
``data.format``) and ``fcn_dist.data.stats``, prints them with the suggested class weights and
optionally writes them as JSON (``--output``, never over a file it did not write).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..cli import DATA_TERMS, in_cli_terms
from ..datafiles import ARROW_MARKER, DataError, arrow_splits, find_voc_root
from ..folderfiles import class_file, class_source, data_classes, is_folder_root, read_class_spec
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


STATS_MARK = "fcn-data stats"
"""The ``fcn_dist`` key of a stats JSON: how ``--output`` recognises a file it wrote."""


def _stats_source(args: argparse.Namespace):
    """(DataConfig, splits, class names, terms for messages) of ``fcn-data stats``' arguments."""
    from ..config import DataConfig, load_config
    from ..labels import class_names

    args.terms = {} if args.config is not None else {**DATA_TERMS, "data.format": "--data-format"}  # for errors
    if args.config is not None:
        cfg = load_config(args.config, args.overrides)
        names = class_names(cfg.data.classes, cfg.model.num_classes)
        data_cfg = dataclasses.replace(cfg.data, num_workers=args.num_workers, max_image_pixels=args.max_image_pixels)
        return data_cfg, args.split or list(dict.fromkeys([cfg.data.train_split, cfg.data.val_split])), names, args.terms
    root = Path(args.data_root).expanduser()
    data_format = args.data_format or layout(root)
    data_cfg = DataConfig(root=str(root), format=data_format, hub_name=str(root) if data_format == "hub" else "",
                          num_workers=args.num_workers, max_image_pixels=args.max_image_pixels)
    if class_source(data_cfg) is not None:  # a folder set or its Arrow copy: classes.yaml names the classes
        names = data_classes(data_cfg)
    else:
        names = class_names(None, args.num_classes or len(VOC_CLASSES))
    data_cfg = dataclasses.replace(data_cfg, classes=names)
    return data_cfg, args.split or list(DEFAULT_SPLITS), names, args.terms


def _is_stats_json(path: Path) -> bool:
    try:
        return path.stat().st_size < 10 * 2**20 and json.loads(path.read_text()).get("fcn_dist") == STATS_MARK
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def _stats_lines(split: str, counts, names: list[str], weights: Optional[list[float]]) -> list[str]:
    """The printed block of one split: totals, a row per class, the suggested weights."""
    from .stats import WEIGHTS_FORMULA

    total = counts.labelled + counts.void
    void_share = f" ({100 * counts.void / total:.1f}%)" if total else ""
    lines = [f"split {split!r}: {counts.images} image{'' if counts.images == 1 else 's'}, {counts.labelled:,} "
             f"labelled pixels, {counts.void:,} void{void_share}"]
    width = max(len("class"), *(len(n) for n in names))
    digits = max(len("pixels"), len(f"{int(counts.pixels.max()):,}"))
    lines.append(f"  {'class':<{width}}  {'pixels':>{digits}}   share  images")
    for name, pixels, images in zip(names, counts.pixels.tolist(), counts.images_per_class.tolist()):
        share = f"{100 * pixels / counts.labelled:5.1f}%" if counts.labelled else "    -"
        lines.append(f"  {name:<{width}}  {pixels:>{digits},}  {share}  {images:>6}")
    if weights is None:
        lines.append("  suggested class weights: none (no labelled pixel)")
    else:
        lines.append(f"  suggested class weights ({WEIGHTS_FORMULA}):")
        lines.append(f"  optim.class_weights=[{','.join(f'{w:.6g}' for w in weights)}]")
    return lines


def _stats(args: argparse.Namespace, progress: bool) -> int:
    from ..files import atomic_write_text, refuse_overwrites
    from . import build_reader
    from .stats import WEIGHTS_FORMULA, count_classes, enet_weights

    data_cfg, splits, names, args.terms = _stats_source(args)
    if args.output is not None:  # before anything is read
        refuse_overwrites([args.output], [], args.overwrite, _is_stats_json, STATS_MARK,
                          input_dirs=(Path(data_cfg.root).expanduser(),))
    from ..process import loader_worker_init

    report = {"fcn_dist": STATS_MARK, "data_root": data_cfg.root, "data_format": data_cfg.format,
              "num_classes": len(names), "classes": names, "class_weights_formula": WEIGHTS_FORMULA, "splits": {}}
    for split in splits:
        counts = count_classes(build_reader(data_cfg, split), len(names), data_cfg.num_workers,
                               loader_worker_init(), progress=progress, desc=f"stats {split}")
        weights = enet_weights(counts.pixels) if counts.labelled else None
        print("\n".join(_stats_lines(split, counts, names, weights)), flush=True)
        report["splits"][split] = {
            "images": counts.images, "labelled_pixels": counts.labelled, "void_pixels": counts.void,
            "pixels": dict(zip(names, counts.pixels.tolist())),
            "images_with_class": dict(zip(names, counts.images_per_class.tolist())), "class_weights": weights}
    if args.output is not None:
        atomic_write_text(args.output, json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.output}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``fcn-data`` (``fcn_dist.cli.data_main``); returns the exit status."""
    from fcn_dist.cli import data_main

    return data_main(argv)


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``fcn-data`` command; returns the exit status."""
    from ..config import ConfigError
    from ..files import OverwriteError

    progress = sys.stderr.isatty()
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "synth":
            return _synth(args, progress)
        if args.command == "stats":
            return _stats(args, progress)
        from .hub import prepare_arrow
        out = prepare_arrow(args.data_root, args.out, args.splits, args.num_classes, progress=progress,
                            decoded=args.decoded, max_pixels=args.max_image_pixels, val_fraction=args.val_fraction,
                            split_seed=args.split_seed)
        form = "decoded pixels" if args.decoded else "encoded JPEG/PNG"
        print(f"wrote Arrow dataset {out} ({form}; splits: {' '.join(args.splits)}); train with "
              f"data.format=arrow data.root={out}")
        return 0
    except (DataError, ConfigError, OverwriteError) as err:
        terms = getattr(args, "terms", DATA_TERMS)
        print(f"fcn-data {args.command}: error: {in_cli_terms(str(err), terms)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
