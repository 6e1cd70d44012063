"""The checkpoint schema: every malformed export is refused at load, by fcn-eval and fcn-predict alike,
with exit 2 and one line naming the field or tensor (docs/DESIGN.md, "Self-describing safetensors")."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from eval_helpers import make_checkpoint, make_voc
from safetensors.torch import load_file, save

from fcn_dist import evaluate, predict
from fcn_dist.checkpoint import CheckpointError, load_model, read_metadata

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """(a valid export, its tensors, its metadata, a synthetic VOC root)."""
    tmp = tmp_path_factory.mktemp("schema")
    path, _ = make_checkpoint(tmp / "model.safetensors")
    return path, load_file(str(path)), read_metadata(path), make_voc(tmp / "voc", num_val=1)


def _raw(header) -> bytes:
    """A safetensors file of a hand-made JSON header and 8 bytes of data."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"\0" * 8


def _meta(meta: dict, **fields) -> dict:
    return {**meta, **{f"fcn_dist.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}}


def _with(meta, state=None, **fields):
    """A file with ``fields`` changed; metadata-only cases need no real tensors: they fail before any is read."""
    return save(state if state is not None else {"w": torch.zeros(2)}, metadata=_meta(meta, **fields))


def _model(meta: dict, **changes) -> str:
    return json.dumps({**json.loads(meta["fcn_dist.model"]), **changes})


def _case(name, good):
    _, state, meta, _ = good
    norm = json.loads(meta["fcn_dist.normalize"])
    if name == "header is a list":
        return _raw([1, 2]), "a JSON list, not an object of tensor entries"
    if name == "entry is not a dict":
        return _raw({"w": 5, "__metadata__": meta}), "tensor 'w' is a JSON int, not a tensor entry"
    if name == "entry without data_offsets":
        return _raw({"w": {"dtype": "F32", "shape": [2]}, "__metadata__": meta}), "tensor 'w' has data_offsets None"
    if name == "normalize as strings":
        return _with(meta, normalize={"mean": ["0.4"] * 3, "std": ["0.2"] * 3}), "fcn_dist.normalize mean="
    if name == "normalize of length 1":
        return _with(meta, normalize={"mean": [0.4], "std": [0.2]}), "fcn_dist.normalize mean=[0.4] is not 3 finite"
    if name == "std zero":
        return _with(meta, normalize={**norm, "std": [0, 0, 0]}), "fcn_dist.normalize std=[0, 0, 0] must be > 0"
    if name == "classes a string":
        return _with(meta, classes="5"), "fcn_dist.classes=5 is not a list of class names"
    if name == "num_classes a string":
        return _with(meta, model=_model(meta, num_classes="21")), "fcn_dist.model num_classes='21' is not a whole"
    if name == "3 names for 21 classes":
        return _with(meta, classes=["a", "b", "c"]), "fcn_dist.classes has 3 names but fcn_dist.model num_classes is 21"
    if name == "trained_with a list":
        return _with(meta, trained_with=["bf16"]), "fcn_dist.trained_with is a JSON list, not an object"
    if name == "unknown arch":
        return _with(meta, model=_model(meta, arch="fcn4s")), "fcn_dist.model arch='fcn4s' is not one of"
    if name == "all-NaN weights":
        return save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()},
                    metadata=meta), "non-finite (NaN or inf) values"
    if name == "wrong tensor shape":
        return save({**state, "score.weight": state["score.weight"][:20]}, metadata=meta), \
            "tensor score.weight has shape [20, 512, 1, 1], the model's is [21, 512, 1, 1]"
    if name == "missing tensor":
        return save({k: v for k, v in state.items() if k != "score.bias"}, metadata=meta), "missing score.bias"
    if name == "extra tensor":
        return save({**state, "extra.weight": torch.zeros(3)}, metadata=meta), "unexpected extra.weight"
    raise AssertionError(name)


CASES = ["header is a list", "entry is not a dict", "entry without data_offsets", "normalize as strings",
         "normalize of length 1", "std zero", "classes a string", "num_classes a string", "3 names for 21 classes",
         "trained_with a list", "unknown arch", "all-NaN weights", "wrong tensor shape", "missing tensor",
         "extra tensor"]


@pytest.mark.parametrize("name", CASES)
def test_a_malformed_checkpoint_exits_2_with_one_line_in_eval_and_predict(name, good, tmp_path, capsys):
    data, fragment = _case(name, good)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert fragment in str(info.value) and str(path) in str(info.value)
    root = good[3]
    image = next((root / "VOCdevkit/VOC2012/JPEGImages").glob("val_*.jpg"))
    for prog, main, args in (
            # fp32 as every in-process fcn-eval of the suite: Accelerate keeps one precision per process
            ("fcn-eval", evaluate.main, ["--data-root", root, "--num-workers", "0", "--mixed-precision", "no"]),
            ("fcn-predict", predict.main, ["--output", tmp_path / "out", image])):
        assert main(["--checkpoint", str(path), *map(str, args)]) == 2, prog
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines == [f"{prog}: error: {info.value}"], (prog, lines)
    assert not (tmp_path / "out").exists()


def test_a_good_checkpoint_still_loads(good):
    path, state, _, _ = good
    model, info = load_model(path)
    assert info.step == 7 and info.metrics == {"mIoU": 0.5} and len(info.classes) == 21
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
