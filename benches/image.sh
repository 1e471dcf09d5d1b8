#!/usr/bin/env bash
# Making and moving images: `strata commit`, `build`, `save` and `load`
# against podman's (kernel overlay, and fuse-overlayfs as its
# mount_program), side by side, as root.
#
# - commit of a stopped busybox container that wrote 1,000 small files;
# - build of a 4-step Dockerfile (FROM, RUN, COPY, RUN), without the cache
#   and fully cached;
# - save of the Debian minbase image to a file, and load of that file
#   into an empty store.
#
# Usage: RUNS=10 bash benches/image.sh      (REBUILD=1 rebuilds strata first)
# Prints one table per workload: median seconds and strata's ratio to each.
source "$(dirname "$0")/lib.sh"
require_root_and_tools image.sh hyperfine podman runc fuse-overlayfs umoci skopeo docker-registry
STRATA=$(strata_bin)
work=$(mktemp -d /tmp/sib.XXXXXX) # short: podman's runroot must stay short
REGISTRY_PID=
cleanup() {
    for m in k f; do
        [ -e "$work/storage-$m.conf" ] && podman_$m rm -f -a >/dev/null 2>&1 || true
    done
    [ -n "$REGISTRY_PID" ] && kill "$REGISTRY_PID" 2>/dev/null || true
    release_work "$work"
}
trap cleanup EXIT
registry_start "$work/registry"

seed_busybox_and_debian "$work"

podman_configure "$work"
S="$STRATA --root $work/s"

WARMUP=1

bbref=$REGISTRY/busybox:latest
deref=$REGISTRY/debian:latest
$S pull -q "$bbref" >/dev/null
$S pull -q "$deref" >/dev/null
for m in k f; do
    podman_$m pull -q --tls-verify=false "$bbref" >/dev/null
    podman_$m pull -q --tls-verify=false "$deref" >/dev/null
done

# commit: a stopped container that wrote 1,000 small files.
writer='mkdir /data && i=0 && while [ $i -lt 1000 ]; do echo file $i > /data/f$i; i=$((i+1)); done'
$S run --name benchcommit --network none "$bbref" sh -c "$writer"
podman_k run --name benchcommit --network none "$bbref" sh -c "$writer"
podman_f run --name benchcommit --network none "$bbref" sh -c "$writer"
hf --export-json "$OUT/commit.json" \
    -n strata "$S commit benchcommit committed:1" \
    -n podman-overlay "$PODMAN_K commit -q benchcommit committed:1" \
    -n podman-fuse-overlayfs "$PODMAN_F commit -q benchcommit committed:1"
echo "== commit of 1,000 new small files (RUNS=$RUNS, medians)"
report "$OUT/commit.json"

# build: FROM, RUN, COPY, RUN; without the cache, then fully cached.
ctx=$work/context
mkdir -p "$ctx"
head -c 100000 /dev/urandom >"$ctx/blob"
cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $bbref
RUN echo one > /one
COPY blob /blob
RUN sha256sum /blob > /blob.sum
DOCKERFILE
hf --export-json "$OUT/build-cold.json" \
    -n strata "$S build -q --no-cache --network none -t built:1 $ctx" \
    -n podman-overlay "$PODMAN_K build -q --no-cache --network none --tls-verify=false -t built:1 $ctx" \
    -n podman-fuse-overlayfs "$PODMAN_F build -q --no-cache --network none --tls-verify=false -t built:1 $ctx"
echo "== build of a 4-step Dockerfile, no cache (RUNS=$RUNS, medians)"
report "$OUT/build-cold.json"
hf --export-json "$OUT/build-cached.json" \
    -n strata "$S build -q --network none -t built:1 $ctx" \
    -n podman-overlay "$PODMAN_K build -q --network none --tls-verify=false -t built:1 $ctx" \
    -n podman-fuse-overlayfs "$PODMAN_F build -q --network none --tls-verify=false -t built:1 $ctx"
echo "== build of the same Dockerfile, fully cached (RUNS=$RUNS, medians)"
report "$OUT/build-cached.json"

# save and load of Debian minbase (podman: its docker-archive).
hf --export-json "$OUT/save.json" \
    -n strata "rm -f $work/s.tar && $S save -o $work/s.tar $deref" \
    -n podman-overlay "rm -f $work/pk.tar && $PODMAN_K save -q -o $work/pk.tar $deref"
echo "== save of Debian minbase to a file (RUNS=$RUNS, medians)"
report "$OUT/save.json"
hf --export-json "$OUT/load.json" \
    --prepare "rm -rf $work/ls $work/pl; mkdir -p $work/pl" \
    -n strata "$STRATA --root $work/ls load -q -i $work/s.tar" \
    -n podman-overlay "env CONTAINERS_CONF=$work/containers.conf CONTAINERS_STORAGE_CONF=$work/storage-k.conf podman --root $work/pl/g --runroot $work/pl/r load -q -i $work/pk.tar"
echo "== load of that file into an empty store (RUNS=$RUNS, medians)"
report "$OUT/load.json"
