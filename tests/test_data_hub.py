"""Arrow (`fcn-data prepare`, data.format=arrow) and hub (data.format=hub) sources."""

from __future__ import annotations

import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from data_helpers import problem_lines
from PIL import Image

from fcn_dist.config import load_config
from fcn_dist.data import build_dataloaders, build_dataset
from fcn_dist.data.cli import main as data_cli
from fcn_dist.data.hub import ArrowSegmentation, load_arrow, prepare_arrow
from fcn_dist.model import normalize
from fcn_dist.data.voc import DataError, VOCSegmentation, read_split
from fcn_dist.model import build_model

CLASSES16 = [f"class{i}" for i in range(16)]  # the synthetic set uses indices up to 15


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch):
    """Keep datasets' cache (parquet -> Arrow conversion) under tmp_path."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


@pytest.fixture(scope="module")
def arrow_root(synthetic_voc, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("arrow") / "voc_arrow"
    assert data_cli(["prepare", "--data-root", str(synthetic_voc), "--out", str(out)]) == 0
    return out


def test_arrow_equals_voc_reader_sample_for_sample(synthetic_voc, arrow_root):
    voc = synthetic_voc / "VOCdevkit" / "VOC2012"
    saved = datasets.load_from_disk(str(arrow_root))
    assert sorted(saved) == ["train", "val"]
    assert set(saved["train"].column_names) == {"name", "height", "width", "image", "mask"}
    for split in ("train", "val"):
        arrow, reader = load_arrow(arrow_root, split), VOCSegmentation(synthetic_voc, split)
        assert len(arrow) == len(reader) == len(read_split(voc, split))
        assert arrow.table.cache_files  # memory-mapped from the saved files, not copied into RAM
        assert arrow.sizes() == reader.sizes()
        for i, name in enumerate(read_split(voc, split)):
            image, mask = arrow[i]
            expected_mask = np.array(Image.open(voc / "SegmentationClass" / f"{name}.png"))
            assert mask.dtype == torch.uint8 and np.array_equal(mask.numpy(), expected_mask)
            assert torch.equal(image, reader[i][0]) and torch.equal(mask, reader[i][1])
            assert saved[split][i]["name"] == name


def _batches_equal(a, b) -> bool:
    """Stacked train batches, or val batches as lists of whole images (``list_collate``)."""
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


def test_arrow_format_goes_through_build_dataloaders(synthetic_voc, arrow_root):
    common = ["data.crop_size=[32,48]", "data.batch_size=3", "data.num_workers=0", "data.eval_batch_size=2",
              "train.seed=7"]
    arrow_loaders = build_dataloaders(load_config(None, ["data.format=arrow", f"data.root={arrow_root}", *common]))
    voc_loaders = build_dataloaders(load_config(None, ["data.format=voc", f"data.root={synthetic_voc}", *common]))
    for arrow_loader, voc_loader in zip(arrow_loaders, voc_loaders):
        pairs = list(zip(arrow_loader, voc_loader))
        assert len(pairs) == len(voc_loader) > 0
        for (a_images, a_masks), (v_images, v_masks) in pairs:
            assert _batches_equal(a_images, v_images) and _batches_equal(a_masks, v_masks)


@pytest.mark.parametrize("decoded", [False, True])
def test_prepare_refuses_to_overwrite_and_validates(synthetic_voc, arrow_root, tmp_path, decoded):
    with pytest.raises(DataError, match=str(arrow_root)):
        prepare_arrow(synthetic_voc, arrow_root, decoded=decoded)
    shutil.copytree(synthetic_voc / "VOCdevkit", tmp_path / "VOCdevkit")
    bad = tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages" / "train_00002.jpg"
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "arrow"
    with pytest.raises(DataError, match=str(bad)):
        prepare_arrow(tmp_path, out, decoded=decoded)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["VOCdevkit"]


def test_check_lists_bad_arrow_rows(synthetic_voc, tmp_path, capsys):
    rows = []
    voc = synthetic_voc / "VOCdevkit" / "VOC2012"
    for k, name in enumerate(read_split(voc, "val")):
        image = (voc / "JPEGImages" / f"{name}.jpg").read_bytes()
        rows.append({"name": name, "height": 1, "width": 1,
                     "image": {"bytes": image[: len(image) // 2] if k == 1 else image, "path": None},
                     "mask": {"bytes": (voc / "SegmentationClass" / f"{name}.png").read_bytes(), "path": None}})
    features = datasets.Features({"name": datasets.Value("string"), "height": datasets.Value("int32"),
                                  "width": datasets.Value("int32"), "image": datasets.Image(),
                                  "mask": datasets.Image()})
    datasets.DatasetDict({"val": datasets.Dataset.from_list(rows, features=features)}).save_to_disk(
        str(tmp_path / "arrow"))
    assert data_cli(["check", "--data-root", str(tmp_path / "arrow"), "--split", "val"]) == 1
    lines = problem_lines(capsys.readouterr().out)
    assert len(lines) == 1 and "row 1" in lines[0] and "val_00001" in lines[0] and "truncated" in lines[0]


@pytest.fixture(scope="module")
def decoded_root(synthetic_voc, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("arrow_decoded") / "voc_decoded"
    assert data_cli(["prepare", "--data-root", str(synthetic_voc), "--out", str(out), "--decoded"]) == 0
    return out


def test_prepare_decoded_writes_raw_pixels(synthetic_voc, decoded_root, capsys):
    saved = datasets.load_from_disk(str(decoded_root))
    assert sorted(saved) == ["train", "val"]
    assert saved["val"].features["image"] == saved["val"].features["mask"] == datasets.Value("binary")
    assert set(saved["val"].column_names) == {"name", "height", "width", "image", "mask"}
    row = saved["val"][0]
    assert len(row["image"]) == row["height"] * row["width"] * 3 and len(row["mask"]) == row["height"] * row["width"]
    out = decoded_root.parent / "again"
    assert data_cli(["prepare", "--data-root", str(synthetic_voc), "--out", str(out), "--decoded",
                     "--splits", "val"]) == 0
    assert "decoded pixels" in capsys.readouterr().out
    assert len(load_arrow(out, "val")) == 4 and load_arrow(out, "val").decoded
    assert sorted(p.name for p in out.parent.iterdir()) == ["again", "voc_decoded"]  # no work folder left


def test_decoded_arrow_equals_encoded_arrow_and_voc_reader(synthetic_voc, arrow_root, decoded_root):
    saw_void = False
    for split in ("train", "val"):
        decoded, encoded = load_arrow(decoded_root, split), load_arrow(arrow_root, split)
        reader = VOCSegmentation(synthetic_voc, split)
        assert decoded.decoded and not encoded.decoded
        assert decoded.table.cache_files  # memory-mapped, not copied into RAM
        assert len(decoded) == len(encoded) == len(reader) and decoded.sizes() == reader.sizes()
        for i in range(len(reader)):
            image, mask = decoded[i]
            assert image.dtype == mask.dtype == torch.uint8 and image.shape[0] == 3
            assert image.permute(1, 2, 0).is_contiguous()  # a view of an HWC buffer, like the other readers
            for other in (encoded[i], reader[i]):
                assert torch.equal(image, other[0]) and torch.equal(mask, other[1])
            saw_void |= bool((mask == 255).any())
            image.zero_()  # items own their memory: the next read is unchanged
            assert torch.equal(decoded[i][0], reader[i][0])
    assert saw_void


def test_decoded_rows_follow_selections_and_chunks(decoded_root):
    """Decoded rows are read from the Arrow buffers: a select()ed (index-mapped), sliced or
    concatenated (several chunks) table gives the rows a datasets user expects."""
    train = datasets.load_from_disk(str(decoded_root))["train"]
    plain = load_arrow(decoded_root, "train")
    n = len(train)
    views = {"reordered": (train.select([n - 1, 0, 2, 2]), [n - 1, 0, 2, 2]),
             "sliced": (train.select(range(1, n - 1)), list(range(1, n - 1))),
             "concatenated": (datasets.concatenate_datasets([train.select(range(n // 2)), train.select([0]),
                                                             train.select(range(n // 2, n))]),
                              [*range(n // 2), 0, *range(n // 2, n)])}
    for what, (table, rows) in views.items():
        view = ArrowSegmentation(table, ("image", "mask"), 21, what)
        assert view.decoded and len(view) == len(rows), what
        for i, row in enumerate(rows):
            assert view._decoded_row(i)["name"] == train[row]["name"], what
            assert all(torch.equal(a, b) for a, b in zip(view[i], plain[row])), what
        with pytest.raises(IndexError, match=f"row {len(rows)} of {what}"):
            view[len(rows)]
    concatenated = views["concatenated"][0]
    assert concatenated.data.table.column("image").num_chunks > 1  # the case that needs the chunk lookup


def test_decoded_arrow_goes_through_build_dataloaders(arrow_root, decoded_root):
    common = ["data.format=arrow", "data.crop_size=[32,48]", "data.batch_size=3", "data.num_workers=0",
              "data.eval_batch_size=2", "train.seed=7"]
    decoded_loaders = build_dataloaders(load_config(None, [*common, f"data.root={decoded_root}"]))
    encoded_loaders = build_dataloaders(load_config(None, [*common, f"data.root={arrow_root}"]))
    assert decoded_loaders[0].dataset.base.decoded and decoded_loaders[1].dataset.decoded
    for decoded_loader, encoded_loader in zip(decoded_loaders, encoded_loaders):
        pairs = list(zip(decoded_loader, encoded_loader))
        assert len(pairs) == len(encoded_loader) > 0
        for (d_images, d_masks), (e_images, e_masks) in pairs:
            assert _batches_equal(d_images, e_images) and _batches_equal(d_masks, e_masks)
    train_batches = list(decoded_loaders[0])
    assert len(train_batches) == 12 // 3
    for images, masks in train_batches:
        assert images.dtype == masks.dtype == torch.uint8
        assert images.shape == (3, 3, 32, 48) and masks.shape == (3, 32, 48)


def test_bad_decoded_rows_are_named(decoded_root, tmp_path, capsys):
    val = datasets.load_from_disk(str(decoded_root))["val"]
    columns = val.to_dict()
    columns["image"][1] = columns["image"][1][:-1]  # one byte short
    columns["width"][3] = None
    datasets.DatasetDict({"val": datasets.Dataset.from_dict(columns, features=val.features)}).save_to_disk(
        str(tmp_path / "bad"))
    bad = load_arrow(tmp_path / "bad", "val")
    assert torch.equal(bad[0][0], load_arrow(decoded_root, "val")[0][0])
    expected = columns["height"][1] * columns["width"][1] * 3
    with pytest.raises(DataError, match=rf"row 1 \(val_00001\) image: {expected - 1} bytes, expected {expected}.*"
                                        r"fcn-data prepare --decoded"):
        bad[1]
    with pytest.raises(DataError, match=r"row 3 \(val_00003\): height \d+ and width None"):
        bad[3]
    assert data_cli(["check", "--data-root", str(tmp_path / "bad"), "--split", "val"]) == 1
    lines = problem_lines(capsys.readouterr().out)
    assert len(lines) == 2 and "row 1 (val_00001) image" in lines[0] and "row 3 (val_00003)" in lines[1]
    assert data_cli(["check", "--data-root", str(decoded_root)]) == 0
    with pytest.raises(DataError, match=r"row 0 \(val_00000\) mask: mask values .* outside 0..2"):
        load_arrow(decoded_root, "val", num_classes=3)[0]

    no_sizes = datasets.DatasetDict({"val": val.remove_columns(["height", "width"])})
    no_sizes.save_to_disk(str(tmp_path / "no_sizes"))
    with pytest.raises(DataError, match="raw pixels, which need .*height and width columns"):
        load_arrow(tmp_path / "no_sizes", "val")


def _hub_rows(voc: Path, split: str) -> list[dict]:
    return [{"file_id": name,
             "pixel_values": {"bytes": (voc / "JPEGImages" / f"{name}.jpg").read_bytes(), "path": None},
             "label": {"bytes": (voc / "SegmentationClass" / f"{name}.png").read_bytes(), "path": None}}
            for name in read_split(voc, split)]


def _hub_dataset(synthetic_voc: Path) -> datasets.DatasetDict:
    voc = synthetic_voc / "VOCdevkit" / "VOC2012"
    features = datasets.Features({"file_id": datasets.Value("string"), "pixel_values": datasets.Image(),
                                  "label": datasets.Image()})
    return datasets.DatasetDict({split: datasets.Dataset.from_list(_hub_rows(voc, name), features=features)
                                 for split, name in (("train", "train"), ("validation", "val"))})


def _hub_overrides(hub_name: Path, *extra: str) -> list[str]:
    return ["data.format=hub", f"data.hub_name={hub_name}", "data.hub_image_column=pixel_values",
            "data.hub_mask_column=label", f"data.classes=[{','.join(CLASSES16)}]", "model.num_classes=16",
            "model.pretrained=none", "data.crop_size=[32,48]", "data.batch_size=2", "data.num_workers=0",
            "train.seed=5", *extra]


def test_hub_dataset_with_other_columns_trains_through_the_same_loader(synthetic_voc, tmp_path):
    _hub_dataset(synthetic_voc).save_to_disk(str(tmp_path / "hub"))
    cfg = load_config(None, _hub_overrides(tmp_path / "hub"))
    train_loader, val_loader = build_dataloaders(cfg)
    assert isinstance(train_loader.dataset.base, ArrowSegmentation) and len(val_loader) == 4
    # the same batches as the VOCdevkit reader gives for the same files and seed
    voc_cfg = load_config(None, [*_hub_overrides(tmp_path / "hub"), "data.format=voc", f"data.root={synthetic_voc}"])
    voc_train, voc_val = build_dataloaders(voc_cfg)
    for (images, masks), (voc_images, voc_masks) in zip([*train_loader, *val_loader], [*voc_train, *voc_val]):
        assert _batches_equal(images, voc_images) and _batches_equal(masks, voc_masks)

    torch.manual_seed(0)
    model = build_model(cfg.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    train_loader.dataset.set_epoch(0)
    for images, masks in train_loader:
        logits = model(normalize(images))
        assert logits.shape == (2, 16, 32, 48)
        loss = torch.nn.functional.cross_entropy(logits, masks.long(), ignore_index=255)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_hub_parquet_folder_and_file(synthetic_voc, tmp_path, hf_cache):
    hub = _hub_dataset(synthetic_voc)
    folder = tmp_path / "parquet"
    folder.mkdir()
    hub["train"].to_parquet(str(folder / "train.parquet"))
    hub["validation"].to_parquet(str(folder / "validation.parquet"))
    reference = VOCSegmentation(synthetic_voc, "val", num_classes=16)
    cfg = load_config(None, _hub_overrides(folder))
    val = build_dataset(cfg.data, "val", train=False)  # "val" finds the "validation" split
    assert len(val) == len(reference) == 4
    for i in range(len(val)):
        assert all(torch.equal(a, b) for a, b in zip(val[i], reference[i]))
    single = load_config(None, _hub_overrides(folder / "train.parquet"))
    assert len(build_dataset(single.data, "train", train=True)) == 12
    with pytest.raises(DataError, match="no split 'val'.*splits: train"):
        build_dataset(single.data, "val", train=False)
    assert hf_cache.exists()


def test_hub_errors_name_the_column_and_the_key(synthetic_voc, tmp_path, hf_cache):
    _hub_dataset(synthetic_voc).save_to_disk(str(tmp_path / "hub"))
    cfg = load_config(None, _hub_overrides(tmp_path / "hub", "data.hub_mask_column=segmentation"))
    with pytest.raises(DataError, match="no column 'segmentation'.*file_id, pixel_values, label.*hub_mask_column"):
        build_dataset(cfg.data, "train", train=True)
    few_classes = load_config(None, _hub_overrides(tmp_path / "hub", "data.classes=[a,b,c]", "model.num_classes=3"))
    with pytest.raises(DataError, match=r"row 0 \(?.*mask values .* outside 0..2"):
        build_dataset(few_classes.data, "val", train=False)[0]
    missing = load_config(None, _hub_overrides(tmp_path / "nothing_here"))
    with pytest.raises(DataError, match="nothing_here"):
        build_dataset(missing.data, "train", train=True)


def test_hub_mask_as_integer_array(tmp_path):
    mask = np.array([[0, 1, 255], [2, 2, 0]], dtype=np.uint8)
    image = Image.fromarray(np.full((2, 3, 3), 7, np.uint8))
    table = datasets.Dataset.from_dict({"img": [image], "seg": [mask.tolist()]},
                                       features=datasets.Features({"img": datasets.Image(),
                                                                   "seg": datasets.Array2D((2, 3), "uint8")}))
    out_image, out_mask = ArrowSegmentation(table, ("img", "seg"), 3, "memory")[0]
    assert np.array_equal(out_mask.numpy(), mask) and bool((out_image == 7).all())
    bad = ArrowSegmentation(table, ("img", "seg"), 2, "memory")
    with pytest.raises(DataError, match=r"memory row 0 mask: mask values \[2\]"):
        bad[0]
