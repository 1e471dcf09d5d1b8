//! Differential test against the kernel's overlayfs: the same layers, the same
//! script of operations on both mounts; the per-operation results, the
//! resulting trees (also after remounting strata's upper directory) and the
//! `docker diff` change lists must agree.
//!
//! It runs twice:
//! - as root: overlayfs keeps its markers as `trusted.overlay.*`, strata
//!   mounts with passthrough;
//! - as the unprivileged user `strata-test`, root in a user namespace of its
//!   own with the full subordinate id map (how rootless strata runs):
//!   overlayfs mounted with `userxattr` (opaque directories marked
//!   `user.overlay.opaque`), strata mounted with mount(2) in the namespace,
//!   without passthrough. Root prepares the lower directories (device nodes,
//!   owners as the namespace's ids) and runs this test binary again in the
//!   namespace (see `strata_fs::testing::userns`).
//!
//! Needs root (overlayfs mounts, chown to any uid), and for the second run
//! the user `strata-test` (scripts/setup.sh); skipped otherwise.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use strata_fs::testing::changes::{assert_same_changes, lower_view, overlay_changes, strata_changes};
use strata_fs::testing::ops::*;
use strata_fs::testing::overlay::{materialize, LowerFormat, OverlayMount, XattrNs};
use strata_fs::testing::random::{
    io_err, random_step, read_all, settings, shape, Rng, Steps, RANDOM_DIRS, RANDOM_NAMES,
};
use strata_fs::testing::tree::{assert_same_tree, describe, describe_exact};
use strata_fs::testing::userns;
use strata_fs::{Lower, MountOptions};

/// The unprivileged user of the second run.
const USER: &str = "strata-test";
/// Set for the run inside the user namespace: the prepared directory.
const INNER_DIR: &str = "STRATA_FS_VS_OVERLAYFS_DIR";
/// Modification times before this are part of the compared trees (the
/// layers' times and those the script sets; not the ones it causes).
const OLD_TIMES: i64 = 1_700_000_000;

fn layer0(objects: &Path) -> LayerBuilder {
    let mut b = LayerBuilder::new(objects)
        .dir("", 0o755)
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .xattr("user.origin", b"layer0")
        .file("etc/hosts", b"127.0.0.1 localhost\n", 0o644)
        .file("etc/hostname", b"box\n", 0o644)
        .file("etc/motd", b"hello\n", 0o644)
        .file("etc/issue", b"Debian\n", 0o644)
        .file("etc/shadow", b"root:*:1::::::\n", 0o640)
        .owner(0, 42)
        .dir("data", 0o755)
        .file("data/a", b"a-content", 0o644)
        .file("data/b", b"b-content", 0o644)
        .file("data/c", b"c-content", 0o644)
        .file("data/d", b"d-content", 0o644)
        .file("data/e", b"e-content", 0o644)
        .file("data/f", b"f-content", 0o644)
        .file("data/big", &vec![7u8; 300_000], 0o644)
        // Above the size copied up outside the tree lock.
        .file("data/huge", &vec![9u8; 1_200_000], 0o644)
        .xattr("user.origin", b"huge")
        .file("data/setuid", b"suid", 0o4755)
        .owner(1000, 1000)
        // Set-id files an ordinary user (1000) may write: what writes,
        // truncations and chowns do to their bits.
        .file("data/suid-write", b"w", 0o6775)
        .owner(1000, 1000)
        .file("data/suid-trunc", b"t", 0o4755)
        .owner(1000, 1000)
        .file("data/suid-otrunc", b"o", 0o6755)
        .owner(1000, 1000)
        .file("data/sgid-nox", b"n", 0o2764)
        .owner(1000, 1000)
        .file("data/suid-chown", b"c", 0o6755)
        .owner(1000, 1000)
        .file("data/suid-write2", b"w", 0o6775)
        .owner(1000, 1000)
        .file("data/suid-otrunc2", b"o", 0o6755)
        .owner(1000, 1000)
        .dir("emptydir", 0o755)
        .dir("emptydir2", 0o700)
        .dir("var", 0o755)
        .dir("var/cache", 0o755)
        .dir("var/cache/apt", 0o755)
        .file("var/cache/apt/pkgcache.bin", b"cache", 0o644)
        .file("var/cache/x", b"x", 0o644)
        .dir("srv", 0o750)
        .owner(33, 33)
        .file("srv/index.html", b"<html>", 0o644)
        .owner(33, 33)
        .dir("srv/sub", 0o755)
        .file("srv/sub/deep.txt", b"deep", 0o600)
        .symlink("srv/link", "index.html")
        .dir("opt", 0o755)
        .dir("opt/app", 0o755)
        .file("opt/app/bin", b"app", 0o755)
        .dir("opt/app/lib", 0o755)
        .file("opt/app/lib/x.so", b"so", 0o644)
        .dir("opt/app/share", 0o755)
        .file("opt/app/share/doc", b"doc", 0o644)
        .hardlink("opt/app/share/doc.link", "opt/app/share/doc")
        .symlink("lib", "usr/lib")
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .file("usr/lib/libc.so", b"libc", 0o755)
        .dir("dev", 0o755)
        .chardev("dev/null", 1, 3)
        .fifo("dev/fifo")
        .dir("lowerdel", 0o755)
        .dir("opened", 0o755)
        .file("opened/a", b"a", 0o644)
        .file("opened/b", b"b", 0o644)
        .file("opened/c", b"c", 0o644);
    for i in 0..50 {
        b = b.file(&format!("lowerdel/f{i}"), format!("{i}").as_bytes(), 0o644);
    }
    b
}

