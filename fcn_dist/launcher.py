"""The Python side of the Slurm scripts (launch/slurm/): check a config and its data, run ``accelerate launch``.

    python -m fcn_dist.launcher check-config CONFIG [section.key=value ...]
    python -m fcn_dist.launcher check-data CONFIG [section.key=value ...]
    python -m fcn_dist.launcher accelerate [accelerate launch arguments ...]

``check-config``
    Loads CONFIG with the overrides exactly as fcn-train will (``fcn_dist.config.load_config``),
    so a bad launch fails in the batch shell, before any srun. It imports no torch: it answers in
    well under a second on a login node or in a batch shell. Exit 0 if the config loads; exit 2
    with one line on stderr, the reason (``unknown config key 'optim.lrr'; ...``), if not.

``check-data``
    Loads the config the same way, then checks that its data is there without reading an image
    (``fcn_dist.datafiles.check_data_root``: the data root's layout and the split files of
    ``data.train_split`` and ``data.val_split``; for ``data.format=folder`` also classes.yaml
    against ``model.num_classes``, and every image paired with its mask). No torch either. Exit 0, or exit 2 with the one
    line fcn-train would print (``data root /x does not exist: ...``): on several nodes that line
    would otherwise come seconds later, from every rank at once, among the survivors' errors.

``accelerate``
    ``accelerate launch`` with the same arguments (``--num_processes``, ``--machine_rank``,
    ``-m fcn_dist.train --config ...``), which exits 1 whatever its processes exit with. This
    wrapper exits with the exit code of the first process that failed instead: 75 means the
    training processes saved a checkpoint after SIGUSR1/SIGTERM (``fcn_dist.train``; requeue and
    rerun the same command to resume), 2 a bad config or input, 128+N a process killed by signal N,
    as in a shell.

    SIGTERM (scancel, a time limit: Slurm sends it to every process of the job) does not kill the
    launcher: it passes the signal on to its processes, waits for them to save and exit, and exits
    with their code. (``accelerate launch`` itself, through torch elastic, would raise
    ``SignalException`` with a traceback and lose their code; the wrapper keeps torch elastic off
    SIGTERM with torchrun's ``--signals_to_handle``. With one process, accelerate 1.16's own
    launcher would exit 143 and SIGKILL the process 5 s after passing SIGTERM on; the wrapper
    starts that one process itself, ``_simple_launcher``.) A signal that still reaches torch elastic
    (SIGINT, SIGHUP, SIGQUIT; SIGTERM on a torch without that setting) ends the launcher after
    torch elastic has stopped the processes: exit 128+N, one line on stderr, no traceback. A
    SIGTERM that arrives before any process started ends the launcher at once with 143.

Exit codes: 0 success; 2 bad config (``check-config``), bad data (``check-data``) or bad arguments;
otherwise the code of the launched processes as above.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Sequence

from fcn_dist.process import EXIT_BAD_INPUT

PROG = "python -m fcn_dist.launcher"
# torch elastic's default is SIGTERM,SIGINT,SIGHUP,SIGQUIT; SIGTERM stays with the wrapper.
ELASTIC_SIGNALS = "SIGINT,SIGHUP,SIGQUIT"


def check_config(config: str, overrides: Sequence[str]) -> int:
    """Load ``config`` with ``overrides``: 0 if it loads, 2 and one line on stderr if not."""
    from fcn_dist.config import ConfigError, load_config

    try:
        load_config(config, list(overrides))
    except ConfigError as err:
        print(" ".join(str(err).splitlines()), file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def check_data(config: str, overrides: Sequence[str]) -> int:
    """Load ``config`` and check its data root and split files: 0 if there, 2 and one line on stderr if not."""
    from fcn_dist.config import ConfigError, load_config
    from fcn_dist.datafiles import check_data_root

    try:
        cfg = load_config(config, list(overrides))
        problem = check_data_root(cfg.data, cfg.model.num_classes)
    except ConfigError as err:
        problem = str(err)
    if problem:
        print(" ".join(problem.splitlines()), file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _exit_code(returncode: int) -> int:
    """A process's exit code as a shell reports it: a kill by signal N (returncode -N) is 128+N."""
    return returncode if returncode >= 0 else 128 - returncode


