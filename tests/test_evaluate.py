"""evaluate(): exact counts on one and two processes; the fcn-eval CLI, its files and its errors."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from eval_helpers import MODEL_CFG, REPO, make_checkpoint, make_voc, random_images, run_torchrun, tiny_model
from PIL import Image

from fcn_dist.checkpoint import export_model, load_model
from fcn_dist.config import DataConfig
from fcn_dist.data import build_dataset
from fcn_dist.model import IMAGENET_MEAN, IMAGENET_STD
from fcn_dist.labels import VOC_CLASSES
from fcn_dist.data import list_collate
from fcn_dist.evaluate import evaluate, main, render_confusion
from fcn_dist.inference import predict_image
from fcn_dist.metrics import compute_scores, confusion_matrix

sys.path.insert(0, str(Path(__file__).parent))

torch.set_num_threads(1)
INFO = type("Info", (), {"mean": IMAGENET_MEAN, "std": IMAGENET_STD})()
JSON_KEYS = {"mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU", "mDice", "mFscore", "per_class_IoU", "per_class_Dice",
             "per_class_Fscore", "num_images", "confusion_matrix", "checkpoint", "split"}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def pairs():
    return random_images(5)


@pytest.fixture(scope="module")
def reference_cm(model, pairs):
    """The confusion matrix summed image by image, without evaluate()."""
    return sum(confusion_matrix(predict_image(model, INFO, image), mask, 21) for image, mask in pairs)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A checkpoint and a synthetic VOC set with 5 val images of different sizes."""
    tmp = tmp_path_factory.mktemp("evaldata")
    ckpt, _ = make_checkpoint(tmp / "model.safetensors")
    root = make_voc(tmp / "voc", num_val=5)
    sizes = {Image.open(p).size for p in (root / "VOCdevkit/VOC2012/JPEGImages").glob("val_*.jpg")}
    assert len(sizes) > 1
    return ckpt, root


FP32 = ["--mixed-precision", "no"]
"""Runs that are compared with each other or with fp32 references say their precision: auto could differ."""


def _run_cli(args, capsys):
    code = main([str(a) for a in args] + FP32)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("batch_size, collate", [(1, None), (3, list_collate)])
def test_evaluate_one_process_equals_per_image_sum(model, pairs, reference_cm, batch_size, collate):
    accelerator = Accelerator(cpu=True)
    kwargs = {"collate_fn": collate} if collate else {}
    if collate is None:  # the default collate needs one size per batch
        pairs = [(image[:, :40, :50], mask[:40, :50]) for image, mask in pairs]
        expected = sum(confusion_matrix(predict_image(model, INFO, i), m, 21) for i, m in pairs)
    else:
        expected = reference_cm
    loader = torch.utils.data.DataLoader(pairs, batch_size=batch_size, **kwargs)
    model.train()
    result = evaluate(model, loader, accelerator, 21, IMAGENET_MEAN, IMAGENET_STD, num_examples=2)
    assert model.training  # the previous mode is restored
    model.eval()
    assert torch.equal(result.confusion, expected)
    assert result.metrics["num_images"] == 5
    assert result.metrics["confusion_matrix"] == expected.tolist()
    assert list(result.metrics["per_class_IoU"]) == list(VOC_CLASSES)
    assert set(result.metrics) == JSON_KEYS - {"checkpoint", "split"}
    assert len(result.examples) == 2
    image, pred, label = result.examples[0]
    assert image.dtype == pred.dtype == label.dtype == torch.uint8
    assert image.shape[1:] == pred.shape == label.shape == pairs[0][1].shape


