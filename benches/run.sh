#!/usr/bin/env bash
# Container start-up: `strata run --rm IMAGE true` and `strata exec` against
# `podman run --rm` (kernel overlay and fuse-overlayfs) and `runc run` on a
# prepared bundle, for busybox and Debian minbase, side by side per image.
# (crun refuses this host's hybrid cgroup layout, so runc stands in for it.)
# Usage: RUNS=20 bash benches/run.sh
source "$(dirname "$0")/lib.sh"
STRATA=$(strata_bin)
work=$(mktemp -d /tmp/srb.XXXXXX)   # short: podman's runroot must stay short
cleanup() {
    "$STRATA" --root "$work/s" rm -f benchexec >/dev/null 2>&1 || true
    kill "$REGISTRY_PID" 2>/dev/null || true
    umount -R "$work"/p* 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
registry_start "$work/registry"

# busybox: one layer with busybox-static and its applet links.
bb=$work/bbroot
mkdir -p "$bb/bin"
cp /bin/busybox "$bb/bin/busybox"
for a in $("$bb/bin/busybox" --list); do ln -sf busybox "$bb/bin/$a"; done
tar -C "$bb" -cf "$work/bb.tar" .
oci_from_rootfs_tar "$work/bb.tar" "$work/bblayout" latest
oci_from_rootfs_tar "$(debian_rootfs_tar)" "$work/deblayout" latest
skopeo copy -q --dest-tls-verify=false "oci:$work/bblayout:latest" "docker://$REGISTRY/busybox:latest"
skopeo copy -q --dest-tls-verify=false "oci:$work/deblayout:latest" "docker://$REGISTRY/debian:latest"

hard=$(ulimit -Hn)
cat >"$work/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$hard:$hard"]
[engine]
runtime = "runc"
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
podman_k() { CONTAINERS_CONF=$work/containers.conf CONTAINERS_STORAGE_CONF=$work/storage-k.conf podman "$@"; }
podman_f() { CONTAINERS_CONF=$work/containers.conf CONTAINERS_STORAGE_CONF=$work/storage-f.conf podman "$@"; }

for image in busybox debian; do
    ref=$REGISTRY/$image:latest
    "$STRATA" --root "$work/s" pull -q "$ref" >/dev/null
    podman_k pull -q --tls-verify=false "$ref" >/dev/null
    podman_f pull -q --tls-verify=false "$ref" >/dev/null
    # A runc bundle: the image's rootfs extracted, and a default spec.
    bundle=$work/bundle-$image
    mkdir -p "$bundle/rootfs"
    umoci unpack --image "$work/${image/busybox/bb}layout:latest" "$bundle/u" >/dev/null 2>&1 ||
        umoci unpack --image "$work/$( [ $image = busybox ] && echo bb || echo deb )layout:latest" "$bundle/u" >/dev/null
    rm -rf "$bundle/rootfs" && mv "$bundle/u/rootfs" "$bundle/rootfs"
    (cd "$bundle" && runc spec && python3 - <<'PY'
import json
s = json.load(open("config.json"))
s["process"]["terminal"] = False
s["process"]["args"] = ["/bin/true"]
json.dump(s, open("config.json", "w"))
PY
    )
    hyperfine --runs "$RUNS" --warmup 2 --export-json "$OUT/run-$image.json" \
        -n strata "$STRATA --root $work/s run --rm $ref true" \
        -n podman-overlay "CONTAINERS_CONF=$work/containers.conf CONTAINERS_STORAGE_CONF=$work/storage-k.conf podman run --rm --network none $ref true" \
        -n podman-fuse-overlayfs "CONTAINERS_CONF=$work/containers.conf CONTAINERS_STORAGE_CONF=$work/storage-f.conf podman run --rm --network none $ref true" \
        -n runc "runc run --bundle $bundle bench-$image-\$RANDOM"
    echo "== run --rm $image true (ratio to podman-overlay)"
    report_ratios "$OUT/run-$image.json" podman-overlay
done

"$STRATA" --root "$work/s" run -d --name benchexec "$REGISTRY/busybox:latest" sleep 1000 >/dev/null
podman_k run -d --name benchexec --network none "$REGISTRY/busybox:latest" sleep 1000 >/dev/null
hyperfine --runs "$RUNS" --warmup 2 --export-json "$OUT/exec.json" \
    -n strata "$STRATA --root $work/s exec benchexec true" \
    -n podman-overlay "CONTAINERS_CONF=$work/containers.conf CONTAINERS_STORAGE_CONF=$work/storage-k.conf podman exec benchexec true"
echo "== exec (ratio to podman-overlay)"
report_ratios "$OUT/exec.json" podman-overlay
podman_k rm -f benchexec >/dev/null 2>&1 || true
