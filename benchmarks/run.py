"""fcn_dist against d2l's FCN pipeline: data loading, training steps and evaluation, in one run.

    python -m benchmarks.run                       # everything (tens of minutes on 2 CPU cores)
    python -m benchmarks.run --quick               # tiny sizes: a smoke test, under 2 minutes
    python -m benchmarks.run --only train          # or data, eval
    python -m benchmarks.run --out DIR --data-dir DIR --threads 2 --workers 2

Writes ``<out>/<machine>-<date>.json`` and ``.md`` (``-quick`` added for --quick, ``-<section>`` for each
--only), where machine is the GPU or CPU model and the core count, e.g. ``amd-epyc-2cpu``; both are
rewritten after every section, so a stopped run keeps what it measured. Every case runs in a child
process of this one (``--child``), on the same synthetic VOC-layout data generated at the start,
so memory figures are per loader and one case cannot slow another down through leftovers.

Sections (see ``benchmarks/README.md`` for how to read them):

- ``data``: start-up time, steady-state images/s and memory of fcn_dist's train loader
  (VOCdevkit and Arrow, 0 and N workers) and d2l's ``VOCSegDataset`` loader, at two dataset
  sizes. Memory is RssAnon from ``/proc/<pid>/status`` summed over the main process and its
  loader workers, plus PSS and USS from ``/proc/<pid>/smaps_rollup`` (forked workers share
  d2l's preloaded arrays copy-on-write, which RssAnon counts once per process).
- ``train``: images/s of a training step at ``crop`` and ``batch``, model only (tensors already on
  the device) and end to end (the loader feeding the step): fcn_dist at fp32/bf16, channels_last
  on/off, ``torch.compile`` on/off, against d2l's ``train_ch13`` step in fp32. The variants are
  interleaved round by round and medians reported, because other work may share the machine.
- ``eval``: images/s and megapixels/s of fcn_dist's ``evaluate`` (whole images, BatchNorms
  folded as ``fcn-eval`` does) against d2l's ``predict`` loop on the top-left 320x480 crop of
  each image (``d2l``) and on the seed's tiles covering each whole image (``d2l_tiled``), one
  image at a time, fp32 and bf16.

Benchmarks report; they never pass or fail on a figure. The exit code is 1 when a case
crashed (its error is in the JSON and the table), 0 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each section does."""

    data_sizes: tuple[int, ...]
    """Train-set sizes of the data section (memory should stay flat across them for fcn_dist)."""
    bench_val: int
    """Validation images of the smallest set, which the train and eval sections use."""
    max_side: int
    """Longest side of the synthetic images (VOC's is 500)."""
    crop: tuple[int, int]
    batch: int
    data_batches: int
    """Batches timed after the first one, per data case."""
    data_rounds: int
    """Times each data case runs (in forward, then reverse order, alternately); medians reported."""
    warmup: int
    steps: int
    rounds: int
    e2e_steps: int
    eval_rounds: int
    child_timeout_s: int


FULL = Sizes(data_sizes=(200, 2000), bench_val=40, max_side=500, crop=(320, 480), batch=8, data_batches=120,
             data_rounds=3, warmup=2, steps=3, rounds=4, e2e_steps=16, eval_rounds=3, child_timeout_s=3600)
QUICK = Sizes(data_sizes=(8, 16), bench_val=3, max_side=128, crop=(64, 96), batch=2, data_batches=2,
              data_rounds=1, warmup=1, steps=1, rounds=1, e2e_steps=2, eval_rounds=1, child_timeout_s=300)


# ---------------------------------------------------------------------------------------------
# Memory and machine


def _proc_kb(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    """``key: value kB`` fields of a /proc file (status, smaps_rollup), in kB."""
    fields = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in keys:
                fields[key] = int(value.split()[0])
    return fields


def _status_kb(pid: int) -> dict[str, int]:
    return _proc_kb(f"/proc/{pid}/status", ("RssAnon", "VmHWM", "VmRSS"))


def _smaps_kb(pid: int) -> dict[str, int]:
    return _proc_kb(f"/proc/{pid}/smaps_rollup", ("Pss", "Private_Clean", "Private_Dirty"))


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def tree_memory(pid: int) -> dict:
    """Memory of a process and its direct children (DataLoader workers), in MiB."""
    pids = [pid] + _children(pid)
    status = {p: _status_kb(p) for p in pids}
    smaps = {p: _smaps_kb(p) for p in pids}
    mib = 1024.0
    return {
        "processes": len(pids),
        "main_rss_anon_mb": status[pid]["RssAnon"] / mib,
        "main_peak_rss_mb": status[pid]["VmHWM"] / mib,
        "rss_anon_sum_mb": sum(s["RssAnon"] for s in status.values()) / mib,
        "pss_sum_mb": sum(s["Pss"] for s in smaps.values()) / mib,
        "uss_sum_mb": sum(s["Private_Clean"] + s["Private_Dirty"] for s in smaps.values()) / mib,
    }


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm)\)|cpu @.*|processor|\d+-core", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def machine_info() -> dict:
    """CPU model, core count, GPU, torch version, and the short machine name of result files."""
    import torch

    cpu = platform.processor() or "cpu"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    cores = len(os.sched_getaffinity(0))
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    flags = set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    # The features that decide which oneDNN kernels fp32, bf16 and fp16 get. AMX goes into the
    # machine's name: the same "Intel Xeon" model name runs bf16 8x faster with it (benchmarks/README.md).
    isa = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_tile"})
    cpu_name = _slug(cpu) + ("-amx" if "amx_bf16" in flags else "")
    name = f"{_slug(gpus[0])}-x{len(gpus)}-{cores}cpu" if gpus else f"{cpu_name}-{cores}cpu"
    return {"machine": name, "cpu": cpu, "cores": cores, "cpu_features": isa, "gpus": gpus,
            "torch": torch.__version__, "python": platform.python_version()}


# ---------------------------------------------------------------------------------------------
# Shared pieces of the children


def _config(overrides: list[str]):
    from fcn_dist.config import load_config

    return load_config(None, ["model.pretrained=none", "log.wandb=false", *overrides])


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cycle(make_loader):
    """Batches forever, starting a new epoch (a new iterator) when one ends."""
    while True:
        yield from make_loader()