/// A directory stream opened before its directory changed, read after:
/// its first read and every rewind show the directory as it is then, and so
/// does every later opendir (the kernel caches what the first read got).
fn list_opened_before_changes(m: &Path) -> OpResult {
    let mut dir = open_dir(m, "opened")?;
    write(m, "opened/new", b"n")?;
    unlink(m, "opened/a")?;
    let first = dir_names(&mut dir)?;
    let fresh = list(m, "opened")?;
    unlink(m, "opened/b")?;
    dir.rewind();
    let rewound = dir_names(&mut dir)?;
    Ok(format!("read: {first}; opendir: {fresh}; rewound: {rewound}; opendir: {}", list(m, "opened")?))
}

fn layer1(objects: &Path) -> LayerBuilder {
    // Parent directories are listed like a real layer tar lists them.
    LayerBuilder::new(objects)
        .dir("etc", 0o755)
        .dir("opt", 0o755)
        .dir("opt/app", 0o755)
        .dir("opt/app/lib", 0o755)
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .whiteout("etc/shadow")
        .file("etc/hosts", b"127.0.0.1 localhost\n::1 localhost\n", 0o644)
        .opaque("opt/app/lib")
        .file("opt/app/lib/y.so", b"y", 0o644)
        .dir("usr/lib/new", 0o755)
        .file("usr/lib/new/z", b"z", 0o644)
        .mtime(1_500_000_000, 999)
}

/// Both layers: their lowers for strata (objects written into `objects`
/// unless there already) and their entries.
fn layers(objects: &Path) -> (Vec<Lower>, Vec<Vec<strata_layers::index::Entry>>) {
    let (b0, b1) = (layer0(objects), layer1(objects));
    let entries = vec![b0.entries().to_vec(), b1.entries().to_vec()];
    (vec![b0.build(), b1.build()], entries)
}

/// Writes the objects to `base/objects` and the layers as overlayfs lower
/// directories `base/l0`, `base/l1`; returns those directories.
fn prepare(base: &Path, how: &LowerFormat) -> Vec<PathBuf> {
    let objects = base.join("objects");
    let (_, entries) = layers(&objects);
    let dirs: Vec<PathBuf> = (0..entries.len()).map(|i| base.join(format!("l{i}"))).collect();
    for (e, d) in entries.iter().zip(&dirs) {
        materialize(e, &objects, d, how);
    }
    dirs
}

