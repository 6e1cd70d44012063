#!/usr/bin/env bash
# System packages for the Slurm tests (tests/slurm/): Debian's munge, slurmctld, slurmd and the
# Slurm clients. Their services are never started by the packages (a policy-rc.d that answers
# 101 is put in place if absent); the test harness starts its own daemons and stops them by pid.
# Needs root and apt-get. Idempotent: does nothing when the programs are already there.
set -euo pipefail

if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
   && command -v sbatch >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "slurm-deps: needs root to install munge/slurm (uid=$(id -u))" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "slurm-deps: apt-get not found; install munge, slurmctld, slurmd and slurm-client yourself" >&2
  exit 1
fi
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client iproute2 util-linux >/dev/null
