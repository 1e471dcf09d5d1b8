#!/usr/bin/env bash
# Time to a container's first command from an empty store: a lazy pull
# (`strata pull --lazy`, zstd:chunked, files fetched when opened) against a
# full pull by strata and by podman, of Debian minbase from a loopback
# registry, side by side. The command reads a few files (what a container
# start and a shell need). Also printed: the bytes each strata store holds
# afterwards, which is what a slower link would have to carry.
#
# Second part: a read of 4 KiB in the middle of a 100 MiB file, right after
# the pull, through `strata mount`: with the file fetched in the parts that
# are read (zstd:chunked chunks), against reading the whole file through
# the lazy mount (at least what fetching a file whole on first open costs)
# and against a full pull.
#
# Third part: strata's own zstd:chunked writer. `push --compression-format
# zstd:chunked` of the gzip Debian image (read the stored blob, recompress,
# upload to a new repository) against skopeo copying the same image from
# its OCI layout with `--dest-compress-format zstd:chunked`; then the lazy
# pull and first command of the image strata wrote.
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

# A 100 MiB file of random bytes (incompressible: ~1,600 chunks), alone in an image.
mkdir -p "$work/big/data"
head -c 100M /dev/urandom >"$work/big/data/big.bin"
tar -C "$work/big" --numeric-owner -cf "$work/big.tar" data
oci_from_rootfs_tar "$work/big.tar" "$work/biglayout" latest
skopeo copy -q --dest-compress-format zstd:chunked "oci:$work/biglayout:latest" "oci:$work/bigchunked:latest"
skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$work/bigchunked:latest" "docker://$REGISTRY/big:chunked"
big=$REGISTRY/big:chunked
mkdir -p "$work/m"
middle="dd if=$work/m/data/big.bin bs=4096 skip=12800 count=1 status=none >/dev/null"
whole="cat $work/m/data/big.bin >/dev/null"
mounted() { # STORE PULL-FLAGS READ: pull, mount, read, unmount
    echo "$STRATA --root $work/$1 pull -q $2 $big >/dev/null && $STRATA --root $work/$1 mount $big $work/m >/dev/null && $3; $STRATA --root $work/$1 umount $work/m >/dev/null"
}
WARMUP=1 hf --export-json "$OUT/lazy-parts.json" \
    --prepare "rm -rf $work/lazy $work/full" \
    -n strata "$(mounted lazy --lazy "$middle")" \
    -n strata-whole-file-lazily "$(mounted lazy --lazy "$whole")" \
    -n strata-4k-after-full-pull "$(mounted full "" "$middle")"
echo "== pull, mount and read 4 KiB in the middle of a 100 MiB file (RUNS=$RUNS, medians)"
report "$OUT/lazy-parts.json"
rm -rf "$work/lazy"
$STRATA --root "$work/lazy" pull -q --lazy "$big" >/dev/null
$STRATA --root "$work/lazy" mount "$big" "$work/m" >/dev/null
sh -c "$middle"
$STRATA --root "$work/lazy" umount "$work/m" >/dev/null
printf '  after the 4 KiB read the lazy store holds %s MiB\n' "$(du -sm "$work/lazy" | cut -f1)"

# Third part: strata's writer against skopeo's, from gzip layers.
skopeo copy -q --dest-tls-verify=false "oci:$work/layout:latest" "docker://$REGISTRY/debian:gzip"
$STRATA --root "$work/src" pull -q "$REGISTRY/debian:gzip" >/dev/null
# A new repository per run (nothing to skip or mount), and no conversion
# or blob-info cache from the run before, for either tool.
WARMUP=1 hf --export-json "$OUT/lazy-write.json" \
    --prepare "rm -rf $work/src/conversions /var/lib/containers/cache/blob-info-cache-v1*" \
    -n strata "r=$REGISTRY/s\$(date +%s%N):1 && $STRATA --root $work/src tag $REGISTRY/debian:gzip \$r && $STRATA --root $work/src push -q --compression-format zstd:chunked \$r >/dev/null && $STRATA --root $work/src rmi \$r >/dev/null" \
    -n skopeo-copy "skopeo copy -q --dest-tls-verify=false --dest-compress-format zstd:chunked oci:$work/layout:latest docker://$REGISTRY/k\$(date +%s%N):1"
echo "== recompress Debian's layer as zstd:chunked and push it (RUNS=$RUNS, medians)"
report "$OUT/lazy-write.json"
$STRATA --root "$work/src" tag "$REGISTRY/debian:gzip" "$REGISTRY/debian:strata-chunked"
$STRATA --root "$work/src" push -q --compression-format zstd:chunked "$REGISTRY/debian:strata-chunked" >/dev/null
own=$REGISTRY/debian:strata-chunked
WARMUP=1 hf --export-json "$OUT/lazy-own.json" \
    --prepare "rm -rf $work/lazy $work/lazy2" \
    -n strata "$STRATA --root $work/lazy pull -q --lazy $own >/dev/null && $STRATA --root $work/lazy run --rm --network none $own sh -c '$first'" \
    -n skopeo-written "$STRATA --root $work/lazy2 pull -q --lazy $ref >/dev/null && $STRATA --root $work/lazy2 run --rm --network none $ref sh -c '$first'"
echo "== lazy pull and first command of the image each tool wrote (strata: its own; RUNS=$RUNS, medians)"
report "$OUT/lazy-own.json"
