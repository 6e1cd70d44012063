"""``fcn-export``: a self-describing safetensors model as an ONNX model for deployment without torch.

::

    fcn-export --checkpoint runs/demo/model_best.safetensors --format onnx   # -> runs/demo/model_best.onnx

The ONNX graph is the FCN as ``fcn-predict`` runs it, BatchNorms folded (``--no-fold-bn`` keeps
them; ``model.fold_batch_norms``):

- **input** ``images``: float32 (N, 3, H, W), **normalised** (``(rgb / 255 - mean) / std`` with
  the model's mean and std, stored in the metadata), with dynamic N, H and W: any batch and any
  size, not only multiples of 32. The graph pads to a multiple of 32 at the bottom and right and
  crops the logits back, as ``FCN.forward`` does: while exporting, ``forward`` always pads (by
  0 at multiples of 32), so one graph serves every size whatever the example's.
- **output** ``logits``: float32 (N, C, H, W), the input's size.
- **metadata_props**: every ``fcn_dist.*`` entry of the checkpoint's header, verbatim
  (``fcn_dist.model``: the model config, ``fcn_dist.classes``, ``fcn_dist.normalize``: mean and
  std, ``fcn_dist.step``, ``fcn_dist.metrics``, ...; ``fcn_dist.metadata.model_info`` reads
  them), plus ``fcn_dist.onnx`` describing the graph (``runtime.ONNX_META``).

Exporter: ``torch.onnx.export(..., dynamo=True, dynamic_shapes=...)`` (torch.export, needs
onnxscript), opset 20 in torch 2.14: torch's default exporter since 2.9, which follows the
padding's size arithmetic symbolically. Only if it fails (raises, or its graph fails the checks
below) the TorchScript exporter (``dynamo=False``, ``dynamic_axes``, opset 18) is tried, with one
warning line naming the dynamo error. It is the fallback, not the first choice, because it is
deprecated since torch 2.9 and records Python control flow as constants of the example: the FCN
survives that only because ``forward`` pads unconditionally while traced. Both graphs give the
same logits to float rounding (tests/test_export.py checks the fallback's too).

Head: the final upsampling is exported as the plain ``ConvTranspose2d`` (``FCN.head =
"conv_transpose"``, one standard ``ConvTranspose`` op with the checkpoint's own weight), not the
CPU training fast path (``pixel_shuffle``: a 2x2 ``Conv`` + ``DepthToSpace`` + a crop, which
``head=auto`` picks on CPU with autograd on). Both export correctly, agree to float rounding and
ran at the same speed in onnxruntime (fcn32s/ResNet-18 at 321x479, 2 cores: 0.286 s against
0.291 s per image; benchmarks/README.md, "ONNX export head"); the plain one is the simpler graph
(62 nodes against 84) and the op every runtime has. The export runs under ``torch.no_grad()``,
where ``auto`` would pick it too; it is set explicitly so that no grad-mode accident changes the
graph.

Before anything is written the graph is checked: ``onnx.checker.check_model(full_check=True)``,
then onnxruntime runs it on a 3 x 3 x 65 x 111 input (another batch and size than the example's
2 x 3 x 97 x 130, neither a multiple of 32) and its logits must agree with torch's (``max |diff|
<= 1e-4 * max |logits|``, argmax on >= 99.99% of pixels). The file is written atomically; an existing file that fcn-export did not write (``fcn_dist.onnx``
in its metadata says ``written_by: fcn-export``) is refused unless ``--overwrite``, and the
checkpoint is never replaced.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import __version__
from .checkpoint import load_model, read_metadata
from .cli import export_main, run_guarded
from .files import OverwriteError, atomic_write, refuse_overwrites
from .model import fold_batch_norms
from .process import EXIT_EXPORT_FAILED, fail
from .runtime import ONNX_FORMAT, ONNX_META

PROG = "fcn-export"
INPUT, OUTPUT = "images", "logits"
HEAD = "conv_transpose"
TORCHSCRIPT_OPSET = 18
EXAMPLE_SHAPE = (2, 3, 97, 130)
"""The export's example input: a batch of 2 (torch.export specialises sizes 0 and 1) and sides
that are not multiples of 32."""
CHECK_SHAPE = (3, 3, 65, 111)
"""The check's input: another batch and other sides than the example's, so that a graph that
kept the example's sizes somewhere fails it."""
ATOL_OF_MAX = 1e-4
"""The export check: onnxruntime's logits within this fraction of torch's largest |logit|. fp32
kernels that sum in another order differ by ~1e-6 of it (1.3e-6 on a random fcn32s/ResNet-18;
tests/test_export.py holds that model to 1e-5); the check is looser because it must pass for any
trained model, deeper trunks (ResNet-101) summing more terms, while a wrong graph (a lost pad, a
shifted crop, a size kept from the example) is off by a good fraction of the largest logit."""
MIN_ARGMAX_AGREEMENT = 0.9999


