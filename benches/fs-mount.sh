#!/usr/bin/env bash
# Mounts one filesystem of the fs benchmark fresh: fs-mount.sh FS ro|rw cold|warm SETUP CMD
# or fs-mount.sh FS umount. Uses WORK, DATA, STRATA, STORE, IMAGE from fs.sh.
set -euo pipefail
fs=$1 action=$2
M=$WORK/mnt-$fs
U=$WORK/upper-$fs
lower=$DATA/layer5:$DATA/layer4:$DATA/layer3:$DATA/layer2:$DATA/layer1:$DATA/layer0

unmount() {
    if mountpoint -q "$M"; then
        case $fs in
            kernel) umount "$M" ;;
            strata) "$STRATA" --root "$STORE" umount "$M" ;;
            *) fusermount3 -u "$M" 2>/dev/null || umount "$M" ;;
        esac
    fi
    for _ in $(seq 50); do mountpoint -q "$M" || break; sleep 0.1; done
    rm -rf "$U" "$WORK/work-$fs"
}
unmount
[ "$action" = umount ] && exit 0
mode=$action temp=$3 setup=${4:-} cmd=${5:-}
mkdir -p "$M" "$U" "$WORK/work-$fs"
if [ "$mode" = ro ]; then
    case $fs in
        kernel) mount -t overlay overlay -o "lowerdir=$lower" "$M" ;;
        strata) "$STRATA" --root "$STORE" mount "$IMAGE" "$M" >/dev/null ;;
        fuse-overlayfs) fuse-overlayfs -o "lowerdir=$lower" "$M" ;;
        fuse-overlayfs2) "$FUSE_OVERLAYFS2" -o "lowerdir=$lower" "$M" ;;
    esac
else
    case $fs in
        kernel) mount -t overlay overlay -o "lowerdir=$lower,upperdir=$U,workdir=$WORK/work-$fs" "$M" ;;
        strata) "$STRATA" --root "$STORE" mount --rw --upper "$U" "$IMAGE" "$M" >/dev/null ;;
        fuse-overlayfs) fuse-overlayfs -o "lowerdir=$lower,upperdir=$U,workdir=$WORK/work-$fs" "$M" ;;
        fuse-overlayfs2) "$FUSE_OVERLAYFS2" -o "lowerdir=$lower,upperdir=$U,workdir=$WORK/work-$fs" "$M" ;;
    esac
fi
if [ -n "$setup" ]; then bash -c "$setup"; fi
sync
echo 3 >/proc/sys/vm/drop_caches
if [ "$temp" = warm ]; then
    if [ "$mode" = ro ]; then
        bash -c "$cmd" >/dev/null 2>&1
    else
        # Warm the lower data without changing the mount: read what the
        # workload will touch through the mount, then leave the upper empty.
        find "$M" -xdev -type f -path "$M/*" -size -64k -print0 2>/dev/null | head -c 20000000 | xargs -0 cat >/dev/null 2>&1 || true
    fi
fi