def test_evaluate_refuses_to_miss_images(model, pairs):
    loader = torch.utils.data.DataLoader(pairs, batch_size=2, drop_last=True, collate_fn=list_collate)
    with pytest.raises(RuntimeError, match="counted 4 images but the dataset has 5"):
        evaluate(model, loader, Accelerator(cpu=True), 21, IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.slow
def test_evaluate_two_processes_counts_each_image_once(tmp_path, reference_cm):
    """Accelerate's even_batches pads the last batch with repeats; they must not be counted."""
    out = tmp_path / "dist.json"
    proc = run_torchrun([REPO / "tests" / "dist_eval_worker.py", out], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results.pop("plain_loader_refused") is True
    assert set(results) == {"even=True,batch=1", "even=True,batch=2", "even=False,batch=1", "even=False,batch=2",
                            "ddp,default_collate"}
    for name, got in results.items():
        assert got["cm"] == reference_cm.tolist(), name
        assert got["num_images"] == 5, name


@pytest.mark.slow
def test_cli_torchrun_two_processes_equals_one_process(tmp_path, data, capsys):
    ckpt, root = data
    one = tmp_path / "one" / "m.json"
    code, _, _ = _run_cli(["--checkpoint", ckpt, "--data-root", root, "--output", one,
                           "--num-workers", "0"], capsys)
    assert code == 0
    two = tmp_path / "two" / "m.json"
    proc = run_torchrun(["-m", "fcn_dist.evaluate", "--checkpoint", ckpt, "--data-root", root, "--output", two,
                         "--num-workers", "1", "--batch-size", "2", "--wandb", *FP32], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("num_images") == 1  # only the main process prints
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["num_images"] == a["num_images"] == 5
    assert b["confusion_matrix"] == a["confusion_matrix"]
    assert b == a
    from wandb_records import logged_table

    runs = list((two.parent / "wandb").glob("offline-run-*/*.wandb"))  # one W&B run, from the main process
    assert len(runs) == 1
    per_image, _ = logged_table(runs[0], "eval/val/per_image")  # every process's images, each once
    assert sorted(dict(zip(per_image["columns"], v))["labelled_pixels"] for v in per_image["data"]) == sorted(
        int(cm.sum()) for cm in per_image_cms(ckpt, root))


def per_image_cms(ckpt, root) -> list:
    model, info = load_model(ckpt)
    val = build_dataset(DataConfig(root=str(root)), "val", train=False)
    return [confusion_matrix(predict_image(model, info, image), mask, 21) for image, mask in val]


def test_cli_fold_bn_changes_float_rounding_only(tmp_path, data, capsys):
    ckpt, root = data
    cms = {}
    for flags in (["--no-fold-bn", "--no-channels-last"], []):
        out = tmp_path / f"{len(flags)}.json"
        code, _, _ = _run_cli(["--checkpoint", ckpt, "--data-root", root, "--output", out, "--num-workers", "0",
                               *flags], capsys)
        assert code == 0
        cms[len(flags)] = torch.tensor(json.loads(out.read_text())["confusion_matrix"])
    model, info = load_model(ckpt)
    val = build_dataset(DataConfig(root=str(root)), "val", train=False)
    expected = sum(confusion_matrix(predict_image(model, info, image), mask, 21) for image, mask in val)
    assert torch.equal(cms[2], expected)  # unfolded: exactly the checkpoint's model
    moved = int((cms[0] - expected).abs().sum()) // 2  # pixels whose prediction changed
    # folding + channels_last move logits by ~2e-6 of the largest: 1 of these 27,221 pixels (top-2 margin 1.6e-7)
    # flips on every ISA tried; 0.2% (54) leaves 50x, a wrong fold changes far more
    assert cms[0].sum() == expected.sum() and moved <= 0.002 * int(expected.sum())


def test_cli_writes_design_json_png_and_table(tmp_path, data, capsys):
    ckpt, root = data
    out = tmp_path / "eval" / "val.json"
    code, stdout, _ = _run_cli(["--checkpoint", ckpt, "--data-root", root / "VOCdevkit" / "VOC2012",
                                "--output", out, "--num-workers", "0", "--mode", "slide",
                                "--tile", "64", "64", "--stride", "32", "32"], capsys)
    assert code == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) == JSON_KEYS
    assert metrics["checkpoint"] == str(ckpt) and metrics["split"] == "val" and metrics["num_images"] == 5
    assert list(metrics["per_class_IoU"]) == list(VOC_CLASSES)
    assert all(v is None or 0.0 <= v <= 1.0 for v in metrics["per_class_IoU"].values())
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU"))
    cm = metrics["confusion_matrix"]
    assert len(cm) == 21 and all(len(row) == 21 and all(type(v) is int for v in row) for row in cm)
    for name, iou in metrics["per_class_IoU"].items():  # null exactly for classes in neither labels nor preds
        k = VOC_CLASSES.index(name)
        absent = sum(cm[k]) == 0 and sum(row[k] for row in cm) == 0
        assert (iou is None) == absent
    png = Image.open(out.with_name("val_confusion.png"))
    assert png.format == "PNG" and png.width > 21 * 20
    assert "background" in stdout and "tv/monitor" in stdout and f"{metrics['mIoU']:.4f}" in stdout


def _files(run_dir: Path, value: dict) -> Path:
    return run_dir / "files" / value["path"]


def test_cli_wandb_logs_eval_keys_chart_and_per_image_table(tmp_path, data, capsys, monkeypatch):
    """fcn-eval --wandb, read back from the offline run: eval/<split>/* at one step, the confusion chart's
    counts, and one per-image row per image whose scores recompute from the masks W&B saved."""
    import wandb
    from wandb_records import history, logged_table, read_records

    ckpt, root = data
    for name, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("WANDB_DATA_DIR", str(tmp_path))):
        monkeypatch.setenv(name, value)
    wandb.teardown()  # wandb reads its settings once per process
    code, out, _ = _run_cli(["--checkpoint", ckpt, "--data-root", root, "--output", tmp_path / "m.json",
                             "--num-workers", "0", "--wandb", "--split", "val"], capsys)
    assert code == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and f"wandb sync {runs[0]}" in out
    run_file = next(runs[0].glob("*.wandb"))
    run = next(r.run for r in read_records(run_file) if r.WhichOneof("record_type") == "run")
    assert run.job_type == "eval" and run.display_name == f"{ckpt.parent.name}/model-step7"
    rows = history(run_file)
    assert len(rows) == 1  # scalars, tables and media at one step
    row = rows[0]
    assert row["train/step"] == 7  # the checkpoint's step: the x-axis of the training run
    assert row["eval/val/mIoU"] == metrics["mIoU"] and row["eval/val/pixel_accuracy"] == metrics["pixel_accuracy"]
    assert not any(key.startswith("val/") for key in row)

    chart, _ = logged_table(run_file, "eval/val/confusion_matrix_table")
    assert chart["columns"] == ["Actual", "Predicted", "nPredictions"]
    assert sum(r[2] for r in chart["data"]) == sum(map(sum, metrics["confusion_matrix"])) > 0
    per_class, _ = logged_table(run_file, "eval/val/per_class")
    assert [r[0] for r in per_class["data"]] == list(VOC_CLASSES)
    assert [r[1] for r in per_class["data"]] == list(metrics["per_class_IoU"].values())
    assert row["eval/val/confusion_png/_type"] == "image-file"
    per_image, files = logged_table(run_file, "eval/val/per_image")
    assert len(per_image["data"]) == metrics["num_images"] == 5
    columns = per_image["columns"]
    for values in per_image["data"]:
        cell = dict(zip(columns, values))
        masks = {name: torch.from_numpy(np.array(Image.open(files[cell["image"]["masks"][name]["path"]])))
                 for name in ("prediction", "label")}
        assert Image.open(files[cell["image"]["path"]]).format == "JPEG"
        cm = confusion_matrix(masks["prediction"], masks["label"], 21)
        assert cell["labelled_pixels"] == int(cm.sum())
        scores = compute_scores(cm)
        assert cell["pixel_accuracy"] == int(cm.diagonal().sum()) / int(cm.sum()) == scores["pixel_accuracy"]
        assert cell["mIoU"] == scores["mIoU"]
    recounted = sum(dict(zip(columns, v))["labelled_pixels"] for v in per_image["data"])
    assert recounted == sum(map(sum, metrics["confusion_matrix"]))


def test_cli_eval_run_records_the_training_run_and_joins_its_group(tmp_path, data, capsys, monkeypatch):
    import wandb
    from wandb_records import read_records

    _, root = data
    ckpt = tmp_path / "demo-lr0.05" / "model_best.safetensors"
    export_model(tiny_model(), ckpt, MODEL_CFG, list(VOC_CLASSES), IMAGENET_MEAN, IMAGENET_STD, step=40,
                 metrics={"mIoU": 0.5}, provenance={"config_fingerprint": "0123456789abcdef", "wandb": json.dumps(
                     {"run": "team/fcn_dist/abc123", "group": "lr-study", "artifact": "team/fcn_dist/model-abc123:step-40"})})
    for name, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("WANDB_DATA_DIR", str(tmp_path))):
        monkeypatch.setenv(name, value)
    wandb.teardown()
    code, _, _ = _run_cli(["--checkpoint", ckpt, "--data-root", root, "--output", tmp_path / "ev" / "m.json",
                           "--num-workers", "0", "--wandb", "--wandb-images", "2"], capsys)
    assert code == 0
    records = read_records(next((tmp_path / "ev" / "wandb").glob("offline-run-*/*.wandb")))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.run_group, run.project, run.entity, run.display_name) == ("lr-study", "fcn_dist", "team",
                                                                           "demo-lr0.05/model_best-step40")
    config = {u.key: json.loads(u.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for u in r.config.update}
    assert config["train/run"] == "team/fcn_dist/abc123"
    assert config["train/artifact"] == "team/fcn_dist/model-abc123:step-40"
    assert config["checkpoint/config_fingerprint"] == "0123456789abcdef" and config["checkpoint/step"] == 40
    assert config["split"] == "val" and config["mode"] == "whole"


def _bad_checkpoints(tmp_path, ckpt):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(plain))
    pickle = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(2)}, pickle)
    return {"missing": (tmp_path / "nope.safetensors", "not found"), "truncated": (truncated, "truncated"),
            "no metadata": (plain, "no fcn_dist metadata"), "pickle": (pickle, "pickle")}