FCN_LOADERS = {  # name: (data.format, root key of the data set, data.preset, data.resize_on)
    "fcn_voc": ("voc", "voc_root", "train", "loader"),
    "fcn_arrow": ("arrow", "arrow_root", "train", "loader"),
    "fcn_arrow_decoded": ("arrow", "decoded_root", "train", "loader"),
    "fcn_arrow_decoded_d2l_preset": ("arrow", "decoded_root", "d2l", "loader"),
    "fcn_arrow_decoded_resize_on_device": ("arrow", "decoded_root", "train", "device"),
}
"""fcn_dist's loaders in the data section. The train preset (random scale 0.5-2, padded crop,
flip, every image) does more work than d2l's loader; the d2l preset (plain crop, images
smaller than the crop dropped) does the same work as d2l's, for an equal-work comparison.
``resize_on=device`` leaves the train preset's resize, padding and flip to the training
device: its images/s is the loader's CPU side only, never compared with d2l as a whole loader."""


def fcn_loader(spec: dict, num_workers: int, data_format: str, root: str, preset: str = "train",
               resize_on: str = "loader"):
    """fcn_dist's train loader for a benchmark case, built by ``build_dataloaders``."""
    from fcn_dist.data import build_dataloaders

    crop_h, crop_w = spec["crop"]
    cfg = _config([f"data.format={data_format}", f"data.root={root}", f"data.num_workers={num_workers}",
                   f"data.batch_size={spec['batch']}", f"data.crop_size=[{crop_h},{crop_w}]",
                   f"data.preset={preset}", f"data.resize_on={resize_on}"])
    return build_dataloaders(cfg)[0]


def d2l_dataset(spec: dict, voc_root: str, is_train: bool = True):
    from benchmarks import d2l_reference

    return d2l_reference.VOCSegDataset(is_train, tuple(spec["crop"]), str(Path(voc_root) / "VOCdevkit" / "VOC2012"))


def d2l_loader(spec: dict, dataset, num_workers: int):
    import torch

    return torch.utils.data.DataLoader(dataset, spec["batch"], shuffle=True, drop_last=True, num_workers=num_workers)


# ---------------------------------------------------------------------------------------------
# Children


def child_baseline(spec: dict) -> dict:
    """Memory of a process that imported torch, fcn_dist.data and d2l_reference (not datasets), before any data."""
    import torch  # noqa: F401

    import fcn_dist.data  # noqa: F401
    from benchmarks import d2l_reference  # noqa: F401
    return {"memory": tree_memory(os.getpid())}


def warm_page_cache(root: str) -> None:
    """Read every file under ``root`` once, so timings see the page cache a second epoch sees.

    This VM reclaims cold page cache within minutes (DAMON: ``buff/cache`` stayed ~350 MiB
    after writing 1.3 GiB of data sets), so a data set written minutes before the case is read
    from disk again: 4.6 ms against 0.15 ms per decoded image (first and second random pass over
    400 images of the 2,000-image set).
    """
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


def child_data(spec: dict) -> dict:
    """Start-up, steady-state images/s and memory of one train loader (page cache warm)."""
    import torch

    torch.set_num_threads(spec["threads"])
    root = spec["voc_root"] if spec["loader"] == "d2l" else spec[FCN_LOADERS[spec["loader"]][1]]
    warm_page_cache(root)
    t0 = time.perf_counter()
    if spec["loader"] == "d2l":
        dataset = d2l_dataset(spec, spec["voc_root"])
        loader = d2l_loader(spec, dataset, spec["workers"])
    else:
        data_format, _, preset, resize_on = FCN_LOADERS[spec["loader"]]
        loader = fcn_loader(spec, spec["workers"], data_format, root, preset, resize_on)
    batches = _cycle(lambda: iter(loader))
    next(batches)
    startup = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(spec["data_batches"]):
        batch = next(batches)
    elapsed = time.perf_counter() - t1
    memory = tree_memory(os.getpid())
    extra = {}
    if len(batch) == 3:  # resize on the device: what finishing costs when the device is this CPU
        from fcn_dist.data.transforms import finish_windows

        kept = [next(batches) for _ in range(8)]
        t2 = time.perf_counter()
        for windows in kept:
            finish_windows(*windows)
        extra["finish_ms_per_image_here"] = (time.perf_counter() - t2) * 1e3 / (len(kept) * spec["batch"])
    return {"startup_s": startup, "images_per_s": spec["data_batches"] * spec["batch"] / elapsed,
            "usable_images": len(loader.dataset), "batch_dtype": str(batch[0].dtype), "memory": memory, **extra}


