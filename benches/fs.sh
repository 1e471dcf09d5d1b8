#!/usr/bin/env bash
# Union filesystem benchmark: the same six layers (about 90,000 entries)
# mounted by kernel overlayfs, strata, fuse-overlayfs 1.x (Debian) and, when
# FUSE_OVERLAYFS2 names a binary built from upstream source, fuse-overlayfs
# 2.x; every workload runs side by side in one hyperfine invocation, cold
# (caches dropped, fresh mount) and warm (after one run).
#
# Usage: RUNS=3 [ONLY="statwalk lsl"] [FS="kernel strata"] bash benches/fs.sh
# Results: hyperfine JSON in $OUT, a ratio table on stdout.
#
# Copy-up fsync policy compared here: none of the filesystems fsyncs a copy-up
# (overlayfs does not either); the new-file write workload uses conv=fsync so
# that every filesystem's data reaches the disk inside the measurement.
source "$(dirname "$0")/lib.sh"

if [ "${1:-}" = __prepare ]; then
    shift
    exec "$BENCH_DIR/fs-mount.sh" "$@"
fi

STRATA=$(strata_bin)
DATA=$CACHE/fsbench
FS=${FS:-kernel strata fuse-overlayfs${FUSE_OVERLAYFS2:+ fuse-overlayfs2}}
ONLY=${ONLY:-statwalk lsf lsl seqread randread tar gitadd gitstatus append1k append1g chmod1k extract rmextract rmlower write1g}
export STRATA DATA FUSE_OVERLAYFS2

if [ ! -e "$DATA/done" ]; then
    rm -rf "$DATA" && mkdir -p "$DATA"
    python3 "$BENCH_DIR/fs_data.py" "$DATA"
    touch "$DATA/done"
fi
work=$(mktemp -d /tmp/sfb.XXXXXX)
export WORK=$work
trap 'for f in $FS; do "$BENCH_DIR/fs-mount.sh" $f umount >/dev/null 2>&1 || true; done; kill $REGISTRY_PID 2>/dev/null || true; rm -rf "$work"' EXIT

# strata reads the layers from its store: make an OCI image of the six layer
# directories (one tar each, in order) and pull it from a loopback registry.
registry_start "$work/registry"
umoci init --layout "$work/layout" && umoci new --image "$work/layout:b"
for i in 0 1 2 3 4 5; do
    tar -C "$DATA/layer$i" -cf "$work/layer$i.tar" .
    umoci raw add-layer --image "$work/layout:b" "$work/layer$i.tar"
    rm "$work/layer$i.tar"
done
skopeo copy -q --dest-tls-verify=false "oci:$work/layout:b" "docker://$REGISTRY/fsbench:b"
"$STRATA" --root "$work/store" pull -q "$REGISTRY/fsbench:b" >/dev/null
export IMAGE=$REGISTRY/fsbench:b STORE=$work/store

# workload -> "setup|command|mode": setup runs after the fresh mount (inside
# the prepare step), command is timed; mode ro/rw says what mount it needs.
declare -A W=(
    [statwalk]="|find \$M/tree -printf '%s %m\\n' >/dev/null|ro"
    [lsf]="|ls -f \$M/wide >/dev/null|ro"
    [lsl]="|ls -l \$M/wide >/dev/null|ro"
    [seqread]="|cat \$M/big/file1g >/dev/null|ro"
    [randread]="|fio --name=r --filename=\$M/big/file1g --readonly --rw=randread --bs=4k --io_size=64m --ioengine=psync --randseed=7 >/dev/null|ro"
    [tar]="|tar cf - -C \$M small >/dev/null|ro"
    [gitadd]="cd \$M/git && git init -q|cd \$M/git && git add -A|rw"
    [gitstatus]="cd \$M/git && git init -q && git add -A|cd \$M/git && git status --porcelain >/dev/null|rw"
    [append1k]="|python3 -c 'import os,sys; [open(os.path.join(sys.argv[1],n),\"ab\").write(b\"x\") for n in os.listdir(sys.argv[1])]' \$M/up|rw"
    [append1g]="|printf x >>\$M/big/file1g|rw"
    [chmod1k]="|chmod 600 \$M/up/*|rw"
    [extract]="|tar xf \$DATA/extract.tar -C \$M|rw"
    [rmextract]="tar xf \$DATA/extract.tar -C \$M|rm -rf \$M/extract|rw"
    [rmlower]="|rm -rf \$M/tree/1|rw"
    [write1g]="|dd if=/dev/zero of=\$M/new1g bs=1M count=1024 conv=fsync status=none|rw"
)

table=$OUT/summary.txt
: >"$table"
for w in $ONLY; do
    IFS='|' read -r setup cmd mode <<<"${W[$w]}"
    for temp in cold warm; do
        # Write workloads change the mount: each run starts from a fresh upper,
        # so "warm" there means the lower data and metadata are in the page cache.
        args=()
        for f in $FS; do
            M=$work/mnt-$f
            prep="bash $BENCH_DIR/fs.sh __prepare $f $mode $temp '$(printf %s "$setup" | sed "s#\\\$M#$M#g")' '$(printf %s "$cmd" | sed "s#\\\$M#$M#g")'"
            args+=(--prepare "$prep" -n "$f" "bash -c \"$(printf %s "$cmd" | sed "s#\\\$M#$M#g; s#\\\$DATA#$DATA#g; s#\"#\\\\\"#g")\"")
        done
        hyperfine -N --runs "$RUNS" --export-json "$OUT/$w-$temp.json" "${args[@]}" >/dev/null 2>"$OUT/$w-$temp.err" || {
            echo "$w $temp: failed (see $OUT/$w-$temp.err)" | tee -a "$table"; continue; }
        echo "== $w ($temp), ratio to kernel" | tee -a "$table"
        report_ratios "$OUT/$w-$temp.json" kernel | tee -a "$table"
    done
done
