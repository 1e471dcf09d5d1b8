#!/usr/bin/env bash
# Union filesystem benchmark: the same six layers (about 92,000 entries)
# mounted by kernel overlayfs, strata, fuse-overlayfs 1.x (Debian) and, when
# FUSE_OVERLAYFS2 names a binary built from upstream source, fuse-overlayfs
# 2.x. Every workload is timed cold (fresh mount, caches dropped) and warm
# (fresh mount, after a warm-up through it); fs_bench.py says exactly how.
#
# Usage (as root):
#   RUNS=3 [ONLY="statwalk lsl ..."] [FS="kernel strata ..."] \
#       [FUSE_OVERLAYFS2=/path/to/fuse-overlayfs] [STRATA_B=/path/to/strata] \
#       [UPPER=tmpfs|disk] [OUT=dir] bash benches/fs.sh
# Workloads: statwalk lsf lsl seqread randread tar tarrw gitadd gitstatus append1k
#   append1g chmod1k extract rmextract rmlower write1g
# FS may also name strata-b: the strata binary STRATA_B (another build, such
# as one of an earlier commit), measured side by side with this one.
# Results: a table of medians and ratios to the kernel on stdout and in
# $OUT/summary.txt, per-workload JSON in $OUT, failures in $OUT/errors.txt.
# The layers and their OCI image are cached under $CACHE/fsbench.
#
# The writable mounts' upper directories live on a tmpfs by default
# (UPPER=tmpfs): the lower layers are read from disk, but what is written
# stays in memory, so that write workloads measure each filesystem rather
# than the disk's writeback (which is slow and noisy on a shared VM disk).
# UPPER=disk puts them next to the layers' disk instead.
#
# Kernel overlayfs fsyncs every file it copies up unless mounted "volatile"
# (FS=kernel-volatile adds that variant); the FUSE filesystems here do not.
# The new-file write workload uses conv=fsync so that the data reaches the
# disk inside the measurement on every filesystem.
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || { echo "fs.sh: run as root (kernel overlayfs, drop_caches)" >&2; exit 1; }

FS=${FS:-kernel strata fuse-overlayfs${FUSE_OVERLAYFS2:+ fuse-overlayfs2}}
ONLY=${ONLY:-statwalk lsf lsl seqread randread tar tarrw gitadd gitstatus append1k append1g chmod1k extract rmextract rmlower write1g}
if [[ " $FS " == *" fuse-overlayfs2 "* && ! -x ${FUSE_OVERLAYFS2:-} ]]; then
    echo "fs.sh: FS has fuse-overlayfs2 but FUSE_OVERLAYFS2 (${FUSE_OVERLAYFS2:-unset}) is no executable" >&2
    exit 1
fi
if [[ " $FS " == *" strata-b "* && ! -x ${STRATA_B:-} ]]; then
    echo "fs.sh: FS has strata-b but STRATA_B (${STRATA_B:-unset}) is no executable" >&2
    exit 1
fi

cache=$CACHE/fsbench
if [ ! -d "$cache/data" ]; then
    echo "generating the layers in $cache/data" >&2
    rm -rf "$cache/oci"
    mkdir -p "$cache"
    python3 "$BENCH_DIR/fs_data.py" "$cache/data"
fi

work=$(mktemp -d /tmp/sfb.XXXXXX)
RW=$work/rw
REGISTRY_PID=
cleanup() {
    WORK=$work RW=$RW bash "$BENCH_DIR/fs-mount.sh" umount-all || true
    if mountpoint -q "$RW"; then umount "$RW" || true; fi
    [ -n "$REGISTRY_PID" ] && kill "$REGISTRY_PID" 2>/dev/null
    # Never delete through a mount that is somehow still there.
    if awk -v w="$work/" 'index($5, w) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
        echo "fs.sh: mounts remain under $work; not removing it" >&2
    else
        rm -rf --one-file-system "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$RW"
case ${UPPER:=tmpfs} in
    tmpfs) mount -t tmpfs -o size=6g,mode=0755 fsbench-rw "$RW" ;;
    disk) ;;
    *) echo "fs.sh: UPPER is tmpfs or disk, not $UPPER" >&2; exit 1 ;;
esac
export WORK=$work RW LAYERS=$cache/data TARBALL=$cache/data/extract.tar BENCH_DIR OUT RUNS ONLY FS FUSE_OVERLAYFS2 STRATA_B

if [[ " $FS " == *" strata "* || " $FS " == *" strata-b "* ]]; then
    STRATA=$(strata_bin)
    # strata reads layers from its store: an OCI image of the six layer
    # directories (one layer each, bottom first), cached, pulled through a
    # loopback registry into a store for this run.
    if [ ! -f "$cache/oci/index.json" ]; then
        echo "building the OCI image of the layers in $cache/oci" >&2
        rm -rf "$cache/oci.tmp"
        umoci init --layout "$cache/oci.tmp"
        umoci new --image "$cache/oci.tmp:b"
        for i in 0 1 2 3 4 5; do
            tar -C "$LAYERS/layer$i" --numeric-owner -cf "$work/layer.tar" .
            umoci raw add-layer --image "$cache/oci.tmp:b" "$work/layer.tar"
            rm "$work/layer.tar"
        done
        mv "$cache/oci.tmp" "$cache/oci"
    fi
    registry_start "$work/registry"
    skopeo copy -q --dest-tls-verify=false "oci:$cache/oci:b" "docker://$REGISTRY/fsbench:b"
    t0=$SECONDS
    "$STRATA" --root "$work/store" pull -q "$REGISTRY/fsbench:b" >/dev/null
    echo "strata pull of the six layers: $((SECONDS - t0)) s"
    kill "$REGISTRY_PID" && REGISTRY_PID=
    export STRATA STORE=$work/store IMAGE=$REGISTRY/fsbench:b
fi

echo "filesystems: $FS; runs: $RUNS; upper directories on $UPPER; results in $OUT"
python3 "$BENCH_DIR/fs_bench.py"