def test_cli_bad_checkpoints_exit_2_with_one_line(tmp_path, data, capsys):
    ckpt, root = data
    for case, (path, reason) in _bad_checkpoints(tmp_path, ckpt).items():
        code, _, err = _run_cli(["--checkpoint", path, "--data-root", root], capsys)
        assert code == 2, case
        lines = [line for line in err.splitlines() if line.startswith("fcn-eval: error:")]
        assert len(lines) == 1 and str(path) in lines[0] and reason in lines[0], (case, err)


def test_cli_bad_data_root_and_split_exit_2(tmp_path, data, capsys):
    ckpt, root = data
    code, _, err = _run_cli(["--checkpoint", ckpt, "--data-root", tmp_path / "missing"], capsys)
    assert code == 2 and "fcn-eval: error:" in err and str(tmp_path / "missing") in err
    code, _, err = _run_cli(["--checkpoint", ckpt, "--data-root", root, "--split", "test"], capsys)
    assert code == 2 and "test.txt" in err
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(ckpt), "--data-root", str(root), "--mode", "slide", "--tile", "32", "32",
              "--stride", "64", "64"])
    assert exc.value.code == 2


def test_cli_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "exit codes: 0" in capsys.readouterr().out


def test_export_model_checkpoint_is_what_cli_reads(tmp_path, capsys, data):
    """A checkpoint with other class names: per_class_IoU keys come from its metadata."""
    _, root = data
    classes = [f"c{i}" for i in range(21)]
    path = tmp_path / "named.safetensors"
    model = tiny_model(1)
    export_model(model, path, MODEL_CFG, classes, IMAGENET_MEAN, IMAGENET_STD)
    code, stdout, _ = _run_cli(["--checkpoint", path, "--data-root", root, "--output", tmp_path / "m.json",
                                "--num-workers", "0"], capsys)
    assert code == 0
    assert list(json.loads((tmp_path / "m.json").read_text())["per_class_IoU"]) == classes
    assert "c20" in stdout


