"""fcn-predict: palette PNGs and overlays, agreement with fcn-eval, bad input."""

import json

import numpy as np
import pytest
import torch
from eval_helpers import make_checkpoint, make_voc
from PIL import Image

from fcn_dist import evaluate, load_model
from fcn_dist.labels import VOC_PALETTE
from fcn_dist.inference import InferenceOptions, predict_image
from fcn_dist.metrics import confusion_matrix
from fcn_dist.predict import _batches, collect_images, main

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predictdata")
    ckpt, _ = make_checkpoint(tmp / "model.safetensors")
    root = make_voc(tmp / "voc", num_val=5)
    return ckpt, root / "VOCdevkit" / "VOC2012"


def _run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_png_is_voc_palette_class_map_of_image_size(tmp_path, data, capsys):
    ckpt, voc = data
    extra = tmp_path / "extra.png"  # a file beside a folder, and a PNG input
    Image.open(next((voc / "JPEGImages").glob("val_*.jpg"))).transpose(Image.Transpose.ROTATE_90).save(extra)
    # contiguous, unfolded weights, as predict_image below uses, so the comparison is bit-exact (folding moves
    # logits by ~1e-6 of the largest, and these images have pixels whose top-2 margin is 1.6e-7 of it)
    code, stdout, _ = _run(["--checkpoint", ckpt, "--output", tmp_path / "out", "--device", "cpu",
                            "--no-channels-last", "--no-fold-bn", voc / "JPEGImages", extra], capsys)
    assert code == 0, stdout
    model, info = load_model(ckpt)
    inputs = sorted((voc / "JPEGImages").glob("*.jpg")) + [extra]
    assert len(list((tmp_path / "out").iterdir())) == 2 * len(inputs)
    for path in inputs:
        png = Image.open(tmp_path / "out" / f"{path.stem}.png")
        image = Image.open(path)
        assert png.mode == "P" and png.size == image.size
        assert png.getpalette()[: len(VOC_PALETTE)] == VOC_PALETTE
        ids = np.asarray(png)
        assert ids.min() >= 0 and ids.max() < len(info.classes)
        assert torch.equal(torch.from_numpy(ids.copy()).long(), predict_image(model, info, image))
        overlay = Image.open(tmp_path / "out" / f"{path.stem}_overlay.jpg")
        assert overlay.format == "JPEG" and overlay.size == image.size and overlay.mode == "RGB"


def test_duplicate_stems_are_refused(tmp_path, data, capsys):
    ckpt, voc = data
    image = next((voc / "JPEGImages").glob("val_*.jpg"))
    code, _, err = _run(["--checkpoint", ckpt, "--output", tmp_path, image, voc / "JPEGImages"], capsys)
    assert code == 2 and "would both write" in err


def test_eval_confusion_matrix_equals_one_from_predict_pngs(tmp_path, data, capsys):
    """DESIGN contract: same checkpoint and mode, same confusion matrix."""
    ckpt, voc = data
    for mode in (["--mode", "whole"], ["--mode", "slide", "--tile", "64", "64", "--stride", "40", "40"]):
        out = tmp_path / mode[1]
        assert evaluate.main(["--checkpoint", str(ckpt), "--data-root", str(voc), "--output", str(out / "m.json"),
                              "--num-workers", "0", "--mixed-precision", "no", *mode]) == 0  # predict runs fp32
        ids = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
        assert _run(["--checkpoint", ckpt, "--output", out / "pred", "--batch-size", "3", *mode,
                     *[voc / "JPEGImages" / f"{i}.jpg" for i in ids]], capsys)[0] == 0
        cm = sum(confusion_matrix(torch.from_numpy(np.array(Image.open(out / "pred" / f"{i}.png"))),
                                  torch.from_numpy(np.array(Image.open(voc / "SegmentationClass" / f"{i}.png"))), 21)
                 for i in ids)
        assert cm.tolist() == json.loads((out / "m.json").read_text())["confusion_matrix"]


def test_unreadable_image_is_reported_skipped_exit_1(tmp_path, data, capsys):
    ckpt, voc = data
    good = sorted((voc / "JPEGImages").glob("val_*.jpg"))[:2]
    truncated = tmp_path / "broken.jpg"
    truncated.write_bytes(good[0].read_bytes()[:300])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    code, stdout, err = _run(["--checkpoint", ckpt, "--output", tmp_path / "out", good[0], truncated, text,
                              tmp_path / "missing.jpg", good[1]], capsys)
    assert code == 1
    skipped = [line for line in err.splitlines() if line.startswith("fcn-predict: skipped")]
    assert len(skipped) == 3
    for bad, line in zip((truncated, text, tmp_path / "missing.jpg"), skipped):
        assert str(bad) in line
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted([f"{good[0].stem}.png", f"{good[0].stem}_overlay.jpg",
                              f"{good[1].stem}.png", f"{good[1].stem}_overlay.jpg"])
    assert "3 images skipped" in stdout


def test_bad_checkpoints_exit_2(tmp_path, data, capsys):
    ckpt, voc = data
    image = next((voc / "JPEGImages").glob("val_*.jpg"))
    pickle = tmp_path / "model.pt"
    torch.save({}, pickle)
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1)}, str(plain))
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(ckpt.read_bytes()[:-100])
    cases = {tmp_path / "none.safetensors": "not found", pickle: "pickle", plain: "no fcn_dist metadata",
             truncated: "truncated"}
    for path, reason in cases.items():
        code, _, err = _run(["--checkpoint", path, "--output", tmp_path / "out", image], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and str(path) in lines[0] and reason in lines[0], err
    assert not (tmp_path / "out").exists()


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    text = capsys.readouterr().out
    assert exc.value.code == 0 and "1 some images could not be read" in text and "2 bad checkpoint" in text


def test_batches_hold_one_size_and_keep_every_image(tmp_path):
    sizes = [(20, 30), (30, 20), (20, 30), (20, 30), (30, 20), (20, 30)]
    paths = []
    for k, (w, h) in enumerate(sizes):
        paths.append(tmp_path / f"{k}.png")
        Image.new("RGB", (w, h), (k, k, k)).save(paths[-1])
    failed = []
    batches = list(_batches(paths, 2, failed))
    assert failed == []
    assert all(len({tuple(img.shape) for _, img in b}) == 1 and len(b) <= 2 for b in batches)
    assert sorted(p.name for b in batches for p, _ in b) == sorted(p.name for p in paths)
    assert collect_images([tmp_path]) == sorted(paths)


def test_predict_image_options_slide(data):
    ckpt, voc = data
    model, info = load_model(ckpt)
    image = Image.open(next((voc / "JPEGImages").glob("val_*.jpg")))
    whole = predict_image(model, info, image)
    covering = predict_image(model, info, image, InferenceOptions(mode="slide", tile=(512, 512), stride=(256, 256)))
    assert torch.equal(whole, covering)
