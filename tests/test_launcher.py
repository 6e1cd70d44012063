"""fcn_dist.launcher without Slurm: check-config's and check-data's exit codes and imports, the accelerate
wrapper's exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fcn_dist import launcher

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
# What the launched test script does: exit with a code, kill itself, or wait for SIGTERM and exit
# with the code ("wait"); "save" also takes 6 s after SIGTERM before exiting, like a checkpoint save
# (longer than the 5 s after which accelerate's own one-process launcher kills its process)
CHILD = textwrap.dedent("""\
    import os, signal, sys, time
    stop = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    print("child ready", flush=True)
    action, value = sys.argv[1], int(sys.argv[2])
    # every process starts before any exits (else torch elastic stops the slow one before it is ready)
    open(f"ready-{os.environ.get('LOCAL_RANK', '0')}", "w").close()
    deadline = time.monotonic() + 120
    while (len([n for n in os.listdir(".") if n.startswith("ready-")]) < int(os.environ.get("WORLD_SIZE", "1"))
           and not stop and time.monotonic() < deadline):
        time.sleep(0.05)
    if action == "kill":
        os.kill(os.getpid(), value)
    while action in ("wait", "save") and not stop:
        time.sleep(0.05)
    if action == "save":
        time.sleep(6)
        print("child saved", flush=True)
    sys.exit(value)
""")


def _module(*args: str, python_flags: tuple = ()) -> list[str]:
    return [sys.executable, *python_flags, "-m", "fcn_dist.launcher", *args]


def _check_config(*args: str, importtime: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(_module("check-config", *args, python_flags=("-X", "importtime") if importtime else ()),
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_check_config_accepts_a_good_config():
    proc = _check_config(str(DEMO_CONFIG), "train.max_steps=2", "optim.lr=0.01")
    assert (proc.returncode, proc.stderr) == (0, "")


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=0.1", "unknown config key 'optim.lrr'"),
    ("train.max_steps=many", "bad value for config key 'train.max_steps'"),
])
def test_check_config_rejects_a_bad_override_with_exit_2_and_one_line(override, message):
    proc = _check_config(str(DEMO_CONFIG), override)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and message in proc.stderr, proc.stderr


def test_check_config_rejects_a_missing_file(tmp_path):
    proc = _check_config(str(tmp_path / "none.yaml"))
    assert (proc.returncode, proc.stderr) == (2, f"config file not found: {tmp_path / 'none.yaml'}\n")


def test_check_config_imports_no_torch():
    proc = _check_config(str(DEMO_CONFIG), importtime=True)
    assert proc.returncode == 0, proc.stderr
    # -X importtime: "import time: self [us] | cumulative | imported package", one line a module
    modules = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "fcn_dist.config" in modules
    assert not [m for m in modules if m.split(".")[0] in ("torch", "accelerate")]


def _check_data(*args: str, importtime: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(_module("check-data", *args, python_flags=("-X", "importtime") if importtime else ()),
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_check_data_names_a_missing_data_root_in_one_line(tmp_path):
    proc = _check_data(str(DEMO_CONFIG), "data.format=voc", f"data.root={tmp_path / 'none'}")
    assert (proc.returncode, proc.stderr) == (2, (
        f"data root {tmp_path / 'none'} does not exist: expected {tmp_path / 'none'}/VOCdevkit/VOC2012 or a VOC2012 "
        "folder with JPEGImages/ and ImageSets/Segmentation/; set data.root to such a folder\n"))


def test_check_data_names_a_missing_split_file_and_accepts_a_good_root(synthetic_voc):
    proc = _check_data(str(DEMO_CONFIG), "data.format=voc", f"data.root={synthetic_voc}", "data.val_split=test")
    split = synthetic_voc / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "test.txt"
    assert proc.returncode == 2 and proc.stderr.startswith(f"split file {split} not found"), proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    good = _check_data(str(DEMO_CONFIG), "data.format=voc", f"data.root={synthetic_voc}", importtime=True)
    assert good.returncode == 0, good.stderr
    modules = [line.rsplit("|", 1)[-1].strip() for line in good.stderr.splitlines() if line.startswith("import time:")]
    assert "fcn_dist.datafiles" in modules and not [m for m in modules if m.split(".")[0] in ("torch", "numpy")]
    # generated on first use: nothing to check before the job
    assert _check_data(str(DEMO_CONFIG), f"data.root={synthetic_voc / 'not_yet'}").returncode == 0


def test_check_data_reports_a_bad_config_too():
    proc = _check_data(str(DEMO_CONFIG), "optim.lrr=0.1")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "unknown config key 'optim.lrr'" in proc.stderr


def test_help_names_every_subcommand():
    proc = subprocess.run(_module("--help"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "check-config" in proc.stdout and "check-data" in proc.stdout and "accelerate" in proc.stdout
    assert "75" in proc.stdout


@pytest.mark.parametrize("returncode, expected", [(0, 0), (2, 2), (75, 75), (-9, 137), (-15, 143)])
def test_exit_code_of_a_process_as_a_shell_gives_it(returncode, expected):
    assert launcher._exit_code(returncode) == expected


def _free_port() -> int:
    """A port nothing listens on now (a pid-derived one can meet another test's rendezvous)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accelerate(tmp_path: Path, processes: int, *child_args: str) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    launch = ["--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no"]
    if processes > 1:  # torch elastic (the path of every multi-process job), gloo on CPU
        launch += ["--multi_gpu", "--main_process_port", str(_free_port())]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(_module("accelerate", *launch, str(script), *child_args), cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout_s: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout_s)
    return proc.returncode, out


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("action, value, expected", [("exit", 75, 75), ("exit", 0, 0), ("exit", 3, 3),
                                                     ("kill", 9, 137)])
def test_accelerate_exits_with_the_process_exit_code(tmp_path, action, value, expected):
    code, out = _finish(_accelerate(tmp_path, 1, action, str(value)))
    assert code == expected, out
    assert "child ready" in out and "Traceback" not in out, out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_accelerate_exits_with_the_first_failed_process_code_under_torch_elastic(tmp_path):
    code, out = _finish(_accelerate(tmp_path, 2, "exit", "75"))
    assert code == 75, out
    assert out.count("child ready") == 2 and "Traceback" not in out, out


def _wait_ready(proc: subprocess.Popen, processes: int, timeout_s: float = 180) -> list[str]:
    lines, ready, deadline = [], 0, time.monotonic() + timeout_s
    while ready < processes and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        ready += line.startswith("child ready")
    assert ready == processes, "".join(lines)
    return lines


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_to_the_launcher_reaches_the_processes_and_keeps_their_exit_code(tmp_path, processes):
    """As on scancel: the processes save (6 s) and exit 75; no SignalException traceback from torch elastic."""
    proc = _accelerate(tmp_path, processes, "save", "75")
    head = _wait_ready(proc, processes)
    time.sleep(0.5)  # the launcher's own handler is in place before it starts any process; this is margin
    proc.send_signal(signal.SIGTERM)
    code, out = _finish(proc)
    out = "".join(head) + out
    assert code == 75, out
    assert out.count("child saved") == processes, out
    assert "Traceback" not in out and "SignalException" not in out, out
