"""A real Slurm cluster on one machine, for testing the project's sbatch scripts.

This module owns bringing up and tearing down Debian's ``munged``, ``slurmctld`` and one
``slurmd`` per node, where every node is a real host: its own network namespace (a veth pair
into a private bridge, addresses 10.200.0.0/24 that exist only on this machine) and its own UTS
namespace, so ``hostname`` and gloo's address lookup see ``fcn-n1``, ``fcn-n2``... The node names
go into a marked block of ``/etc/hosts``; all state, logs and sockets live in one folder
(``FCN_SLURM_DIR``, default ``/tmp/fcn_dist-slurm``).

Rules it keeps (see the measured recipe in the project notes):
- it only ever kills processes it started, by pid: daemons from its own pid records (checked
  against ``/proc/<pid>/cmdline``) and processes living in the network namespaces it created;
- slurmd is started with ``nsenter --net`` (``ip netns exec`` remounts /sys and breaks slurmd);
- two harness users never bring the cluster up at once (an ``flock`` on a lock file);
- jobs are waited for by polling ``squeue`` (there is no accounting, so no ``sacct``).

Command line, to try the scripts by hand::

    python tests/slurm/local_slurm.py up --nodes 2     # prints the SLURM_CONF to export
    python tests/slurm/local_slurm.py down
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DIR = Path(os.environ.get("FCN_SLURM_DIR", "/tmp/fcn_dist-slurm"))
LOCK_FILE = Path("/tmp/fcn_dist-slurm.lock")
PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")
BRIDGE = "fcnslurm0"
SUBNET = "10.200.0"
CONTROLLER_ADDR = f"{SUBNET}.1"
CTLD_PORT = 16817
SLURMD_PORT = 16818
HOSTS_BEGIN = "# >>> fcn_dist local slurm (tests/slurm/local_slurm.py) >>>"
HOSTS_END = "# <<< fcn_dist local slurm <<<"
CONF_MARK = "# written by tests/slurm/local_slurm.py"
DEPS_SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "slurm-deps.sh"


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here; the message says why (used as the pytest skip reason)."""


def node_name(index: int) -> str:
    """Host name of node ``index`` (1-based): ``fcn-n1``, ``fcn-n2``..."""
    return f"fcn-n{index}"


def node_addr(index: int) -> str:
    """Private address of node ``index`` on the harness bridge."""
    return f"{SUBNET}.{10 + index}"


