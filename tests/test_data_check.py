"""`fcn-data check` as a user runs it (every split training reads, warnings, counts, CLI words), the pixel
limit, the EXIF rule of the readers, and `fcn-data prepare`/`synth` never replacing a folder."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from data_helpers import copy_voc, problem_lines, save_with_orientation
from PIL import Image

from fcn_dist.config import DEFAULT_MAX_IMAGE_PIXELS, DataConfig
from fcn_dist.data import build_dataset
from fcn_dist.data.cli import main as data_cli
from fcn_dist.data.voc import DataError, VOCSegmentation, image_size, read_split
from fcn_dist.labels import VOC_CLASSES
from test_data_voc import BAD_INPUTS


def _run(args, capsys):
    code = data_cli([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_default_pixel_limit_is_pillows():
    assert DEFAULT_MAX_IMAGE_PIXELS == 2 * Image.MAX_IMAGE_PIXELS  # where Image.open raises DecompressionBombError


def test_an_exif_rotated_square_image_is_warned_about_and_named(synthetic_voc, tmp_path, capsys):
    """The rule: images are read as stored (their masks label the stored pixels); check warns about the tag."""
    voc = copy_voc(synthetic_voc, tmp_path)
    name = read_split(voc, "train")[2]
    image_path, mask_path = voc / "JPEGImages" / f"{name}.jpg", voc / "SegmentationClass" / f"{name}.png"
    image, mask = Image.open(image_path), Image.open(mask_path)
    side = min(image.size)
    stored = image.crop((0, 0, side, side))
    save_with_orientation(stored, image_path, 6, quality=95)
    mask.crop((0, 0, side, side)).save(mask_path)
    code, out, err = _run(["check", "--data-root", tmp_path], capsys)
    assert code == 0, out + err  # a warning, not a problem: the square mask fits the stored pixels
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and f"{image_path}: EXIF orientation 6" in warnings[0], out
    assert "read the stored pixels" in warnings[0] and "1 warning(s)" in out
    # what training reads: the stored pixels, not the view that viewers turn
    index = read_split(voc, "train").index(name)
    got = VOCSegmentation(tmp_path, "train")[index][0].permute(1, 2, 0).numpy()
    assert np.array_equal(got, np.asarray(Image.open(image_path).convert("RGB")))


def test_a_size_mismatch_that_exif_explains_says_so(synthetic_voc, tmp_path, capsys):
    voc = copy_voc(synthetic_voc, tmp_path)
    ids = read_split(voc, "train")
    name = next(i for i in ids if len(set(Image.open(voc / "JPEGImages" / f"{i}.jpg").size)) == 2)  # not square
    image_path, mask_path = voc / "JPEGImages" / f"{name}.jpg", voc / "SegmentationClass" / f"{name}.png"
    save_with_orientation(Image.open(image_path), image_path, 6, quality=95)
    # the mask drawn on the view a viewer shows (turned 90 degrees clockwise for orientation 6)
    Image.open(mask_path).transpose(Image.Transpose.ROTATE_270).save(mask_path)
    with pytest.raises(DataError) as info:
        VOCSegmentation(tmp_path, "train")[ids.index(name)]
    message = str(info.value)
    assert str(mask_path) in message and "EXIF orientation 6" in message and "likely cause" in message
    code, out, _ = _run(["check", "--data-root", tmp_path], capsys)
    assert code == 1 and problem_lines(out) == [message]


def test_a_huge_jpeg_is_listed_with_every_other_problem(synthetic_voc, tmp_path, huge_jpeg, capsys):
    voc = copy_voc(synthetic_voc, tmp_path)
    paths = [corrupt(voc)[0] for corrupt in BAD_INPUTS]
    huge = voc / "JPEGImages" / f"{read_split(voc, 'train')[9]}.jpg"  # BAD_INPUTS spoil train ids 1-8 and val
    shutil.copyfile(huge_jpeg, huge)
    code, out, err = _run(["check", "--data-root", tmp_path], capsys)
    assert code == 1
    lines = problem_lines(out)
    assert len(lines) == len(BAD_INPUTS) + 1, out
    for path in paths:
        assert sum(str(path) in line for line in lines) == 1, (path, out)
    (huge_line,) = [line for line in lines if str(huge) in line]
    assert "14000x14000 pixels (196.0 Mpx) is above --max-image-pixels=178956970" in huge_line
    assert f"{len(lines)} problem(s)" in err


def test_a_missing_val_split_is_a_problem(synthetic_voc, tmp_path, capsys):
    voc = copy_voc(synthetic_voc, tmp_path)
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    code, out, err = _run(["check", "--data-root", tmp_path], capsys)
    assert code == 1
    assert problem_lines(out) == [
        f"split file {voc / 'ImageSets' / 'Segmentation' / 'val.txt'} not found; available splits: train, trainval; "
        "fcn-train and fcn-eval read 'val' unless told otherwise: add it, or name your splits with --split"]
    assert _run(["check", "--data-root", tmp_path, "--split", "train"], capsys)[0] == 0


def test_counts_per_split_are_exact(synthetic_voc, capsys):
    code, out, _ = _run(["check", "--data-root", synthetic_voc], capsys)
    assert code == 0
    voc = synthetic_voc / "VOCdevkit" / "VOC2012"
    summaries = [line for line in out.splitlines() if line.startswith("split '")]
    assert [line.split("'")[1] for line in summaries] == ["train", "val", "trainval"]
    names = {**dict(enumerate(VOC_CLASSES)), 255: "void"}
    for split, line in zip(("train", "val", "trainval"), summaries):
        ids = read_split(voc, split)
        masks = [np.asarray(Image.open(voc / "SegmentationClass" / f"{i}.png")) for i in ids]
        heights, widths = [m.shape[0] for m in masks], [m.shape[1] for m in masks]
        counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=256)
        shares = ", ".join(f"{names[k]} {int(n):,} ({100 * n / counts.sum():.1f}%)" for k, n in enumerate(counts) if n)
        assert line == (f"split '{split}': {len(ids)} images, height {min(heights)}-{max(heights)}, "
                        f"width {min(widths)}-{max(widths)}; pixels per class: {shares}")


def test_messages_name_the_flags_not_config_keys(tmp_path, capsys):
    code, out, err = _run(["check", "--data-root", tmp_path / "nowhere"], capsys)
    assert code == 1
    assert problem_lines(out) == [
        f"data root {tmp_path / 'nowhere'} does not exist: expected {tmp_path / 'nowhere'}/VOCdevkit/VOC2012 or a "
        "VOC2012 folder with JPEGImages/ and ImageSets/Segmentation/; set --data-root to such a folder"]
    assert "data.root" not in out + err


def test_the_pixel_limit_is_configurable_both_ways(synthetic_voc, huge_jpeg):
    voc = synthetic_voc / "VOCdevkit" / "VOC2012"
    first = voc / "JPEGImages" / f"{read_split(voc, 'val')[0]}.jpg"
    h, w = Image.open(first).height, Image.open(first).width
    small = DataConfig(root=str(synthetic_voc), max_image_pixels=h * w - 1)
    with pytest.raises(DataError) as info:
        build_dataset(small, "val", train=False)[0]
    assert str(info.value).startswith(f"{first}: {w}x{h} pixels") and f"data.max_image_pixels={h * w - 1}" in str(info.value)
    assert build_dataset(DataConfig(root=str(synthetic_voc), max_image_pixels=h * w), "val", train=False)[0]
    # above Pillow's own limit, when asked for: the header is read, no DecompressionBombError
    saved = Image.MAX_IMAGE_PIXELS
    assert image_size(huge_jpeg, "huge", max_pixels=14000 * 14000) == (14000, 14000)
    assert Image.MAX_IMAGE_PIXELS == saved  # Pillow's own check is back for everything else
    with pytest.raises(DataError, match=r"huge: 14000x14000 pixels \(196.0 Mpx\) is above data.max_image_pixels"):
        image_size(huge_jpeg, "huge")
    with pytest.raises(SystemExit) as exc:  # the flag takes whole numbers >= 1
        data_cli(["check", "--data-root", str(synthetic_voc), "--max-image-pixels", "0"])
    assert exc.value.code == 2


def test_prepare_never_replaces_or_fills_an_existing_folder(synthetic_voc, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    code, _, err = _run(["prepare", "--data-root", synthetic_voc, "--out", out], capsys)
    assert code == 1 and err.strip().splitlines() == [
        f"fcn-data prepare: error: {out} already exists: fcn-data prepare only creates a new folder, it never "
        "replaces or adds to one; choose another --out"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"
    before = _tree_digest(synthetic_voc)
    code, _, err = _run(["prepare", "--data-root", synthetic_voc, "--out", synthetic_voc / "VOCdevkit"], capsys)
    assert code == 1 and "already exists" in err
    assert _tree_digest(synthetic_voc) == before


def test_synth_never_writes_into_an_existing_set(synthetic_voc, tmp_path, capsys):
    voc = copy_voc(synthetic_voc, tmp_path)
    before = _tree_digest(voc)
    code, _, err = _run(["synth", "--out", tmp_path, "--train", "2", "--val", "1"], capsys)
    assert code == 1 and f"{voc} already exists" in err and "--out" in err
    assert _tree_digest(voc) == before



def test_a_very_large_image_is_warned_about(synthetic_voc, tmp_path, capsys):
    voc = copy_voc(synthetic_voc, tmp_path)
    name = read_split(voc, "train")[0]
    image_path = voc / "JPEGImages" / f"{name}.jpg"
    Image.new("RGB", (4100, 4000), (90, 120, 150)).save(image_path, quality=50)  # 16.4 Mpx, solid: small file
    Image.new("P", (4100, 4000), 0).save(voc / "SegmentationClass" / f"{name}.png")
    code, out, _ = _run(["check", "--data-root", tmp_path, "--split", "train"], capsys)
    assert code == 0, out
    assert [line for line in out.splitlines() if line.startswith("warning: ")] == [
        f"warning: {image_path}: 4100x4000 pixels (16.4 Mpx) is very large: every read decodes all of it, and "
        "evaluation runs it whole; downscale it unless you need that resolution"]
