"""data.format=folder: images/ + masks/ + classes.yaml (+ splits/), as a user's own data is laid out.

Labels equal the generator's class ids pixel for pixel (index, RGB-coloured and remapped masks, void
kept); the val_fraction split; every bad file or classes.yaml field as one line naming the file
(fcn-train and the launch scripts' check-data: exit 2; fcn-data check: every problem); fcn-data
prepare to Arrow and back; the EXIF rule and the pixel limit of the VOC reader.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_helpers import problem_lines, save_with_orientation
from PIL import Image

from fcn_dist.config import DataConfig, load_config
from fcn_dist.data import build_dataset, build_reader
from fcn_dist.data.cli import main as data_cli
from fcn_dist.data.folder import FolderSegmentation
from fcn_dist.data.synthetic import (FOLDER_CLASSES, FOLDER_COLORS, REMAP_IDS, REMAP_IGNORE, REMAP_UNMAPPED, REMAP_VOID,
                                     folder_sample, folder_stems, make_synthetic_folder)
from fcn_dist.datafiles import DataError
from fcn_dist.folderfiles import fraction_split, read_class_spec, resolve_classes, scan_folder
from fcn_dist.labels import IGNORE_INDEX

REPO = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_VAL, SEED, SIDE = 6, 3, 0, 96


def _set(tmp_path: Path, name: str = "set", **kwargs) -> Path:
    return make_synthetic_folder(tmp_path / name, NUM_TRAIN, NUM_VAL, seed=SEED, max_side=SIDE, **kwargs)


def _expected() -> dict[str, np.ndarray]:
    """stem -> the class ids (255 void) the generator drew, before it encoded them into a mask file."""
    return {stem: folder_sample(SEED, code, index, SIDE)[1] for stem, code, index in folder_stems(NUM_TRAIN, NUM_VAL)}


def _cfg(root: Path, **over) -> DataConfig:
    return DataConfig(**{"root": str(root), "format": "folder", "num_workers": 0, **over})


def _run(args, capsys):
    code = data_cli([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    """The three mask encodings of one synthetic set. Read them, never modify them."""
    root = tmp_path_factory.mktemp("folder_sets")
    return {"index": _set(root, "index"), "rgb": _set(root, "rgb", mask_format="rgb"),
            "remap": _set(root, "remap", remap=True)}


@pytest.mark.parametrize("kind", ["index", "rgb", "remap"])
def test_labels_are_the_generators_class_ids_with_void_kept(sets, kind):
    root = sets[kind]
    expected = _expected()
    stored = np.asarray(Image.open(root / "masks" / "img_00000.png"))
    if kind == "rgb":  # the files really are coloured, and the remapped ones hold other ids
        assert stored.ndim == 3 and {tuple(c) for c in stored.reshape(-1, 3)} <= {*FOLDER_COLORS, (255, 255, 255)}
    if kind == "remap":
        assert {REMAP_IGNORE, REMAP_UNMAPPED, REMAP_VOID} <= set(np.unique(stored).tolist())
        labelled = expected["img_00000"] != IGNORE_INDEX
        assert set(np.unique(stored[labelled]).tolist()) <= set(REMAP_IDS)  # classes stored as other ids
    seen = set()
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        dataset = build_dataset(_cfg(root), split, train=False)
        assert len(dataset) == count
        for stem, (image, mask) in zip(dataset.ids, dataset):
            assert mask.dtype == image.dtype and tuple(image.shape) == (3, *mask.shape)
            np.testing.assert_array_equal(mask.numpy(), expected[stem], err_msg=f"{kind} {stem}")
            seen |= set(np.unique(mask.numpy()).tolist())
    assert IGNORE_INDEX in seen and len(seen - {IGNORE_INDEX}) >= 4  # void and most classes are exercised


def test_images_of_every_suffix_are_read_as_stored_and_exif_is_warned_about(sets, tmp_path, capsys):
    root = tmp_path / "set"
    shutil.copytree(sets["index"], root)
    pixels = {}
    for stem, suffix in (("img_00001", ".png"), ("img_00002", ".tif"), ("img_00003", ".JPEG")):
        src = root / "images" / f"{stem}.jpg"
        image = Image.open(src).convert("RGB")
        src.unlink()
        if suffix == ".JPEG":  # a phone photo: stored pixels tagged "rotate 90"; its mask labels the stored pixels
            save_with_orientation(image, root / "images" / f"{stem}{suffix}", 6, quality=95)
            image = Image.open(root / "images" / f"{stem}{suffix}").convert("RGB")
        else:
            image.save(root / "images" / f"{stem}{suffix}")
        pixels[stem] = np.asarray(image)
    dataset = FolderSegmentation(root, "train")
    for stem, want in pixels.items():
        np.testing.assert_array_equal(dataset[dataset.ids.index(stem)][0].permute(1, 2, 0).numpy(), want)
    code, out, err = _run(["check", "--data-root", root], capsys)
    assert code == 0, out + err
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and f"{root / 'images' / 'img_00003.JPEG'}: EXIF orientation 6" in warnings[0]
    counts = [line for line in out.splitlines() if line.startswith("split ")]
    assert counts[0].startswith("split 'train': 6 images") and " triangle " in out and " void " in out


def test_val_fraction_split_is_deterministic_disjoint_and_covers_every_image(tmp_path):
    stems = [f"img_{k:03d}" for k in range(40)]
    split = fraction_split(stems, 0.25, seed=7)
    assert split == fraction_split(list(reversed(stems)), 0.25, seed=7)  # file order does not matter
    assert len(split["val"]) == 10 and not set(split["train"]) & set(split["val"])
    assert sorted(split["train"] + split["val"]) == stems
    assert split["val"] != fraction_split(stems, 0.25, seed=8)["val"]  # the seed chooses
    assert len(fraction_split(stems[:3], 0.01, seed=0)["val"]) == 1  # never an empty val split
    with pytest.raises(DataError, match="at least 2 images"):
        fraction_split(stems[:1], 0.5, seed=0)
    # the reader, on a set without split files: the same parts, every image in exactly one
    root = make_synthetic_folder(tmp_path / "nosplit", 16, 4, seed=1, max_side=32, split_files=False)
    cfg = _cfg(root, val_fraction=0.25, split_seed=3)
    train, val = build_reader(cfg, "train"), build_reader(cfg, "val")
    assert (train.ids, val.ids) == (fraction_split(scan_folder(root).stems, 0.25, 3)["train"],
                                    fraction_split(scan_folder(root).stems, 0.25, 3)["val"])
    assert len(val) == 5 and sorted(train.ids + val.ids) == sorted(s for s, _, _ in folder_stems(16, 4))
    with pytest.raises(DataError, match="split by data.val_fraction into 'train' and 'val', not 'test'"):
        build_reader(cfg, "test")


MALFORMED = [
    ("classes: [a, a]\n", "classes", "repeats 'a'"),
    ("classes: []\n", "classes", "non-empty list"),
    ("colors: [[0, 0, 0]]\n", "classes", "is missing"),
    ("classes: [a, 3]\n", "classes", "not a class name"),
    ("classes: [a, b]\ncolors: [[0, 0, 0]]\n", "colors", "1 colours for 2 classes"),
    ("classes: [a, b]\ncolors: [[0, 0, 0], [0, 0, 256]]\n", "colors", "integers 0-255"),
    ("classes: [a, b]\ncolors: [[0, 0, 0], [0, 0, 0]]\n", "colors", "more than one class"),
    ("classes: [a, b]\ncolors: [[0, 0, 0], [1, 1, 1]]\nvoid_color: [1, 1, 1]\n", "void_color", "class 1"),
    ("classes: [a, b]\nvoid_color: [1, 1, 1]\n", "void_color", "needs colors"),
    ("classes: [a, b]\nignore: -1\n", "ignore", "integer 0-65535"),
    ("classes: [a, b]\nignore: true\n", "ignore", "integer 0-65535"),
    ("classes: [a, b]\nremap: {7: 2}\n", "remap", "maps 7 to 2"),
    ("classes: [a, b]\nremap: {'7': 1}\n", "remap", "key '7'"),
    ("classes: [a, b]\nremap: {255: 1}\n", "remap", "ignore value"),
    ("classes: [a, b]\ncolors: [[0, 0, 0], [1, 1, 1]]\nremap: {7: 1}\n", "remap", "index masks"),
    ("classes: [a, b]\ncolours: [[0, 0, 0], [1, 1, 1]]\n", "colours", "not a classes.yaml field"),
]


@pytest.mark.parametrize("text, field, words", MALFORMED, ids=[f"{m[1]}-{i}" for i, m in enumerate(MALFORMED)])
def test_every_malformed_classes_yaml_field_is_one_line_naming_file_and_field(tmp_path, text, field, words):
    (tmp_path / "classes.yaml").write_text(text)
    with pytest.raises(DataError) as err:
        read_class_spec(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'classes.yaml'}: field '{field}' ") and words in message, message
    assert "\n" not in message


def test_unparsable_or_missing_classes_yaml_is_named(tmp_path):
    with pytest.raises(DataError, match=f"^{tmp_path / 'classes.yaml'} not found"):
        read_class_spec(tmp_path)
    (tmp_path / "classes.yaml").write_text("classes: [a, b\n")
    with pytest.raises(DataError, match=f"^{tmp_path / 'classes.yaml'}: cannot parse YAML: .*line"):
        read_class_spec(tmp_path)
    (tmp_path / "classes.yaml").write_text("!!python/object/apply:os.system ['echo hi']\n")  # never executed
    with pytest.raises(DataError, match="cannot parse YAML"):
        read_class_spec(tmp_path)


def _check_data(*args: str, flags: tuple = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-m", "fcn_dist.launcher", "check-data",
                           str(REPO / "configs" / "folder_demo.yaml"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_check_data_knows_the_folder_layout(sets, tmp_path):
    """The launch scripts' torch-free check: classes.yaml against model.num_classes, pairs, splits; exit 2, one line."""
    good = _check_data(f"data.root={sets['index']}", flags=("-X", "importtime"))
    assert good.returncode == 0, good.stderr
    modules = [line.rsplit("|", 1)[-1].strip() for line in good.stderr.splitlines() if line.startswith("import time:")]
    assert "fcn_dist.folderfiles" in modules and not [m for m in modules if m.split(".")[0] in ("torch", "numpy")]
    root = tmp_path / "set"
    shutil.copytree(sets["index"], root)
    (root / "masks" / "img_00004.png").unlink()
    (root / "masks" / "extra.png").write_bytes((root / "masks" / "img_00005.png").read_bytes())
    proc = _check_data(f"data.root={root}")
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"{root / 'images' / 'img_00004.jpg'}: image without mask: {root / 'masks' / 'img_00004.png'} not found; add "
        "its mask, or move the image out of images/ (and 1 more; run fcn-data check)"], proc.stderr
    proc = _check_data(f"data.root={sets['index']}", "model.num_classes=21")
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"model.num_classes=21 but {sets['index'] / 'classes.yaml'} names 7 classes; set model.num_classes=7"]
    (root / "classes.yaml").write_text("classes: [a, b]\nignore: x\n")
    proc = _check_data(f"data.root={root}")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith(f"{root / 'classes.yaml'}: field 'ignore' must be the mask value"), proc.stderr


