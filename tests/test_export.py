"""fcn-export and fcn-predict --onnx: the ONNX graph against torch at odd sizes, its metadata, the same masks on
a photograph, nothing of the user's replaced, no torch on the ONNX path, and the export extra missing."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from eval_helpers import REPO, make_checkpoint, subprocess_env
from PIL import Image

from fcn_dist import export, load_model
from fcn_dist.cli import export_main, predict_main
from fcn_dist.config import InferenceOptions, ModelConfig
from fcn_dist.inference import infer_logits as torch_infer_logits
from fcn_dist.metadata import model_info
from fcn_dist.model import fold_batch_norms
from fcn_dist.runtime import ONNX_META, OnnxModel, infer_logits, normalize, resize_bilinear

torch.set_num_threads(1)

ATOL_OF_MAX = 1e-5
"""onnxruntime against torch, both fp32: |diff| <= 1e-5 * max |logits| (rtol 0: a logit near 0 has no scale of its
own). The two sum the same products in other orders (MLAS against oneDNN kernels; folded against unfolded
BatchNorms: ~4e-5 on logits of ~10, model.fold_batch_norms), which moves a logit by ~1e-7 of its inputs per
layer; measured: 1.3e-6 of the largest logit (1.5e-4 of 112) on this random fcn32s/ResNet-18, so the bound leaves
~8x headroom. A wrong graph (a pad lost at a size that is not a multiple of 32, a shifted crop, a specialised
batch) is off by a good fraction of max |logits|, five orders above it."""
MIN_ARGMAX_AGREEMENT = 0.9999


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random fcn32s/ResNet-18 checkpoint and its export by the CLI, at the default path beside it."""
    tmp = tmp_path_factory.mktemp("export")
    ckpt, _ = make_checkpoint(tmp / "model.safetensors")
    assert export_main(["--checkpoint", str(ckpt), "--format", "onnx"]) == 0
    return ckpt, tmp / "model.onnx"


def _photo_crops(h, w, count):
    """``count`` crops of h x w from scikit-image's photographs (coffee 400x600, astronaut 512x512), uint8 NCHW."""
    photos = [skimage.data.coffee(), skimage.data.astronaut()]
    crops = [photos[k % 2][7 * k:7 * k + h, 11 * k:11 * k + w] for k in range(count)]
    assert all(c.shape == (h, w, 3) for c in crops)
    return np.stack(crops).transpose(0, 3, 1, 2).copy()


def _assert_close(onnx_logits, torch_logits):
    """allclose at ATOL_OF_MAX of the largest |logit|, and the argmax equal on >= 99.99% of the pixels (counted)."""
    assert onnx_logits.shape == torch_logits.shape and onnx_logits.dtype == np.float32
    atol = ATOL_OF_MAX * float(np.abs(torch_logits).max())
    diff = float(np.abs(onnx_logits - torch_logits).max())
    assert np.allclose(onnx_logits, torch_logits, rtol=0, atol=atol), f"max |diff| {diff} > atol {atol}"
    equal = int((onnx_logits.argmax(1) == torch_logits.argmax(1)).sum())
    pixels = torch_logits.shape[0] * torch_logits.shape[2] * torch_logits.shape[3]
    assert equal >= MIN_ARGMAX_AGREEMENT * pixels, f"argmax equal on {equal} of {pixels} pixels"
    return diff, equal, pixels


# ---- the graph ------------------------------------------------------------------------------

@pytest.mark.parametrize("batch, h, w", [(1, 321, 479), (3, 97, 130), (2, 64, 96)])
def test_onnxruntime_logits_match_torch_at_odd_sizes_and_batches(exported, batch, h, w):
    """321x479 and 97x130 are padded inside the graph; 64x96 (multiples of 32) pads by 0; batches 1, 3, 2."""
    ckpt, path = exported
    model, info = load_model(ckpt)  # the checkpoint as saved: unfolded BatchNorms, plain layout
    x = normalize(_photo_crops(h, w, batch), info.mean, info.std)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    got = OnnxModel(path)(x)
    assert got.shape == (batch, len(info.classes), h, w)
    _assert_close(got, expected)