class ExportError(RuntimeError):
    """No exporter produced a graph that reproduces torch's logits; nothing was written."""


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What ``export_onnx`` wrote and how it checked it."""

    path: Path
    exporter: str
    opset: int
    size_bytes: int
    max_abs_diff: float
    max_abs_logit: float
    argmax_agreement: float
    pixels: int


def is_fcn_export(path: Path) -> bool:
    """Whether ``path`` is an ONNX model that fcn-export wrote (its ``fcn_dist.onnx`` entry says so)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError, DecodeError):  # not a file, or not a protobuf: not ours
        return False
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        return json.loads(meta.get(ONNX_META, "{}")).get("written_by") == PROG
    except (json.JSONDecodeError, AttributeError):
        return False


def default_output(checkpoint: Path) -> Path:
    """``<stem>.onnx`` beside the checkpoint."""
    return checkpoint.with_suffix(".onnx")


def check_output(output: Path, checkpoint: Path, overwrite: bool) -> None:
    """Refuse, before the export runs, an output that is the checkpoint or a file fcn-export did not write.

    Raises:
        OverwriteError: naming the file and the fix.
    """
    if output.is_dir():
        raise OverwriteError(f"--output {output} is a folder; give the .onnx file to write")
    refuse_overwrites([output], [checkpoint], overwrite, is_fcn_export, PROG)


def _dynamo(model: torch.nn.Module, example: torch.Tensor):
    batch, height, width = (torch.export.Dim(name, min=1) for name in ("batch", "height", "width"))
    program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                dynamic_shapes={"images": {0: batch, 2: height, 3: width}}, verbose=False)
    return program.model_proto


def _torchscript(model: torch.nn.Module, example: torch.Tensor):
    import onnx

    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice; the docstring says why it is the fallback
        torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: axes, OUTPUT: axes}, opset_version=TORCHSCRIPT_OPSET)
    return onnx.load_from_string(buffer.getvalue())