fn script() -> Script {
    let many = |m: &Path| -> OpResult {
        r(std::fs::create_dir(m.join("many")))?;
        for i in 0..10_000 {
            r(std::fs::write(m.join(format!("many/file{i:05}")), i.to_string()))?;
        }
        for i in (0..10_000).step_by(3) {
            r(std::fs::remove_file(m.join(format!("many/file{i:05}"))))?;
        }
        let n = std::fs::read_dir(m.join("many")).map_err(|e| e.raw_os_error().unwrap_or(-1))?.count();
        Ok(format!("{n} entries"))
    };
    let readdir_while_changing = |m: &Path| -> OpResult {
        let mut seen = 0;
        let mut it = std::fs::read_dir(m.join("lowerdel")).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
        for i in 0..50 {
            if let Some(e) = it.next() {
                e.map_err(|e| e.raw_os_error().unwrap_or(-1))?;
                seen += 1;
            }
            if i % 2 == 0 {
                unlink(m, &format!("lowerdel/f{i}"))?;
            }
            write(m, &format!("lowerdel/n{i}"), b"n")?;
        }
        for e in it {
            e.map_err(|e| e.raw_os_error().unwrap_or(-1))?;
            seen += 1;
        }
        // How many a directory stream sees while it changes is up to the filesystem.
        assert!(seen >= 25, "readdir saw only {seen} entries");
        Ok(String::new())
    };
    vec![
        ("create", Box::new(|m: &Path| write(m, "new.txt", b"new file\n"))),
        ("overwrite lower", Box::new(|m: &Path| write(m, "etc/hosts", b"overwritten\n"))),
        ("append lower", Box::new(|m: &Path| append(m, "etc/passwd", b"user:x:1000:1000::/home/user:/bin/sh\n"))),
        ("truncate lower", Box::new(|m: &Path| truncate(m, "data/big", 10))),
        ("O_TRUNC lower", Box::new(|m: &Path| open_trunc(m, "data/f"))),
        ("O_EXCL existing", Box::new(|m: &Path| create_excl(m, "data/e"))),
        ("chmod lower", Box::new(|m: &Path| chmod(m, "data/a", 0o600))),
        ("chmod setuid kept", Box::new(|m: &Path| chmod(m, "data/setuid", 0o6711))),
        ("write as root keeps set-id", Box::new(|m: &Path| append(m, "data/setuid", b"+root"))),
        ("write as a user clears set-id", Box::new(|m: &Path| as_user(m, 1000, "printf x >>\"$M/data/suid-write\""))),
        (
            "truncate as a user clears setuid",
            Box::new(|m: &Path| as_user(m, 1000, "truncate -s 0 \"$M/data/suid-trunc\"")),
        ),
        ("O_TRUNC as a user clears set-id", Box::new(|m: &Path| as_user(m, 1000, ": >\"$M/data/suid-otrunc\""))),
        (
            "write as a user keeps setgid without g+x",
            Box::new(|m: &Path| as_user(m, 1000, "printf x >>\"$M/data/sgid-nox\"")),
        ),
        ("write again as a user", Box::new(|m: &Path| as_user(m, 1000, "printf y >>\"$M/data/suid-write\""))),
        ("chown clears set-id", Box::new(|m: &Path| chown(m, "data/suid-chown", 1000, 1000))),
        (
            "truncate a set-id file as root",
            // (Root of a user namespace lacks CAP_FSETID: the bit goes.)
            Box::new(|m: &Path| {
                write(m, "sgid-trunc", b"s")?;
                chmod(m, "sgid-trunc", 0o2770)?;
                truncate(m, "sgid-trunc", 0)?;
                stat(m, "sgid-trunc")
            }),
        ),
        (
            "fallocate a set-id file as root",
            Box::new(|m: &Path| {
                write(m, "suid-falloc", b"s")?;
                chmod(m, "suid-falloc", 0o4755)?;
                let f = std::fs::OpenOptions::new().write(true).open(m.join("suid-falloc")).map_err(io_err)?;
                rx(rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::KEEP_SIZE, 0, 4096))?;
                stat(m, "suid-falloc")
            }),
        ),
        (
            "open a set-id metacopy for writing",
            // (Filled in by the server, whose writes must not cost the bit.)
            Box::new(|m: &Path| {
                chmod(m, "usr/lib/libc.so", 0o4755)?;
                append(m, "usr/lib/libc.so", b"")?;
                stat(m, "usr/lib/libc.so")
            }),
        ),
        (
            "read a file removed while open",
            Box::new(|m: &Path| {
                write(m, "gone-open", b"still readable")?;
                let mut reader = std::fs::File::open(m.join("gone-open")).map_err(io_err)?;
                unlink(m, "gone-open")?;
                read_all(&mut reader)
            }),
        ),
        (
            "writer of a set-id file next to a reader",
            Box::new(|m: &Path| {
                write(m, "sgid-rw", b"s")?;
                chmod(m, "sgid-rw", 0o2770)?;
                let mut reader = std::fs::File::open(m.join("sgid-rw")).map_err(io_err)?;
                append(m, "sgid-rw", b"+more")?;
                read_all(&mut reader)
            }),
        ),
        (
            "stat set-id files",
            Box::new(|m: &Path| {
                let mut out = String::new();
                for f in ["setuid", "suid-write", "suid-trunc", "suid-otrunc", "sgid-nox", "suid-chown"] {
                    out += &stat(m, &format!("data/{f}"))?;
                    out.push('\n');
                }
                Ok(out)
            }),
        ),
        // What the kernel shows right after (its cached attributes).
        (
            "a user's write clears set-id at once",
            Box::new(|m: &Path| {
                as_user(m, 1000, "printf x >>\"$M/data/suid-write2\"")?;
                mode_only(m, "data/suid-write2")
            }),
        ),
        (
            "a user's O_TRUNC clears set-id at once",
            Box::new(|m: &Path| {
                as_user(m, 1000, ": >\"$M/data/suid-otrunc2\"")?;
                mode_only(m, "data/suid-otrunc2")
            }),
        ),
        (
            "a user's write to a new set-id file clears it at once",
            Box::new(|m: &Path| {
                write(m, "suid-new", b"n")?;
                chmod(m, "suid-new", 0o6777)?;
                stat(m, "suid-new")?;
                as_user(m, 1000, "printf x >>\"$M/suid-new\"")?;
                mode_only(m, "suid-new")
            }),
        ),
        (
            "an ACL is enforced and sets the mode",
            Box::new(|m: &Path| {
                write(m, "acl-f", b"secret")?;
                chmod(m, "acl-f", 0o666)?;
                // owner rw-, user 1000 ---, group r--, mask r-x, other rw-
                let acl = posix_acl(&[
                    (1, 6, u32::MAX),
                    (2, 0, 1000),
                    (4, 4, u32::MAX),
                    (0x10, 5, u32::MAX),
                    (0x20, 6, u32::MAX),
                ]);
                setxattr(m, "acl-f", "system.posix_acl_access", &acl)?;
                let read = as_user(m, 1000, "cat \"$M/acl-f\"");
                Ok(format!("{read:?} {}", mode_only(m, "acl-f")?))
            }),
        ),
        (
            "an ACL set by one outside the file's group clears set-group-id",
            Box::new(|m: &Path| {
                for (name, gid) in [("sgid-other", 0), ("sgid-own", 1000)] {
                    write(m, name, b"x")?;
                    chown(m, name, 1000, gid)?;
                    chmod(m, name, 0o2775)?;
                }
                mkdir(m, "sgid-dir")?;
                chown(m, "sgid-dir", 1000, 0)?;
                chmod(m, "sgid-dir", 0o2775)?;
                let names = ["sgid-other", "sgid-own", "sgid-dir"];
                as_user(m, 1000, "for f in sgid-other sgid-own sgid-dir; do setfacl -m u:1234:r \"$M/$f\"; done")?;
                let modes: Result<Vec<String>, i32> = names.iter().map(|p| mode_only(m, p)).collect();
                Ok(modes?.join(" "))
            }),
        ),
        (
            "trusted.* names are listed only to a caller that may read them",
            Box::new(|m: &Path| {
                write(m, "trusted-f", b"x")?;
                setxattr(m, "trusted-f", "user.plain", b"1")?;
                setxattr(m, "trusted-f", "trusted.secret", b"2")?;
                let names = "getfattr -m - \"$M/trusted-f\" | grep -v '^#'";
                let privileged = as_user(m, 0, names);
                Ok(format!("{privileged:?} {:?}", as_user(m, 1000, names)))
            }),
        ),
        (
            "a default ACL, not the umask, limits new entries",
            Box::new(|m: &Path| {
                for d in ["dacl", "nodacl"] {
                    mkdir(m, d)?;
                    chmod(m, d, 0o777)?;
                }
                // owner rwx, group rwx, mask rwx, other r-x
                let acl = posix_acl(&[(1, 7, u32::MAX), (4, 7, u32::MAX), (0x10, 7, u32::MAX), (0x20, 5, u32::MAX)]);
                setxattr(m, "dacl", "system.posix_acl_default", &acl)?;
                let made = "umask 077; for d in dacl nodacl; do echo >\"$M/$d/f\"; mkdir \"$M/$d/d\"; done";
                as_user(m, 1000, made)?;
                let modes: Result<Vec<String>, i32> =
                    ["dacl/f", "dacl/d", "nodacl/f", "nodacl/d"].iter().map(|p| mode_only(m, p)).collect();
                Ok(modes?.join(" "))
            }),
        ),
        ("chown lower", Box::new(|m: &Path| chown(m, "data/b", 1234, 5678))),
        ("chown lower dir", Box::new(|m: &Path| chown(m, "emptydir", 99, 98))),
        ("utimes lower", Box::new(|m: &Path| utimes(m, "data/c", 1_000_000_000, 5, true))),
        ("symlink", Box::new(|m: &Path| symlink(m, "etc/hosts", "sym"))),
        ("link lower", Box::new(|m: &Path| link(m, "data/d", "data/d.link"))),
        ("write through link", Box::new(|m: &Path| append(m, "data/d.link", b"+more"))),
        ("stat linked", Box::new(|m: &Path| stat(m, "data/d"))),
        ("unlink lower", Box::new(|m: &Path| unlink(m, "etc/motd"))),
        ("unlink missing", Box::new(|m: &Path| unlink(m, "etc/motd"))),
        (
            "rename a new dir with old times over a deleted name",
            Box::new(|m: &Path| {
                mkdir(m, "x0")?;
                utimes(m, "x0", 1_100_000_000, 3, true)?;
                rename(m, "x0", "etc/motd")
            }),
        ),
        ("rmdir lower empty", Box::new(|m: &Path| rmdir(m, "emptydir"))),
        ("rmdir non-empty", Box::new(|m: &Path| rmdir(m, "var/cache"))),
        ("rm -rf lower dir", Box::new(|m: &Path| rm_rf(m, "var/cache"))),
        ("rename file", Box::new(|m: &Path| rename(m, "etc/hostname", "etc/hostname.old"))),
        ("rename lower dir with content", Box::new(|m: &Path| mv(m, "srv", "srv2"))),
        ("rename file over lower file", Box::new(|m: &Path| rename(m, "data/e", "data/a"))),
        ("unlink for whiteout", Box::new(|m: &Path| unlink(m, "etc/issue"))),
        ("rename over whiteout", Box::new(|m: &Path| rename(m, "new.txt", "etc/issue"))),
        ("noreplace existing", Box::new(|m: &Path| rename_flags(m, "etc/hosts", "etc/passwd", RenameFlags::NOREPLACE))),
        (
            "noreplace ok",
            Box::new(|m: &Path| rename_flags(m, "etc/hostname.old", "etc/hostname", RenameFlags::NOREPLACE)),
        ),
        ("exchange lower files", Box::new(|m: &Path| rename_flags(m, "data/b", "data/c", RenameFlags::EXCHANGE))),
        (
            "mkdir new dirs",
            Box::new(|m: &Path| r(std::fs::create_dir_all(m.join("x1/y"))).and_then(|_| mkdir(m, "x2"))),
        ),
        ("exchange upper dirs", Box::new(|m: &Path| rename_flags(m, "x1", "x2", RenameFlags::EXCHANGE))),
        ("exchange missing", Box::new(|m: &Path| rename_flags(m, "x1", "nothere", RenameFlags::EXCHANGE))),
        ("rename upper dir over empty lower dir", Box::new(|m: &Path| rename(m, "x2", "emptydir2"))),
        ("list opaque lower dir", Box::new(|m: &Path| list(m, "opt/app/lib"))),
        ("rm -rf lower dir for recreate", Box::new(|m: &Path| rm_rf(m, "opt/app"))),
        ("mkdir recreate", Box::new(|m: &Path| mkdir(m, "opt/app"))),
        ("list recreated", Box::new(|m: &Path| list(m, "opt/app"))),
        ("file in recreated", Box::new(|m: &Path| write(m, "opt/app/bin", b"v2"))),
        ("mkdir existing", Box::new(|m: &Path| mkdir(m, "etc"))),
        ("mknod fifo", Box::new(|m: &Path| mkfifo(m, "fifo1", 0o640))),
        ("removexattr trusted missing on a fifo", Box::new(|m: &Path| removexattr(m, "fifo1", "trusted.none"))),
        ("setxattr lower", Box::new(|m: &Path| setxattr(m, "data/d", "user.test", b"value"))),
        ("getxattr set", Box::new(|m: &Path| read_xattr(m, "data/d.link", "user.test"))),
        ("removexattr lower", Box::new(|m: &Path| removexattr(m, "etc/passwd", "user.origin"))),
        ("removexattr missing", Box::new(|m: &Path| removexattr(m, "data/f", "user.none"))),
        ("setxattr outside the namespaces", Box::new(|m: &Path| setxattr(m, "data/d", "foo.bar", b"v"))),
        ("getxattr outside the namespaces", Box::new(|m: &Path| read_xattr(m, "data/d", "foo.bar"))),
        ("removexattr outside the namespaces", Box::new(|m: &Path| removexattr(m, "data/d", "foo.bar"))),
        ("setxattr system.other", Box::new(|m: &Path| setxattr(m, "data/d", "system.other", b"v"))),
        ("setxattr new file", Box::new(|m: &Path| setxattr(m, "sym", "user.onlink", b"v"))),
        ("readdir while creating and removing", Box::new(readdir_while_changing)),
        (
            "deep tree",
            Box::new(|m: &Path| {
                let p = "deep/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p";
                r(std::fs::create_dir_all(m.join(p))).and_then(|_| write(m, &format!("{p}/leaf"), b"leaf"))
            }),
        ),
        ("10000-entry directory", Box::new(many)),
        ("list a directory opened before it changed", Box::new(list_opened_before_changes)),
        ("truncate grow new", Box::new(|m: &Path| truncate(m, "etc/hosts", 100))),
        (
            "times: new file, dir and symlink",
            Box::new(|m: &Path| {
                mkdir(m, "times")?;
                write(m, "times/f", b"t")?;
                chmod(m, "times/f", 0o640)?;
                mkdir(m, "times/d")?;
                symlink(m, "f", "times/l")
            }),
        ),
        (
            "times: chown to its own owner",
            Box::new(|m: &Path| times_moved(m, "times/f", |m| chown(m, "times/f", 0, 0))),
        ),
        (
            "times: chmod to its own mode",
            Box::new(|m: &Path| times_moved(m, "times/f", |m| chmod(m, "times/f", 0o640))),
        ),
        (
            "times: chown a dir to its owner",
            Box::new(|m: &Path| times_moved(m, "times/d", |m| chown(m, "times/d", 0, 0))),
        ),
        ("times: lchown a symlink", Box::new(|m: &Path| times_moved(m, "times/l", |m| chown(m, "times/l", 0, 0)))),
        ("times: utimes", Box::new(|m: &Path| times_moved(m, "times/f", |m| utimes(m, "times/f", 7, 0, true)))),
        ("times: setxattr", Box::new(|m: &Path| times_moved(m, "times/f", |m| setxattr(m, "times/f", "user.t", b"1")))),
        ("times: link", Box::new(|m: &Path| times_moved(m, "times/f", |m| link(m, "times/f", "times/f2")))),
        ("times: append", Box::new(|m: &Path| times_moved(m, "times/f", |m| append(m, "times/f", b"+")))),
        ("times: chmod lower", Box::new(|m: &Path| times_moved(m, "data/huge", |m| chmod(m, "data/huge", 0o640)))),
        (
            "times: rename into a dir",
            Box::new(|m: &Path| times_moved(m, "times/d", |m| rename(m, "times/f2", "times/d/f"))),
        ),
        (
            "times: futimens on a file removed while open",
            Box::new(|m: &Path| {
                use std::os::unix::fs::MetadataExt;
                let f = std::fs::File::create(m.join("times/gone")).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
                unlink(m, "times/gone")?;
                let t = rustix::fs::Timespec { tv_sec: 1_000_000, tv_nsec: 9 };
                rx(rustix::fs::futimens(&f, &rustix::fs::Timestamps { last_access: t, last_modification: t }))?;
                let st = f.metadata().map_err(|e| e.raw_os_error().unwrap_or(-1))?;
                Ok(format!("{}.{} {}.{}", st.atime(), st.atime_nsec(), st.mtime(), st.mtime_nsec()))
            }),
        ),
        (
            "read after writes",
            Box::new(|m: &Path| {
                let s = read(m, "data/d")?;
                assert_eq!(s, "d-content+more");
                Ok(s)
            }),
        ),
    ]
}