def test_the_file_is_a_valid_onnx_model_with_dynamic_batch_height_and_width(exported):
    _, path = exported
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("images", "logits")
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [[d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim] for t in (inp, out)]
    assert dims == [["batch", 3, "height", "width"], ["batch", 21, "height", "width"]]
    ops = {node.op_type for node in proto.graph.node}
    assert "ConvTranspose" in ops and "Pad" in ops and "DepthToSpace" not in ops  # the plain head, padding kept
    assert "BatchNormalization" not in ops  # folded


def test_metadata_holds_the_checkpoints_classes_normalisation_and_config(exported):
    ckpt, path = exported
    _, info = load_model(ckpt)
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert json.loads(meta["fcn_dist.classes"]) == info.classes
    assert json.loads(meta["fcn_dist.normalize"]) == {"mean": info.mean, "std": info.std}
    assert model_info(meta) == info  # model config, step and metrics too
    spec = json.loads(meta[ONNX_META])
    assert spec["written_by"] == "fcn-export" and spec["exporter"] == "dynamo" and spec["folded_bn"] is True
    assert (spec["input"], spec["output"], spec["head"]) == ("images", "logits", "conv_transpose")
    runtime = OnnxModel(path)
    assert runtime.info == info and runtime.spec == spec


def test_fcn8s_skips_export_and_match_torch(tmp_path):
    """fcn8s adds upsampled scores to layer3/layer2 scores: sizes the graph must agree on at any input size."""
    from eval_helpers import tiny_model

    from fcn_dist.checkpoint import export_model

    cfg = ModelConfig(arch="fcn8s", backbone="resnet18", num_classes=5, pretrained="none")
    model = tiny_model(1, cfg)
    with torch.no_grad():  # the skip scores start at zero: give them weight, or the skips are not tested
        for conv in (model.score_layer3, model.score_layer2):
            conv.weight.normal_(0, 0.5)
    ckpt = export_model(model, tmp_path / "fcn8s.safetensors", cfg, list("abcde"), [0.5] * 3, [0.25] * 3)
    report = export.export_onnx(ckpt, tmp_path / "fcn8s.onnx")
    assert report.exporter == "dynamo"
    x = normalize(_photo_crops(97, 130, 2), [0.5] * 3, [0.25] * 3)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    _assert_close(OnnxModel(report.path)(x), expected)


def test_the_torchscript_exporter_is_the_fallback_when_dynamo_fails(exported, tmp_path, monkeypatch, capsys):
    ckpt, _ = exported

    def broken(model, example):
        raise RuntimeError("simulated torch.export failure")

    monkeypatch.setattr(export, "_dynamo", broken)
    report = export.export_onnx(ckpt, tmp_path / "ts.onnx")
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["fcn-export: warning: the dynamo exporter failed (dynamo: RuntimeError: "
                                        "simulated torch.export failure); trying the next one"]
    assert report.exporter == "torchscript"
    model, info = load_model(ckpt)
    x = normalize(_photo_crops(321, 479, 1), info.mean, info.std)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    runtime = OnnxModel(report.path)
    assert runtime.spec["exporter"] == "torchscript"
    _assert_close(runtime(x), expected)


