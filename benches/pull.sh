#!/usr/bin/env bash
# Pull of a Debian minbase image (gzip and zstd) from a loopback registry:
# strata pull into an empty store vs skopeo copy into an empty
# containers-storage and podman pull into an empty graphroot (both unpack the
# layers, as strata does), side by side in one hyperfine run; a blob-only
# skopeo copy into an OCI layout is shown as the floor (no unpacking at all).
# Usage: RUNS=5 bash benches/pull.sh
source "$(dirname "$0")/lib.sh"
STRATA=$(strata_bin)
work=$(mktemp -d /tmp/strata-pull-bench.XXXXXX)
trap 'kill $REGISTRY_PID 2>/dev/null || true; grep -o " $work/[^ ]*" /proc/self/mounts | xargs -r umount -l; rm -rf "$work"' EXIT
registry_start "$work/registry"

oci_from_rootfs_tar "$(debian_rootfs_tar)" "$work/layout" bookworm
skopeo copy -q --dest-tls-verify=false "oci:$work/layout:bookworm" "docker://$REGISTRY/debian:gzip"
skopeo copy -q --dest-compress-format zstd "oci:$work/layout:bookworm" "oci:$work/zstd:bookworm"
skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$work/zstd:bookworm" "docker://$REGISTRY/debian:zstd"

cat >"$work/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$work/p/g"
runroot = "$work/p/r"
CONF
sed "s#/p/#/k/#" "$work/storage.conf" >"$work/storage-skopeo.conf"
for variant in gzip zstd; do
    ref=$REGISTRY/debian:$variant
    hyperfine --runs "$RUNS" --export-json "$OUT/pull-$variant.json" \
        --prepare "for d in $work/p $work/k; do grep -o \" \$d/[^ ]*\" /proc/self/mounts | xargs -r umount -l; done; rm -rf $work/s $work/o $work/p $work/k" \
        -n strata "$STRATA --root $work/s pull -q $ref" \
        -n skopeo "CONTAINERS_STORAGE_CONF=$work/storage-skopeo.conf skopeo copy -q --src-tls-verify=false docker://$ref containers-storage:$ref" \
        -n podman "CONTAINERS_STORAGE_CONF=$work/storage.conf podman pull -q --tls-verify=false $ref" \
        -n skopeo-blobs-only "skopeo copy -q --src-tls-verify=false docker://$ref oci:$work/o:x"
    echo "== pull $variant (ratio to podman)"
    report_ratios "$OUT/pull-$variant.json" podman
done
