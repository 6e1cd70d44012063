"""VOCdevkit reader: exact labels, layouts, bad-input errors and `fcn-data check`."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

from data_helpers import copy_voc, problem_lines

from fcn_dist.config import DataConfig
from fcn_dist.data import build_dataset
from fcn_dist.data.check import check_voc
from fcn_dist.data.cli import main as data_cli
from fcn_dist.data.voc import DataError, VOCSegmentation, read_split, resolve_voc_root
from fcn_dist.labels import IGNORE_INDEX, VOC_CLASSES, VOC_PALETTE

# d2l.VOC_COLORMAP, the colours of classes 0..20
D2L_COLORMAP = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128], [0, 128, 128],
                [128, 128, 128], [64, 0, 0], [192, 0, 0], [64, 128, 0], [192, 128, 0], [64, 0, 128],
                [192, 0, 128], [64, 128, 128], [192, 128, 128], [0, 64, 0], [128, 64, 0], [0, 192, 0],
                [128, 192, 0], [0, 64, 128]]


def load_all(root, split: str) -> None:
    dataset = VOCSegmentation(root, split)
    for i in range(len(dataset)):
        dataset[i]


def test_constants():
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background" and VOC_CLASSES[15] == "person"
    assert IGNORE_INDEX == 255
    assert len(VOC_PALETTE) == 768 and all(isinstance(v, int) and 0 <= v <= 255 for v in VOC_PALETTE)
    assert [VOC_PALETTE[3 * i: 3 * i + 3] for i in range(21)] == D2L_COLORMAP
    assert VOC_PALETTE[3 * 255: 3 * 256] == [224, 224, 192]  # the void outline colour
    assert len({tuple(VOC_PALETTE[3 * i: 3 * i + 3]) for i in range(256)}) == 256


def test_root_forms(synthetic_voc):
    voc = synthetic_voc / "VOCdevkit" / "VOC2012"
    assert resolve_voc_root(synthetic_voc) == voc
    assert resolve_voc_root(voc) == voc
    assert VOCSegmentation(voc, "train").ids == VOCSegmentation(synthetic_voc, "train").ids


def test_labels_are_exact_palette_indices(synthetic_voc):
    voc = synthetic_voc / "VOCdevkit" / "VOC2012"
    for split in ("train", "val"):
        dataset = VOCSegmentation(synthetic_voc, split)
        assert dataset.ids == read_split(voc, split) and len(dataset) == {"train": 12, "val": 4}[split]
        sizes = dataset.sizes()
        saw_void = False
        for i, name in enumerate(dataset.ids):
            image, mask = dataset[i]
            png = Image.open(voc / "SegmentationClass" / f"{name}.png")
            assert png.mode == "P"
            expected_mask = np.array(png)
            expected_image = np.array(Image.open(voc / "JPEGImages" / f"{name}.jpg").convert("RGB"))
            assert image.dtype == torch.uint8 and image.shape == (3, *expected_mask.shape)
            assert mask.dtype == torch.uint8 and mask.shape == expected_mask.shape
            assert np.array_equal(mask.numpy(), expected_mask)
            assert np.array_equal(image.permute(1, 2, 0).numpy(), expected_image)
            assert sizes[i] == tuple(expected_mask.shape)
            saw_void |= bool((mask == 255).any())
        assert saw_void


def test_rgb_mask_with_voc_colours_maps_to_indices(synthetic_voc, tmp_path):
    voc = copy_voc(synthetic_voc, tmp_path)
    name = read_split(voc, "train")[0]
    path = voc / "SegmentationClass" / f"{name}.png"
    indices = np.array(Image.open(path))
    Image.open(path).convert("RGB").save(path)
    assert Image.open(path).mode == "RGB"
    assert np.array_equal(VOCSegmentation(voc, "train")[0][1].numpy(), indices)


def test_train_aug_reads_segmentation_class_aug(synthetic_voc, tmp_path):
    voc = copy_voc(synthetic_voc, tmp_path)
    ids = read_split(voc, "train")
    (voc / "SegmentationClassAug").mkdir()
    expected = {}
    for k, name in enumerate(ids):
        mask = np.array(Image.open(voc / "SegmentationClass" / f"{name}.png"))
        mask[0, 0] = 2 + k % 3  # differs from SegmentationClass, so the folder read is visible
        Image.fromarray(mask).save(voc / "SegmentationClassAug" / f"{name}.png")  # grayscale, as SBD aug
        expected[name] = mask
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(ids) + "\n")
    dataset = VOCSegmentation(tmp_path, "train_aug")
    for i, name in enumerate(ids):
        assert np.array_equal(dataset[i][1].numpy(), expected[name])


# Each bad input: (corrupt the copy, return (offending path, split)).
def _missing_image(voc):
    path = voc / "JPEGImages" / f"{read_split(voc, 'train')[1]}.jpg"
    path.unlink()
    return path, "train"


def _missing_mask(voc):
    path = voc / "SegmentationClass" / f"{read_split(voc, 'train')[2]}.png"
    path.unlink()
    return path, "train"


def _corrupt_jpeg(voc):
    path = voc / "JPEGImages" / f"{read_split(voc, 'train')[3]}.jpg"
    path.write_bytes(b"this is not a JPEG")
    return path, "train"


def _truncated_jpeg(voc):
    path = voc / "JPEGImages" / f"{read_split(voc, 'train')[4]}.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path, "train"


def _truncated_png(voc):
    path = voc / "SegmentationClass" / f"{read_split(voc, 'train')[5]}.png"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path, "train"


def _size_mismatch(voc):
    path = voc / "SegmentationClass" / f"{read_split(voc, 'train')[6]}.png"
    img = Image.open(path)
    img.crop((0, 0, img.width - 1, img.height)).save(path)
    return path, "train"


def _bad_values(voc):
    path = voc / "SegmentationClass" / f"{read_split(voc, 'train')[7]}.png"
    mask = np.array(Image.open(path))
    mask[0, :3] = 21  # one past the last VOC class, and not 255
    img = Image.fromarray(mask)
    img.putpalette(VOC_PALETTE)
    img.save(path)
    return path, "train"


def _rgb_non_voc(voc):
    path = voc / "SegmentationClass" / f"{read_split(voc, 'train')[8]}.png"
    rgb = np.array(Image.open(path).convert("RGB"))
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(path)
    return path, "train"


def _empty_split(voc):
    path = voc / "ImageSets" / "Segmentation" / "val.txt"
    path.write_text("\n")
    return path, "val"


def _missing_split(voc):
    return voc / "ImageSets" / "Segmentation" / "nosuch.txt", "nosuch"


BAD_INPUTS = [_missing_image, _missing_mask, _corrupt_jpeg, _truncated_jpeg, _truncated_png, _size_mismatch,
              _bad_values, _rgb_non_voc, _empty_split]


@pytest.mark.parametrize("corrupt", [*BAD_INPUTS, _missing_split], ids=lambda f: f.__name__.strip("_"))
def test_bad_input_names_the_file(synthetic_voc, tmp_path, corrupt):
    voc = copy_voc(synthetic_voc, tmp_path)
    path, split = corrupt(voc)
    with pytest.raises(DataError) as info:
        load_all(tmp_path, split)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_missing_root_names_it(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        VOCSegmentation(tmp_path / "nowhere", "train")
    with pytest.raises(DataError, match="holds no VOC layout"):
        VOCSegmentation(tmp_path, "train")


def test_check_lists_every_problem(synthetic_voc, tmp_path, capsys):
    voc = copy_voc(synthetic_voc, tmp_path)
    paths = [corrupt(voc)[0] for corrupt in BAD_INPUTS]
    # trainval repeats the train ids: each bad file is still reported once
    assert check_voc(tmp_path).problems == check_voc(tmp_path, ["train", "val"]).problems
    assert data_cli(["check", "--data-root", str(tmp_path)]) == 1
    lines = problem_lines(capsys.readouterr().out)
    assert len(lines) == len(BAD_INPUTS)
    for path, line in zip(paths, lines):
        assert str(path) in line
    assert data_cli(["check", "--data-root", str(tmp_path), "--split", "nosuch"]) == 1
    assert "nosuch.txt" in capsys.readouterr().out


def test_check_accepts_a_good_dataset(synthetic_voc, capsys):
    assert data_cli(["check", "--data-root", str(synthetic_voc)]) == 0
    assert "is valid" in capsys.readouterr().out
    assert check_voc(synthetic_voc, num_classes=16).problems == []  # synthetic classes go up to 15 (person)
    assert len(check_voc(synthetic_voc, num_classes=15).problems) > 0


def test_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.voc

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.voc, "download_and_extract_archive", offline)
    cfg = DataConfig(root=str(tmp_path / "voc"), download=True)
    with pytest.raises(DataError) as info:
        build_dataset(cfg, "train", train=False)
    message = str(info.value)
    assert "download" in message and str(tmp_path / "voc" / "VOCdevkit" / "VOC2012") in message


def test_download_is_skipped_when_data_is_there(synthetic_voc, monkeypatch):
    import torchvision.datasets.voc

    def must_not_run(*args, **kwargs):
        raise AssertionError("downloaded although VOC2012 exists")

    monkeypatch.setattr(torchvision.datasets.voc, "download_and_extract_archive", must_not_run)
    assert len(build_dataset(DataConfig(root=str(synthetic_voc), download=True), "val", train=False)) == 4
