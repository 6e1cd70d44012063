"""The harness itself: skip reasons where Slurm cannot run, the /etc/hosts block, real distinct hosts."""

from __future__ import annotations

import pytest

import local_slurm
from local_slurm import HOSTS_BEGIN, HOSTS_END, SlurmUnavailable, _edit_hosts, ensure_installed


def test_not_root_is_a_named_reason(monkeypatch):
    monkeypatch.setattr(local_slurm.os, "geteuid", lambda: 1000)
    with pytest.raises(SlurmUnavailable, match=r"^needs root for network namespaces and the Slurm daemons \(uid=1000\)$"):
        ensure_installed()


def test_missing_packages_without_apt_is_a_named_reason(monkeypatch):
    monkeypatch.setattr(local_slurm.os, "geteuid", lambda: 0)
    monkeypatch.setattr(local_slurm, "missing_programs", lambda: ["munged", "slurmctld"])
    real_which = local_slurm.shutil.which
    monkeypatch.setattr(local_slurm.shutil, "which", lambda name: None if name == "apt-get" else real_which(name))
    with pytest.raises(SlurmUnavailable, match=r"^munged, slurmctld not installed and apt-get is not available$"):
        ensure_installed()


def test_hosts_block_is_added_replaced_and_removed_exactly(tmp_path):
    hosts = tmp_path / "hosts"
    original = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
    hosts.write_text(original)
    _edit_hosts({"fcn-n1": "10.200.0.11"}, hosts)
    _edit_hosts({"fcn-n1": "10.200.0.11", "fcn-n2": "10.200.0.12"}, hosts)
    assert hosts.read_text() == original + f"{HOSTS_BEGIN}\n10.200.0.11 fcn-n1\n10.200.0.12 fcn-n2\n{HOSTS_END}\n"
    _edit_hosts(None, hosts)
    assert hosts.read_text() == original


@pytest.mark.slurm
def test_nodes_are_distinct_hosts_with_their_own_addresses(slurm):
    out = slurm.run(["srun", "--nodes=2", "--ntasks-per-node=1", "--label", "sh", "-c",
                     "echo $(hostname) $(getent hosts $(hostname) | cut -d' ' -f1) $SLURM_NODEID"]).stdout
    lines = sorted(line.split(": ", 1)[1] for line in out.strip().splitlines())
    assert lines == ["fcn-n1 10.200.0.11 0", "fcn-n2 10.200.0.12 1"]