def test_no_working_exporter_writes_nothing_and_exits_1(exported, tmp_path, monkeypatch, capsys):
    ckpt, _ = exported

    def wrong(proto, model):  # a graph whose logits are off: the check must refuse it
        return 5.0, 10.0, 0.5, 100

    monkeypatch.setattr(export, "_compare", wrong)
    monkeypatch.setattr(export, "_dynamo", export._torchscript)  # the cheaper exporter, twice
    out = tmp_path / "bad.onnx"
    assert export_main(["--checkpoint", str(ckpt), "--output", str(out)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("fcn-export: error: nothing written: dynamo: ExportError: onnxruntime's logits")
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ---- numpy inference = torch inference ------------------------------------------------------

@pytest.mark.parametrize("size, out", [((97, 130), (73, 98)), ((73, 98), (97, 130)), ((5, 7), (160, 3))])
def test_resize_bilinear_is_torchs_interpolate(size, out):
    x = np.random.default_rng(0).normal(size=(2, 3, *size)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x), size=out, mode="bilinear", align_corners=False).numpy()
    # the same taps and weights; torch's kernels fuse some multiply-adds: a bit or two of |x| <= ~5 (4.8e-7 seen)
    np.testing.assert_allclose(resize_bilinear(x, out), expected, rtol=0, atol=1e-6)


def test_normalize_gives_torchs_bits():
    from fcn_dist.model import normalize as torch_normalize

    images = _photo_crops(33, 47, 2)
    assert np.array_equal(normalize(images, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                          torch_normalize(torch.from_numpy(images)).numpy())


def test_slide_flip_and_scales_match_torch(exported):
    ckpt, path = exported
    model, info = load_model(ckpt)
    images = _photo_crops(150, 200, 2)
    options = InferenceOptions(mode="slide", tile=(64, 96), stride=(40, 60), flip=True, scales=(0.75, 1.25))
    with torch.inference_mode():
        expected = torch_infer_logits(model, torch.from_numpy(images), info.mean, info.std, options).numpy()
    _assert_close(infer_logits(OnnxModel(path), images, info.mean, info.std, options), expected)


# ---- fcn-predict --onnx -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")  # 512x512
    Image.fromarray(skimage.data.chelsea()).save(folder / "chelsea.png")  # 451x300: no side a multiple of 32
    return folder


def test_predict_onnx_writes_the_masks_of_the_torch_path_on_photographs(exported, photos, tmp_path, capsys):
    """The same class ids as `fcn-predict --checkpoint` (its defaults: folded BatchNorms, channels_last), pixel for
    pixel, except where torch's own two best logits tie within the fp32 tolerance: there rounding, not the
    model, picks the class. Those pixels are counted and must stay under 1 in 10,000."""
    ckpt, path = exported
    assert predict_main(["--onnx", str(path), "--output", str(tmp_path / "onnx"), str(photos)]) == 0
    onnx_out = capsys.readouterr().out
    assert predict_main(["--checkpoint", str(ckpt), "--output", str(tmp_path / "torch"), "--device", "cpu",
                         "--mixed-precision", "no", str(photos)]) == 0  # fp32, as onnxruntime runs the graph
    torch_out = capsys.readouterr().out
    model, info = load_model(ckpt)
    model = fold_batch_norms(model).to(memory_format=torch.channels_last)
    ties = 0
    for photo in sorted(photos.iterdir()):
        got = np.asarray(Image.open(tmp_path / "onnx" / f"{photo.stem}.png"))
        expected = np.asarray(Image.open(tmp_path / "torch" / f"{photo.stem}.png"))
        assert Image.open(tmp_path / "onnx" / f"{photo.stem}.png").mode == "P" and got.shape == expected.shape
        assert Image.open(tmp_path / "onnx" / f"{photo.stem}_overlay.jpg").size == Image.open(photo).size
        differ = got != expected
        if differ.any():
            image = torch.from_numpy(np.asarray(Image.open(photo)).transpose(2, 0, 1).copy())[None]
            with torch.inference_mode():
                logits = torch_infer_logits(model, image, info.mean, info.std)[0].numpy()
            top2 = np.sort(logits, axis=0)[-2:]
            margin = top2[1] - top2[0]
            assert (margin[differ] <= 2 * ATOL_OF_MAX * np.abs(logits).max()).all(), "a pixel that is no tie differs"
            ties += int(differ.sum())
        assert differ.sum() <= 1e-4 * got.size
    print(f"pixels that differ, all ties: {ties}")
    # the shares printed may differ only where the masks do
    assert ties or onnx_out.replace(str(tmp_path / "onnx"), "X") == torch_out.replace(str(tmp_path / "torch"), "X")


def test_the_onnx_prediction_path_imports_no_torch(exported, photos, tmp_path):
    _, path = exported
    code = ("import sys\nfrom fcn_dist.cli import predict_main\n"
            f"code = predict_main(['--onnx', {str(path)!r}, '--output', {str(tmp_path / 'out')!r}, "
            f"'--mode', 'slide', '--tile', '200', '200', '--stride', '150', '150', {str(photos)!r}])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=subprocess_env(tmp_path), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "astronaut.png", "astronaut_overlay.jpg", "chelsea.png", "chelsea_overlay.jpg"]


def test_bad_onnx_models_are_one_line_exit_2(tmp_path, photos, capsys):
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    plain = tmp_path / "plain.onnx"
    node = onnx.helper.make_node("Identity", ["images"], ["logits"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([node], "g", [value("images", onnx.TensorProto.FLOAT, ["n", 3, "h", "w"])],
                                   [value("logits", onnx.TensorProto.FLOAT, ["n", 3, "h", "w"])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), str(plain))
    cases = {tmp_path / "none.onnx": "ONNX model file not found", text: "not a readable ONNX model",
             plain: "no fcn_dist metadata"}
    for path, reason in cases.items():
        code = predict_main(["--onnx", str(path), "--output", str(tmp_path / "out"), str(photos)])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and str(path) in lines[0] and reason in lines[0], lines
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exc:
        predict_main(["--onnx", str(plain), "--device", "cuda", "--output", str(tmp_path / "out"), str(photos)])
    assert exc.value.code == 2 and "--onnx runs on the CPU" in capsys.readouterr().err


# ---- nothing of the user's is replaced ---------------------------------------------------------

def test_export_refuses_a_file_it_did_not_write_and_never_replaces_the_checkpoint(exported, tmp_path, capsys):
    ckpt, onnx_path = exported
    mine = tmp_path / "model.onnx"  # the default output of a checkpoint beside it
    mine.write_bytes(b"my own notes, by chance named model.onnx\n")
    before = mine.read_bytes()
    copy = tmp_path / "model.safetensors"
    copy.write_bytes(ckpt.read_bytes())
    assert export_main(["--checkpoint", str(copy)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"fcn-export: error: {mine} exists and was not written by fcn-export; choose another --output, or pass "
        "--overwrite to replace it"]
    assert mine.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [mine.name, copy.name]
    odd = tmp_path / "weights.onnx"  # a checkpoint with an .onnx name: --overwrite still never replaces it
    odd.write_bytes(ckpt.read_bytes())
    assert export_main(["--checkpoint", str(odd), "--output", str(odd), "--overwrite"]) == 2
    assert "is an input of fcn-export" in capsys.readouterr().err and odd.read_bytes() == ckpt.read_bytes()
    export.check_output(onnx_path, ckpt, overwrite=False)  # its own earlier file: a rerun may replace it


# ---- the export extra ------------------------------------------------------------------------

@pytest.mark.parametrize("module, argv", [
    ("onnxruntime", ["fcn-predict", "--onnx", "m.onnx", "--output", "out", "photo.jpg"]),
    ("onnxscript", ["fcn-export", "--checkpoint", "model.safetensors"]),
])
def test_without_the_export_extra_one_line_names_it(module, argv, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # what an import of a package that is not installed raises
    main = predict_main if argv[0] == "fcn-predict" else export_main
    assert main(argv[1:]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"{argv[0]}: error: {module} is not installed; {argv[0]}{' --onnx' if argv[0] == 'fcn-predict' else ''} "
        'needs the export extra: pip install "fcn_dist[export]"']
    assert list(tmp_path.iterdir()) == []

