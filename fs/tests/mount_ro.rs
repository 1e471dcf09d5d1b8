//! Read-only mounts of small hand-built layers: the merged view must show
//! exactly what the indexes say.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use common::*;
use strata_fs::MountOptions;

fn layers(objects: &std::path::Path) -> Vec<strata_fs::Lower> {
    let l0 = LayerBuilder::new(objects)
        .dir("", 0o755)
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0\n", 0o644)
        .xattr("user.k", b"v")
        .file("etc/shadow", b"secret\n", 0o640)
        .owner(0, 42)
        .dir("bin", 0o755)
        .file("bin/sh", b"#!/bin/sh\n", 0o4755)
        .owner(1000, 1001)
        .mtime(1_234_567_890, 123_456_789)
        .hardlink("bin/ln", "bin/sh")
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .symlink("lib", "usr/lib")
        .dir("dev", 0o755)
        .chardev("dev/null", 1, 3)
        .fifo("run.fifo")
        .file("gone", b"x", 0o644)
        .dir("tree", 0o700)
        .file("tree/old", b"old", 0o644)
        .file("implicit/deep/file", b"deep", 0o600)
        .build();
    let l1 = LayerBuilder::new(objects)
        .whiteout("gone")
        .opaque("tree")
        .file("tree/new", b"new", 0o644)
        .file("etc/passwd", b"root:x:0:0:replaced\n", 0o600)
        .build();
    vec![l0, l1]
}

