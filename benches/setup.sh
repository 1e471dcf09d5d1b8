#!/usr/bin/env bash
# Installs the peer tools the benchmarks compare strata with (Debian packages).
# Run as root after scripts/setup.sh.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    hyperfine fio git podman buildah runc crun fuse-overlayfs debootstrap </dev/null