/// The differential body: mounts overlayfs over the lower directories of
/// `base` and strata over the same layers, both writable with upper
/// directories under `work`, runs the script on both and compares.
fn differential(base: &Path, work: &Path, ns: XattrNs) {
    let (lowers, _) = layers(&base.join("objects"));
    let dirs: Vec<PathBuf> = (0..lowers.len()).map(|i| base.join(format!("l{i}"))).collect();
    for d in ["ov_upper", "ov_work", "ov", "st_upper", "st"] {
        std::fs::create_dir(work.join(d)).unwrap();
    }
    let (ov, stm, st_upper) = (work.join("ov"), work.join("st"), work.join("st_upper"));
    let _ov = OverlayMount::mount(&dirs, &work.join("ov_upper"), &work.join("ov_work"), &ov, ns, false);
    // Others in: some steps run as an ordinary user.
    let rw = || MountOptions { upper: Some(st_upper.clone()), allow_other: true, ..MountOptions::default() };
    let st = MountGuard::new(lowers.clone(), &stm, rw());

    let tree = |root: &Path| describe(root, OLD_TIMES);
    assert_same_tree("the untouched views", ("overlayfs", &tree(&ov)), ("strata", &tree(&stm)));

    let mismatches = run_script(&script(), &ov, &stm);
    assert!(mismatches.is_empty(), "operation results differ:\n{}", mismatches.join("\n"));

    let after = tree(&stm);
    assert_same_tree("after the script", ("overlayfs", &tree(&ov)), ("strata", &after));

    // Remounting strata's upper gives the same view again.
    st.unmount();
    let st = MountGuard::new(lowers.clone(), &stm, rw());
    assert_same_tree("strata's upper remounted", ("before", &after), ("after", &tree(&stm)));
    st.unmount();

    let theirs = overlay_changes(&lower_view(&dirs), &work.join("ov_upper"));
    assert_same_changes("docker diff", &theirs, &strata_changes(&lowers, &st_upper));
}

