#!/usr/bin/env bash
# A short tour of strata against a throwaway local registry:
# build strata, make a small busybox image, push it to a registry on
# 127.0.0.1, then pull it, run containers from it, commit one, build an
# image from a Dockerfile, push both, connect two containers over a
# user-defined network, mount the image, and pull it lazily as
# zstd:chunked.
#
#   bash scripts/demo.sh        (as root, after scripts/setup.sh)
#
# Everything lives in a temp directory (STRATA_ROOT included) that is removed
# at the end; the host's own store is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."
exec </dev/null

if [ "$(id -u)" != 0 ]; then
    echo "demo.sh must run as root (the image is built with umoci as root): sudo bash scripts/demo.sh" >&2
    exit 1
fi
for tool in cargo docker-registry skopeo umoci curl python3; do
    command -v "$tool" >/dev/null || { echo "demo.sh: $tool is missing; run: sudo bash scripts/setup.sh" >&2; exit 1; }
done

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }

step "cargo build -p strata-cli"
cargo build -q -p strata-cli
strata="$PWD/target/debug/strata"

work="$(mktemp -d /tmp/strata-demo.XXXXXX)"
registry_pid=""
cleanup() {
    if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; fi
    # A demo that stopped half-way may leave containers and mounts under
    # $work: remove those first, and never delete through a mount.
    for store in "$work/store" "$work/lazy-store"; do
        if [ -x "$strata" ] && [ -d "$store" ]; then
            "$strata" --root "$store" ps -aq 2>/dev/null | xargs -r "$strata" --root "$store" rm -f >/dev/null 2>&1 || true
            "$strata" --root "$store" network prune -f >/dev/null 2>&1 || true
        fi
    done
    awk -v w="$work/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || fusermount3 -u -z "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

step "building a small busybox image (OCI layout)"
bash tests/fixtures/make-fixtures.sh "$work/fixtures" busybox

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
registry="127.0.0.1:$port"
step "starting a registry on $registry"
cat >"$work/registry.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: $registry
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 300); do
    curl -fs "http://$registry/v2/" >/dev/null && break
    kill -0 "$registry_pid" 2>/dev/null || { cat "$work/registry.log" >&2; exit 1; }
    sleep 0.1
done
skopeo --policy tests/fixtures/policy.json copy -q --dest-tls-verify=false \
    "oci:$work/fixtures/oci:busybox" "docker://$registry/demo/busybox:latest"

export STRATA_ROOT="$work/store"
image="$registry/demo/busybox:latest"
run() {
    local shown="" a
    for a in "$@"; do
        case $a in *[[:space:]\;\'\"]*) shown+=" '${a//\'/\'\\\'\'}'" ;; *) shown+=" $a" ;; esac
    done
    printf '$ strata%s\n' "$shown"
    "$strata" "$@"
}

step "pull"
run pull "$image"
step "images"
run images
step "history"
run history "$image"

step "run a container: identity, hostname and exit status"
run run --rm "$image" sh -c 'id; hostname; echo hello from strata > /tmp/x; cat /tmp/x'
set +e
run run --rm "$image" sh -c 'exit 3'
echo "exit status: $?"
set -e

step "a detached container: ps, exec, logs, diff"
run run -d --name demo "$image" sh -c 'echo started; mkdir /data; echo committed > /data/file; sleep 300'
run ps
run exec demo ls -l /data
run logs demo
run diff demo

step "commit the container's changes as a new image, and push it"
committed="$registry/demo/committed:1"
run commit -m "demo data" -c 'CMD ["cat", "/data/file"]' demo "$committed"
run history "$committed"
run run --rm "$committed"
run push "$committed"

step "build an image from a Dockerfile on top of it, and push that too"
mkdir -p "$work/context"
echo "copied from the build context" >"$work/context/note.txt"
cat >"$work/context/Dockerfile" <<DOCKERFILE
FROM $committed
ARG WHO=strata
ENV GREETING="built by \$WHO"
WORKDIR /app
COPY note.txt .
RUN echo "\$GREETING" > greeting && ls -l /app
CMD ["sh", "-c", "cat /data/file /app/note.txt /app/greeting"]
DOCKERFILE
built="$registry/demo/built:1"
run build -t "$built" --build-arg WHO=the-demo "$work/context"
run run --rm "$built"
run push "$built"
step "a user-defined network: containers on it reach each other by name"
run network create demo-net
run run -d --name web --network demo-net "$image" sh -c 'echo hello over demo-net | nc -l -p 80'
run run --rm --network demo-net "$image" \
    sh -c 'for i in $(seq 50); do nc web 80 </dev/null && exit; sleep 0.1; done; exit 1'
run rm -f web
run network rm demo-net

run stop -t 1 demo
run ps -a
run rm demo

step "mount the image for inspection, read-only"
mnt="$work/mnt"
mkdir -p "$mnt"
run mount "$image" "$mnt"
# (sed, not head: ls must not die of SIGPIPE under pipefail)
ls -l "$mnt" "$mnt/bin" | sed -n 1,12p
run mount
run umount "$mnt"

step "a lazy pull: only the table of contents now, each file when first read"
# (skopeo writes the table of contents' annotations only into an OCI layout)
skopeo --policy tests/fixtures/policy.json copy -q --dest-compress-format zstd:chunked \
    "oci:$work/fixtures/oci:busybox" "oci:$work/chunked:latest"
skopeo --policy tests/fixtures/policy.json copy -q --preserve-digests --dest-tls-verify=false \
    "oci:$work/chunked:latest" "docker://$registry/demo/chunked:latest"
lazy_store="$work/lazy-store"
run --root "$lazy_store" pull --lazy "$registry/demo/chunked:latest"
echo "files stored after the pull: $(find "$lazy_store/objects" -type f | wc -l)"
run --root "$lazy_store" run --rm "$registry/demo/chunked:latest" sh -c 'busybox | head -1'
echo "files stored after the run: $(find "$lazy_store/objects" -type f | wc -l)"

step "demo finished"
