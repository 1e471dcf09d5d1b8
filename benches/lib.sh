# Shared pieces of the benchmark scripts: where things live, a throwaway
# loopback registry, the Debian minbase test image, and ratio reporting.
# Sourced by the bench scripts; not run on its own.

set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
CACHE=${BENCH_CACHE:-$HOME/.cache/strata-bench}
RUNS=${RUNS:-5}
OUT=${OUT:-$(mktemp -d /tmp/strata-bench.XXXXXX)}
mkdir -p "$CACHE" "$OUT"

strata_bin() {
    if [ ! -x "$REPO/target/release/strata" ] || [ -n "${REBUILD:-}" ]; then
        (cd "$REPO" && cargo build --release -p strata-cli >&2)
    fi
    echo "$REPO/target/release/strata"
}

# registry_start DIR -> sets REGISTRY (host:port) and REGISTRY_PID
registry_start() {
    local dir=$1 port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    mkdir -p "$dir/data"
    cat >"$dir/config.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
log:
  level: error
YML
    docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
    REGISTRY_PID=$!
    REGISTRY=127.0.0.1:$port
    for _ in $(seq 100); do
        curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "registry did not start: $(cat "$dir/log")" >&2
    return 1
}

# The host's Debian mirror for bookworm, read from its apt sources at run time.
debian_mirror() {
    python3 - <<'PY'
import glob, re
found = []
for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*")):
    try:
        text = open(path).read()
    except OSError:
        continue
    for line in text.splitlines():  # one-line style
        m = re.match(r"\s*deb\s+(\[[^]]*\]\s+)?(\S+)\s+bookworm\s", line)
        if m:
            found.append(m.group(2))
    for stanza in re.split(r"\n\s*\n", text):  # deb822 style
        fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
        if "bookworm" in fields.get("Suites", "").split() and "deb" in fields.get("Types", ""):
            found += fields.get("URIs", "").split()
print(next((u for u in found if "security" not in u), ""))
PY
}

# debian_rootfs_tar -> path of a cached Debian bookworm minbase rootfs tarball
debian_rootfs_tar() {
    local tarball=$CACHE/debian-minbase.tar
    if [ ! -s "$tarball" ]; then
        local root
        root=$(mktemp -d /tmp/strata-debootstrap.XXXXXX)
        debootstrap --variant=minbase bookworm "$root" "$(debian_mirror)" >&2
        tar -C "$root" --numeric-owner --xattrs -cf "$tarball.tmp" .
        rm -rf "$root"
        mv "$tarball.tmp" "$tarball"
    fi
    echo "$tarball"
}

# oci_from_rootfs_tar TAR LAYOUT TAG: a one-layer OCI image made by umoci.
oci_from_rootfs_tar() {
    local tar=$1 layout=$2 tag=$3 bundle
    bundle=$(mktemp -d /tmp/strata-bundle.XXXXXX)
    rm -rf "$layout"
    umoci init --layout "$layout"
    umoci new --image "$layout:$tag"
    umoci unpack --image "$layout:$tag" "$bundle/b" >/dev/null
    tar -C "$bundle/b/rootfs" --numeric-owner --xattrs -xf "$tar"
    umoci repack --image "$layout:$tag" "$bundle/b" >/dev/null
    umoci config --image "$layout:$tag" --config.cmd /bin/bash
    rm -rf "$bundle"
}

# median_of NAME: reads hyperfine's JSON export and prints NAME's median seconds
median_of() {
    python3 - "$1" "$2" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
for r in data["results"]:
    if r["command"] == sys.argv[2]:
        print("%.4f" % r["median"])
PY
}

# report JSON BASE: prints every command's median and its ratio to BASE's
report_ratios() {
    python3 - "$1" "$2" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
base = {r["command"]: r["median"] for r in data["results"]}[sys.argv[2]]
for r in data["results"]:
    print("%-28s %8.4f s  %5.2fx %s" % (r["command"], r["median"], r["median"] / base, sys.argv[2]))
PY
}

