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
