"""fcn-predict: palette PNGs and overlays, agreement with fcn-eval, bad input, nothing of the user's replaced,
EXIF-rotated photos, the overlay's legend."""

import json
import shutil

import numpy as np
import pytest
import skimage.data
import torch
from data_helpers import save_with_orientation
from eval_helpers import make_checkpoint, make_voc
from PIL import Image

from fcn_dist import evaluate, load_model
from fcn_dist.labels import VOC_CLASSES, VOC_PALETTE
from fcn_dist.inference import InferenceOptions, predict_image
from fcn_dist.metrics import confusion_matrix
from fcn_dist.predict import (COLOURS, _batches, _legend, class_edges, collect_images, legend_font_size, main,
                               overlay, share_text)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predictdata")
    ckpt, _ = make_checkpoint(tmp / "model.safetensors")
    root = make_voc(tmp / "voc", num_val=5)
    return ckpt, root / "VOCdevkit" / "VOC2012"


def _run(args, capsys):
    """fcn-predict in this process, in fp32 unless ``args`` name a precision (the comparisons here are fp32's)."""
    args = [str(a) for a in args]
    code = main(args if "--mixed-precision" in args else [*args, "--mixed-precision", "no"])
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


# ---- nothing of the user's is replaced ------------------------------------------------------

