#!/usr/bin/env bash
# Installs everything strata's build, demo and tests need on Debian bookworm,
# and prepares the host the way distributions usually ship it.
# Run as root. Safe to run more than once.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh must run as root (it installs packages and creates a test user)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
packages=(
    build-essential pkg-config git curl ca-certificates python3
    fuse3 libfuse3-dev attr acl
    docker-registry skopeo umoci apache2-utils
    busybox-static passt uidmap iproute2 procps debootstrap zstd
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
fi
# The Debian package starts a registry on port 5000 for the whole machine; the
# tests start their own on loopback ports, so keep the system one out of the way.
if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
pkill -x docker-registry 2>/dev/null || true

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is not installed: install a Rust toolchain (rustup, stable) and run this again" >&2
    exit 1
fi

# Most distributions ship /dev/fuse (and /dev/net/tun) usable by every user;
# some minimal hosts ship them 0600. Rootless strata needs both.
chmod 0666 /dev/fuse
[ -e /dev/net/tun ] && chmod 0666 /dev/net/tun

# The unprivileged user the rootless tests run as, with a subordinate id range.
if ! id strata-test >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash strata-test
fi
for f in /etc/subuid /etc/subgid; do
    touch "$f"
    grep -q '^strata-test:' "$f" || echo "strata-test:200000:65536" >>"$f"
done
echo "setup: done"