# seed_busybox_and_debian WORK: OCI layouts of a busybox-static image (one
# layer: busybox and its applet links) and of Debian minbase in WORK, pushed
# to $REGISTRY as busybox:latest and debian:latest.
seed_busybox_and_debian() {
    local work=$1 bb=$1/bbroot a image
    mkdir -p "$bb/bin" "$bb/etc" "$bb/tmp"
    cp /bin/busybox "$bb/bin/busybox"
    for a in $("$bb/bin/busybox" --list); do
        [ "$a" = busybox ] || ln -sf busybox "$bb/bin/$a"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$bb/etc/passwd"
    printf 'root:x:0:\n' >"$bb/etc/group"
    tar -C "$bb" --numeric-owner -cf "$work/busybox.tar" .
    oci_from_rootfs_tar "$work/busybox.tar" "$work/layout-busybox" latest
    oci_from_rootfs_tar "$(debian_rootfs_tar)" "$work/layout-debian" latest
    for image in busybox debian; do
        skopeo copy -q --dest-tls-verify=false "oci:$work/layout-$image:latest" "docker://$REGISTRY/$image:latest"
    done
}

# podman_configure WORK: a private podman store per variant under WORK (k:
# kernel overlay, f: fuse-overlayfs as mount_program), runc as the runtime,
# cgroupfs, and limits it may set: by default it asks for more open files
# than the hard limit, and its conmon runs with at most 32768 processes (so
# runc fails to give the container more). Defines podman_k and podman_f, and
# PODMAN_K and PODMAN_F for command lines (hyperfine).
podman_configure() {
    local work=$1 nofile nproc mode
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
    cat >"$work/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
    for mode in k f; do
        mkdir -p "$work/p$mode"
        {
            echo '[storage]'
            echo 'driver = "overlay"'
            echo "graphroot = \"$work/p$mode/g\""
            echo "runroot = \"$work/p$mode/r\""
            if [ $mode = f ]; then
                echo '[storage.options.overlay]'
                echo 'mount_program = "/usr/bin/fuse-overlayfs"'
            fi
        } >"$work/storage-$mode.conf"
    done
    PODMAN_WORK=$work
    PODMAN_K="env CONTAINERS_CONF=$work/containers.conf CONTAINERS_STORAGE_CONF=$work/storage-k.conf podman"
    PODMAN_F="env CONTAINERS_CONF=$work/containers.conf CONTAINERS_STORAGE_CONF=$work/storage-f.conf podman"
}
podman_k() { CONTAINERS_CONF=$PODMAN_WORK/containers.conf CONTAINERS_STORAGE_CONF=$PODMAN_WORK/storage-k.conf podman "$@"; }
podman_f() { CONTAINERS_CONF=$PODMAN_WORK/containers.conf CONTAINERS_STORAGE_CONF=$PODMAN_WORK/storage-f.conf podman "$@"; }

# release_work WORK: after podman's `container cleanup` processes (which
# mount its storage again) have ended, unmounts what is left below WORK and
# removes it.
release_work() {
    local work=$1 m
    for _ in $(seq 100); do
        pgrep -f -- "$work/" >/dev/null || break
        sleep 0.1
    done
    { grep -o " $work/[^ ]*" /proc/self/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$work"
}

# report JSON: hyperfine's medians, and strata's ratio to each other command.
report() {
    python3 - "$1" <<'PY'
import json, sys
rs = {r["command"]: r["median"] for r in json.load(open(sys.argv[1]))["results"]}
s = rs["strata"]
for name, m in rs.items():
    ratio = "" if name == "strata" else "   strata/%s = %.2fx" % (name, s / m)
    print("  %-22s %8.4f s%s" % (name, m, ratio))
PY
}

# hf ARGS...: hyperfine with RUNS runs (WARMUP warm-ups, default 2), its log in OUT.
hf() { hyperfine --style basic --runs "$RUNS" --warmup "${WARMUP:-2}" "$@" >"$OUT/hyperfine.log" 2>&1 || { cat "$OUT/hyperfine.log" >&2; return 1; }; }

# require_root_and_tools SCRIPT TOOL...: stops unless run as root with every TOOL installed.
require_root_and_tools() {
    local script=$1 tool
    shift
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$script: $tool is not installed (see benches/setup.sh)" >&2; exit 1; }
    done
    [ "$(id -u)" = 0 ] || { echo "$script: run as root (podman and runc run as root here)" >&2; exit 1; }
}