#[test]
fn same_results_as_kernel_overlayfs() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    prepare(tmp.path(), &LowerFormat::root());
    differential(tmp.path(), tmp.path(), XattrNs::Trusted);
}

#[test]
fn same_results_as_kernel_overlayfs_in_a_user_namespace() {
    const NAME: &str = "same_results_as_kernel_overlayfs_in_a_user_namespace";
    if let Some(dir) = std::env::var_os(INNER_DIR) {
        // The run inside the namespace, as its root.
        let map = std::fs::read_to_string("/proc/self/uid_map").unwrap();
        assert!(is_root() && !map.contains("4294967295"), "not root of a user namespace: {map}");
        let base = PathBuf::from(dir);
        differential(&base, &base.join("work"), XattrNs::User);
        random_differential(&base, &base.join("work"), XattrNs::User);
        plain_differential(&base.join("work"), true);
        println!("differential body done");
        return;
    }
    if !is_root() || userns::user_ids(USER).is_none() {
        eprintln!("skipped: needs root and the {USER} user");
        return;
    }
    let (uids, gids) = userns::probe_maps(USER)
        .unwrap_or_else(|e| panic!("no user namespace with subordinate ids for {USER} (scripts/setup.sh): {e}"));
    // Everything under a world-readable directory: the build directory may be closed to the user.
    let tmp = tempfile::Builder::new().prefix("strata-fs-vs-overlayfs-").tempdir_in("/tmp").unwrap();
    let base = tmp.path();
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
    prepare(base, &LowerFormat::user_namespace(uids.clone(), gids.clone()));
    // The namespace's root owns the working directory.
    let work = base.join("work");
    std::fs::create_dir(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(uids.outside(0)), Some(gids.outside(0))).unwrap();

    let out = userns::rerun_test(USER, NAME, base, &[(INNER_DIR, base.as_os_str())], 900);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- run in the user namespace: stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(out.status.success(), "the run in the user namespace failed ({})", out.status);
    assert!(stdout.contains("differential body done"), "the run in the user namespace did not run the test");
}