def test_fcn_data_check_lists_every_problem(sets, tmp_path, capsys):
    root = tmp_path / "set"
    shutil.copytree(sets["rgb"], root)
    (root / "masks" / "img_00001.png").unlink()                               # an image without mask
    shutil.copyfile(root / "masks" / "img_00002.png", root / "masks" / "lost.png")  # a mask without image
    (root / "images" / "notes.txt").write_text("x")                          # not an image
    mask = np.asarray(Image.open(root / "masks" / "img_00003.png")).copy()
    mask[0, 0] = (1, 2, 3)                                                    # a colour not in the list
    Image.fromarray(mask).save(root / "masks" / "img_00003.png")
    (root / "splits" / "val.txt").write_text("img_00006\nimg_00007\nghost\n")  # a stem without files; 00008 unlisted
    code, out, err = _run(["check", "--data-root", root], capsys)
    assert code == 1 and f"6 problem(s) in {root}" in err, out + err
    assert problem_lines(out) == [
        f"{root / 'images' / 'notes.txt'}: not a .jpg, .jpeg, .png, .tif or .tiff image; convert it, or move it out of "
        f"{root / 'images'}",
        f"{root / 'images' / 'img_00001.jpg'}: image without mask: {root / 'masks' / 'img_00001.png'} not found; add "
        "its mask, or move the image out of images/",
        f"{root / 'masks' / 'lost.png'}: mask without image: no lost.jpg (.jpeg, .png, .tif, .tiff) in "
        f"{root / 'images'}; add its image, or remove the mask",
        f"split file {root / 'splits' / 'val.txt'} lists 'ghost', which has no image and no mask in {root}; add the "
        "files or remove the line",
        f"{root / 'images' / 'img_00008.jpg'}: in no split file of {root / 'splits'} (train.txt, val.txt); list its "
        "stem in one, or move the image out of images/",
        f"{root / 'masks' / 'img_00003.png'}: colour [1, 2, 3] on 1 pixels is not a class colour of "
        f"{root / 'classes.yaml'} (nor a void_color); fix the mask (antialiased or JPEG-saved masks blend colours: "
        "save them losslessly), or add the colour to colors or void_color",
    ]