def test_cli_arrow_dataset_gives_same_matrix_as_voc(tmp_path, data, capsys):
    from fcn_dist.data.hub import prepare_arrow

    ckpt, root = data
    arrow = prepare_arrow(root, tmp_path / "arrow", splits=("val",))
    outputs = {}
    for fmt, data_root in (("voc", root), ("arrow", arrow)):
        outputs[fmt] = tmp_path / fmt / "m.json"
        code, _, err = _run_cli(["--checkpoint", ckpt, "--data-root", data_root, "--data-format", fmt,
                                 "--output", outputs[fmt], "--num-workers", "0"], capsys)
        assert code == 0, err
    voc, arr = (json.loads(outputs[f].read_text()) for f in ("voc", "arrow"))
    assert arr["confusion_matrix"] == voc["confusion_matrix"] and arr["num_images"] == 5


def test_output_never_replaces_a_file_fcn_eval_did_not_write(tmp_path, data, capsys):
    ckpt, root = data
    notes = tmp_path / "m.json"
    notes.write_text('{"my": "notes"}\n')
    code, _, err = _run_cli(["--checkpoint", ckpt, "--data-root", root, "--output", notes, "--num-workers", "0"],
                            capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"fcn-eval: error: {notes} exists and was not written by fcn-eval; choose another --output, or pass "
        "--overwrite to replace it"]
    assert notes.read_text() == '{"my": "notes"}\n' and not notes.with_name("m_confusion.png").exists()
    # never an input, even with --overwrite: the checkpoint, a file of the data root
    split = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
    for target in (ckpt, split):
        before = target.read_bytes()
        code, _, err = _run_cli(["--checkpoint", ckpt, "--data-root", root, "--output", target, "--overwrite",
                                 "--num-workers", "0"], capsys)
        assert code == 2 and f"{target} is an input of fcn-eval" in err and target.read_bytes() == before
    assert _run_cli(["--checkpoint", ckpt, "--data-root", root, "--output", notes, "--overwrite",
                     "--num-workers", "0"], capsys)[0] == 0
    assert _run_cli(["--checkpoint", ckpt, "--data-root", root, "--output", notes,  # its own files: replaced
                     "--num-workers", "0"], capsys)[0] == 0
    assert json.loads(notes.read_text())["num_images"] == 5


