#!/usr/bin/env bash
# Container start-up: `strata run --rm IMAGE true` and `strata exec` against
# `podman run --rm` / `podman exec` (kernel overlay, and fuse-overlayfs as its
# mount_program) and `runc run` / `runc exec` on a prepared bundle, for
# busybox and Debian minbase, side by side per image. Every tool runs with
# no network (podman and strata: `--network none`; runc's default spec has
# an empty network namespace), as root. (crun refuses this host's hybrid
# cgroup layout, so runc stands in for it.)
#
# Usage: RUNS=20 bash benches/run.sh          (REBUILD=1 rebuilds strata first)
# Prints one table per image and for exec: median seconds and the ratios
# strata/podman-overlay, strata/podman-fuse-overlayfs and strata/runc.
source "$(dirname "$0")/lib.sh"
require_root_and_tools run.sh hyperfine podman runc fuse-overlayfs umoci skopeo docker-registry
STRATA=$(strata_bin)
work=$(mktemp -d /tmp/srb.XXXXXX) # short: podman's runroot must stay short
REGISTRY_PID=
cleanup() {
    "$STRATA" --root "$work/s" rm -f benchexec >/dev/null 2>&1 || true
    for m in k f; do
        [ -e "$work/storage-$m.conf" ] && podman_$m rm -f -a >/dev/null 2>&1 || true
    done
    runc kill benchexec KILL >/dev/null 2>&1 || true
    runc delete -f benchexec >/dev/null 2>&1 || true
    [ -n "$REGISTRY_PID" ] && kill "$REGISTRY_PID" 2>/dev/null || true
    # conmon runs `podman container cleanup` after a container ended, which
    # mounts podman's storage again: wait for those before unmounting.
    release_work "$work"
}
trap cleanup EXIT
registry_start "$work/registry"

seed_busybox_and_debian "$work"
podman_configure "$work"

# A runc bundle: the image's rootfs as umoci unpacks it, and runc's default
# spec running CMD without a terminal.
make_bundle() { # IMAGE BUNDLE CMD...
    local image=$1 bundle=$2
    shift 2
    umoci unpack --image "$work/layout-$image:latest" "$bundle" >/dev/null
    (cd "$bundle" && rm -f config.json && runc spec)
    python3 - "$bundle/config.json" "$@" <<'PY'
import json, sys
path, args = sys.argv[1], sys.argv[2:]
s = json.load(open(path))
s["process"]["terminal"] = False
s["process"]["args"] = args
json.dump(s, open(path, "w"))
PY
}



for image in busybox debian; do
    ref=$REGISTRY/$image:latest
    "$STRATA" --root "$work/s" pull -q "$ref" >/dev/null
    podman_k pull -q --tls-verify=false "$ref" >/dev/null
    podman_f pull -q --tls-verify=false "$ref" >/dev/null
    make_bundle "$image" "$work/bundle-$image" /bin/true
    hf --export-json "$OUT/run-$image.json" \
        -n strata "$STRATA --root $work/s run --rm --network none $ref true" \
        -n podman-overlay "$PODMAN_K run --rm --network none $ref true" \
        -n podman-fuse-overlayfs "$PODMAN_F run --rm --network none $ref true" \
        -n runc "runc run --bundle $work/bundle-$image bench-$image-\$\$"
    echo "== run --rm $image true (RUNS=$RUNS, medians)"
    report "$OUT/run-$image.json"
done

# exec into a running busybox container.
ref=$REGISTRY/busybox:latest
"$STRATA" --root "$work/s" run -d --network none --name benchexec "$ref" sleep 100000 >/dev/null
podman_k run -d --network none --name benchexec "$ref" sleep 100000 >/dev/null
podman_f run -d --network none --name benchexec "$ref" sleep 100000 >/dev/null
make_bundle busybox "$work/bundle-exec" /bin/sleep 100000
runc run -d --bundle "$work/bundle-exec" benchexec </dev/null >/dev/null 2>&1
hf --export-json "$OUT/exec.json" \
    -n strata "$STRATA --root $work/s exec benchexec true" \
    -n podman-overlay "$PODMAN_K exec benchexec true" \
    -n podman-fuse-overlayfs "$PODMAN_F exec benchexec true" \
    -n runc "runc exec benchexec true"
echo "== exec busybox true (RUNS=$RUNS, medians)"
report "$OUT/exec.json"
echo "(hyperfine JSON in $OUT)"