def _quiet():
    """torch.onnx prints progress lines and warnings of its own: kept off the user's terminal."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def _name_output_dims(proto) -> None:
    """The logits' dims carry the input's names (torch.export writes the size expression of the crop)."""
    for dim, name in zip(proto.graph.output[0].type.tensor_type.shape.dim, ("batch", None, "height", "width")):
        if name:
            dim.dim_param = name


def _compare(proto, model: torch.nn.Module) -> tuple[float, float, float, int]:
    """onnxruntime against torch on the example: (max |diff|, max |logit|, argmax agreement, pixels)."""
    import onnxruntime as ort

    x = torch.randn(CHECK_SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).numpy()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out = session.run([OUTPUT], {INPUT: x.numpy()})[0]
    if out.shape != ref.shape:
        raise ExportError(f"the exported graph gives logits of shape {out.shape} for {CHECK_SHAPE}, torch "
                          f"{ref.shape}")
    agree = float((out.argmax(1) == ref.argmax(1)).mean())
    return float(np.abs(out - ref).max()), float(np.abs(ref).max()), agree, ref.shape[0] * ref.shape[2] * ref.shape[3]


def export_onnx(checkpoint: Path, output: Path, fold_bn: bool = True, overwrite: bool = False,
                exporters: Sequence[str] = ("dynamo", "torchscript")) -> ExportReport:
    """Export ``checkpoint`` to ``output`` as ONNX (see the module docstring for the graph and its checks).

    Args:
        checkpoint: a self-describing ``.safetensors`` model (``checkpoint.export_model``).
        output: the ``.onnx`` file to write.
        fold_bn: fold each BatchNorm into the conv before it, as fcn-predict does by default.
        overwrite: replace an existing ``output`` that fcn-export did not write (never the checkpoint).
        exporters: tried in this order until one works.

    Raises:
        CheckpointError: see ``checkpoint.load_model``.
        OverwriteError: ``output`` is the checkpoint, or a file fcn-export did not write and not ``overwrite``.
        ExportError: no exporter gave a graph that passes the checks; nothing is written.
    """
    import onnx

    check_output(output, checkpoint, overwrite)
    meta = read_metadata(checkpoint)
    model, info = load_model(checkpoint)
    model = fold_batch_norms(model) if fold_bn else model
    model.head = HEAD
    example = torch.randn(EXAMPLE_SHAPE, generator=torch.Generator().manual_seed(1))
    errors = []
    for exporter in exporters:
        try:
            with torch.no_grad(), _quiet():
                proto = (_dynamo if exporter == "dynamo" else _torchscript)(model, example)
            _name_output_dims(proto)
            onnx.checker.check_model(proto, full_check=True)
            diff, largest, agree, pixels = _compare(proto, model)
            if not (diff <= ATOL_OF_MAX * largest and agree >= MIN_ARGMAX_AGREEMENT):
                raise ExportError(f"onnxruntime's logits differ from torch's by up to {diff:.3g} (largest |logit| "
                                  f"{largest:.3g}), argmax agrees on {100 * agree:.2f}% of pixels")
        except Exception as err:  # an exporter fails in many ways (unsupported op, guard, checker, ExportError)
            errors.append(f"{exporter}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            if exporter != exporters[-1]:
                print(f"{PROG}: warning: the {exporter} exporter failed ({errors[-1]}); trying the next one",
                      file=sys.stderr)
            continue
        break
    else:
        raise ExportError("; ".join(errors))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    entries = {key: value for key, value in meta.items() if key.startswith("fcn_dist.")}
    entries[ONNX_META] = json.dumps({
        "format": ONNX_FORMAT, "input": INPUT, "output": OUTPUT, "layout": "NCHW",
        "input_values": "float32 (rgb / 255 - mean) / std, rgb 0..255, mean and std from fcn_dist.normalize",
        "exporter": exporter, "opset": opset, "folded_bn": fold_bn, "head": HEAD, "written_by": PROG,
        "fcn_dist_version": __version__, "checkpoint": checkpoint.name})
    del proto.metadata_props[:]
    for key, value in sorted(entries.items()):
        proto.metadata_props.add(key=key, value=value)
    cfg = info.model
    proto.doc_string = (f"fcn_dist {cfg.arch}/{cfg.backbone}, {cfg.num_classes} classes, step {info.step}: "
                        f"{INPUT} float32 (N, 3, H, W) normalised -> {OUTPUT} float32 (N, C, H, W)")
    data = proto.SerializeToString()
    with atomic_write(output) as tmp:
        tmp.write_bytes(data)
    return ExportReport(output, exporter, opset, len(data), diff, largest, agree, pixels)


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``fcn-export`` (``fcn_dist.cli.export_parser``); returns the exit code."""
    output = args.output or default_output(args.checkpoint)

    def body() -> int:
        try:
            report = export_onnx(args.checkpoint, output, args.fold_bn, args.overwrite)
        except ExportError as err:
            return fail(PROG, f"nothing written: {err}", EXIT_EXPORT_FAILED)
        print(f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, ONNX opset {report.opset}, {report.exporter} "
              f"exporter, BatchNorms {'folded' if args.fold_bn else 'kept'}); onnxruntime matches torch on "
              f"{'x'.join(map(str, CHECK_SHAPE))}: max |diff| {report.max_abs_diff:.2g} of max |logit| "
              f"{report.max_abs_logit:.3g}, argmax equal on {100 * report.argmax_agreement:.2f}% of "
              f"{report.pixels:,} pixels")
        return 0

    return run_guarded(PROG, body)


def main(argv: Sequence[str] | None = None) -> int:
    """``fcn-export`` / ``python -m fcn_dist.export``; returns the exit code."""
    return export_main(argv)


if __name__ == "__main__":
    sys.exit(main())

