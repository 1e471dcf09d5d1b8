#!/usr/bin/env bash
# Time to a container's first command from an empty store: a lazy pull
# (`strata pull --lazy`, zstd:chunked, files fetched when opened) against a
# full pull by strata and by podman, of Debian minbase from a loopback
# registry, side by side. The command reads a few files (what a container
# start and a shell need). Also printed: the bytes each strata store holds
# afterwards, which is what a slower link would have to carry.
#
# Usage: RUNS=5 bash benches/lazy.sh
source "$(dirname "$0")/lib.sh"
require_root_and_tools lazy.sh hyperfine podman runc skopeo docker-registry
STRATA=$(strata_bin)
work=$(mktemp -d /tmp/slz.XXXXXX) # short: podman's runroot must stay short
REGISTRY_PID=
cleanup() {
    [ -e "$work/storage-k.conf" ] && podman_k rm -f -a >/dev/null 2>&1 || true
    [ -n "$REGISTRY_PID" ] && kill "$REGISTRY_PID" 2>/dev/null || true
    release_work "$work"
}
trap cleanup EXIT
registry_start "$work/registry"

oci_from_rootfs_tar "$(debian_rootfs_tar)" "$work/layout" latest
skopeo copy -q --dest-compress-format zstd:chunked "oci:$work/layout:latest" "oci:$work/chunked:latest"
skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$work/chunked:latest" "docker://$REGISTRY/debian:chunked"
ref=$REGISTRY/debian:chunked
podman_configure "$work"

first='cat /etc/os-release >/dev/null && ls /usr/bin >/dev/null'
# Each run starts from empty stores (podman's is cleared by rmi).
WARMUP=1 hf --export-json "$OUT/lazy.json" \
    --prepare "$PODMAN_K rmi -a -f >/dev/null 2>&1; rm -rf $work/lazy $work/full" \
    -n strata "$STRATA --root $work/lazy pull -q --lazy $ref >/dev/null && $STRATA --root $work/lazy run --rm --network none $ref sh -c '$first'" \
    -n strata-full-pull "$STRATA --root $work/full pull -q $ref >/dev/null && $STRATA --root $work/full run --rm --network none $ref sh -c '$first'" \
    -n podman-overlay "$PODMAN_K pull -q --tls-verify=false $ref >/dev/null && $PODMAN_K run --rm --network none $ref sh -c '$first'"
echo "== pull and first command, empty store (RUNS=$RUNS, medians)"
report "$OUT/lazy.json"
echo "== what each strata store holds after one such run"
rm -rf "$work/lazy" "$work/full"
$STRATA --root "$work/lazy" pull -q --lazy "$ref" >/dev/null
$STRATA --root "$work/lazy" run --rm --network none "$ref" sh -c "$first"
$STRATA --root "$work/full" pull -q "$ref" >/dev/null
printf '  lazy: %s MiB, full: %s MiB (blob %s MiB)\n' \
    "$(du -sm "$work/lazy" | cut -f1)" "$(du -sm "$work/full" | cut -f1)" \
    "$(($(stat -c %s "$work"/chunked/blobs/sha256/* | sort -n | tail -1) >> 20))"