def _fcn_model(spec: dict, variant: dict, device):
    import torch

    from fcn_dist.model import build_model
    from fcn_dist.optim import build_optimizer

    cfg = _config([f"model.arch={spec['arch']}", f"model.backbone={spec['backbone']}"])
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    memory_format = torch.channels_last if variant["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(cfg.optim, model)
    if variant["compile"]:
        model = torch.compile(model)
    return model, optimizer, memory_format


def fcn_train_step(model, optimizer, batch, variant: dict, memory_format, device):
    """fcn_dist's step (``fcn_dist.engine.train_step``, as train.py runs it) on a batch moved to the device.

    No host sync: the loss stays on the device.
    """
    import torch

    from fcn_dist.engine import train_step

    images, masks, *windows = batch
    batch = (images.to(device, non_blocking=True), masks.to(device, non_blocking=True), *windows)
    # fp16 (auto on a GPU without bf16) runs without a GradScaler here: the benchmark times the step,
    # and an overflowing step costs the same time.
    precision = _resolved(variant)
    loss, _ = train_step(model, optimizer, batch, memory_format, autocast=lambda: torch.autocast(
        device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16, enabled=precision != "no"))
    return loss


def _d2l_model(device):
    import torch

    from benchmarks import d2l_reference

    torch.manual_seed(0)
    net = d2l_reference.build_net().to(device)
    return net, torch.optim.SGD(net.parameters(), lr=0.001, weight_decay=1e-3)


def _synthetic_batches(spec: dict, device):
    """One uint8 batch for fcn_dist and the same pixels as d2l's loader gives them (float32, int64)."""
    import torch

    from benchmarks import d2l_reference

    gen = torch.Generator().manual_seed(0)
    b, (h, w) = spec["batch"], spec["crop"]
    images = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=gen)
    masks = torch.randint(0, 21, (b, h, w), dtype=torch.uint8, generator=gen)
    masks[:, :, : w // 20] = 255
    d2l_images = torch.stack([d2l_reference.normalize_image(img) for img in images])
    return ((images.to(device), masks.to(device)),
            (d2l_images.to(device), masks.long().clamp(max=20).to(device)))


def _flops_per_image(spec: dict) -> dict:
    """Forward and training (forward + backward) FLOPs of one crop, counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fcn_dist.model import build_model

    model = build_model(_config([f"model.arch={spec['arch']}", f"model.backbone={spec['backbone']}"]).model)
    x = torch.zeros(1, 3, *spec["crop"])
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            model(x)
    with FlopCounterMode(display=False) as train:
        model(x).sum().backward()
    return {"forward_gflop": fwd.get_total_flops() / 1e9, "train_gflop": train.get_total_flops() / 1e9,
            "crop_pixels": spec["crop"][0] * spec["crop"][1]}


def _precision(precision: str) -> str:
    """Accelerate's ``no`` is fp32."""
    return "fp32" if precision == "no" else precision


def _precision_label(row: dict) -> str:
    """``fp32``, ``bf16``, or ``auto (bf16)``: what a case asked for and, for auto, what it ran."""
    label = _precision(row.get("precision", "no"))
    return f"{label} ({_precision(row['resolved_precision'])})" if "resolved_precision" in row else label


def _resolved(row: dict) -> str:
    """The precision a variant or case ran in: ``auto`` rows carry what it resolved to."""
    return row.get("resolved_precision", row.get("precision", "no"))


def _resolve_auto(variant: dict, device, training: bool) -> dict:
    """``auto`` as fcn-train (training) and fcn-eval (inference) resolve it, probe included, in this child."""
    if variant.get("precision") != "auto":
        return variant
    from fcn_dist.precision import resolve_precision

    t0 = time.perf_counter()
    choice = resolve_precision("auto", device.type, training=training)
    return {**variant, "resolved_precision": choice.precision, "auto_reason": choice.reason,
            "probe_s": time.perf_counter() - t0}


def _variant_name(variant: dict) -> str:
    if variant["impl"] == "d2l":
        return "d2l fp32"
    return (f"fcn_dist {_precision(variant['precision'])}" + (" channels_last" if variant["channels_last"] else "")
            + (" compile" if variant["compile"] else ""))


def child_train_model(spec: dict) -> dict:
    """Model-only step time of every variant, interleaved round by round on the same tensors."""
    import torch

    from benchmarks import d2l_reference

    torch.set_num_threads(spec["threads"])
    device = _device()
    torch.backends.cudnn.benchmark = True
    fcn_batch, d2l_batch = _synthetic_batches(spec, device)
    runs, results = {}, {}
    for variant in spec["variants"]:
        name = _variant_name(variant)
        if variant["impl"] == "d2l":
            step = functools.partial(d2l_reference.train_steps, *_d2l_model(device), [d2l_batch], device)
        else:
            model, optimizer, memory_format = _fcn_model(spec, variant, device)
            step = functools.partial(fcn_train_step, model, optimizer, fcn_batch, variant, memory_format, device)
        t0 = time.perf_counter()
        first_loss = float(step()[0] if variant["impl"] == "d2l" else step())  # pays for compiling, kernel choice
        _sync(device)
        results[name] = {**variant, "first_step_s": time.perf_counter() - t0, "first_loss": first_loss, "times": []}
        for _ in range(spec["warmup"] - 1):
            step()
        runs[name] = step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for r in range(spec["rounds"]):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(spec["steps"]):
                runs[name]()
            _sync(device)
            results[name]["times"].append((time.perf_counter() - t0) / spec["steps"])
    flops = _flops_per_image(spec)
    for res in results.values():
        res["step_s"] = statistics.median(res["times"])
        res["images_per_s"] = spec["batch"] / res["step_s"]
        res["tflop_per_s"] = res["images_per_s"] * flops["train_gflop"] / 1e3
    extra = {"gpu_peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30} if device.type == "cuda" else {}
    return {"variants": results, "flops_per_image": flops, **extra}


def child_train_e2e(spec: dict) -> dict:
    """End-to-end step time: each variant's loader feeds its step; variants interleaved by round."""
    import torch

    from benchmarks import d2l_reference

    torch.set_num_threads(spec["threads"])
    device = _device()
    torch.backends.cudnn.benchmark = True
    d2l_train = d2l_dataset(spec, spec["voc_root"]) if any(v["impl"] == "d2l" for v in spec["variants"]) else None
    results, models = {}, {}
    variants = [_resolve_auto(v, device, training=True) for v in spec["variants"]]
    for variant in variants:
        name = _variant_name(variant)
        models[name] = _d2l_model(device) if variant["impl"] == "d2l" else _fcn_model(spec, variant, device)
        results[name] = {**variant, "times": []}
    for r in range(spec["rounds"]):
        for variant in (variants if r % 2 == 0 else variants[::-1]):
            name = _variant_name(variant)
            if variant["impl"] == "d2l":
                loader = d2l_loader(spec, d2l_train, spec["workers"])
            else:
                data_format, root_key, _, resize_on = FCN_LOADERS[f"fcn_{spec['e2e_format']}"]
                loader = fcn_loader(spec, spec["workers"], data_format, spec[root_key], resize_on=resize_on)

            def step(batch, variant=variant, name=name):
                if variant["impl"] == "d2l":
                    return d2l_reference.train_steps(*models[name], [batch], device)
                return fcn_train_step(*models[name][:2], batch, variant, models[name][2], device)

            batches = _cycle(lambda: iter(loader))
            for _ in range(spec["warmup"]):  # includes starting the workers (and compiling, once)
                step(next(batches))
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(spec["e2e_steps"]):
                step(next(batches))
            _sync(device)
            results[name]["times"].append((time.perf_counter() - t0) / spec["e2e_steps"])
            del batches, loader  # stops this loader's workers before the next variant runs
    flops = _flops_per_image(spec)
    for res in results.values():
        res["step_s"] = statistics.median(res["times"])
        res["images_per_s"] = spec["batch"] / res["step_s"]
        res["tflop_per_s"] = res["images_per_s"] * flops["train_gflop"] / 1e3
    return {"variants": results}


EVAL_PIPELINES = ("fcn_dist", "d2l", "d2l_tiled")
"""fcn_dist's evaluate (whole images); d2l's predict (top-left 320x480 crop); the seed's tiles (whole images)."""


def child_eval(spec: dict) -> dict:
    """fcn_dist ``evaluate`` on the val split against d2l's ``predict`` loops on the same images."""
    import torch
    from accelerate import Accelerator

    from benchmarks import d2l_reference
    from fcn_dist.data import build_dataloaders
    from fcn_dist.model import IMAGENET_MEAN, IMAGENET_STD
    from fcn_dist.evaluate import evaluate
    from fcn_dist.model import build_model, fold_batch_norms

    torch.set_num_threads(spec["threads"])
    resolved = _resolve_auto({"precision": spec["precision"]}, torch.device("cuda" if torch.cuda.is_available()
                                                                             else "cpu"), training=False)
    precision = _resolved(resolved)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)
    device = accelerator.device
    cfg = _config(["data.format=voc", f"data.root={spec['voc_root']}", "data.num_workers=0",
                   "data.eval_batch_size=1", f"data.batch_size={spec['batch']}",
                   f"data.crop_size=[{spec['crop'][0]},{spec['crop'][1]}]"])
    val_loader = build_dataloaders(cfg)[1]
    # what fcn-eval runs by default: BatchNorms folded, channels_last
    model = fold_batch_norms(build_model(cfg.model)).to(device).to(memory_format=torch.channels_last)
    net, _ = _d2l_model(device)
    net.eval()  # train_ch13 ends with evaluate_accuracy_gpu, which leaves the net in eval mode
    test_images, _ = d2l_reference.read_voc_images(str(Path(spec["voc_root"]) / "VOCdevkit" / "VOC2012"), False)
    crops = [d2l_reference.predict_crop(img, (320, 480)) for img in test_images]

    def run_fcn():
        return evaluate(model, val_loader, accelerator, 21, IMAGENET_MEAN, IMAGENET_STD, mode="whole")

    def run_d2l(predict_fn, images):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            for img in images:
                predict_fn(net, d2l_reference.normalize_image, img, device)

    runs = {"fcn_dist": run_fcn}
    if spec.get("with_d2l", True):
        runs["d2l"] = functools.partial(run_d2l, d2l_reference.predict, crops)
        runs["d2l_tiled"] = functools.partial(run_d2l, d2l_reference.predict_tiled, test_images)
    for fn in runs.values():  # warm-up: kernel selection for each image size
        fn()
    times = {name: [] for name in runs}
    for r in range(spec["eval_rounds"]):
        names = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in names:
            _sync(device)
            t0 = time.perf_counter()
            runs[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    n = len(test_images)
    whole_pixels = sum(img.shape[1] * img.shape[2] for img in test_images)
    out = {}
    for name, pixels in (("fcn_dist", whole_pixels), ("d2l", n * 320 * 480), ("d2l_tiled", whole_pixels)):
        if name not in runs:
            continue
        seconds = statistics.median(times[name])
        out[name] = {"images": n, "seconds": seconds, "images_per_s": n / seconds,
                     "megapixels_per_s": pixels / seconds / 1e6, "times": times[name]}
    return {**resolved, **out}


CEILING_SHAPES = {"full": {"gemm": 4096, "conv": (8, 256, 40, 60)}, "quick": {"gemm": 256, "conv": (1, 32, 10, 15)}}
"""The ceiling's kernels: a square GEMM, and a 3x3 conv at the trunk's dominant width (layer3 of a
320x480 crop, batch 8), as the issue that asked for it measured them."""


def child_ceiling(spec: dict) -> dict:
    """This machine's own limits: GFLOP/s of fp32, bf16 and fp16 GEMM and of a 3x3 conv in fp32
    and bf16, contiguous and channels_last; best of ``rounds`` timed calls after one warm-up."""
    import torch
    import torch.nn.functional as F

    device = _device()
    shapes = CEILING_SHAPES[spec["shapes"]]
    n = shapes["gemm"]
    b, c, h, w = shapes["conv"]
    cases = {}

    def best(fn) -> float:
        fn()
        _sync(device)
        times = []
        for _ in range(spec["rounds"]):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        return min(times)

    for dtype in ("fp32", "bf16", "fp16"):
        torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        a = torch.randn(n, n, device=device).to(torch_dtype)
        bmat = torch.randn(n, n, device=device).to(torch_dtype)
        try:
            seconds = best(lambda: torch.mm(a, bmat))
            cases[f"gemm {n}x{n} {dtype}"] = {"kind": "gemm", "dtype": dtype, "gflop_per_s": 2 * n ** 3 / seconds / 1e9}
        except RuntimeError as err:  # a dtype this build has no kernel for
            cases[f"gemm {n}x{n} {dtype}"] = {"kind": "gemm", "dtype": dtype, "error": str(err).splitlines()[0]}
    flop = 2 * b * c * c * 9 * h * w
    for dtype in ("fp32", "bf16"):
        for layout in ("contiguous", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            x = torch.randn(b, c, h, w, device=device).contiguous(memory_format=fmt)
            weight = torch.randn(c, c, 3, 3, device=device).contiguous(memory_format=fmt)
            if dtype == "bf16":
                x, weight = x.bfloat16(), weight.bfloat16()
            seconds = best(lambda: F.conv2d(x, weight, padding=1))
            cases[f"conv3x3 {c}ch {h}x{w} b{b} {dtype} {layout}"] = {
                "kind": "conv", "dtype": dtype, "layout": layout, "gflop_per_s": flop / seconds / 1e9}
    ceiling = {}
    for case in cases.values():
        if "gflop_per_s" in case:
            ceiling[case["dtype"]] = max(ceiling.get(case["dtype"], 0.0), case["gflop_per_s"])
    from fcn_dist.precision import resolve_precision

    auto = {kind: dataclasses.asdict(resolve_precision("auto", device.type, training=kind == "training"))
            for kind in ("training", "inference")}
    return {"cases": cases, "ceiling_gflop_per_s": ceiling, "threads": torch.get_num_threads(),
            "flops_per_image": _flops_per_image(spec), "auto_precision": auto}


def run_ceiling(sizes: Sizes, args) -> dict:
    _log("ceiling: GEMM and conv GFLOP/s per dtype")
    spec = {"shapes": "quick" if args.quick else "full", "rounds": 2 if args.quick else 6, "crop": list(sizes.crop),
            "arch": args.arch, "backbone": args.backbone}
    return run_child("ceiling", spec, sizes.child_timeout_s, args.threads)


def ceiling_fractions(results: dict) -> None:
    """Add ``fraction_of_ceiling`` to every training and eval case: its TFLOP/s over the best
    GEMM or conv of its dtype measured in this run."""
    ceiling = results.get("ceiling", {}).get("ceiling_gflop_per_s", {})
    if not ceiling:
        return
    train = results.get("train", {})
    for row in train.get("model_only", []) + train.get("end_to_end", []):
        dtype = "bf16" if _resolved(row) == "bf16" else "fp32"
        if _ok(row) and row.get("tflop_per_s") and dtype in ceiling:
            row["fraction_of_ceiling"] = row["tflop_per_s"] * 1e3 / ceiling[dtype]
    flops = results["ceiling"].get("flops_per_image")
    for case in results.get("eval", {}).get("cases", []):
        dtype = "bf16" if _resolved(case) == "bf16" else "fp32"
        if "error" in case or not flops or dtype not in ceiling:
            continue
        gflop_per_mpx = flops["forward_gflop"] / (flops["crop_pixels"] / 1e6)
        for name in EVAL_PIPELINES:
            if name not in case:
                continue
            r = case[name]
            r["tflop_per_s"] = r["megapixels_per_s"] * gflop_per_mpx / 1e3
            r["fraction_of_ceiling"] = r["tflop_per_s"] * 1e3 / ceiling[dtype]


CHILDREN = {"ceiling": child_ceiling, "baseline": child_baseline, "data": child_data, "train_model": child_train_model,
            "train_e2e": child_train_e2e, "eval": child_eval}


# ---------------------------------------------------------------------------------------------
# Parent: data preparation, running the children, the report


def prepare_data(work: Path, sizes: Sizes, need: set[str]) -> dict:
    """Synthetic VOC sets (and their Arrow copies) for every size a section needs.

    Returns:
        {train size: {"voc_root": str, "arrow_root": str, "decoded_root": str}}; the smallest set has ``bench_val``
        val images and feeds the train and eval sections.
    """
    from fcn_dist.data.hub import prepare_arrow
    from fcn_dist.data.synthetic import make_synthetic_voc

    wanted = list(sizes.data_sizes) if "data" in need else [min(sizes.data_sizes)]
    sets = {}
    for n in wanted:
        val = sizes.bench_val if n == min(sizes.data_sizes) else 2
        voc_root = work / f"voc_{n}_{val}_{sizes.max_side}"
        arrow_root = work / f"arrow_{n}_{val}_{sizes.max_side}"
        decoded_root = work / f"arrow_decoded_{n}_{val}_{sizes.max_side}"
        if not (voc_root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").is_file():
            _log(f"generating {n} + {val} synthetic images into {voc_root}")
            shutil.rmtree(voc_root, ignore_errors=True)
            make_synthetic_voc(voc_root, num_train=n, num_val=val, seed=0, max_side=sizes.max_side)
        if not arrow_root.is_dir():
            _log(f"converting {voc_root} to Arrow")
            prepare_arrow(voc_root, arrow_root)
        if not decoded_root.is_dir():
            _log(f"converting {voc_root} to Arrow, decoded pixels")
            prepare_arrow(voc_root, decoded_root, decoded=True)
        sets[n] = {"voc_root": str(voc_root), "arrow_root": str(arrow_root), "decoded_root": str(decoded_root)}
    return sets


def _log(message: str) -> None:
    print(f"[benchmarks {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_child(kind: str, spec: dict, timeout_s: int, threads: int, module: str = "benchmarks.run",
              env: dict | None = None) -> dict:
    """Run one case in a child process (``python -m MODULE --child SPEC``, with ``env`` added to this
    process's environment); a crash or a timeout becomes ``{"error": ...}``."""
    with tempfile.TemporaryDirectory(prefix="fcn-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps({**spec, "kind": kind, "out": str(out_path)}))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "offline",
               "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", **(env or {})}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", module, "--child", str(spec_path)], cwd=REPO,
                                  env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s} s"}
        if proc.returncode != 0 or not out_path.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
            return {"error": f"exit code {proc.returncode}: " + " | ".join(tail)}
        result = json.loads(out_path.read_text())
        result["wall_s"] = time.perf_counter() - t0
        return result


def run_data(sizes: Sizes, sets: dict, args) -> dict:
    base = {"crop": list(sizes.crop), "batch": sizes.batch, "data_batches": sizes.data_batches,
            "threads": args.threads}
    baseline = run_child("baseline", base, sizes.child_timeout_s, args.threads)
    keys = [(n, loader, workers) for n in sizes.data_sizes for loader in (*FCN_LOADERS, "d2l")
            for workers in sorted({0, args.workers})]
    runs = {key: [] for key in keys}
    for r in range(sizes.data_rounds):  # rounds alternate the order, so slow drifts of load hit every case
        for n, loader, workers in (keys if r % 2 == 0 else keys[::-1]):
            _log(f"data, round {r + 1}/{sizes.data_rounds}: {loader}, {n} images, {workers} workers")
            spec = {**base, **sets[n], "loader": loader, "workers": workers}
            runs[n, loader, workers].append(run_child("data", spec, sizes.child_timeout_s, args.threads))
    cases = [{"loader": loader, "dataset_images": n, "workers": workers, **_median_run(runs[n, loader, workers])}
             for n, loader, workers in keys]
    return {"baseline": baseline, "cases": cases, "ratios": data_ratios(cases)}


def _median_run(results: list[dict]) -> dict:
    """One data case over its rounds: the first round's fields, images/s and start-up the medians."""
    ok = [r for r in results if "error" not in r]
    if not ok:
        return results[0]
    merged = dict(ok[0])
    merged["images_per_s_rounds"] = [r["images_per_s"] for r in ok]
    merged["images_per_s"] = statistics.median(merged["images_per_s_rounds"])
    merged["startup_s"] = statistics.median(r["startup_s"] for r in ok)
    if "finish_ms_per_image_here" in merged:
        merged["finish_ms_per_image_here"] = statistics.median(r["finish_ms_per_image_here"] for r in ok)
    return merged


def _ok(case: dict) -> bool:
    return "error" not in case and case.get("status", "ok") == "ok"


def _preset(loader: str):
    """The data.preset of one of fcn_dist's whole loaders; None for d2l's and resize-on-device ones."""
    return FCN_LOADERS[loader][2] if loader in FCN_LOADERS and FCN_LOADERS[loader][3] == "loader" else None


def data_ratios(cases: list[dict]) -> list[dict]:
    """fcn_dist's faster loader against d2l at equal workers and size; memory growth with size."""
    ratios = []
    ok = [c for c in cases if _ok(c)]
    for n in sorted({c["dataset_images"] for c in ok}):
        for workers in sorted({c["workers"] for c in ok}):
            group = [c for c in ok if c["dataset_images"] == n and c["workers"] == workers]
            d2l = [c for c in group if c["loader"] == "d2l"]
            fcn = [c for c in group if _preset(c["loader"]) == "train"]
            if not d2l or not fcn:
                continue
            best = max(fcn, key=lambda c: c["images_per_s"])
            ratios.append({"pair": f"loader images/s, {n} images, {workers} workers: {best['loader']} / d2l",
                           "ratio": best["images_per_s"] / d2l[0]["images_per_s"]})
            ratios.append({"pair": f"RssAnon sum, {n} images, {workers} workers: d2l / {best['loader']}",
                           "ratio": d2l[0]["memory"]["rss_anon_sum_mb"] / best["memory"]["rss_anon_sum_mb"]})
            for c in group:
                if _preset(c["loader"]) == "d2l":
                    ratios.append({"pair": f"loader images/s, equal work, {n} images, {workers} workers: "
                                           f"{c['loader']} / d2l",
                                   "ratio": c["images_per_s"] / d2l[0]["images_per_s"]})
                if c["loader"] in FCN_LOADERS and FCN_LOADERS[c["loader"]][3] == "device":
                    ratios.append({"pair": f"loader CPU side images/s, {n} images, {workers} workers: "
                                           f"{c['loader']} / {best['loader']} (the rest runs on the device)",
                                   "ratio": c["images_per_s"] / best["images_per_s"]})
    counts = sorted({c["dataset_images"] for c in ok})
    if len(counts) >= 2:
        small, large = counts[0], counts[-1]
        for loader in (*FCN_LOADERS, "d2l"):
            for workers in sorted({c["workers"] for c in ok}):
                pair = [next((c for c in ok if c["loader"] == loader and c["workers"] == workers
                              and c["dataset_images"] == k), None) for k in (small, large)]
                if None not in pair:
                    ratios.append({"pair": f"RssAnon sum growth {small} -> {large} images: {loader}, {workers} workers",
                                   "ratio": pair[1]["memory"]["rss_anon_sum_mb"] / pair[0]["memory"]["rss_anon_sum_mb"]})
    return ratios


def train_variants(with_compile: bool) -> list[dict]:
    variants = [{"impl": "fcn", "precision": p, "channels_last": cl, "compile": False}
                for p in ("no", "bf16") for cl in (False, True)]
    if with_compile:
        variants += [{"impl": "fcn", "precision": p, "channels_last": True, "compile": True} for p in ("no", "bf16")]
    return variants + [{"impl": "d2l", "precision": "no", "channels_last": False, "compile": False}]


def _flatten(result: dict, skipped: list[tuple[dict, str]] = ()) -> list[dict]:
    """Rows of a training child's result, then one row per (variant, reason) skipped."""
    if "error" in result:
        return [{"name": "all variants", "error": result["error"]}]
    rows = [{"name": name, "status": "ok", **{k: v for k, v in res.items() if k != "times"}, "times": res["times"]}
            for name, res in result["variants"].items()]
    rows += [{"name": _variant_name(v), **v, "status": "skipped", "reason": reason} for v, reason in skipped]
    return rows


def run_train(sizes: Sizes, sets: dict, args) -> dict:
    bench = sets[min(sizes.data_sizes)]
    spec = {**bench, "crop": list(sizes.crop), "batch": sizes.batch, "warmup": sizes.warmup, "steps": sizes.steps,
            "rounds": sizes.rounds, "e2e_steps": sizes.e2e_steps, "threads": args.threads, "workers": args.workers,
            "e2e_format": args.e2e_format, "arch": args.arch, "backbone": args.backbone}
    compile_reason = ("--quick: compiling takes minutes" if args.quick else
                      "--no-compile" if args.no_compile else None)
    eager = train_variants(False)
    compiled = [v for v in train_variants(True) if v["compile"]]
    _log("train: model only, eager variants and d2l")
    model_only = _flatten(run_child("train_model", {**spec, "variants": eager}, sizes.child_timeout_s, args.threads))
    if compile_reason:
        model_only += _flatten({"variants": {}}, [(v, compile_reason) for v in compiled])
    else:
        _log("train: model only, torch.compile variants")
        result = run_child("train_model", {**spec, "variants": compiled}, sizes.child_timeout_s, args.threads)
        model_only += (_flatten(result) if "error" not in result else
                       _flatten({"variants": {}}, [(v, f"torch.compile failed: {result['error']}") for v in compiled]))
    _log("train: end to end")
    e2e_compiled = {"impl": "fcn", "precision": "bf16", "channels_last": True, "compile": True}
    e2e_auto = {"impl": "fcn", "precision": "auto", "channels_last": True, "compile": False}  # what fcn-train runs
    e2e_variants = eager[:-1] + [e2e_auto] + ([] if compile_reason else [e2e_compiled]) + eager[-1:]
    skipped = [(e2e_compiled, compile_reason)] if compile_reason else []
    if args.quick:  # one fcn_dist variant and d2l exercise the code; the others only cost time
        skipped = [(v, "--quick: one fcn_dist variant end to end") for v in e2e_variants[:-1]
                   if v["precision"] != "auto"] + skipped
        e2e_variants = [v for v in e2e_variants if v not in [variant for variant, _ in skipped]]
    e2e = _flatten(run_child("train_e2e", {**spec, "rounds": max(1, sizes.rounds // 2), "variants": e2e_variants},
                             sizes.child_timeout_s, args.threads), skipped)
    return {"model_only": model_only, "end_to_end": e2e, "ratios": train_ratios(model_only, e2e)}


def train_ratios(model_only: list[dict], e2e: list[dict]) -> list[dict]:
    ratios = []
    for label, rows in (("model only", model_only), ("end to end", e2e)):
        ok = [r for r in rows if _ok(r)]
        d2l = next((r for r in ok if r.get("impl") == "d2l"), None)
        if d2l is None:
            continue
        for r in ok:
            if r.get("impl") == "fcn":
                ratios.append({"pair": f"train images/s, {label}: {r['name']} / d2l fp32",
                               "ratio": r["images_per_s"] / d2l["images_per_s"]})
    by_name = {r["name"]: r for r in model_only if _ok(r)}
    for r in e2e:
        if _ok(r) and r["name"] in by_name:
            ratios.append({"pair": f"end to end / model only: {r['name']}",
                           "ratio": r["images_per_s"] / by_name[r["name"]]["images_per_s"]})
    return ratios


def run_eval(sizes: Sizes, sets: dict, args) -> dict:
    bench = sets[min(sizes.data_sizes)]
    cases = []
    for precision in ("no", "bf16", "auto"):
        _log(f"eval: {precision}")
        # d2l runs in fp32, as d2l does (its bf16 would time nn.ConvTranspose2d's bf16 forward:
        # 1.45 images/s on the AMX Xeon, benchmarks/README.md)
        spec = {**bench, "precision": precision, "eval_rounds": sizes.eval_rounds, "threads": args.threads,
                "crop": list(sizes.crop), "batch": sizes.batch, "with_d2l": precision == "no"}
        cases.append({"precision": precision, **run_child("eval", spec, sizes.child_timeout_s, args.threads)})
    ratios = []
    ok = [c for c in cases if "error" not in c]
    d2l_fp32 = next((c for c in ok if c["precision"] == "no"), None)
    for c in ok if d2l_fp32 else []:
        for ref in ("d2l", "d2l_tiled"):
            ratios.append({"pair": f"eval images/s: fcn_dist {_precision_label(c)} / {ref} fp32",
                           "ratio": c["fcn_dist"]["images_per_s"] / d2l_fp32[ref]["images_per_s"]})
        ratios.append({"pair": f"eval megapixels/s: fcn_dist {_precision_label(c)} / d2l fp32",
                       "ratio": c["fcn_dist"]["megapixels_per_s"] / d2l_fp32["d2l"]["megapixels_per_s"]})
    return {"cases": cases, "ratios": ratios}


# ---------------------------------------------------------------------------------------------
# Report


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render_markdown(results: dict) -> str:
    """The results as markdown tables (what benchmarks/README.md copies)."""
    env = results["environment"]
    lines = [f"# Benchmarks on {env['machine']} ({results['date']})", "",
             f"CPU: {env['cpu']}, {env['cores']} cores ({' '.join(env.get('cpu_features', [])) or 'features unknown'}); "
             f"GPUs: {', '.join(env['gpus']) or 'none'}; torch {env['torch']}; threads {results['settings']['threads']}; "
             f"{'QUICK smoke run, figures meaningless' if results['settings']['quick'] else 'full run'}"
             f"{'' if results.get('complete', True) else '; INCOMPLETE: the run has not finished its sections'}.", ""]
    if "data" in results:
        data = results["data"]
        base = data["baseline"].get("memory", {})
        lines += ["## Data loaders", "",
                  f"Baseline process after imports: RssAnon {_fmt(base.get('main_rss_anon_mb'), 0)} MiB.", "",
                  "| loader | images | workers | usable | start-up s | images/s (median) | per round "
                  "| RssAnon sum MiB | PSS sum MiB | USS sum MiB | main peak RSS MiB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in data["cases"]:
            if "error" in c:
                lines.append(f"| {c['loader']} | {c['dataset_images']} | {c['workers']} | error: {c['error'][:120]} "
                             "| | | | | | | |")
                continue
            m = c["memory"]
            rounds = " / ".join(_fmt(v, 0) for v in c.get("images_per_s_rounds", [c["images_per_s"]]))
            lines.append(f"| {c['loader']} | {c['dataset_images']} | {c['workers']} | {c['usable_images']} | "
                         f"{_fmt(c['startup_s'])} | {_fmt(c['images_per_s'], 1)} | {rounds} | "
                         f"{_fmt(m['rss_anon_sum_mb'], 0)} | "
                         f"{_fmt(m['pss_sum_mb'], 0)} | {_fmt(m['uss_sum_mb'], 0)} | {_fmt(m['main_peak_rss_mb'], 0)} |")
        lines.append("")
        for c in data["cases"]:
            if "finish_ms_per_image_here" in c:
                lines.append(f"- {c['loader']}, {c['dataset_images']} images, {c['workers']} workers: finishing its "
                             f"windows (`finish_windows`) costs {_fmt(c['finish_ms_per_image_here'], 3)} ms per image "
                             "when the device is this CPU.")
        lines.append("")
    if "ceiling" in results and "cases" in results["ceiling"]:
        lines += ["## This machine's ceiling", "", "| kernel | GFLOP/s |", "|---|---|"]
        for name, case in results["ceiling"]["cases"].items():
            lines.append(f"| {name} | {_fmt(case.get('gflop_per_s'), 0) if 'gflop_per_s' in case else case['error']} |")
        best = ", ".join(f"{k} {v:.0f}" for k, v in results["ceiling"]["ceiling_gflop_per_s"].items())
        lines += ["", f"Ceiling per dtype (the best of its kernels), GFLOP/s: {best}. Training and eval cases "
                  "below report their TFLOP/s as a fraction of their dtype's ceiling.", ""]
        for kind, choice in results["ceiling"].get("auto_precision", {}).items():
            lines.append(f"- `mixed_precision=auto` for {kind} here: {choice['precision']} ({choice['reason']}).")
        lines.append("")
    if "train" in results:
        train = results["train"]
        for label, key in (("model only", "model_only"), ("end to end", "end_to_end")):
            lines += [f"## Training step, {label}", "",
                      "| variant | images/s | step s | first step s | TFLOP/s | of ceiling | note |",
                      "|---|---|---|---|---|---|---|"]
            for r in train[key]:
                if "error" in r:
                    lines.append(f"| {r['name']} | | | | | | error: {r['error'][:160]} |")
                elif r["status"] == "skipped":
                    lines.append(f"| {r['name']} | | | | | | skipped: {r['reason'][:160]} |")
                else:
                    lines.append(f"| {r['name']} | {_fmt(r['images_per_s'])} | {_fmt(r['step_s'], 3)} | "
                                 f"{_fmt(r.get('first_step_s'), 1)} | {_fmt(r.get('tflop_per_s'), 3)} | "
                                 f"{_fmt(r.get('fraction_of_ceiling'), 2)} | "
                                 f"{'ran ' + _precision(r['resolved_precision']) if 'resolved_precision' in r else ''} |")
            lines.append("")
    if "eval" in results:
        lines += ["## Evaluation", "", "| precision | pipeline | images | images/s | megapixels/s | of ceiling |",
                  "|---|---|---|---|---|---|"]
        for c in results["eval"]["cases"]:
            if "error" in c:
                lines.append(f"| {_precision_label(c)} | error: {c['error'][:160]} | | | | |")
                continue
            for name in (n for n in EVAL_PIPELINES if n in c):
                r = c[name]
                lines.append(f"| {_precision_label(c)} | {name} | {r['images']} | {_fmt(r['images_per_s'])} | "
                             f"{_fmt(r['megapixels_per_s'])} | {_fmt(r.get('fraction_of_ceiling'), 2)} |")
        lines.append("")
    lines += ["## Ratios", "", "| pair | ratio |", "|---|---|"]
    for section in ("data", "train", "eval"):
        for r in results.get(section, {}).get("ratios", []):
            lines.append(f"| {r['pair']} | {r['ratio']:.2f}x |")
    found = precision_targets(results)
    if found:
        lines += ["", "## Precision targets (issue 18)", "", "| target | measured | goal | met |", "|---|---|---|---|"]
        lines += [f"| {t['target']} | {t['measured']:.2f} | {t['goal']} | {'yes' if t['met'] else 'no'} |" for t in found]
    return "\n".join(lines) + "\n"


def precision_targets(results: dict) -> list[dict]:
    """Issue 18's targets, from this run's rows: ``auto`` end to end against the faster of fcn_dist's
    fp32 and bf16 variants (within 3%), the best variant's fraction of its dtype's ceiling (70%),
    ``auto`` evaluation against the faster precision (at least as fast; 2% allowed for noise)."""
    found = []
    train = results.get("train", {})
    for key, label in (("end_to_end", "end to end"), ("model_only", "model only")):
        rows = [r for r in train.get(key, []) if _ok(r) and r.get("impl") == "fcn" and not r.get("compile")]
        fixed = [r for r in rows if r["precision"] in ("no", "bf16")]
        auto = next((r for r in rows if r["precision"] == "auto"), None)
        if auto and fixed:
            best = max(fixed, key=lambda r: r["images_per_s"])
            found.append({"target": f"train {label}: auto / fastest fixed variant ({best['name']})",
                          "measured": auto["images_per_s"] / best["images_per_s"], "goal": ">= 0.97",
                          "met": auto["images_per_s"] >= 0.97 * best["images_per_s"]})
        if fixed and all("fraction_of_ceiling" in r for r in fixed):
            best = max(fixed, key=lambda r: r["images_per_s"])
            found.append({"target": f"train {label}: fastest variant ({best['name']}) / its dtype's ceiling",
                          "measured": best["fraction_of_ceiling"], "goal": ">= 0.70",
                          "met": best["fraction_of_ceiling"] >= 0.70})
    cases = [c for c in results.get("eval", {}).get("cases", []) if "error" not in c]
    fixed = [c for c in cases if c["precision"] in ("no", "bf16")]
    auto = next((c for c in cases if c["precision"] == "auto"), None)
    if auto and fixed:
        best = max(fixed, key=lambda c: c["fcn_dist"]["images_per_s"])
        ratio = auto["fcn_dist"]["images_per_s"] / best["fcn_dist"]["images_per_s"]
        found.append({"target": f"eval: auto / faster precision ({_precision(best['precision'])})",
                      "measured": ratio, "goal": ">= 0.98", "met": ratio >= 0.98})
    return found


def _errors(results: dict) -> list[str]:
    found = []
    for section in ("data", "train", "eval"):
        part = results.get(section, {})
        rows = part.get("cases", []) + part.get("model_only", []) + part.get("end_to_end", [])
        found += [f"{section}: {r['error']}" for r in rows if "error" in r]
        if "error" in part.get("baseline", {}):
            found.append(f"data baseline: {part['baseline']['error']}")
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no torch.compile: a smoke test")
    parser.add_argument("--only", choices=("data", "train", "eval", "ceiling"), action="append",
                        help="run only this section (repeatable); default all. The ceiling (GEMM and conv GFLOP/s "
                             "per dtype) runs whenever train or eval does")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder of the JSON and markdown results")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the synthetic data here and reuse it next time (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads of the main process of every case (default: all cores)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the non-zero-worker cases")
    parser.add_argument("--e2e-format", choices=("arrow", "arrow_decoded", "arrow_decoded_resize_on_device", "voc"),
                        default="arrow", help="fcn_dist data format of the end-to-end training cases "
                        "(arrow_decoded_resize_on_device: decoded Arrow, data.resize_on=device)")
    parser.add_argument("--arch", default="fcn32s", help="fcn_dist model.arch of the training cases")
    parser.add_argument("--backbone", default="resnet18", help="fcn_dist model.backbone of the training cases")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        spec = json.loads(args.child.read_text())
        result = CHILDREN[spec["kind"]](spec)
        Path(spec["out"]).write_text(json.dumps(result))
        return 0
    sizes = QUICK if args.quick else FULL
    sections = args.only or ["data", "train", "eval"]
    info = machine_info()
    started = datetime.datetime.now()
    results = {"environment": info, "date": started.strftime("%Y-%m-%d"),
               "settings": {"quick": args.quick, "sections": sections, "threads": args.threads,
                            "workers": args.workers, "e2e_format": args.e2e_format, "arch": args.arch,
                            "backbone": args.backbone, "sizes": dataclasses.asdict(sizes)}}
    work = args.data_dir or Path(tempfile.mkdtemp(prefix="fcn-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    stem = f"{info['machine']}-{results['date']}" + ("-quick" if args.quick else "")
    stem += "".join(f"-{section}" for section in args.only or ())
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out / f"{stem}.json", args.out / f"{stem}.md"
    runners = {"data": run_data, "train": run_train, "eval": run_eval}
    try:
        sets = prepare_data(work, sizes, set(sections))
        if "ceiling" in sections or "train" in sections or "eval" in sections:
            results["ceiling"] = run_ceiling(sizes, args)  # in the same run as the cases it bounds
        for section in ("data", "train", "eval"):
            if section in sections:
                # Written after every section (``"complete": false`` until the last), so a long run
                # that is stopped keeps what it measured.
                write_results(results, started, json_path, md_path, complete=False)
                results[section] = runners[section](sizes, sets, args)
    finally:
        if args.data_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    write_results(results, started, json_path, md_path, complete=True)
    _log(f"wrote {json_path} and {md_path} in {results['elapsed_s']:.0f} s")
    for error in results["errors"]:
        _log(f"error: {error}")
    return 1 if results["errors"] else 0


def write_results(results: dict, started: datetime.datetime, json_path: Path, md_path: Path, complete: bool) -> None:
    """The JSON (replaced atomically) and the markdown of what has been measured so far."""
    ceiling_fractions(results)
    results["elapsed_s"] = (datetime.datetime.now() - started).total_seconds()
    results["errors"] = _errors(results)
    results["complete"] = complete
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, json_path)
    md_path.write_text(render_markdown(results))


if __name__ == "__main__":
    sys.exit(main())