/// Random scripts over the same layers on kernel overlayfs (with its inode
/// index, so that lower hard links stay links after a copy-up, as in
/// strata) and on strata: every step's result and what lstat then says of
/// its paths, the trees (also across remounts of strata every 250 steps and
/// at the end) and the change lists must agree. A step that overlayfs
/// refuses with EXDEV (it cannot rename a directory that has lower content
/// without redirect_dir) is not run on strata.
///
/// `base` holds the prepared layers (see [`prepare`]); each seed works in a
/// fresh directory under `work`.
fn random_differential(base: &Path, work: &Path, ns: XattrNs) {
    let (seeds, steps) = settings(12, 500);
    let (lowers, _) = layers(&base.join("objects"));
    let dirs: Vec<PathBuf> = (0..lowers.len()).map(|i| base.join(format!("l{i}"))).collect();
    // Without its inode index (in a user namespace overlayfs cannot decode
    // file handles and turns it off) overlayfs breaks a lower hard link
    // group at copy-up and keeps reporting the lower link count, and the
    // names of an upper hard link keep inodes of their own (a chown through
    // one leaves the owner the others check permissions against as it
    // was): the lower group's names stay out of the steps, and no hard
    // links are made. There, too, device nodes are refused to overlayfs
    // and kept as metadata by strata: none are made.
    let no_index = matches!(ns, XattrNs::User);
    let names: Vec<&'static str> =
        RANDOM_NAMES.iter().copied().filter(|n| !(no_index && n.starts_with("doc"))).collect();
    for seed in seeds.map(|i| 0x5eed_0000 + i) {
        let work = work.join(format!("random-{seed:x}"));
        for d in ["", "ov_upper", "ov_work", "ov", "st_upper", "st"] {
            std::fs::create_dir(work.join(d)).unwrap();
        }
        let (ov, stm, st_upper) = (work.join("ov"), work.join("st"), work.join("st_upper"));
        let _ov = OverlayMount::mount(&dirs, &work.join("ov_upper"), &work.join("ov_work"), &ov, ns, true);
        // Others in: some steps run as an ordinary user.
        let rw = || MountOptions { upper: Some(st_upper.clone()), allow_other: true, ..MountOptions::default() };
        let mut st = MountGuard::new(lowers.clone(), &stm, rw());
        let mut rng = Rng(seed);
        let mut log = Vec::new();
        let tree = |root: &Path| describe(root, OLD_TIMES);
        for i in 1..=steps {
            let kinds = Steps { hard_links: !no_index, devices: !no_index, ..Steps::ALL };
            let (what, paths, op) = random_step(&mut rng, RANDOM_DIRS, &names, kinds);
            let a = op(&ov);
            if a == Err(libc::EXDEV) {
                continue;
            }
            let b = op(&stm);
            log.push(format!("{i} {what}: {a:?}"));
            let after = |m: &Path| paths.iter().map(|p| shape(m, p)).collect::<Vec<_>>();
            assert_eq!(
                (a, after(&ov)),
                (b, after(&stm)),
                "seed {seed:#x}, step {what}: overlayfs, strata differ (result, then its paths); steps so far:\n{}",
                log.join("\n")
            );
            if i % 250 == 0 || i == steps {
                let why = format!("seed {seed:#x} after {i} steps:\n{}", log.join("\n"));
                assert_same_tree(&why, ("overlayfs", &tree(&ov)), ("strata", &tree(&stm)));
                let before = describe_exact(&stm);
                st.unmount();
                st = MountGuard::new(lowers.clone(), &stm, rw());
                let why = format!("seed {seed:#x}, strata remounted after {i} steps:\n{}", log.join("\n"));
                assert_same_tree(&why, ("before", &before), ("after", &describe_exact(&stm)));
            }
        }
        st.unmount();
        // A change through one name of a lower hard link group: overlayfs
        // copies up (and `docker diff` lists) that name alone, strata the
        // whole group, so that a commit keeps the names one file.
        let group = ["C /opt/app/share/doc", "C /opt/app/share/doc.link"];
        let outside_group = |v: Vec<String>| v.into_iter().filter(|c| !group.contains(&c.as_str())).collect::<Vec<_>>();
        let theirs = outside_group(overlay_changes(&lower_view(&dirs), &work.join("ov_upper")));
        let ours = outside_group(strata_changes(&lowers, &st_upper));
        assert_same_changes(&format!("seed {seed:#x} docker diff"), &theirs, &ours);
    }
}

#[test]
fn random_scripts_match_kernel_overlayfs() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    prepare(tmp.path(), &LowerFormat::root());
    random_differential(tmp.path(), tmp.path(), XattrNs::Trusted);
}

