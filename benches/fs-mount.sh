#!/usr/bin/env bash
# Mounts and unmounts one filesystem of the union-filesystem benchmark over
# the six benchmark layers:
#   fs-mount.sh mount FS ro|rw [TAR]
#                                 fresh mount on $WORK/mnt-FS; rw: with an
#                                 empty upper, or one holding TAR's contents
#   fs-mount.sh umount FS         unmount and remove the upper and work dirs
#   fs-mount.sh umount-all        every benchmark mount under $WORK
# FS is kernel, kernel-volatile (writable mounts with -o volatile: no fsync
# of copy-ups), strata, fuse-overlayfs (1.x, Debian) or fuse-overlayfs2
# ($FUSE_OVERLAYFS2), or strata-b (the strata binary $STRATA_B, with the same
# store). Environment (set by fs.sh): WORK, RW (where upper and
# work directories go), LAYERS (directory of layer0..layer5), and for strata
# STRATA, STORE, IMAGE.
set -euo pipefail
: "${WORK:?}" "${RW:=$WORK}"

# From the mount table, not stat(2): a FUSE mount whose server died fails
# every stat with ENOTCONN and would look like no mount at all.
mounted() { awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }

unmount() {
    local fs=$1 m=$WORK/mnt-$1
    if mounted "$m"; then
        case $fs in
            kernel*) umount "$m" ;;
            strata | strata-b) "$STRATA" --root "$STORE" umount "$m" >/dev/null || true ;;
            *) fusermount3 -u "$m" || true ;;
        esac
        # A FUSE server may take a moment to go; a busy or dead one is
        # detached lazily rather than left behind.
        for _ in $(seq 50); do mounted "$m" || break; sleep 0.1; done
        if mounted "$m"; then
            echo "fs-mount: $m still mounted, detaching it" >&2
            umount -l "$m"
        fi
    fi
    rm -rf "$RW/upper-$fs" "$RW/work-$fs"
}

mount_fs() {
    local fs=$1 mode=$2 tar=${3:-} m=$WORK/mnt-$1 u=$RW/upper-$1 w=$RW/work-$1 lower=
    for i in 5 4 3 2 1 0; do lower+=${lower:+:}$LAYERS/layer$i; done # top first
    unmount "$fs"
    mkdir -p "$m" "$u" "$w"
    if [ -n "$tar" ]; then tar -xf "$tar" -C "$u"; fi
    local opts=lowerdir=$lower
    [ "$mode" = rw ] && opts+=,upperdir=$u,workdir=$w
    case $fs in
        kernel) mount -t overlay overlay -o "$opts" "$m" ;;
        kernel-volatile) mount -t overlay overlay -o "$opts$([ "$mode" = rw ] && echo ,volatile)" "$m" ;;
        fuse-overlayfs) fuse-overlayfs -o "$opts" "$m" ;;
        fuse-overlayfs2) "${FUSE_OVERLAYFS2:?FUSE_OVERLAYFS2 names no binary}" -o "$opts" "$m" ;;
        strata | strata-b)
            local bin=$STRATA
            [ "$fs" = strata-b ] && bin=${STRATA_B:?}
            if [ "$mode" = rw ]; then
                "$bin" --root "$STORE" mount --rw --upper "$u" "$IMAGE" "$m" >/dev/null
            else
                "$bin" --root "$STORE" mount "$IMAGE" "$m" >/dev/null
            fi
            ;;
        *) echo "fs-mount: unknown filesystem $fs" >&2; exit 2 ;;
    esac
    if ! mounted "$m"; then
        echo "fs-mount: $fs did not mount on $m" >&2
        exit 1
    fi
}

case ${1:-} in
    mount) mount_fs "$2" "$3" "${4:-}" ;;
    umount) unmount "$2" ;;
    umount-all)
        for d in "$WORK"/mnt-*; do
            if [ -d "$d" ]; then unmount "${d##*/mnt-}"; fi
        done
        ;;
    *) echo "usage: fs-mount.sh mount FS ro|rw | umount FS | umount-all" >&2; exit 2 ;;
esac