def _pass_on_handler():
    """A SIGTERM handler that hands the signal to the launched processes and keeps waiting for them."""
    import psutil  # a dependency of accelerate; imported now, not inside the handler

    def pass_on(signum: int, frame) -> None:
        children = psutil.Process().children()
        if not children:  # nothing started yet (rendezvous): nothing will checkpoint
            code = _exit_code(-signum)
            print(f"{PROG} accelerate: got {signal.Signals(signum).name} before any process started: exit {code}",
                  file=sys.stderr)
            raise SystemExit(code)
        for child in children:
            try:
                child.send_signal(signum)
            except psutil.Error:  # exited meanwhile
                pass

    return pass_on


def _simple_launcher(args: argparse.Namespace) -> None:
    """accelerate's one-process launcher without its SIGTERM handling: start the process, wait for it.

    Why not accelerate's own: since accelerate 1.1x (1.16 measured) its simple launcher replaces the
    SIGTERM handler, exits 143 whatever the process exits with, and SIGKILLs the process 5 s after
    passing SIGTERM on, which would cut a checkpoint save short. Here the wrapper's handler
    (``_pass_on_handler``) stays in place and the process's own exit code is kept. The command and
    environment are accelerate's (``prepare_simple_launcher_cmd_env``).
    """
    import subprocess

    from accelerate.utils import prepare_simple_launcher_cmd_env

    cmd, env = prepare_simple_launcher_cmd_env(args)
    process = subprocess.Popen(cmd, env=env)
    returncode = process.wait()  # PEP 475: a signal handled meanwhile does not end the wait
    if returncode != 0:
        raise subprocess.CalledProcessError(returncode, cmd)


def accelerate(launch_args: Sequence[str]) -> int:
    """Run ``accelerate launch LAUNCH_ARGS``; return the first failed process's exit code (0 if none)."""
    import subprocess

    import accelerate.commands.launch as accelerate_launch
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # torchrun's --signals_to_handle (default: PET_SIGNALS_TO_HANDLE) sets TORCHELASTIC_SIGNALS_TO_HANDLE, which
    # the process context reads; a torch without them handles SIGTERM itself (SignalException below).
    for name in ("PET_SIGNALS_TO_HANDLE", "TORCHELASTIC_SIGNALS_TO_HANDLE"):
        os.environ.setdefault(name, ELASTIC_SIGNALS)
    signal.signal(signal.SIGTERM, _pass_on_handler())
    accelerate_launch.simple_launcher = _simple_launcher  # launch_command looks it up when it dispatches
    args = launch_command_parser().parse_args(list(launch_args))
    try:
        launch_command(args)
    except ChildFailedError as err:
        return _exit_code(err.get_first_failure()[1].exitcode)
    except subprocess.CalledProcessError as err:  # one process: accelerate's simple launcher
        return _exit_code(err.returncode)
    except SignalException as err:
        code = _exit_code(-err.sigval)
        print(f"{PROG} accelerate: got {signal.Signals(err.sigval).name}; the processes were stopped: exit {code}",
              file=sys.stderr)
        return code
    return 0


def build_parser() -> argparse.ArgumentParser:
    title, details = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description=title, epilog=details)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{check-config,check-data,accelerate}")
    check = commands.add_parser("check-config", help="load a config with overrides as fcn-train would: exit 0 or 2",
                                description="Load CONFIG with the overrides as fcn-train would, without torch. "
                                            "Exit 0 if it loads, 2 with one line on stderr if not.")
    check.add_argument("config", help="YAML config file, e.g. configs/demo.yaml")
    check.add_argument("overrides", nargs="*", metavar="section.key=value", help="dotted overrides, as for fcn-train")
    data = commands.add_parser("check-data", help="check that a config's data root and split files exist: exit 0 or 2",
                               description="Load CONFIG with the overrides as fcn-train would, then check that its "
                                           "data root and the split files of data.train_split and data.val_split "
                                           "exist, without torch or reading an image. Exit 0, or 2 with one line.")
    data.add_argument("config", help="YAML config file, e.g. configs/demo.yaml")
    data.add_argument("overrides", nargs="*", metavar="section.key=value", help="dotted overrides, as for fcn-train")
    launch = commands.add_parser(
        "accelerate", add_help=False, help="accelerate launch ARGS, exiting with the first failed process's code",
        description="Run `accelerate launch ARGS` and exit with the exit code of the first failed process "
                    "(75: checkpointed after a stop signal) instead of 1.")
    launch.add_argument("launch_args", nargs=argparse.REMAINDER, help="the arguments of `accelerate launch`")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["accelerate"]:  # everything after it is accelerate's, --help included
        return accelerate(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "check-data":
        return check_data(args.config, args.overrides)
    return check_config(args.config, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