/// Threads taking random steps on one strata mount at once (the same
/// layers and kinds of steps as above, no reference to compare with): no
/// step fails with an error that only a broken filesystem gives, and the
/// tree the mount shows afterwards is the one a remount of its upper
/// directory shows.
#[test]
fn random_concurrent_steps_keep_the_mount_consistent() {
    const BROKEN: &[i32] = &[libc::EIO, libc::EBADF, libc::EFAULT, libc::ENOSYS, libc::ENOTCONN, libc::ESTALE];
    let (seeds, steps) = settings(3, 400);
    for seed in seeds.map(|i| 0xc0c0_0000 + i * 16) {
        let tmp = tempfile::tempdir().unwrap();
        let (lowers, _) = layers(&tmp.path().join("objects"));
        let (stm, st_upper) = (tmp.path().join("st"), tmp.path().join("st_upper"));
        std::fs::create_dir(&stm).unwrap();
        std::fs::create_dir(&st_upper).unwrap();
        let rw = || MountOptions { upper: Some(st_upper.clone()), allow_other: true, ..MountOptions::default() };
        let st = MountGuard::new(lowers.clone(), &stm, rw());
        // No fifos or device nodes: a step of another thread could open one
        // that appeared under a name it expected a file at, and block.
        let kinds = Steps { fifos: false, devices: false, as_user: is_root(), times: false, ..Steps::ALL };
        std::thread::scope(|s| {
            for t in 0..4 {
                let stm = &stm;
                s.spawn(move || {
                    let mut rng = Rng(seed + t);
                    for i in 0..steps {
                        let (what, _, op) = random_step(&mut rng, RANDOM_DIRS, RANDOM_NAMES, kinds);
                        let r = op(stm);
                        // (An ordinary user's step fails with its exit status.)
                        if !what.contains(" as 1000") {
                            assert!(
                                !matches!(r, Err(e) if BROKEN.contains(&e)),
                                "seed {seed:#x}, thread {t}, step {i} {what}: {r:?}"
                            );
                        }
                    }
                });
            }
        });
        let before = describe_exact(&stm);
        st.unmount();
        let st = MountGuard::new(lowers.clone(), &stm, rw());
        assert_same_tree(&format!("seed {seed:#x}, remounted"), ("before", &before), ("after", &describe_exact(&stm)));
        st.unmount();
        strata_fs::changes(&lowers, &st_upper).unwrap();
    }
}

/// Directories and leaf names of the random layers below (leaves never
/// name one of the directories, so a layer's whiteouts and files never
/// clash with the parents it lists).
const LAYER_DIRS: &[&str] = &["", "a", "a/b", "a/b/c", "d", "d/e"];
const LAYER_NAMES: &[&str] = &["f1", "f2", "f3", "s", "h", "x", "y"];

/// Random layers (four; in one stack of eight, 2 to 101) in tar order:
/// files (some with xattrs), directories, symlinks, hard links within a
/// layer, fifos, device nodes, whiteouts and opaque directories over what
/// the layers below have (or not), each layer listing its entries' parents.
fn random_layers(objects: &Path, rng: &mut Rng, special: bool) -> Vec<LayerBuilder> {
    let mut layers = Vec::new();
    // Mostly four layers; one stack in eight has up to a hundred (images
    // with many layers are common, and a layer's position is its number).
    let count = if rng.below(8) == 0 { 2 + rng.below(100) } else { 4 };
    for l in 0..count {
        let mut b = LayerBuilder::new(objects);
        if l == 0 {
            b = b.dir("", 0o755);
        }
        let mut listed: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut files: Vec<String> = Vec::new();
        for _ in 0..12 {
            let d = rng.pick(LAYER_DIRS);
            // The parents, as a layer tar lists them.
            let mut at = String::new();
            for part in d.split('/').filter(|p| !p.is_empty()) {
                at = if at.is_empty() { part.to_string() } else { format!("{at}/{part}") };
                if listed.insert(at.clone()) {
                    b = b.dir(&at, [0o755, 0o750, 0o711][rng.below(3)]);
                }
            }
            let name = rng.pick(LAYER_NAMES);
            let path = if d.is_empty() { name.to_string() } else { format!("{d}/{name}") };
            if !listed.insert(path.clone()) {
                continue;
            }
            b = match rng.below(11) {
                0..=2 => {
                    files.push(path.clone());
                    let content = format!("{path} in layer {l}: {}", rng.next_u64() % 100);
                    let b = b
                        .file(&path, content.as_bytes(), [0o644, 0o600, 0o755, 0o4755][rng.below(4)])
                        .owner([0, 1000][rng.below(2)], [0, 42][rng.below(2)]);
                    if rng.below(3) == 0 {
                        b.xattr("user.k", format!("v{l}").as_bytes())
                    } else {
                        b
                    }
                }
                9 if special => b.fifo(&path),
                10 if special => b.chardev(&path, 1, 3),
                3 => b.dir(&path, 0o755),
                // (No "..": a symlink moved to the root would lead out.)
                4 => b.symlink(&path, [rng.pick(LAYER_NAMES), "d/x", "a/b"][rng.below(3)]),
                5 if !files.is_empty() => {
                    let target = files[rng.below(files.len())].clone();
                    b.hardlink(&path, &target)
                }
                6 | 7 if l > 0 => b.whiteout(&path),
                8 if l > 0 && !d.is_empty() => b.opaque(d),
                _ => {
                    files.push(path.clone());
                    b.file(&path, b"plain", 0o644)
                }
            };
        }
        layers.push(b);
    }
    layers
}

/// The layers' entries, a line each, for failure messages.
fn describe_layers(entries: &[Vec<strata_layers::index::Entry>]) -> String {
    let line = |(i, e): (usize, &strata_layers::index::Entry)| {
        format!("layer {i}: {} {:?}", String::from_utf8_lossy(&e.path), e.kind)
    };
    entries.iter().enumerate().flat_map(|(i, l)| l.iter().map(move |e| (i, e))).map(line).collect::<Vec<_>>().join("\n")
}