def _digests(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_output_into_the_input_folder_is_refused_and_every_input_is_untouched(tmp_path, data, capsys):
    """`fcn-predict --output D D/` with PNG and JPEG photos in D: coffee.png would become its own mask."""
    ckpt, voc = data
    folder = tmp_path / "D"
    folder.mkdir()
    shutil.copyfile(next((voc / "JPEGImages").glob("val_*.jpg")), folder / "photo.jpg")
    Image.fromarray(skimage.data.coffee()[::4, ::4]).save(folder / "coffee.png")
    before = _digests(folder)
    for extra in ([], ["--overwrite"]):  # --overwrite never replaces an input
        code, stdout, err = _run(["--checkpoint", ckpt, "--output", folder, folder, *extra], capsys)
        assert code == 2 and err.strip().splitlines() == [
            f"fcn-predict: error: {folder / 'coffee.png'} is an input of fcn-predict and would be replaced by its "
            "output; choose another --output (--overwrite never replaces an input)"], err
        assert _digests(folder) == before  # byte-identical, and nothing added


def test_a_file_it_did_not_write_is_refused_unless_overwrite(tmp_path, data, capsys):
    ckpt, voc = data
    image = next((voc / "JPEGImages").glob("val_*.jpg"))
    out = tmp_path / "out"
    out.mkdir()
    mine = out / f"{image.stem}_overlay.jpg"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(mine)  # the user's own picture, by chance of that name
    before = mine.read_bytes()
    code, _, err = _run(["--checkpoint", ckpt, "--output", out, image], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"fcn-predict: error: {mine} exists and was not written by fcn-predict; choose another --output, or pass "
        "--overwrite to replace it"]
    assert sorted(p.name for p in out.iterdir()) == [mine.name] and mine.read_bytes() == before
    assert _run(["--checkpoint", ckpt, "--output", out, image, "--overwrite"], capsys)[0] == 0
    assert mine.read_bytes() != before and Image.open(mine).size == Image.open(image).size
    assert _run(["--checkpoint", ckpt, "--output", out, image], capsys)[0] == 0  # its own outputs: replaced
    (tmp_path / "file").write_text("x")
    code, _, err = _run(["--checkpoint", ckpt, "--output", tmp_path / "file", image], capsys)
    assert code == 2 and "is a file, not a folder" in err and (tmp_path / "file").read_text() == "x"


# ---- photos as people see them ----------------------------------------------------------------

def test_an_exif_rotated_photo_is_predicted_as_displayed(tmp_path, data, capsys):
    """scikit-image's chelsea (451x300) saved with EXIF orientation 6, as phones do: viewers show it 300x451."""
    ckpt, _ = data
    photos = tmp_path / "photos"
    photos.mkdir()
    tagged = save_with_orientation(Image.fromarray(skimage.data.chelsea()), photos / "chelsea_exif6.jpg", 6,
                                   quality=90)
    assert Image.open(tagged).size == (451, 300)
    # the same photo turned as a viewer turns it, saved without EXIF (PNG: the very pixels the JPEG decodes to)
    displayed = Image.open(tagged).transpose(Image.Transpose.ROTATE_270)
    displayed.save(photos / "chelsea_turned.png")
    assert displayed.size == (300, 451)
    flags = ["--no-fold-bn", "--no-channels-last"]  # as predict_image below runs, so the comparison is exact
    code, stdout, _ = _run(["--checkpoint", ckpt, "--output", tmp_path / "out", *flags, photos], capsys)
    assert code == 0, stdout
    out = tmp_path / "out"
    for stem in ("chelsea_exif6", "chelsea_turned"):
        assert Image.open(out / f"{stem}.png").size == (300, 451)
        assert Image.open(out / f"{stem}_overlay.jpg").size == (300, 451)
    tagged_mask = np.asarray(Image.open(out / "chelsea_exif6.png"))
    assert np.array_equal(tagged_mask, np.asarray(Image.open(out / "chelsea_turned.png")))
    model, info = load_model(ckpt)
    for source in (tagged, str(tagged), Image.open(tagged)):  # predict_image on a path or a PIL image
        assert np.array_equal(predict_image(model, info, source).numpy(), tagged_mask)


def test_an_image_above_the_pixel_limit_is_skipped_with_exit_1(tmp_path, data, huge_jpeg, capsys):
    ckpt, voc = data
    good = next((voc / "JPEGImages").glob("val_*.jpg"))
    code, stdout, err = _run(["--checkpoint", ckpt, "--output", tmp_path / "out", good, huge_jpeg], capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        f"fcn-predict: skipped {huge_jpeg}: 14000x14000 pixels (196.0 Mpx) is above --max-image-pixels=178956970 "
        "(raise it if you trust the file)"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{good.stem}.png", f"{good.stem}_overlay.jpg"]


# ---- pictures people can read -------------------------------------------------------------------

def test_the_overlay_of_a_two_class_prediction_has_its_legend_and_leaves_background_alone():
    image = torch.from_numpy(np.ascontiguousarray(skimage.data.astronaut()[::4, ::4].transpose(2, 0, 1)))  # 128x128
    pred = torch.zeros(128, 128, dtype=torch.int64)
    pred[40:100, 50:110] = 15  # a person
    out = np.asarray(overlay(image, pred, VOC_CLASSES))
    rgb = image.permute(1, 2, 0).numpy()
    assert out.shape == rgb.shape
    # the legend: person and background with their shares, pixel for pixel, in a corner
    legend = np.asarray(_legend([(0, 1 - 3600 / 128 ** 2), (15, 3600 / 128 ** 2)], VOC_CLASSES,
                                legend_font_size(128, 128)))
    lh, lw = legend.shape[:2]
    corners = {(y, x): out[y:y + lh, x:x + lw] for y in (0, 128 - lh) for x in (0, 128 - lw)}
    (y0, x0), = [corner for corner, pixels in corners.items() if np.array_equal(pixels, legend)]
    assert (legend == COLOURS[15]).all(axis=-1).sum() >= 6 * 6  # the person swatch, in the person colour
    under_legend = np.zeros(pred.shape, dtype=bool)
    under_legend[y0:y0 + lh, x0:x0 + lw] = True
    background = (pred.numpy() == 0) & ~under_legend
    assert np.array_equal(out[background], rgb[background])  # untouched, to the last bit
    person = pred.numpy() == 15
    edges = class_edges(pred.numpy())
    assert edges.sum() == 2 * (60 + 60) - 4 and not edges[~person].any()  # a 1 px outline, inside the region
    assert (out[edges] == COLOURS[15]).all()
    inside = person & ~edges
    tint = np.clip((0.5 * rgb[inside].astype(np.float32) + 0.5 * COLOURS[15]).round(), 0, 255)
    assert np.array_equal(out[inside], tint.astype(np.uint8))


def test_mask_format_rgb_writes_the_palette_colours_and_shares_are_printed(tmp_path, data, capsys):
    ckpt, voc = data
    image = next((voc / "JPEGImages").glob("val_*.jpg"))
    assert _run(["--checkpoint", ckpt, "--output", tmp_path / "p", image], capsys)[0] == 0
    code, stdout, _ = _run(["--checkpoint", ckpt, "--output", tmp_path / "rgb", "--mask-format", "rgb", image], capsys)
    assert code == 0
    ids = np.asarray(Image.open(tmp_path / "p" / f"{image.stem}.png"))
    rgb = Image.open(tmp_path / "rgb" / f"{image.stem}.png")
    assert rgb.mode == "RGB" and np.array_equal(np.asarray(rgb), COLOURS[ids])
    counts = np.bincount(ids.ravel(), minlength=21)
    order = sorted((k for k in range(21) if counts[k]), key=lambda k: (-counts[k], k))
    expected = ", ".join(f"{VOC_CLASSES[k]} {share_text(counts[k] / ids.size)}" for k in order)
    assert f"{image}: {expected}" in stdout.splitlines()


def test_a_legend_taller_than_the_image_ends_with_a_more_row():
    shares = [(k, 1 / 12) for k in range(12)]
    assert _legend(shares, VOC_CLASSES, 10).height > 90
    short = _legend(shares, VOC_CLASSES, 10, max_height=90)
    assert short.height <= 90 and short.height == _legend(shares[:5], VOC_CLASSES, 10).height  # 4 classes + more


@pytest.mark.parametrize("probe, chosen", [("faster", "bf16"), ("slower", "no")])
def test_mixed_precision_auto_follows_the_probe_and_says_so(tmp_path, data, capsys, monkeypatch, probe, chosen):
    """--mixed-precision auto (the default): the forward-only probe decides; "no" gives fp32's masks exactly."""
    from fcn_dist import precision

    ckpt, voc = data
    image = next((voc / "JPEGImages").glob("val_*.jpg"))
    monkeypatch.setattr(precision, "_cache", {})
    timings = {"faster": (1.0, 0.5), "slower": (1.0, 2.0)}[probe]  # (fp32 s, bf16 s)
    monkeypatch.setattr(precision, "probe_cpu", lambda training, **kw: timings)
    code, stdout, err = _run(["--checkpoint", ckpt, "--output", tmp_path / "auto", "--device", "cpu",
                              "--mixed-precision", "auto", image], capsys)
    assert code == 0 and err == "", err
    assert f"mixed precision: {chosen} (auto: bf16 " in stdout
    code, stdout, _ = _run(["--checkpoint", ckpt, "--output", tmp_path / "fp32", "--device", "cpu", image], capsys)
    assert code == 0 and "mixed precision" not in stdout  # an explicit choice is not announced
    auto, fp32 = (np.asarray(Image.open(tmp_path / d / f"{image.stem}.png")) for d in ("auto", "fp32"))
    if chosen == "no":
        assert np.array_equal(auto, fp32)
    else:  # bf16 autocast: a valid class map of the image's size (rounding may move near-tie pixels)
        assert auto.shape == fp32.shape and auto.max() < 21


def test_mixed_precision_bf16_runs_under_autocast(tmp_path, data, capsys, monkeypatch):
    """An explicit bf16 means bf16: the model's convolutions see bfloat16 (autocast), and masks are written."""
    ckpt, voc = data
    image = next((voc / "JPEGImages").glob("val_*.jpg"))
    seen = []
    real_conv = torch.nn.Conv2d._conv_forward

    def conv_forward(self, x, weight, bias):
        out = real_conv(self, x, weight, bias)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward", conv_forward)
    code, _, err = _run(["--checkpoint", ckpt, "--output", tmp_path / "bf16", "--device", "cpu",
                         "--mixed-precision", "bf16", image], capsys)
    assert code == 0, err
    assert seen and set(seen) == {torch.bfloat16}
    assert (tmp_path / "bf16" / f"{image.stem}.png").is_file()


def test_onnx_refuses_an_autocast_precision(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--onnx", str(tmp_path / "m.onnx"), "--output", str(tmp_path / "out"), "--mixed-precision", "bf16",
              str(tmp_path / "x.jpg")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()  # argparse's usage, then the error line
    assert err[-1].startswith("fcn-predict: error: --mixed-precision bf16: --onnx runs the graph in fp32")
