"""Which upsampling head fcn-export writes: onnxruntime (CPU) with each head's graph, and torch for reference.

    python benchmarks/onnx_head.py [--arch fcn32s] [--size 321 479] [--rounds 10]

Exports a random fcn32s/ResNet-18 (BatchNorms folded, as fcn-export does) once per head with the
dynamo exporter, then times one forward pass per round, rounds interleaved across the cases, and
prints the median and the range in seconds per image. benchmarks/README.md, "ONNX export head",
holds the figures.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch

from fcn_dist.config import ModelConfig
from fcn_dist.export import _dynamo
from fcn_dist.model import build_model, fold_batch_norms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="fcn32s", choices=("fcn32s", "fcn16s", "fcn8s"))
    parser.add_argument("--size", type=int, nargs=2, default=[321, 479], metavar=("H", "W"))
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = fold_batch_norms(build_model(ModelConfig(arch=args.arch, pretrained="none")))
    x = torch.randn(1, 3, *args.size)
    cases = {}
    for head in ("conv_transpose", "pixel_shuffle"):
        model.head = head
        with torch.no_grad():
            proto = _dynamo(model, torch.randn(2, 3, 97, 130))
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        ops = sorted({n.op_type for n in proto.graph.node} & {"ConvTranspose", "DepthToSpace"})
        cases[f"onnxruntime, head {head} ({', '.join(ops)})"] = lambda s=session: s.run(None, {"images": x.numpy()})
    model.head = "auto"
    channels_last = model.to(memory_format=torch.channels_last)

    def eager() -> None:
        with torch.inference_mode():
            channels_last(x.contiguous(memory_format=torch.channels_last))

    cases["torch eager, fp32, channels_last (fcn-predict --checkpoint)"] = eager
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm-up
    for _ in range(args.rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    print(f"{args.arch}/resnet18, 1 x 3 x {args.size[0]} x {args.size[1]}, {torch.get_num_threads()} threads, "
          f"onnxruntime {ort.__version__}, torch {torch.__version__}")
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.3f} s (range {min(values):.3f}-{max(values):.3f})")
    out = cases[next(iter(cases))]()[0]
    assert np.isfinite(out).all()


if __name__ == "__main__":
    main()