#[test]
fn merged_view_matches_indexes() {
    let tmp = tempfile::tempdir().unwrap();
    let objects = tmp.path().join("objects");
    let mnt = tmp.path().join("mnt");
    let g = MountGuard::new(layers(&objects), &mnt, MountOptions::default());

    assert_eq!(std::fs::read(mnt.join("etc/passwd")).unwrap(), b"root:x:0:0:replaced\n");
    let m = std::fs::metadata(mnt.join("etc/passwd")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    // The replacing entry has no xattr.
    assert_eq!(getxattr(&mnt.join("etc/passwd"), "user.k"), None);

    let sh = std::fs::symlink_metadata(mnt.join("bin/sh")).unwrap();
    assert_eq!(sh.mode(), libc::S_IFREG | 0o4755);
    assert_eq!((sh.uid(), sh.gid()), (1000, 1001));
    assert_eq!((sh.mtime(), sh.mtime_nsec()), (1_234_567_890, 123_456_789));
    assert_eq!(sh.nlink(), 2);
    let ln = std::fs::symlink_metadata(mnt.join("bin/ln")).unwrap();
    assert_eq!(ln.ino(), sh.ino());
    assert_eq!(std::fs::read(mnt.join("bin/ln")).unwrap(), b"#!/bin/sh\n");
    // Opened again (and through the other name): a read-only mount reuses
    // what it registered for the first open; the content must not change.
    for _ in 0..3 {
        assert_eq!(std::fs::read(mnt.join("bin/sh")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(std::fs::read(mnt.join("etc/passwd")).unwrap(), b"root:x:0:0:replaced\n");
    }

    let shadow = std::fs::metadata(mnt.join("etc/shadow")).unwrap();
    assert_eq!((shadow.uid(), shadow.gid(), shadow.mode() & 0o7777), (0, 42, 0o640));

    assert_eq!(std::fs::read_link(mnt.join("lib")).unwrap(), std::path::Path::new("usr/lib"));
    assert!(std::fs::metadata(mnt.join("lib")).unwrap().is_dir());

    let null = std::fs::symlink_metadata(mnt.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert!(std::fs::symlink_metadata(mnt.join("run.fifo")).unwrap().file_type().is_fifo());

    assert_eq!(std::fs::symlink_metadata(mnt.join("gone")).unwrap_err().raw_os_error(), Some(libc::ENOENT));
    // Negative entries stay negative.
    assert!(std::fs::symlink_metadata(mnt.join("gone")).is_err());
    let tree: Vec<String> = {
        let mut v: Vec<String> = std::fs::read_dir(mnt.join("tree"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(tree, ["new"]);
    assert_eq!(std::fs::metadata(mnt.join("tree")).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(std::fs::read(mnt.join("implicit/deep/file")).unwrap(), b"deep");
    assert_eq!(std::fs::metadata(mnt.join("implicit")).unwrap().mode() & 0o7777, 0o755);

    let mut root: Vec<String> =
        std::fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    root.sort();
    assert_eq!(root, ["bin", "dev", "etc", "implicit", "lib", "run.fifo", "tree", "usr"]);

    // Read-only: every change is refused.
    let e = std::fs::write(mnt.join("etc/new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    let e = std::fs::OpenOptions::new().write(true).open(mnt.join("etc/passwd")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));

    // The lower xattr is served.
    let tmp2 = tempfile::tempdir().unwrap();
    let objects2 = tmp2.path().join("objects");
    let mnt2 = tmp2.path().join("mnt");
    let only0 = vec![layers(&objects2).remove(0)];
    let g2 = MountGuard::new(only0, &mnt2, MountOptions::default());
    assert_eq!(getxattr(&mnt2.join("etc/passwd"), "user.k").as_deref(), Some(&b"v"[..]));
    assert_eq!(std::fs::read(mnt2.join("gone")).unwrap(), b"x");
    g2.unmount();
    g.unmount();
}

#[test]
fn big_directory_and_large_file() {
    let tmp = tempfile::tempdir().unwrap();
    let objects = tmp.path().join("objects");
    let mnt = tmp.path().join("mnt");
    let mut b = LayerBuilder::new(&objects).dir("big", 0o755);
    for i in 0..10_000 {
        b = b.file(&format!("big/f{i:05}"), format!("{i}").as_bytes(), 0o644);
    }
    let large: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    b = b.file("large", &large, 0o644);
    let g = MountGuard::new(vec![b.build()], &mnt, MountOptions::default());
    let n = std::fs::read_dir(mnt.join("big")).unwrap().count();
    assert_eq!(n, 10_000);
    assert_eq!(std::fs::read(mnt.join("big/f04242")).unwrap(), b"4242");
    assert_eq!(std::fs::read(mnt.join("large")).unwrap(), large);
    g.unmount();
}

/// Layers without any xattr, mounted read-only: getxattr is switched off for
/// the mount (the kernel then answers EOPNOTSUPP itself, without asking),
/// and listxattr lists nothing. With one xattr anywhere, getxattr answers.
#[test]
fn xattrs_switched_off_only_when_there_are_none() {
    let tmp = tempfile::tempdir().unwrap();
    let objects = tmp.path().join("objects");
    let plain = LayerBuilder::new(&objects).dir("", 0o755).file("a", b"a", 0o644).file("b", b"b", 0o644).build();
    let mnt = tmp.path().join("mnt");
    let g = MountGuard::new(vec![plain.clone()], &mnt, MountOptions::default());
    for name in ["a", "b"] {
        let p = mnt.join(name);
        let mut buf = [0u8; 64];
        for x in ["security.capability", "security.selinux", "user.k"] {
            assert_eq!(rustix::fs::lgetxattr(&p, x, &mut buf[..]), Err(rustix::io::Errno::NOTSUP), "{name} {x}");
        }
        // POSIX ACLs go through the kernel's ACL code, which reads "no ACL".
        let acl = rustix::fs::lgetxattr(&p, "system.posix_acl_access", &mut buf[..]);
        assert_eq!(acl, Err(rustix::io::Errno::NODATA));
        assert_eq!(rustix::fs::llistxattr(&p, &mut buf[..]), Ok(0));
    }
    g.unmount();

    let with = LayerBuilder::new(&objects).file("b", b"b", 0o644).xattr("user.k", b"v").build();
    let g = MountGuard::new(vec![plain, with], &mnt, MountOptions::default());
    assert_eq!(getxattr(&mnt.join("b"), "user.k").as_deref(), Some(&b"v"[..]));
    let mut buf = [0u8; 64];
    assert_eq!(rustix::fs::lgetxattr(mnt.join("a"), "user.k", &mut buf[..]), Err(rustix::io::Errno::NODATA));
    g.unmount();
}

/// A layer's xattr outside the namespaces Linux filesystems keep (`foo.bar`
/// in a layer's tar) is neither listed nor read: no unpacker could have set
/// it, and getxattr of such a name fails as on the host.
#[test]
fn xattrs_outside_the_known_namespaces_are_not_shown() {
    let tmp = tempfile::tempdir().unwrap();
    let (objects, mnt) = (tmp.path().join("objects"), tmp.path().join("mnt"));
    let lower = LayerBuilder::new(&objects)
        .dir("", 0o755)
        .file("f", b"f", 0o644)
        .xattr("foo.bar", b"odd")
        .xattr("user.k", b"v")
        .xattr("system.other", b"x")
        .build();
    let g = MountGuard::new(vec![lower], &mnt, MountOptions::default());
    let mut buf = [0u8; 256];
    let n = rustix::fs::llistxattr(mnt.join("f"), &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"user.k\0");
    for name in ["foo.bar", "system.other"] {
        assert_eq!(rustix::fs::lgetxattr(mnt.join("f"), name, &mut buf[..]), Err(rustix::io::Errno::NOTSUP), "{name}");
    }
    g.unmount();
}

/// Whether the first page of the file at `path` is in the page cache
/// (mincore: asking does not read anything, unlike a non-blocking read,
/// which starts read-ahead when it misses).
fn page_cached(path: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    let len = 4096;
    // SAFETY: a fresh read-only shared mapping of an open file, unmapped
    // before returning; mincore writes one byte into `vec`.
    unsafe {
        let p = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0);
        assert_ne!(p, libc::MAP_FAILED);
        let mut vec = 0u8;
        assert_eq!(libc::mincore(p, len, &mut vec), 0);
        libc::munmap(p, len);
        vec & 1 == 1
    }
}

/// Every regular file below `dir`.
fn files_below(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Reading one file of a directory whose contents are not in memory reads
/// the directory's other small files ahead (their objects are scattered in
/// the store); see the prefetch module.
#[test]
fn a_cold_read_reads_the_directory_ahead() {
    // On the disk of the build (a tmpfs would keep every page in memory).
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let objects = tmp.path().join("objects");
    let mut b = LayerBuilder::new(&objects).dir("", 0o755).dir("d", 0o755);
    for i in 0..40 {
        b = b.file(&format!("d/f{i:02}"), format!("content of file {i}\n").as_bytes(), 0o644);
    }
    b = b.file("other/big", &vec![7u8; 2 << 20], 0o644);
    // 40 MiB of "small" files: more than one directory's read-ahead budget.
    for i in 0..40u8 {
        b = b.file(&format!("wide/w{i:02}"), &vec![i; 1 << 20], 0o644);
    }
    let layer = b.build();
    let objs = files_below(&objects);
    for o in &objs {
        let f = std::fs::File::open(o).unwrap();
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    }
    assert!(objs.iter().all(|o| !page_cached(o)), "the objects could not be dropped from memory");

    let mnt = tmp.path().join("mnt");
    let g = MountGuard::new(vec![layer], &mnt, MountOptions::default());
    assert_eq!(std::fs::read(mnt.join("d/f00")).unwrap(), b"content of file 0\n");
    // Read-ahead runs in the background: wait for it (bounded).
    let small: Vec<_> = objs.iter().filter(|o| std::fs::metadata(o).unwrap().len() < 4096).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !small.iter().all(|o| page_cached(o)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let cold: Vec<_> = small.iter().filter(|o| !page_cached(o)).collect();
    assert!(cold.is_empty(), "{} of {} sibling objects were not read ahead", cold.len(), small.len());
    // A large file elsewhere is left to the kernel's own read-ahead.
    let big = objs.iter().find(|o| std::fs::metadata(o).unwrap().len() > 1 << 20).unwrap();
    assert!(!page_cached(big));
    // A directory holding more than the budget is read ahead only in part.
    let wide: Vec<_> = objs.iter().filter(|o| std::fs::metadata(o).unwrap().len() == 1 << 20).collect();
    assert_eq!(wide.len(), 40);
    assert_eq!(std::fs::read(mnt.join("wide/w00")).unwrap(), vec![0u8; 1 << 20]);
    let cached = || wide.iter().filter(|o| page_cached(o)).count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while cached() < 32 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(cached(), 32, "the file read and the 31 siblings that fit in 32 MiB");
    for i in 0..40 {
        assert_eq!(std::fs::read(mnt.join(format!("d/f{i:02}"))).unwrap(), format!("content of file {i}\n").as_bytes());
    }
    g.unmount();
}

/// A mount over its own object directory (a mount point the user chose)
/// still reads its files: layer contents are opened relative to the object
/// directory's fd, taken before the mount. Before, the server opened them
/// by path, through its own mount, and hung.
#[test]
fn a_mount_over_its_own_object_directory_reads_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let objects = tmp.path().join("objects");
    let lowers = layers(&objects);
    let g = MountGuard::new(lowers, &objects, MountOptions::default());
    let dev = std::fs::metadata(&objects).unwrap().dev();
    let (tx, rx) = std::sync::mpsc::channel();
    let path = objects.join("etc/passwd");
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read(path).map_err(|e| e.to_string()));
    });
    let read = rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap_or_else(|_| {
        // Hung: abort the connection so that the test ends.
        abort_connection(dev);
        panic!("reading through a mount over its own object directory hung");
    });
    assert_eq!(read.unwrap(), b"root:x:0:0:replaced\n");
    g.unmount();
}

/// A mount made through a symlink to its directory is unmounted like any
/// other (the handle knows its mount as mountinfo lists it: the resolved
/// directory). Before, the handle did not find its own mount there, and
/// left it mounted.
#[test]
fn a_mount_through_a_symlink_is_unmounted() {
    let tmp = tempfile::tempdir().unwrap();
    let objects = tmp.path().join("objects");
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, tmp.path().join("link")).unwrap();
    let g = MountGuard::new(layers(&objects), &tmp.path().join("link"), MountOptions::default());
    assert!(real.join("etc/passwd").exists());
    g.unmount();
    let real = real.canonicalize().unwrap();
    assert!(strata_fs::mountinfo::mounts_at(&real).is_empty(), "still mounted at {}", real.display());
}

#[test]
fn a_mount_moved_by_renaming_its_parent_is_unmounted_where_it_is() {
    // Renaming a parent directory of the mount point moves the mount; the
    // handle unmounts it there (before, it looked at the old path only and
    // left the mount behind, dead once its server ended).
    let tmp = tempfile::tempdir().unwrap();
    let objects = tmp.path().join("objects");
    let before = tmp.path().join("before");
    std::fs::create_dir_all(before.join("m")).unwrap();
    let g = MountGuard::new(layers(&objects), &before.join("m"), MountOptions::default());
    let after = tmp.path().canonicalize().unwrap().join("after");
    std::fs::rename(&before, &after).unwrap();
    assert!(after.join("m/etc/passwd").exists());
    g.unmount();
    assert!(strata_fs::mountinfo::mounts_at(&after.join("m")).is_empty(), "still mounted at {}", after.display());
}
