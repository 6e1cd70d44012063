"""Issue 18, Deliver 3: the CPU options for a training step, measured side by side on this machine.

    python -m benchmarks.cpu_options                 # eager options, model only (about 2.5 minutes on 2 cores)
    python -m benchmarks.cpu_options --threads-study # + OMP/affinity/thread settings, each in its own process
    python -m benchmarks.cpu_options --compile       # + torch.compile default and max-autotune (a few minutes)
    python -m benchmarks.cpu_options --profile       # + torch.profiler's top ops of an fp32 and a bf16 step

Every option is fcn_dist's real training step (``fcn_dist.engine.train_step`` on ``build_model``'s
FCN-32s/ResNet-18, SGD, fp32 loss) at batch 8, 320x480, on one synthetic uint8 batch reused, as
``benchmarks.run``'s "model only" rows. Options (each a change from ``fp32 channels_last``):

- ``bf16 autocast``: ``torch.autocast("cpu", torch.bfloat16)``, which is what Accelerate's
  ``mixed_precision="bf16"`` enters on CPU (its ``get_mixed_precision_context_manager``), so
  "Accelerate's CPU autocast list" and torch's CPU autocast list are the same list;
- ``bf16 conv-only``: bf16 autocast, but every BatchNorm runs in fp32 on an fp32 input (a policy
  that keeps only the convolutions in bf16);
- ``fp32, oneDNN conv fp32_precision=bf16``: no autocast; oneDNN runs the fp32 convolutions with
  bf16 arithmetic inside (``torch.backends.mkldnn.conv.fp32_precision``; AMX where present),
  with matmul too (``torch.backends.mkldnn.matmul.fp32_precision``);
- the head: ``model.head=conv_transpose`` (``nn.ConvTranspose2d`` in channels_last) against the
  default ``auto`` (the 2x2 conv + pixel shuffle form on CPU);
- contiguous (NCHW) against channels_last;
- with ``--threads-study``: 1 against 2 intra-op threads, ``OMP_PROC_BIND=close``/``OMP_PLACES=cores``,
  and ``KMP``-free GNU OpenMP affinity (``GOMP_CPU_AFFINITY``), each a child process (OpenMP reads
  them at start-up) running bf16 and fp32 channels_last;
- with ``--compile``: ``torch.compile`` (inductor's CPU backend) default and ``mode="max-autotune"``,
  first step (compiling) reported apart.

Rounds interleave the options (forward, then reverse order); medians of ``--rounds``. Writes
``benchmarks/results/<machine>-<date>-cpu-options.json`` and ``.md``. Reports; never passes or fails.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.run import (RESULTS_DIR, _config, _flops_per_image, _fmt, _log, _synthetic_batches, machine_info,
                            run_child)

BATCH, CROP = 8, (320, 480)


@contextlib.contextmanager
def _fp32_batchnorm():
    """BatchNorm in fp32 on an fp32 input inside bf16 autocast (the conv-only policy)."""
    import torch
    import torch.nn.functional as F

    original = F.batch_norm

    def batch_norm(x, *args, **kwargs):
        with torch.autocast("cpu", enabled=False):
            return original(x.float(), *args, **kwargs)

    F.batch_norm = batch_norm
    try:
        yield
    finally:
        F.batch_norm = original


@contextlib.contextmanager
def _mkldnn_fp32_precision(value: str):
    import torch

    conv, matmul = torch.backends.mkldnn.conv.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.conv.fp32_precision = value
    torch.backends.mkldnn.matmul.fp32_precision = value
    try:
        yield
    finally:
        torch.backends.mkldnn.conv.fp32_precision = conv
        torch.backends.mkldnn.matmul.fp32_precision = matmul


OPTIONS = {
    # name: (precision, channels_last, head, context, compile mode)
    "fp32 channels_last": ("no", True, "auto", None, None),
    "fp32 contiguous": ("no", False, "auto", None, None),
    "fp32 channels_last, head conv_transpose": ("no", True, "conv_transpose", None, None),
    "fp32 channels_last, oneDNN fp32_precision=bf16": ("no", True, "auto", "mkldnn_bf16", None),
    "bf16 autocast channels_last": ("bf16", True, "auto", None, None),
    "bf16 autocast contiguous": ("bf16", False, "auto", None, None),
    "bf16 autocast channels_last, head conv_transpose": ("bf16", True, "conv_transpose", None, None),
    "bf16 conv-only (BatchNorm fp32) channels_last": ("bf16", True, "auto", "bn_fp32", None),
}
COMPILED = {
    "bf16 autocast channels_last, compile": ("bf16", True, "auto", None, "default"),
    "bf16 autocast channels_last, compile max-autotune": ("bf16", True, "auto", None, "max-autotune"),
    "fp32 channels_last, compile max-autotune": ("no", True, "auto", None, "max-autotune"),
}


def _context(name: str | None):
    if name == "mkldnn_bf16":
        return _mkldnn_fp32_precision("bf16")
    if name == "bn_fp32":
        return _fp32_batchnorm()
    return contextlib.nullcontext()


def _step_fn(option):
    """One option's model, optimizer and a closure running one training step."""
    import torch

    from fcn_dist.engine import train_step
    from fcn_dist.model import build_model
    from fcn_dist.optim import build_optimizer

    precision, channels_last, head, context, compile_mode = option
    cfg = _config(["model.arch=fcn32s", "model.backbone=resnet18"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    model.head = head
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    optimizer = build_optimizer(cfg.optim, model)
    if compile_mode:
        model = torch.compile(model, mode=compile_mode)
    batch = _synthetic_batches({"batch": BATCH, "crop": CROP}, torch.device("cpu"))[0]  # benchmarks.run's batch

    def step():
        with _context(context):
            loss, _ = train_step(model, optimizer, batch, fmt, autocast=lambda: torch.autocast(
                "cpu", dtype=torch.bfloat16, enabled=precision == "bf16"))
        return loss

    return step


def measure(options: dict, rounds: int, steps: int, warmup: int) -> dict:
    """Interleaved rounds over ``options``; seconds per step, first step apart."""
    import torch

    flops = _flops_per_image({"arch": "fcn32s", "backbone": "resnet18", "crop": list(CROP)})
    steps_fn, out = {}, {}
    for name, option in options.items():
        _log(f"cpu options: building {name}")
        step = _step_fn(option)
        t0 = time.perf_counter()
        loss = float(step())
        out[name] = {"first_step_s": time.perf_counter() - t0, "first_loss": loss, "times": []}
        for _ in range(warmup - 1):
            step()
        steps_fn[name] = step
    for r in range(rounds):
        _log(f"cpu options: round {r + 1}/{rounds}")
        for name in (list(steps_fn) if r % 2 == 0 else list(steps_fn)[::-1]):
            t0 = time.perf_counter()
            for _ in range(steps):
                steps_fn[name]()
            out[name]["times"].append((time.perf_counter() - t0) / steps)
    for name, res in out.items():
        res["step_s"] = statistics.median(res["times"])
        res["images_per_s"] = BATCH / res["step_s"]
        res["tflop_per_s"] = res["images_per_s"] * flops["train_gflop"] / 1e3
        res["threads"] = torch.get_num_threads()
    return out


def profile(names: list[str], top: int = 12) -> dict:
    """``torch.profiler`` of one step per option (after warm-up): the ops with the most self CPU
    time, what the step's time goes to when it is far from the ceiling."""
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    out = {}
    for name in names:
        step = _step_fn(OPTIONS[name])
        step(), step()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        out[name] = {"total_ms": total / 1e3, "ops": [
            {"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3,
             "share": e.self_cpu_time_total / total} for e in events[:top]]}
    return out


THREAD_SETTINGS = {  # name: (OMP_NUM_THREADS, other environment variables)
    "2 threads (default)": (len(os.sched_getaffinity(0)), {}),
    "1 thread": (1, {}),
    "OMP_PROC_BIND=close OMP_PLACES=cores": (len(os.sched_getaffinity(0)), {"OMP_PROC_BIND": "close",
                                                                            "OMP_PLACES": "cores"}),
    "GOMP_CPU_AFFINITY=0-1": (len(os.sched_getaffinity(0)), {"GOMP_CPU_AFFINITY": "0-1"}),
}


def _child(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    result = measure({name: OPTIONS[name] for name in spec["options"]}, spec["rounds"], spec["steps"], spec["warmup"])
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


def render(results: dict) -> str:
    env = results["environment"]
    lines = [f"# CPU options for a training step on {env['machine']} ({results['date']})", "",
             f"CPU: {env['cpu']}, {env['cores']} cores ({' '.join(env.get('cpu_features', []))}); "
             f"torch {env['torch']}. FCN-32s/ResNet-18, batch {BATCH}, {CROP[0]}x{CROP[1]}, model only, "
             f"{results['settings']['rounds']} interleaved rounds of {results['settings']['steps']} steps, medians.", "",
             "| option | images/s | step s | first step s | TFLOP/s | vs fp32 channels_last |", "|---|---|---|---|---|---|"]
    base = results["options"].get("fp32 channels_last", {}).get("images_per_s")
    for name, r in results["options"].items():
        ratio = r["images_per_s"] / base if base else None
        lines.append(f"| {name} | {_fmt(r['images_per_s'])} | {_fmt(r['step_s'], 3)} | {_fmt(r['first_step_s'], 1)} | "
                     f"{_fmt(r['tflop_per_s'], 3)} | {_fmt(ratio)}x |")
    if results.get("threads"):
        lines += ["", "## Threads and affinity (each setting its own process)", "",
                  "| setting | option | images/s | step s |", "|---|---|---|---|"]
        for setting, res in results["threads"].items():
            if "error" in res:
                lines.append(f"| {setting} | error: {res['error'][:160]} | | |")
                continue
            for name, r in res.items():
                lines.append(f"| {setting} | {name} | {_fmt(r['images_per_s'])} | {_fmt(r['step_s'], 3)} |")
    for name, prof in results.get("profile", {}).items():
        lines += ["", f"## Profile: {name} (one step, self CPU time {_fmt(prof['total_ms'], 0)} ms summed over threads)",
                  "", "| op | calls | self ms | share |", "|---|---|---|---|"]
        lines += [f"| `{o['op']}` | {o['calls']} | {_fmt(o['self_ms'], 0)} | {o['share']:.1%} |" for o in prof["ops"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_options", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (medians reported)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per option per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per option, the first included")
    parser.add_argument("--threads-study", action="store_true", help="also thread and affinity settings")
    parser.add_argument("--compile", action="store_true", help="also torch.compile default and max-autotune")
    parser.add_argument("--profile", action="store_true",
                        help="also torch.profiler's top ops of one fp32 and one bf16 channels_last step")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder of the JSON and markdown results")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child)
    options = dict(OPTIONS)
    if args.compile:
        options.update(COMPILED)
    info = machine_info()
    started = datetime.datetime.now()
    results = {"environment": info, "date": started.strftime("%Y-%m-%d"),
               "settings": {"rounds": args.rounds, "steps": args.steps, "warmup": args.warmup},
               "options": measure(options, args.rounds, args.steps, args.warmup)}
    if args.profile:
        _log("cpu options: profiling")
        results["profile"] = profile(["fp32 channels_last", "bf16 autocast channels_last"])
    if args.threads_study:
        results["threads"] = {}
        for setting, (threads, env) in THREAD_SETTINGS.items():
            _log(f"cpu options: threads, {setting}")
            spec = {"options": ["fp32 channels_last", "bf16 autocast channels_last"],
                    "rounds": max(2, args.rounds // 2), "steps": args.steps, "warmup": args.warmup}
            result = run_child("options", spec, 3600, threads, module="benchmarks.cpu_options", env=env)
            result.pop("wall_s", None)  # run_child's; the rows are the options
            results["threads"][setting] = result
    results["elapsed_s"] = (datetime.datetime.now() - started).total_seconds()
    stem = f"{info['machine']}-{results['date']}-cpu-options"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (args.out / f"{stem}.md").write_text(render(results))
    _log(f"wrote {args.out / stem}.json and .md in {results['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
