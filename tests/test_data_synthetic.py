"""Synthetic VOC-layout set: layout, determinism, void borders, first-use generation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn_dist.config import DataConfig
from fcn_dist.data.cli import main as data_cli
from fcn_dist.data.synthetic import SYNTHETIC_CLASSES, ensure_synthetic, make_synthetic_voc
from fcn_dist.data.check import check_voc
from fcn_dist.data.voc import DataError
from fcn_dist.labels import VOC_PALETTE


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_split_files(tmp_path):
    voc = make_synthetic_voc(tmp_path, num_train=10, num_val=5, seed=1, max_side=120)
    assert voc == tmp_path / "VOCdevkit" / "VOC2012"
    splits = voc / "ImageSets" / "Segmentation"
    train, val = (splits / "train.txt").read_text().split(), (splits / "val.txt").read_text().split()
    assert len(train) == 10 and len(val) == 5 and not set(train) & set(val)
    assert (splits / "trainval.txt").read_text().split() == train + val
    assert sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg")) == sorted(train + val)
    assert check_voc(tmp_path).problems == []
    allowed = {0, 255, *SYNTHETIC_CLASSES}
    shapes = set()
    for name in train + val:
        image = Image.open(voc / "JPEGImages" / f"{name}.jpg")
        mask = Image.open(voc / "SegmentationClass" / f"{name}.png")
        assert image.format == "JPEG" and image.mode == "RGB" and mask.mode == "P"
        assert mask.getpalette()[:768] == VOC_PALETTE and mask.size == image.size
        values = set(np.unique(np.array(mask)).tolist())
        assert values <= allowed and values & set(SYNTHETIC_CLASSES) and 255 in values
        assert max(image.size) <= 120 and min(image.size) >= 16
        shapes.add("portrait" if image.height > image.width else "landscape")
    assert shapes == {"portrait", "landscape"}


def test_void_band_separates_every_pair_of_labels(tmp_path):
    voc = make_synthetic_voc(tmp_path, num_train=20, num_val=0, seed=2, max_side=160)
    for path in (voc / "SegmentationClass").glob("*.png"):
        mask = np.array(Image.open(path)).astype(np.int16)
        # the band is >= 3 px wide: two pixels with different labels within 3 px along a row or a
        # column cannot both be non-void
        for step in (1, 2, 3):
            for a, b in ((mask[step:], mask[:-step]), (mask[:, step:], mask[:, :-step])):
                touching = (a != b) & (a != 255) & (b != 255)
                assert not touching.any(), (path, step)
        void = mask == 255
        assert 0.005 < void.mean() < 0.3


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = files_of(make_synthetic_voc(tmp_path / "a", 6, 2, seed=5, max_side=100))
    b = files_of(make_synthetic_voc(tmp_path / "b", 6, 2, seed=5, max_side=100))
    c = files_of(make_synthetic_voc(tmp_path / "c", 6, 2, seed=6, max_side=100))
    assert a == b and len(a) == 8 * 2 + 3
    assert a.keys() == c.keys() and a["JPEGImages/train_00000.jpg"] != c["JPEGImages/train_00000.jpg"]


def test_full_size_set_has_images_the_d2l_crop_drops(tmp_path):
    voc = make_synthetic_voc(tmp_path, num_train=40, num_val=0, seed=0, max_side=500)
    sizes = [Image.open(p).size for p in (voc / "JPEGImages").glob("*.jpg")]
    kept = [(w, h) for w, h in sizes if h >= 320 and w >= 480]
    assert 0 < len(kept) < len(sizes) and max(max(s) for s in sizes) == 500


def test_synth_cli(tmp_path, capsys):
    assert data_cli(["synth", "--out", str(tmp_path), "--train", "3", "--val", "2", "--max-side", "64"]) == 0
    assert "VOC2012" in capsys.readouterr().out
    assert len(list((tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))) == 5
    with pytest.raises(SystemExit):
        data_cli(["synth", "--out", str(tmp_path), "--max-side", "8"])


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(format="synthetic", root=str(root), synthetic_train=kw.get("train", 4), synthetic_val=2,
                      synthetic_max_side=64, synthetic_seed=kw.get("seed", 0))


def test_ensure_synthetic_generates_once(tmp_path):
    root = tmp_path / "data"
    assert ensure_synthetic(_cfg(root)) == root
    marker = root / "VOCdevkit" / "VOC2012" / "synthetic.json"
    first = files_of(root)
    stamp = marker.stat().st_mtime_ns
    assert ensure_synthetic(_cfg(root)) == root and marker.stat().st_mtime_ns == stamp
    assert files_of(root) == first and sorted(p.name for p in root.iterdir()) == ["VOCdevkit"]
    assert json.loads(marker.read_text())["num_train"] == 4
    with pytest.raises(DataError, match="generated with"):
        ensure_synthetic(_cfg(root, train=5))


def test_ensure_synthetic_refuses_a_foreign_voc(synthetic_voc, tmp_path):
    import shutil

    shutil.copytree(synthetic_voc / "VOCdevkit", tmp_path / "VOCdevkit")
    with pytest.raises(DataError, match="not a complete synthetic set"):
        ensure_synthetic(_cfg(tmp_path))


def test_ensure_synthetic_is_safe_when_processes_race(tmp_path):
    root = tmp_path / "data"
    code = ("import sys; from fcn_dist.config import DataConfig; from fcn_dist.data.synthetic import "
            "ensure_synthetic; ensure_synthetic(DataConfig(format='synthetic', root=sys.argv[1], "
            "synthetic_train=30, synthetic_val=10, synthetic_max_side=200))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], env=env, cwd=tmp_path) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert sorted(p.name for p in root.iterdir()) == ["VOCdevkit"]
    reference = make_synthetic_voc(tmp_path / "ref", 30, 10, seed=0, max_side=200)
    expected = files_of(reference)
    got = files_of(root / "VOCdevkit" / "VOC2012")
    assert got.pop("synthetic.json") and got == expected