def test_fcn_data_check_names_a_malformed_classes_yaml_and_still_checks_the_files(sets, tmp_path, capsys):
    root = tmp_path / "set"
    shutil.copytree(sets["index"], root)
    (root / "classes.yaml").write_text("classes: [a, b]\nremap: {1: 5}\n")
    (root / "masks" / "img_00002.png").unlink()
    code, out, err = _run(["check", "--data-root", root], capsys)
    assert code == 1
    problems = problem_lines(out)
    assert problems[0] == (f"{root / 'classes.yaml'}: field 'remap' maps 1 to 5, which is not a class id 0-1 nor "
                           "255 (void)")
    assert len(problems) == 2 and "img_00002.jpg: image without mask" in problems[1]


def _train(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1",
           "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, "-m", "fcn_dist.train", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, start_new_session=True)


def _tiny_run(root: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", "data.format=folder", "model.num_classes=7", "model.pretrained=none",
            "data.crop_size=[32,32]", "data.batch_size=2", "data.num_workers=0", "log.wandb=false",
            "train.mixed_precision=no", f"train.output_dir={out}", "train.run_name=tiny", "train.max_steps=1",
            "train.checkpoint_every=0", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["mask_without_image", "unknown_colour", "num_classes"])
def test_fcn_train_on_a_bad_folder_set_is_one_line_exit_2(sets, tmp_path, fault):
    root = tmp_path / "set"
    shutil.copytree(sets["rgb"], root)
    extra = []
    if fault == "mask_without_image":
        (root / "images" / "img_00004.jpg").unlink()
        line = (f"{root / 'masks' / 'img_00004.png'}: mask without image: no img_00004.jpg (.jpeg, .png, .tif, .tiff) "
                f"in {root / 'images'}; add its image, or remove the mask")
    elif fault == "unknown_colour":
        bad = root / "masks" / "img_00000.png"
        mask = np.asarray(Image.open(bad)).copy()
        mask[:2, :2] = (250, 0, 250)
        Image.fromarray(mask).save(bad)
        line = (f"{bad}: colour [250, 0, 250] on 4 pixels is not a class colour of {root / 'classes.yaml'} (nor a "
                "void_color); fix the mask (antialiased or JPEG-saved masks blend colours: save them losslessly), "
                "or add the colour to colors or void_color")
        extra = ["data.batch_size=6"]  # every training image in the first batch
    else:
        extra = ["model.num_classes=21"]
        line = f"model.num_classes=21 but {root / 'classes.yaml'} names 7 classes; set model.num_classes=7"
    proc = _train(_tiny_run(root, tmp_path / "runs", *extra))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [f"fcn-train: error: {line}"]


@pytest.mark.slow
@pytest.mark.parametrize("decoded", [False, True], ids=["encoded", "decoded"])
def test_prepare_to_arrow_keeps_the_labels_and_arrow_training_gets_the_classes(sets, tmp_path, capsys, decoded):
    """RGB masks and remapped ids become class ids in the Arrow copy; data.format=arrow trains on it with the names."""
    expected = _expected()
    for kind in ("rgb", "remap"):
        out = tmp_path / f"{kind}_arrow"
        code, text, err = _run(["prepare", "--data-root", sets[kind], "--out", out, *(["--decoded"] if decoded else [])],
                               capsys)
        assert code == 0, text + err
        assert read_class_spec(out).names == FOLDER_CLASSES
        arrow = DataConfig(root=str(out), format="arrow", num_workers=0)
        for split in ("train", "val"):
            folder_set, arrow_set = build_reader(_cfg(sets[kind]), split), build_reader(arrow, split)
            assert len(arrow_set) == len(folder_set)
            for k, stem in enumerate(folder_set.ids):
                image, mask = arrow_set[k]
                np.testing.assert_array_equal(mask.numpy(), expected[stem], err_msg=f"{kind} {split} {stem}")
                np.testing.assert_array_equal(image.numpy(), folder_set[k][0].numpy())
        code, text, err = _run(["check", "--data-root", out], capsys)
        assert code == 0 and " triangle " in text, text + err
    if decoded:
        return
    cfg = resolve_classes(load_config(None, [f"data.root={out}", "data.format=arrow", "model.num_classes=7"]))
    assert cfg.data.classes == list(FOLDER_CLASSES)
    proc = _train([a for a in _tiny_run(out, tmp_path / "runs") if a != "data.format=folder"] + ["data.format=arrow"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    from fcn_dist.checkpoint import load_model

    assert load_model(tmp_path / "runs" / "tiny" / "model_last.safetensors")[1].classes == list(FOLDER_CLASSES)


def test_the_pixel_limit_holds_for_images_and_masks(sets):
    cfg = _cfg(sets["index"], max_image_pixels=1000)
    with pytest.raises(DataError, match=r"img_00000.jpg: .* is above data.max_image_pixels=1000"):
        build_reader(cfg, "train")[0]
    with pytest.raises(DataError, match="is above data.max_image_pixels=1000"):
        build_reader(cfg, "train").sizes()


def test_a_model_of_other_classes_is_refused(sets):
    with pytest.raises(DataError, match=r"names the classes \[background, triangle, circle, square, \.\.\. \(7\)\], "
                                        r"the model \[a, b\]: use a model trained on this set's classes.yaml"):
        build_reader(_cfg(sets["index"], classes=["a", "b"]), "val")
    cfg = load_config(None, [f"data.root={sets['index']}", "data.format=folder", "model.num_classes=7"])
    assert resolve_classes(cfg).data.classes == list(FOLDER_CLASSES)


def test_index_values_that_are_no_class_are_named_unless_remapped(sets, tmp_path):
    root = tmp_path / "set"
    shutil.copytree(sets["index"], root)
    path = root / "masks" / "img_00000.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[0, :3] = 9  # no class 9 among 7
    Image.fromarray(mask).save(path)
    with pytest.raises(DataError, match=rf"^{path}: mask values \[9\] are not class ids 0..6 nor the ignore value 255 "):
        build_reader(_cfg(root), "train")[0]
    # a remap of every class id to itself and 9 to class 1: the row becomes class 1, nothing else changes
    identity = ", ".join(f"{k}: {k}" for k in range(len(FOLDER_CLASSES)))
    (root / "classes.yaml").write_text(f"classes: {list(FOLDER_CLASSES)}\nremap: {{{identity}, 9: 1}}\n")
    want = _expected()["img_00000"].copy()
    want[0, :3] = 1
    np.testing.assert_array_equal(build_reader(_cfg(root), "train")[0][1].numpy(), want)


def test_check_warns_about_images_in_both_train_and_val(sets, tmp_path, capsys):
    root = tmp_path / "set"
    shutil.copytree(sets["index"], root)
    (root / "splits" / "val.txt").write_text("img_00000\nimg_00006\nimg_00007\nimg_00008\n")
    code, out, err = _run(["check", "--data-root", root], capsys)
    assert code == 0, out + err
    assert [line for line in out.splitlines() if line.startswith("warning: ")] == [
        f"warning: {root / 'splits'}: 1 image(s) are in both 'train' and 'val' (first: img_00000): validation then "
        "scores images the model trained on"]
