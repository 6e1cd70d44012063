"""`fcn-data stats`: counts equal to numpy's over the mask files, the ENet weights, any reader, its JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from data_helpers import copy_voc
from PIL import Image

from fcn_dist.config import DataConfig
from fcn_dist.data import build_reader
from fcn_dist.data.cli import main as data_cli
from fcn_dist.data.stats import count_classes, enet_weights
from fcn_dist.labels import VOC_CLASSES


def _run(args, capsys):
    code = data_cli([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _numpy_counts(voc_root, split: str):
    """Pixels per value (256,) and images per value over the split's mask PNGs, read with PIL alone."""
    voc = voc_root / "VOCdevkit" / "VOC2012"
    ids = (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    pixels, images = np.zeros(256, dtype=np.int64), np.zeros(256, dtype=np.int64)
    for name in ids:
        mask = np.array(Image.open(voc / "SegmentationClass" / f"{name}.png"))
        values, counts = np.unique(mask, return_counts=True)
        pixels[values] += counts
        images[values] += 1
    return len(ids), pixels, images


def test_stats_counts_equal_numpy_and_weights_are_enets_formula(synthetic_voc, tmp_path, capsys):
    out = tmp_path / "stats.json"
    code, stdout, err = _run(["stats", "--data-root", synthetic_voc, "--output", out, "--num-workers", 0], capsys)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["fcn_dist"] == "fcn-data stats" and report["classes"] == list(VOC_CLASSES)
    for split in ("train", "val"):
        images, pixels, per_image = _numpy_counts(synthetic_voc, split)
        got = report["splits"][split]
        assert got["images"] == images
        assert list(got["pixels"].values()) == pixels[:21].tolist()
        assert list(got["images_with_class"].values()) == per_image[:21].tolist()
        assert got["void_pixels"] == pixels[255] > 0 and got["labelled_pixels"] == pixels[:21].sum()
        assert pixels[21:255].sum() == 0
        share = pixels[:21] / pixels[:21].sum()
        assert got["class_weights"] == pytest.approx((1 / np.log(1.02 + share)).tolist(), rel=1e-12)
        assert f"split {split!r}: {images} images, {pixels[:21].sum():,} labelled pixels" in stdout
    assert max(report["splits"]["train"]["class_weights"]) == pytest.approx(1 / math.log(1.02))  # absent classes
    assert "optim.class_weights=[" in stdout and f"wrote {out}" in stdout


def test_count_classes_reads_any_dataset_of_image_mask_pairs():
    """The generic reader interface: anything indexable that yields (image, mask), e.g. a list."""
    rng = np.random.default_rng(0)
    masks = [torch.from_numpy(rng.choice([0, 1, 2, 255], size=(5 + k, 7)).astype(np.uint8)) for k in range(4)]
    masks[1][masks[1] == 2] = 0  # class 2 absent from one image
    dataset = [(torch.zeros(3, *m.shape, dtype=torch.uint8), m) for m in masks]
    counts = count_classes(dataset, 3)
    flat = torch.cat([m.reshape(-1) for m in masks]).numpy()
    assert counts.pixels.tolist() == [int((flat == c).sum()) for c in range(3)]
    assert counts.void == int((flat == 255).sum()) and counts.images == 4
    assert counts.images_per_class.tolist() == [sum(int((m == c).any()) for m in masks) for c in range(3)]
    assert enet_weights(counts.pixels) == [1 / math.log(1.02 + n / counts.labelled) for n in counts.pixels.tolist()]


def test_build_reader_gives_stats_the_same_counts_as_the_cli(synthetic_voc, tmp_path, capsys):
    """fcn-data stats --config and optim.class_weights=auto read through build_reader, as training does."""
    data_cfg = DataConfig(root=str(synthetic_voc), num_workers=0)
    counts = count_classes(build_reader(data_cfg, "train"), 21, num_workers=2)
    _, pixels, _ = _numpy_counts(synthetic_voc, "train")
    assert counts.pixels.tolist() == pixels[:21].tolist()
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  root: {synthetic_voc}\n  format: voc\n")
    code, _, err = _run(["stats", "--config", config, "--split", "train", "--output", tmp_path / "s.json"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "s.json").read_text())
    assert list(report["splits"]) == ["train"] and report["splits"]["train"]["class_weights"] == enet_weights(pixels[:21])


def test_stats_output_never_replaces_a_file_it_did_not_write(synthetic_voc, tmp_path, capsys):
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}\n')
    code, stdout, err = _run(["stats", "--data-root", synthetic_voc, "--output", mine], capsys)
    assert code == 1 and stdout == "" and mine.read_text() == '{"my": "notes"}\n'
    assert err.strip().splitlines() == [f"fcn-data stats: error: {mine} exists and was not written by fcn-data stats; "
                                        "choose another --output, or pass --overwrite to replace it"]
    copy = copy_voc(synthetic_voc, tmp_path / "copy")  # the session's set is never written to, even by a bug
    split_file = copy / "ImageSets" / "Segmentation" / "train.txt"
    before = split_file.read_text()
    code, _, err = _run(["stats", "--data-root", copy, "--output", split_file, "--overwrite"], capsys)
    assert code == 1 and "is an input of fcn-data stats" in err and split_file.read_text() == before
    ours = tmp_path / "stats.json"  # its own output is replaced by a rerun
    assert _run(["stats", "--data-root", synthetic_voc, "--output", ours, "--split", "val"], capsys)[0] == 0
    assert _run(["stats", "--data-root", synthetic_voc, "--output", ours, "--split", "train"], capsys)[0] == 0
    assert list(json.loads(ours.read_text())["splits"]) == ["train"]


def test_stats_errors_are_one_line_in_flags(tmp_path, capsys):
    code, _, err = _run(["stats", "--data-root", tmp_path / "nowhere"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "--data-root" in err and "data.root" not in err
    code, _, err = _run(["stats", "--data-root", tmp_path, "--data-format", "tiff"], capsys)
    assert code == 1 and err.startswith("fcn-data stats: error: --data-format='tiff' is not one of")


def test_stats_on_a_folder_set_counts_its_masks_under_its_own_class_names(tmp_path, capsys):
    """A folder set is found from its files (no --data-format): classes.yaml's names, counts equal numpy's."""
    from fcn_dist.data.synthetic import FOLDER_CLASSES, make_synthetic_folder

    root = make_synthetic_folder(tmp_path / "data", 6, 3, seed=2, max_side=64)
    out = tmp_path / "stats.json"
    code, _, err = _run(["stats", "--data-root", root, "--output", out, "--num-workers", 0], capsys)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["classes"] == list(FOLDER_CLASSES) and report["data_format"] == "folder"
    for split in ("train", "val"):
        stems = (root / "splits" / f"{split}.txt").read_text().split()
        pixels = np.zeros(256, dtype=np.int64)
        for stem in stems:
            pixels += np.bincount(np.array(Image.open(root / "masks" / f"{stem}.png")).ravel(), minlength=256)
        got = report["splits"][split]
        assert got["images"] == len(stems)
        assert list(got["pixels"].values()) == pixels[:len(FOLDER_CLASSES)].tolist()
        assert got["void_pixels"] == pixels[255]
