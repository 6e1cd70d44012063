"""Fixture of the Slurm tests: the session's 2-node local cluster.

The cluster comes up once per session (``local_slurm.LocalSlurm``). Where it cannot start (not
root, no apt-get, no namespaces) every test using it is skipped with the reason; with
``FCN_REQUIRE_SLURM=1`` (set by CI) that is a failure instead, so CI never passes silently.
"""

from __future__ import annotations

import os

import pytest

from local_slurm import LocalSlurm, SlurmUnavailable


@pytest.fixture(scope="session")
def slurm() -> LocalSlurm:
    """A running 2-node cluster (hosts fcn-n1, fcn-n2), torn down after the session."""
    cluster = LocalSlurm(nodes=2)
    try:
        cluster.up()
    except SlurmUnavailable as err:
        if os.environ.get("FCN_REQUIRE_SLURM") == "1":
            pytest.fail(f"FCN_REQUIRE_SLURM=1 but the local Slurm cluster cannot start: {err}")
        pytest.skip(f"local Slurm cluster cannot start: {err}")
    yield cluster
    cluster.down()

