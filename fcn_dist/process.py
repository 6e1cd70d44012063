"""Process-level policy: exit codes, the stop flag, and the signal policy of loader workers.

The one module below the entry points that knows about signals and child processes (the
entry points and ``checkpoint.py`` know about ranks; see docs/DESIGN.md, "Boundaries").
Model, data, transforms, losses and metrics import nothing from here; the entry points pass
``loader_worker_init()`` to ``fcn_dist.data.build_dataloaders``.
"""

from __future__ import annotations

import atexit
import multiprocessing
import re
import signal
import sys
import time

EXIT_OK = 0
EXIT_PARTIAL = 1
"""fcn-predict: some images could not be read (each named on stderr); fcn-data check: problems found."""
EXIT_EXPORT_FAILED = 1
"""fcn-export: no exporter gave a graph that passes its checks (onnx.checker, onnxruntime against torch); nothing
was written."""
EXIT_BAD_INPUT = 2
"""Bad config, arguments, data or checkpoint: one line on stderr names the file or key and the fix."""
EXIT_LOST_PEER = 1
"""fcn-train on several processes: this process stopped because another one ended (whose own error,
printed by that process, comes first in the log); one line, no traceback."""
EXIT_NONFINITE = 3
"""The training loss (or the weights) became NaN or infinite; nothing non-finite was saved."""
EXIT_PREEMPTED = 75
"""EX_TEMPFAIL: stopped by SIGUSR1/SIGTERM after saving a checkpoint; rerun the same command to resume."""

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def fail(prog: str, err: BaseException | str, code: int = EXIT_BAD_INPUT) -> int:
    """Print ``<prog>: error: <message>`` as one line on stderr; returns ``code`` for ``sys.exit``."""
    print(f"{prog}: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
    return code


PEER_LOST_MESSAGES = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
"""What gloo's collectives say when the other end of a connection is gone (a process of the run ended)."""


def lost_peer(err: BaseException, num_processes: int) -> bool:
    """Whether an error of a collective means that another process of the run ended.

    That process prints its own one-line error (a data error in one rank's shard, say); the
    others then fail in their next collective, and should end with one line too, not a traceback
    that buries the cause. NCCL and the rendezvous store raise ``torch.distributed.DistError``;
    gloo raises a ``RuntimeError`` naming the dropped connection.
    """
    if num_processes == 1 or not isinstance(err, RuntimeError):
        return False
    import torch.distributed

    return isinstance(err, torch.distributed.DistError) or any(text in str(err) for text in PEER_LOST_MESSAGES)


def peer_reason(err: BaseException) -> str:
    """The first sentence of a collective's error, without gloo's source location: what ``fail`` shows."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(err).splitlines()[0] if str(err) else type(err).__name__)
    return text.split(". ")[0]


class StopFlag:
    """Set by SIGUSR1 (Slurm's preemption warning) or SIGTERM (scancel, time limit).

    The handler only records the signal; the training loop reads it at every optimizer step
    (``requested``), so a stop is seen within one step whatever the log and eval frequencies.
    """

    def __init__(self) -> None:
        self.signum = 0
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._set)

    def _set(self, signum, frame) -> None:
        self.signum = signum

    @property
    def terminated(self) -> bool:
        """A job-wide SIGTERM: it also reached wandb's service process, so W&B can no longer log."""
        return self.signum == signal.SIGTERM

    def requested(self, accelerator) -> bool:
        """Whether any process was signalled; all processes agree, so they stop at the same step.

        One one-element all-reduce when there are several processes, none otherwise.
        """
        if accelerator.num_processes == 1:
            return self.signum != 0
        import torch

        flag = torch.tensor(float(self.signum), device=accelerator.device)
        return float(accelerator.reduce(flag, "max")) > 0


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGUSR1/SIGTERM.

    Slurm delivers a preemption or cancel signal to every process of the job; a worker killed
    by it would crash the loader before the training process could save its checkpoint. The
    main process handles the signal and shuts the workers down itself; if it exits without
    doing so (an uncaught exception), ``_end_stray_workers`` kills them at exit.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _end_stray_workers(grace_s: float = 1.0) -> None:
    """At exit, end daemonic child processes that outlive a SIGTERM (our loader workers).

    The workers ignore SIGTERM (``ignore_stop_signals``). multiprocessing's own exit handler
    ends daemonic children with SIGTERM and then joins them, so without this a process whose
    loader iterator was still alive at exit (an uncaught exception keeps its frames in
    ``sys.last_traceback``) would wait for its workers forever: a crashed job that never exits.
    This does the same SIGTERM first, then kills whatever is still running after ``grace_s``.
    Python deletes ``Process._target`` after start, so loader workers cannot be told apart from
    other daemonic children; multiprocessing itself SIGTERMs them all at exit, and the SIGKILL
    only reaches those that ignore SIGTERM.
    """
    children = [child for child in multiprocessing.active_children() if child.daemon]
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace_s
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            child.join()


_exit_hook_registered = False


def loader_worker_init():
    """The ``worker_init_fn`` for this process's DataLoaders, with the stray-worker exit hook.

    Registers ``_end_stray_workers`` once, after multiprocessing's own exit handler so that it
    runs first (atexit runs last-in first-out).

    Returns:
        ``ignore_stop_signals``.
    """
    global _exit_hook_registered
    if not _exit_hook_registered:
        import multiprocessing.util  # noqa: F401  registers its exit handler now, if not yet: before ours
        atexit.register(_end_stray_workers)
        _exit_hook_registered = True
    return ignore_stop_signals


def main_process_choice(processes, value: str, options: tuple[str, ...]) -> str:
    """The main process's ``value`` (one of ``options``) on every process: one broadcast of its index.

    For decisions that every process must share but only the main process makes (``auto``
    precision: a timing probe could come out differently per process). Nothing is pickled.
    """
    if processes.num_processes == 1:
        return value
    import torch
    from accelerate.utils import broadcast

    index = torch.tensor(options.index(value) if processes.is_main_process else 0, device=processes.device)
    return options[int(broadcast(index))]


def main_process_floats(processes, values, count: int) -> list[float]:
    """The main process's ``count`` floats on every process: one broadcast of a float64 tensor.

    For values only the main process computes (``optim.class_weights=auto``: the training split's
    pixel counts). The other processes pass anything (None) and wait, bounded by the process
    group's timeout.
    """
    if processes.num_processes == 1:
        return [float(v) for v in values]
    import torch
    from accelerate.utils import broadcast

    local = values if processes.is_main_process else [0.0] * count
    return broadcast(torch.tensor(local, dtype=torch.float64, device=processes.device)).tolist()