/// Applies layers to one directory the way an image is unpacked (umoci,
/// containerd): a layer's whiteouts, opaque markers and replaced entries
/// first remove what the layers below left, then its entries are written.
fn unpack(layers: &[Vec<strata_layers::index::Entry>], objects: &Path, dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    use strata_layers::index::EntryKind;
    let rm = |p: &Path| match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).unwrap(),
        Ok(_) => std::fs::remove_file(p).unwrap(),
        Err(_) => {}
    };
    for entries in layers {
        for e in entries {
            let p = dir.join(std::ffi::OsStr::from_bytes(&e.path));
            match &e.kind {
                EntryKind::Whiteout => rm(&p),
                EntryKind::Opaque => {
                    for child in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                        rm(&child.path());
                    }
                }
                EntryKind::Dir => {
                    if std::fs::symlink_metadata(&p).is_ok_and(|m| !m.is_dir()) {
                        rm(&p);
                    }
                }
                _ => rm(&p),
            }
        }
        let written: Vec<_> =
            entries.iter().filter(|e| !matches!(e.kind, EntryKind::Whiteout | EntryKind::Opaque)).cloned().collect();
        materialize(&written, objects, dir, &LowerFormat::root());
    }
}

/// Random layer stacks mounted by strata (read-only, from the layers'
/// indexes) against the same layers unpacked into a directory: the tree
/// strata builds must be the unpacked image, link counts included.
#[test]
fn random_layers_read_as_unpacked() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (seeds, _) = settings(40, 0);
    for seed in seeds.map(|i| 0x1a7e_0000 + i) {
        let tmp = tempfile::tempdir().unwrap();
        let objects = tmp.path().join("objects");
        let builders = random_layers(&objects, &mut Rng(seed), true);
        let entries: Vec<Vec<strata_layers::index::Entry>> = builders.iter().map(|b| b.entries().to_vec()).collect();
        let lowers: Vec<Lower> = builders.into_iter().map(|b| b.build()).collect();
        let (unpacked, mnt) = (tmp.path().join("unpacked"), tmp.path().join("mnt"));
        unpack(&entries, &objects, &unpacked);
        std::fs::create_dir(&mnt).unwrap();
        let st = MountGuard::new(lowers, &mnt, MountOptions::default());
        let layers_text = describe_layers(&entries);
        assert_same_tree(
            &format!("seed {seed:#x}; layers:\n{layers_text}"),
            ("unpacked", &describe(&unpacked, OLD_TIMES)),
            ("strata", &describe(&mnt, OLD_TIMES)),
        );
        st.unmount();
    }
}

/// Random layer stacks mounted writable by strata against the same layers
/// unpacked into a plain directory, then the same random steps on both: a
/// plain filesystem is the reference overlayfs cannot be here (it renames
/// no directory with lower content and miscounts links), so every step's
/// result, what lstat then says of its paths (link counts included), the
/// trees and the trees after a remount must agree.
#[test]
fn random_layers_and_steps_match_a_plain_directory() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    plain_differential(tmp.path(), false);
}

/// The body of `random_layers_and_steps_match_a_plain_directory`, each seed
/// in a directory of its own under `work`; `in_user_namespace`: run as root
/// of a user namespace (the test in a user namespace runs it too), where
/// device nodes are refused to a plain directory and kept as metadata by
/// strata, so the steps make none.
fn plain_differential(work: &Path, in_user_namespace: bool) {
    let (seeds, steps) = settings(12, 300);
    for seed in seeds.map(|i| 0x91a1_0000 + i) {
        let tmp = tempfile::Builder::new().prefix("plain").tempdir_in(work).unwrap();
        // Open to the ordinary user of the steps, as the mount is.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let objects = tmp.path().join("objects");
        let mut rng = Rng(seed);
        // No device nodes (strata mounts are nodev, a plain directory is
        // not) and no fifos (writing into one sets its times on a plain
        // filesystem, where a FUSE or overlayfs mount keeps them).
        let builders = random_layers(&objects, &mut rng, false);
        let entries: Vec<Vec<strata_layers::index::Entry>> = builders.iter().map(|b| b.entries().to_vec()).collect();
        let lowers: Vec<Lower> = builders.into_iter().map(|b| b.build()).collect();
        let (plain, mnt, upper) = (tmp.path().join("plain"), tmp.path().join("mnt"), tmp.path().join("upper"));
        unpack(&entries, &objects, &plain);
        std::fs::create_dir(&mnt).unwrap();
        std::fs::create_dir(&upper).unwrap();
        let rw = || MountOptions { upper: Some(upper.clone()), allow_other: true, ..MountOptions::default() };
        let mut st = MountGuard::new(lowers.clone(), &mnt, rw());
        let tree = |root: &Path| describe(root, OLD_TIMES);
        let layers_text = describe_layers(&entries);
        assert_same_tree(
            &format!("seed {seed:#x} untouched; layers:\n{layers_text}"),
            ("plain", &tree(&plain)),
            ("strata", &tree(&mnt)),
        );
        let mut log = Vec::new();
        for i in 1..=steps {
            let kinds = Steps { whiteout_renames: false, fifos: false, devices: !in_user_namespace, ..Steps::ALL };
            let (what, paths, op) = random_step(&mut rng, LAYER_DIRS, LAYER_NAMES, kinds);
            let a = op(&plain);
            let b = op(&mnt);
            log.push(format!("{i} {what}: {a:?}"));
            let after = |m: &Path| paths.iter().map(|p| shape(m, p)).collect::<Vec<_>>();
            assert_eq!(
                (a, after(&plain)),
                (b, after(&mnt)),
                "seed {seed:#x}, step {what}: the plain directory, strata differ; layers:\n{layers_text}\nsteps so far:\n{}",
                log.join("\n")
            );
            if i % 100 == 0 || i == steps {
                let why = format!("seed {seed:#x} after {i} steps; layers:\n{layers_text}\nsteps:\n{}", log.join("\n"));
                assert_same_tree(&why, ("plain", &tree(&plain)), ("strata", &tree(&mnt)));
                let before = describe_exact(&mnt);
                st.unmount();
                st = MountGuard::new(lowers.clone(), &mnt, rw());
                assert_same_tree(&format!("{why}\nremounted"), ("before", &before), ("after", &describe_exact(&mnt)));
            }
        }
        st.unmount();
    }
}
