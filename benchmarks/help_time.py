"""How long ``fcn-train --help`` takes, against ``python -c "import torch, torchvision"``.

    python -m benchmarks.help_time              # 7 interleaved runs of each
    python -m benchmarks.help_time --runs 15

``fcn_dist.cli`` answers ``--help`` without importing torch (tests/test_architecture.py checks
that no torch module is loaded); this measures what that saves. Both commands run as fresh
processes, alternating, after one untimed run of each to warm the page cache; it prints the CPU
model, the date, the median wall time of each and their ratio (what benchmarks/README.md records).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def cpu_model() -> str:
    """The ``model name`` of /proc/cpuinfo (what ``lscpu`` shows as Model name), else the platform's."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def wall_time(command: list[str]) -> float:
    """Seconds one run of ``command`` takes, output discarded; raises if it fails."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.help_time", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each command (default: %(default)s)")
    args = parser.parse_args(argv)
    fcn_train = shutil.which("fcn-train")
    if fcn_train is None:
        parser.error("fcn-train is not on PATH: pip install -e . first")
    commands = {"fcn-train --help": [fcn_train, "--help"],
                "import torch, torchvision": [sys.executable, "-c", "import torch, torchvision"]}
    for command in commands.values():  # warm the page cache; not timed
        wall_time(command)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, command in commands.items():
            times[name].append(wall_time(command))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{cpu_model()}, {datetime.date.today().isoformat()}, {args.runs} interleaved runs of each")
    for name, values in times.items():
        print(f"  {name:<26} median {medians[name]:.3f} s  (runs: {' '.join(f'{v:.3f}' for v in values)})")
    ratio = medians["fcn-train --help"] / medians["import torch, torchvision"]
    print(f"  ratio fcn-train --help / import torch, torchvision: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