def _run(cmd: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def missing_programs() -> list[str]:
    """Slurm, munge and namespace programs that are not on PATH."""
    needed = DAEMONS + ("ip", "nsenter", "unshare")
    return [p for p in needed if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]


def ensure_installed() -> None:
    """Install the Debian packages with ``.ci/slurm-deps.sh`` when they are missing.

    Raises:
        SlurmUnavailable: not root, no apt-get, or the install failed (the reason says which).
    """
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"needs root for network namespaces and the Slurm daemons (uid={os.geteuid()})")
    if sys.platform != "linux":
        raise SlurmUnavailable(f"needs Linux network namespaces (platform={sys.platform})")
    missing = missing_programs()
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"{', '.join(missing)} not installed and apt-get is not available")
    proc = subprocess.run(["bash", str(DEPS_SCRIPT)], capture_output=True, text=True, timeout=600)
    missing = missing_programs()
    if proc.returncode != 0 or missing:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise SlurmUnavailable(f"apt-get install of {' '.join(PACKAGES)} failed (exit {proc.returncode}), "
                               f"still missing {', '.join(missing) or 'nothing'}: {' | '.join(tail)}")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _net_inode(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:  # exited since the kill(0)
        return False
    if state == "Z":  # a zombie counts as gone; reap it when it is our child
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def _stop_pids(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM the pids, then SIGKILL the ones still running after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if _alive(pid):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        if not any(_alive(p) for p in pids):
            return


@dataclass
class Job:
    """What ``scontrol show job`` says about a finished (or running) job."""

    job_id: int
    state: str
    exit_code: int
    signal: int
    restarts: int
    fields: dict = field(repr=False, default_factory=dict)


@dataclass
class LocalSlurm:
    """A Slurm cluster of ``nodes`` hosts on this machine.

    Use ``with LocalSlurm(nodes=2) as cluster:`` or ``up()`` / ``down()``; ``env()`` gives the
    environment (``SLURM_CONF``) that Slurm clients need.
    """

    nodes: int = 2
    state_dir: Path = DEFAULT_DIR
    lock_timeout_s: float = 900.0
    _lock_fd: int | None = field(default=None, repr=False)

    @property
    def conf(self) -> Path:
        return self.state_dir / "slurm.conf"

    def env(self, base: dict | None = None) -> dict:
        """``base`` (default ``os.environ``) plus ``SLURM_CONF`` for this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        return env

    # ---- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "LocalSlurm":
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        """Install if needed, clear leftovers of a crashed run, start munge, the controller and nodes.

        Raises:
            SlurmUnavailable: Slurm cannot run on this machine (the message says why).
            RuntimeError: a daemon did not come up; the message holds its log tail.
        """
        ensure_installed()
        self._lock()
        try:
            self._clear()
            self._write_files()
            self._make_network()
            self._start_daemons()
            self._wait_nodes_idle()
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Cancel jobs, stop what the harness started (by pid), remove namespaces and hosts lines."""
        try:
            if self.conf.exists() and self._pid("slurmctld"):
                ids = self.run(["squeue", "-h", "-o", "%A"], check=False, timeout=10).stdout.split()
                if ids:
                    self.run(["scancel", *ids], check=False, timeout=10)
            self._clear()
        finally:
            self._unlock()

    def _lock(self) -> None:
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise SlurmUnavailable(f"another harness holds {LOCK_FILE} for over {self.lock_timeout_s:.0f} s")
                time.sleep(1)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- pieces ----------------------------------------------------------------------------
    def _pid(self, name: str) -> int | None:
        """Pid recorded for daemon ``name`` if it still runs that program with our files."""
        record = self.state_dir / "pids" / f"{name}.pid"
        if not record.exists():
            return None
        pid = int(record.read_text())
        program = name.split("-")[0] if name.startswith("slurmd") else name
        cmd = _cmdline(pid)
        if _alive(pid) and program in cmd and str(self.state_dir) in cmd:
            return pid
        return None

    def _netns_pids(self) -> list[int]:
        """Processes living in the network namespaces this harness created (job steps included)."""
        inodes = {os.stat(p).st_ino for p in Path("/run/netns").glob("fcn-n*")} if Path("/run/netns").exists() else set()
        if not inodes:
            return []
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and _net_inode(p) in inodes and int(p) != os.getpid()]

    def _clear(self) -> None:
        """Stop recorded daemons and namespace processes, delete namespaces, bridge and hosts block."""
        records = self.state_dir / "pids"
        names = [p.stem for p in records.glob("*.pid")] if records.exists() else []
        order = sorted(names, key=lambda n: ("slurmd" in n, "slurmctld" in n, "munged" in n), reverse=True)
        for name in order:  # nodes first, then controller, then munge
            pid = self._pid(name)
            if pid:
                _stop_pids([pid])
            (records / f"{name}.pid").unlink(missing_ok=True)
        _stop_pids(self._netns_pids(), grace_s=3.0)
        if Path("/run/netns").exists():
            for ns in Path("/run/netns").glob("fcn-n*"):
                _run(["ip", "netns", "del", ns.name], check=False)
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            _run(["ip", "link", "del", BRIDGE], check=False)
        _edit_hosts(None)

    def _write_files(self) -> None:
        if self.state_dir.exists():
            ours = self.conf.exists() and self.conf.read_text().startswith(CONF_MARK)
            if not ours and any(self.state_dir.iterdir()):
                raise RuntimeError(f"{self.state_dir} is not empty and holds no harness slurm.conf: "
                                   "not deleting it; choose another FCN_SLURM_DIR")
            shutil.rmtree(self.state_dir)
        for sub in ("pids", "log", "ctld", "munge", "spool"):
            (self.state_dir / sub).mkdir(parents=True, mode=0o700)
        self.state_dir.chmod(0o755)
        key = self.state_dir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        hw = _run(["slurmd", "-C"]).stdout.splitlines()[0].split()
        hw = " ".join(w for w in hw if not w.startswith(("NodeName=", "UpTime=")))
        nodes = "\n".join(f"NodeName={node_name(i)} NodeAddr={node_addr(i)} NodeHostname={node_name(i)} {hw} State=UNKNOWN"
                          for i in range(1, self.nodes + 1))
        d = self.state_dir
        self.conf.write_text(f"""{CONF_MARK}
ClusterName=fcnlocal
SlurmctldHost={socket.gethostname().split('.')[0]}({CONTROLLER_ADDR})
SlurmctldPort={CTLD_PORT}
SlurmdPort={SLURMD_PORT}
AuthType=auth/munge
# cred_expire: a requeued job may start again after this many seconds (default 120)
CredType=cred/munge
AuthInfo=socket={d}/munge/munged.socket,cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/ctld
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/ctld/slurmctld.pid
SlurmdPidFile={d}/spool/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerParameters=batch_sched_delay=0
MinJobAge=600
# scancel and time limits: SIGTERM to every process of the job, SIGKILL this many seconds later
KillWait=5
InactiveLimit=0
SlurmdTimeout=60
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def _make_network(self) -> None:
        cmds = [["ip", "link", "add", BRIDGE, "type", "bridge"],
                ["ip", "addr", "add", f"{CONTROLLER_ADDR}/24", "dev", BRIDGE],
                ["ip", "link", "set", BRIDGE, "up"]]
        for i in range(1, self.nodes + 1):
            ns, host_end, ns_end = node_name(i), f"fcnslurm{i}h", f"fcnslurm{i}n"
            cmds += [["ip", "netns", "add", ns],
                     ["ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end],
                     ["ip", "link", "set", host_end, "master", BRIDGE],
                     ["ip", "link", "set", host_end, "up"],
                     ["ip", "link", "set", ns_end, "netns", ns],
                     ["ip", "-n", ns, "addr", "add", f"{node_addr(i)}/24", "dev", ns_end],
                     ["ip", "-n", ns, "link", "set", ns_end, "up"],
                     ["ip", "-n", ns, "link", "set", "lo", "up"]]
        for cmd in cmds:
            proc = _run(cmd, check=False)
            if proc.returncode != 0:
                raise SlurmUnavailable(f"cannot build the node network ({' '.join(cmd)}): {proc.stderr.strip()}")
        _edit_hosts({node_name(i): node_addr(i) for i in range(1, self.nodes + 1)})

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.state_dir / "log" / f"{name}.out", "wb")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=self.env())
        log.close()
        (self.state_dir / "pids" / f"{name}.pid").write_text(str(proc.pid))

    def _start_daemons(self) -> None:
        d = self.state_dir
        self._spawn("munged", ["munged", "-F", "--force", f"--key-file={d}/munge/munge.key",
                               f"--socket={d}/munge/munged.socket", f"--pid-file={d}/munge/munged.pid",
                               f"--log-file={d}/log/munged.log", f"--seed-file={d}/munge/munged.seed"])
        _wait_for(lambda: Path(f"{d}/munge/munged.socket").exists(), 10, lambda: self._log_tail("munged"))
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        _wait_for(lambda: "UP" in self.run(["scontrol", "ping"], check=False).stdout, 20,
                  lambda: self._log_tail("slurmctld"))
        for i in range(1, self.nodes + 1):
            name = node_name(i)
            slurmd = f"exec slurmd -D -f {self.conf} -N {name}"
            self._spawn(f"slurmd-{name}", ["nsenter", f"--net=/run/netns/{name}", "unshare", "--uts", "--",
                                           "sh", "-c", f"hostname {name} && {slurmd}"])

    def _wait_nodes_idle(self, timeout_s: float = 30) -> None:
        def idle() -> bool:
            out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False).stdout.split()
            states = dict(zip(out[::2], out[1::2]))
            return len(states) == self.nodes and all(s == "idle" for s in states.values())
        _wait_for(idle, timeout_s, lambda: "\n".join(self._log_tail(f"slurmd-{node_name(i)}")
                                                      for i in range(1, self.nodes + 1)))

    def _log_tail(self, name: str, lines: int = 15) -> str:
        text = []
        for log in sorted((self.state_dir / "log").glob(f"{name}*")):
            text += [f"== {log.name}"] + log.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text)

    # ---- client helpers ----------------------------------------------------------------------
    def run(self, cmd: list[str], check: bool = True, env: dict | None = None, timeout: float = 60,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster (in ``cwd``: sbatch's SLURM_SUBMIT_DIR)."""
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env(env), timeout=timeout, cwd=cwd)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def sbatch(self, args: list[str], env: dict | None = None, cwd: Path | None = None) -> int:
        """Submit a batch job (``sbatch --parsable ARGS``, from ``cwd``) and return its id."""
        return int(self.run(["sbatch", "--parsable", *args], env=env, cwd=cwd).stdout.strip().split(";")[0])

    def jobs(self, job_id: int) -> list[Job]:
        """State, exit code and restart count from ``scontrol show job`` (one per array task)."""
        out = self.run(["scontrol", "show", "job", "-o", str(job_id)]).stdout
        jobs = []
        for line in out.splitlines():
            fields = dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line))
            code, sig = (int(x) for x in fields["ExitCode"].split(":"))
            jobs.append(Job(int(fields["JobId"]), fields["JobState"], code, sig, int(fields.get("Restarts", 0)), fields))
        return jobs

    def job(self, job_id: int) -> Job:
        """The job's state, exit code and restart count (the first task of an array)."""
        return self.jobs(job_id)[0]

    def wait(self, job_id: int, timeout_s: float = 300, poll_s: float = 0.5) -> Job:
        """Poll ``squeue`` until the job has left the queue (requeues included), then describe it.

        Raises:
            TimeoutError: still queued or running after ``timeout_s``; the job is cancelled.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = self.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], check=False).stdout.strip()
            if not out:
                return self.job(job_id)
            time.sleep(poll_s)
        self.run(["scancel", str(job_id)], check=False)
        raise TimeoutError(f"job {job_id} still in the queue after {timeout_s:.0f} s")

    def wait_state(self, job_id: int, states: tuple[str, ...], timeout_s: float = 120) -> Job:
        """Poll until the job is in one of ``states`` (e.g. ``("RUNNING",)``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job.state in states:
                return job
            time.sleep(0.3)
        raise TimeoutError(f"job {job_id} not in {states} after {timeout_s:.0f} s (now {job.state})")


def _wait_for(predicate, timeout_s: float, diagnostics) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout_s:.0f} s\n{diagnostics()}")


def _edit_hosts(entries: dict[str, str] | None, path: Path = Path("/etc/hosts")) -> None:
    """Replace the harness block of /etc/hosts with ``entries`` (None removes the block).

    Written in place, not renamed, because /etc/hosts is often a bind mount.
    """
    text = path.read_text()
    text = re.sub(rf"\n?{re.escape(HOSTS_BEGIN)}\n.*?{re.escape(HOSTS_END)}\n?", "\n", text, flags=re.S)
    text = text.rstrip("\n") + "\n"
    if entries:
        text += HOSTS_BEGIN + "\n" + "".join(f"{addr} {name}\n" for name, addr in entries.items()) + HOSTS_END + "\n"
    with open(path, "r+") as f:
        f.write(text)
        f.truncate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state folder (default %(default)s)")
    args = parser.parse_args(argv)
    cluster = LocalSlurm(nodes=args.nodes, state_dir=args.dir)
    if args.action == "down":
        cluster._lock()
        cluster.down()
        return 0
    cluster.up()
    cluster._unlock()  # the daemons keep running; `down` stops them by their pid records
    sys.stdout.write(f"export SLURM_CONF={cluster.conf}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