def test_the_confusion_png_says_what_it_shows_and_leaves_absent_classes_out(tmp_path, data, capsys):
    ckpt, root = data
    out = tmp_path / "m.json"
    assert _run_cli(["--checkpoint", ckpt, "--data-root", root, "--output", out, "--num-workers", "0"], capsys)[0] == 0
    metrics = json.loads(out.read_text())
    png = Image.open(out.with_name("m_confusion.png"))
    assert png.text["Title"] == f"{ckpt} (step 7), split val, mIoU {metrics['mIoU']:.4f}"
    cm = torch.tensor(metrics["confusion_matrix"])
    shown = [k for k in range(21) if cm[k].sum() or cm[:, k].sum()]
    absent = [VOC_CLASSES[k] for k in range(21) if k not in shown]
    assert 0 < len(absent) < 21 and list(metrics["per_class_IoU"]) == list(VOC_CLASSES)  # the JSON keeps all 21
    assert png.text["Description"] == (f"classes shown: {', '.join(VOC_CLASSES[k] for k in shown)}; not shown, "
                                       f"absent from labels and predictions: {', '.join(absent)}")
    # the picture is render_confusion's with that title, which takes a line of its own above the matrix
    assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(render_confusion(cm, VOC_CLASSES,
                                                                                       title=png.text["Title"])))
    assert render_confusion(cm, VOC_CLASSES).height < png.height
    # the picture's matrix is the one of the present classes alone, pixel for pixel
    alone = render_confusion(cm[shown][:, shown], [VOC_CLASSES[k] for k in shown], title=png.text["Title"])
    rows = 28 * len(shown) + 10  # the cell rows and the bottom margin
    assert png.width == alone.width
    assert np.array_equal(np.asarray(png.convert("RGB"))[-rows:], np.asarray(alone)[-rows:])


def test_a_data_error_in_a_loader_worker_is_the_same_one_line(tmp_path, data, capsys):
    ckpt, root = data
    bad = tmp_path / "voc"
    shutil.copytree(root / "VOCdevkit", bad / "VOCdevkit")
    image = sorted((bad / "VOCdevkit/VOC2012/JPEGImages").glob("val_*.jpg"))[3]
    image.write_bytes(image.read_bytes()[:300])
    code, _, err = _run_cli(["--checkpoint", ckpt, "--data-root", bad, "--num-workers", "2"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"fcn-eval: error: {image}: corrupt or truncated image (Truncated File Read); replace the file or remove its "
        "id from the split file"]
