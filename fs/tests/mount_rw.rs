//! Writable mounts: copy-up, whiteouts, opaque directories, metadata-only
//! copy-up, remount of an existing upper directory, and the change list.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use strata_fs::testing::ops::{file_capability, getdents_batch, posix_acl};
use strata_fs::{ChangeKind, MountOptions};

fn base(objects: &Path) -> Vec<strata_fs::Lower> {
    let l0 = LayerBuilder::new(objects)
        .dir("", 0o755)
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0\n", 0o644)
        .xattr("user.origin", b"lower")
        .file("etc/hosts", b"127.0.0.1 localhost\n", 0o644)
        .dir("data", 0o755)
        .file("data/a", b"aaa", 0o644)
        .file("data/b", b"bbb", 0o644)
        .dir("data/sub", 0o750)
        .file("data/sub/c", b"ccc", 0o600)
        .owner(7, 8)
        .file("bin/tool", b"tool", 0o755)
        .hardlink("bin/tool2", "bin/tool")
        .symlink("link", "etc/passwd")
        .build();
    vec![l0]
}

/// A temporary directory with `objects` and `mnt` paths and an empty
/// `upper` directory in it.
fn work_dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (objects, upper, mnt) = (tmp.path().join("objects"), tmp.path().join("upper"), tmp.path().join("mnt"));
    std::fs::create_dir(&upper).unwrap();
    (tmp, objects, upper, mnt)
}

/// No temporary copy-up file is left in the upper root.
fn assert_no_copy_up_leftovers(upper: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(upper)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".wh..wh..cu"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn opts(upper: &Path) -> MountOptions {
    // Cached I/O here; passthrough has its own test below.
    MountOptions { upper: Some(upper.to_path_buf()), passthrough: false, ..MountOptions::default() }
}

#[test]
fn one_upper_directory_serves_one_mount() {
    let (tmp, objects, upper, a) = work_dirs();
    let b = tmp.path().join("b");
    let g = MountGuard::new(base(&objects), &a, opts(&upper));
    std::fs::create_dir_all(&b).unwrap();
    match strata_fs::mount(base(&objects), &b, opts(&upper)) {
        Err(e @ strata_fs::FsError::UpperInUse { .. }) => {
            assert!(e.to_string().contains("is in use by another mount"), "{e}")
        }
        Err(e) => panic!("a second mount of the upper directory failed otherwise: {e}"),
        Ok(_) => panic!("a second mount of the upper directory was let through"),
    }
    // Read-only mounts of the same layers are no concern of it.
    let ro = MountGuard::new(base(&objects), &b, MountOptions::default());
    ro.unmount();
    g.unmount();
    let g = MountGuard::new(base(&objects), &b, opts(&upper));
    g.unmount();
}

#[test]
fn an_upper_directory_is_free_again_after_unmount_whoever_holds_a_copy_of_its_descriptors() {
    // A child forked while the mount lives holds a copy of every
    // descriptor of this process, the upper directory's lock among them
    // (here it sleeps; a child that execs holds them until then).
    let (_tmp, objects, upper, mnt) = work_dirs();
    let g = MountGuard::new(base(&objects), &mnt, opts(&upper));
    // SAFETY: the child only sleeps and exits (async-signal-safe calls).
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child == 0 {
        unsafe {
            libc::sleep(3);
            libc::_exit(0);
        }
    }
    g.unmount();
    let again = strata_fs::mount(base(&objects), &mnt, opts(&upper));
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    let again = again.expect("the upper directory, mounted again at once");
    again.unmount().unwrap();
}

#[test]
fn copy_up_whiteouts_and_remount() {
    let (tmp, objects, upper, mnt) = work_dirs();
    let g = MountGuard::new(base(&objects), &mnt, opts(&upper));

    // Content change copies up; the object stays untouched.
    let mut f = std::fs::OpenOptions::new().append(true).open(mnt.join("etc/hosts")).unwrap();
    f.write_all(b"10.0.0.1 db\n").unwrap();
    drop(f);
    assert_eq!(std::fs::read(mnt.join("etc/hosts")).unwrap(), b"127.0.0.1 localhost\n10.0.0.1 db\n");
    assert_eq!(std::fs::read(upper.join("etc/hosts")).unwrap(), b"127.0.0.1 localhost\n10.0.0.1 db\n");

    // chmod/chown copy metadata only.
    std::fs::set_permissions(mnt.join("etc/passwd"), std::fs::Permissions::from_mode(0o600)).unwrap();
    rustix::fs::chown(
        mnt.join("etc/passwd"),
        Some(rustix::fs::Uid::from_raw(4242)),
        Some(rustix::fs::Gid::from_raw(4343)),
    )
    .unwrap();
    let m = std::fs::metadata(mnt.join("etc/passwd")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid(), m.len()), (0o600, 4242, 4343, 11));
    assert_eq!(std::fs::metadata(upper.join("etc/passwd")).unwrap().len(), 0, "metacopy keeps content below");
    assert_eq!(std::fs::read(mnt.join("etc/passwd")).unwrap(), b"root:x:0:0\n");
    assert_eq!(getxattr(&mnt.join("etc/passwd"), "user.origin").as_deref(), Some(&b"lower"[..]));

    // A reader opened before the copy-up sees the writes made through the mount.
    let mut reader = std::fs::File::open(mnt.join("data/a")).unwrap();
    std::fs::write(mnt.join("data/a"), b"AAAA").unwrap();
    let mut s = String::new();
    reader.seek(SeekFrom::Start(0)).unwrap();
    reader.read_to_string(&mut s).unwrap();
    assert_eq!(s, "AAAA");

    // Deleting lower entries leaves whiteouts; recreating a directory makes it opaque.
    std::fs::remove_file(mnt.join("data/b")).unwrap();
    assert!(upper.join("data/.wh.b").exists());
    std::fs::remove_file(mnt.join("data/sub/c")).unwrap();
    std::fs::remove_dir(mnt.join("data/sub")).unwrap();
    assert!(upper.join("data/.wh.sub").exists());
    assert!(!upper.join("data/sub").exists());
    std::fs::create_dir(mnt.join("data/sub")).unwrap();
    assert!(upper.join("data/sub/.wh..wh..opq").exists());
    assert!(!upper.join("data/.wh.sub").exists());
    assert_eq!(std::fs::read_dir(mnt.join("data/sub")).unwrap().count(), 0);

    // Hard links: writing through one name shows through the other.
    std::fs::write(mnt.join("bin/tool2"), b"new tool").unwrap();
    assert_eq!(std::fs::read(mnt.join("bin/tool")).unwrap(), b"new tool");
    assert_eq!(std::fs::metadata(mnt.join("bin/tool")).unwrap().nlink(), 2);
    std::fs::hard_link(mnt.join("etc/hosts"), mnt.join("hosts.link")).unwrap();
    assert_eq!(std::fs::metadata(mnt.join("etc/hosts")).unwrap().nlink(), 2);

    // Names that would read as whiteouts are refused.
    assert_eq!(std::fs::write(mnt.join(".wh.x"), b"").unwrap_err().raw_os_error(), Some(libc::EINVAL));

    // A whiteout name longer than NAME_MAX is stored in its long form.
    let long = "L".repeat(253);
    std::fs::write(mnt.join(&long), b"x").unwrap();
    // Closed first: a mount still in use is only detached, and its server
    // keeps the upper directory until the last user leaves.
    drop(reader);
    g.unmount();

    // A layer whose file has the long name, deleted through the mount.
    let l1 = LayerBuilder::new(&objects).file(&long, b"long", 0o644).build();
    let mut lowers = base(&objects);
    lowers.push(l1);
    let upper2 = tmp.path().join("upper2");
    std::fs::create_dir(&upper2).unwrap();
    let g = MountGuard::new(lowers.clone(), &mnt, opts(&upper2));
    std::fs::remove_file(mnt.join(&long)).unwrap();
    assert!(std::fs::symlink_metadata(mnt.join(&long)).is_err());
    g.unmount();
    let g = MountGuard::new(lowers.clone(), &mnt, opts(&upper2));
    assert!(std::fs::symlink_metadata(mnt.join(&long)).is_err(), "long whiteout survives remount");
    g.unmount();
    let ch = strata_fs::changes(&lowers, &upper2).unwrap();
    assert!(ch.iter().any(|c| c.kind == ChangeKind::Deleted && c.path == format!("/{long}")), "{ch:?}");
    // A long whiteout that lost the name it holds (a write that failed half
    // way) hides nothing; deleting the name again repairs it.
    let lw = std::fs::read_dir(&upper2)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".wh..wh..lng.")))
        .expect("the long whiteout");
    std::fs::write(&lw, b"").unwrap();
    let g = MountGuard::new(lowers.clone(), &mnt, opts(&upper2));
    assert!(std::fs::symlink_metadata(mnt.join(&long)).is_ok(), "an empty long whiteout hides nothing");
    std::fs::remove_file(mnt.join(&long)).unwrap();
    g.unmount();
    let g = MountGuard::new(lowers.clone(), &mnt, opts(&upper2));
    assert!(std::fs::symlink_metadata(mnt.join(&long)).is_err(), "the long whiteout was repaired");
    g.unmount();

    // Remount of the first upper shows the same tree.
    let g = MountGuard::new(base(&objects), &mnt, opts(&upper));
    let before = snapshot(&mnt);
    assert_eq!(std::fs::read(mnt.join("etc/passwd")).unwrap(), b"root:x:0:0\n");
    let m = std::fs::metadata(mnt.join("etc/passwd")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid(), m.len()), (0o600, 4242, 4343, 11));
    assert!(std::fs::symlink_metadata(mnt.join("data/b")).is_err());
    assert_eq!(std::fs::read_dir(mnt.join("data/sub")).unwrap().count(), 0);
    assert_eq!(std::fs::metadata(mnt.join("bin/tool")).unwrap().nlink(), 2);
    assert_eq!(std::fs::metadata(mnt.join("etc/hosts")).unwrap().nlink(), 2);
    g.unmount();
    let g = MountGuard::new(base(&objects), &mnt, opts(&upper));
    assert_eq!(snapshot(&mnt), before);
    g.unmount();

    let ch: Vec<String> = strata_fs::changes(&base(&objects), &upper)
        .unwrap()
        .into_iter()
        .map(|c| format!("{} {}", c.kind.letter(), c.path))
        .collect();
    for want in
        ["C /etc/hosts", "C /etc/passwd", "D /data/b", "C /data/sub", "C /bin/tool", "A /hosts.link", "C /data/a"]
    {
        assert!(ch.iter().any(|c| c == want), "{want} missing in {ch:?}");
    }
    assert!(!ch.iter().any(|c| c.contains(".wh.")), "{ch:?}");
}

#[test]
fn rename_lower_directory_with_content() {
    let (_tmp, objects, upper, mnt) = work_dirs();
    let g = MountGuard::new(base(&objects), &mnt, opts(&upper));
    std::fs::rename(mnt.join("data"), mnt.join("moved")).unwrap();
    assert!(std::fs::symlink_metadata(mnt.join("data")).is_err());
    assert_eq!(std::fs::read(mnt.join("moved/sub/c")).unwrap(), b"ccc");
    let c = std::fs::metadata(mnt.join("moved/sub/c")).unwrap();
    assert_eq!((c.uid(), c.gid(), c.mode() & 0o7777), (7, 8, 0o600));
    // Back over the whiteout: the directory must not merge with the lower one.
    std::fs::remove_file(mnt.join("moved/a")).unwrap();
    std::fs::rename(mnt.join("moved"), mnt.join("data")).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(mnt.join("data")).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["b", "sub"]);
    g.unmount();
    let g = MountGuard::new(base(&objects), &mnt, opts(&upper));
    let mut names: Vec<_> = std::fs::read_dir(mnt.join("data")).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["b", "sub"]);
    g.unmount();
}

/// Entries removed while a process still holds them open have no name to
/// copy up to: setting an xattr through the fd, or opening it again for
/// writing through /proc, fails with ENOENT and the mount keeps serving.
/// Copy-ups below a lower tree nested 12,000 deep (upper paths far past
/// PATH_MAX) work, and a remount, the change list and a commit's
/// read-back see them.
#[test]
fn removed_while_open_and_deep_trees() {
    let (_tmp, objects, upper, mnt) = work_dirs();
    let mut deep = String::from("deep");
    let mut b = LayerBuilder::new(&objects).dir("", 0o755).file("f", b"lower", 0o644).dir("empty", 0o755);
    b = b.dir(&deep, 0o755);
    let depth = 12_000;
    for _ in 0..depth {
        deep.push_str("/d");
        b = b.dir(&deep, 0o755);
    }
    let lowers = vec![b.build()];
    let g = MountGuard::new(lowers.clone(), &mnt, opts(&upper));

    let f = std::fs::File::open(mnt.join("f")).unwrap();
    std::fs::remove_file(mnt.join("f")).unwrap();
    let e = rustix::fs::fsetxattr(&f, "user.x", b"1", rustix::fs::XattrFlags::empty()).unwrap_err();
    assert_eq!(e, rustix::io::Errno::NOENT);
    let e = rustix::fs::fremovexattr(&f, "user.x").unwrap_err();
    assert!(matches!(e, rustix::io::Errno::NOENT | rustix::io::Errno::NODATA), "{e:?}");
    let again = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
    for trunc in [true, false] {
        let r = std::fs::OpenOptions::new().write(true).truncate(trunc).open(&again);
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENOENT), "reopen for writing, O_TRUNC {trunc}");
    }
    let mut s = String::new();
    std::io::Read::read_to_string(&mut &f, &mut s).unwrap();
    assert_eq!(s, "lower");
    let d = std::fs::File::open(mnt.join("empty")).unwrap();
    std::fs::remove_dir(mnt.join("empty")).unwrap();
    let e = rustix::fs::fsetxattr(&d, "user.x", b"1", rustix::fs::XattrFlags::empty()).unwrap_err();
    assert_eq!(e, rustix::io::Errno::NOENT);
    // An upper file removed while open takes times and mode through its fd,
    // and the change time moves with them.
    let w = std::fs::File::create(mnt.join("gone")).unwrap();
    std::fs::remove_file(mnt.join("gone")).unwrap();
    let before = rustix::fs::fstat(&w).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(30));
    let t = |sec| rustix::fs::Timespec { tv_sec: sec, tv_nsec: 5 };
    rustix::fs::futimens(&w, &rustix::fs::Timestamps { last_access: t(1_000_000), last_modification: t(2_000_000) })
        .unwrap();
    let st = rustix::fs::fstat(&w).unwrap();
    assert_eq!((st.st_atime, st.st_atime_nsec, st.st_mtime, st.st_mtime_nsec), (1_000_000, 5, 2_000_000, 5));
    assert!((st.st_ctime, st.st_ctime_nsec) > (before.st_ctime, before.st_ctime_nsec), "ctime after futimens");
    std::thread::sleep(std::time::Duration::from_millis(30));
    rustix::fs::fchmod(&w, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
    let st2 = rustix::fs::fstat(&w).unwrap();
    assert_eq!(st2.st_mode & 0o7777, 0o600);
    assert!((st2.st_ctime, st2.st_ctime_nsec) > (st.st_ctime, st.st_ctime_nsec), "ctime after fchmod");
    drop(w);
    // Closed before the unmount below: a mount still in use is only
    // detached, and its server keeps the upper directory until the last
    // user leaves.
    drop((f, d));

    // The deep tree: a file created at its bottom, the tree moved, and the
    // file removed again. Its upper path is far longer than PATH_MAX; the
    // kernel's overlayfs copies up through such paths, and so does strata:
    // no host call takes a whole path from the upper root, and the walks of
    // a remount, of the change list and of a commit are loops that hold one
    // directory fd at a time (recursion would run out of stack, an fd per
    // level out of fds).
    let comps: Vec<&str> = deep.split('/').collect();
    let bottom = |mnt: &Path, top: &str| {
        let mut at = rustix::fs::open(mnt, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
        let mut path = vec![top];
        path.extend(&comps[1..]);
        for chunk in path.chunks(1000) {
            at = rustix::fs::openat(&at, chunk.join("/"), rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
        }
        at
    };
    let read_at = |dir: &std::os::fd::OwnedFd, name: &str| -> Vec<u8> {
        let f = rustix::fs::openat(dir, name, rustix::fs::OFlags::RDONLY, rustix::fs::Mode::empty()).unwrap();
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(f), &mut v).unwrap();
        v
    };
    let at = bottom(&mnt, "deep");
    let f = rustix::fs::openat(
        &at,
        "new",
        rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY,
        rustix::fs::Mode::from_raw_mode(0o644),
    );
    std::io::Write::write_all(&mut std::fs::File::from(f.expect("create at the bottom")), b"bottom").unwrap();
    drop(at);
    std::fs::rename(mnt.join("deep"), mnt.join("moved")).expect("rename of the deep tree");
    assert_eq!(read_at(&bottom(&mnt, "moved"), "new"), b"bottom");
    assert!(std::fs::symlink_metadata(mnt.join("f")).is_err(), "the mount still serves");
    std::fs::write(mnt.join("after"), b"ok").unwrap();
    assert_eq!(std::fs::read(mnt.join("after")).unwrap(), b"ok");
    g.unmount();

    // What a remount, the change list and a commit's read-back see.
    let deep_path = |top: &str, name: &str| format!("{top}/{}/{name}", comps[1..].join("/"));
    let ch = strata_fs::changes(&lowers, &upper).unwrap();
    let want = format!("/{}", deep_path("moved", "new"));
    assert!(
        ch.iter().any(|c| c.kind == strata_fs::ChangeKind::Added && c.path == want),
        "the deep file in the changes"
    );
    assert!(ch.iter().any(|c| c.kind == strata_fs::ChangeKind::Deleted && c.path == "/deep"));
    let entries = strata_fs::upper_entries(&lowers, &upper).unwrap();
    let e = entries.iter().find(|e| e.path == deep_path("moved", "new").as_bytes()).expect("the deep file's entry");
    assert_eq!(e.kind, strata_fs::UpperKind::File { size: 6, content: strata_fs::UpperContent::Upper });
    let mut content = Vec::new();
    strata_fs::open_upper_file(&upper, &e.path).unwrap().read_to_end(&mut content).unwrap();
    assert_eq!(content, b"bottom");
    assert_eq!(
        entries.iter().filter(|e| e.kind == strata_fs::UpperKind::Dir).count(),
        depth + 2,
        "root, moved and all below"
    );

    let g = MountGuard::new(lowers.clone(), &mnt, opts(&upper));
    let at = bottom(&mnt, "moved");
    assert_eq!(read_at(&at, "new"), b"bottom", "after a remount");
    rustix::fs::unlinkat(&at, "new", rustix::fs::AtFlags::empty()).unwrap();
    drop(at);
    assert!(std::fs::symlink_metadata(mnt.join("deep")).is_err());
    // rm -rf of the whole deep tree.
    let rm = std::process::Command::new("rm").arg("-rf").arg(mnt.join("moved")).output().unwrap();
    let said = String::from_utf8_lossy(&rm.stderr);
    // (Its paths are 24 KB long: the end of the message is what tells.)
    assert!(rm.status.success(), "rm -rf: ...{}", &said[said.len().saturating_sub(200)..]);
    assert!(std::fs::symlink_metadata(mnt.join("moved")).is_err());
    g.unmount();
    assert!(strata_fs::changes(&lowers, &upper).unwrap().iter().all(|c| !c.path.starts_with("/moved")));
}

/// truncate(2) by path: a SETATTR, where opening the file would copy it up
/// first.
fn path_truncate(p: &Path, len: i64) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), len) }, 0, "truncate {}", p.display());
}

/// Cuts the object file holding `content` down to its first `len` bytes.
fn shorten_object(objects: &Path, content: &[u8], len: u64) {
    for shard in std::fs::read_dir(objects).unwrap() {
        for obj in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let p = obj.unwrap().path();
            if std::fs::read(&p).unwrap() == content {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
                std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len).unwrap();
                return;
            }
        }
    }
    panic!("no object holds the content");
}

/// A lower file whose object is missing from the store (a damaged store)
/// reads as an I/O error, and so does its copy-up; before, both answered
/// ENOENT for a file that the listing shows, which programs take as its
/// absence. Other files stay readable.
#[test]
fn a_missing_object_is_an_io_error() {
    let (_tmp, objects, upper, mnt) = work_dirs();
    let g = MountGuard::new(base(&objects), &mnt, opts(&upper));
    shorten_object(&objects, b"bbb", 0);
    for shard in std::fs::read_dir(&objects).unwrap() {
        for obj in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let p = obj.unwrap().path();
            if std::fs::metadata(&p).unwrap().len() == 0 {
                std::fs::remove_file(&p).unwrap();
            }
        }
    }
    let errno = |r: std::io::Result<Vec<u8>>| r.map_err(|e| e.raw_os_error());
    assert_eq!(errno(std::fs::read(mnt.join("data/b"))), Err(Some(libc::EIO)));
    let append = std::fs::OpenOptions::new().append(true).open(mnt.join("data/b")).map(|_| Vec::new());
    assert_eq!(errno(append), Err(Some(libc::EIO)));
    assert!(std::fs::symlink_metadata(mnt.join("data/b")).is_ok(), "still listed");
    assert_eq!(std::fs::read(mnt.join("data/a")).unwrap(), b"aaa");
    assert_no_copy_up_leftovers(&upper);
    g.unmount();
}

/// A lower file whose object has another size than its entry (a store
/// damaged after the pull) reads as an I/O error too, also after a
/// metadata-only copy-up; before, it read short (or long) without error,
/// passthrough reading the object itself. A copy-up that needs only the
/// part that is there still works (see the truncation below).
#[test]
fn an_object_of_the_wrong_size_reads_as_an_io_error() {
    let (_tmp, objects, upper, mnt) = work_dirs();
    let g = MountGuard::new(base(&objects), &mnt, opts(&upper));
    shorten_object(&objects, b"bbb", 2);
    let errno = |r: std::io::Result<Vec<u8>>| r.map_err(|e| e.raw_os_error());
    assert_eq!(errno(std::fs::read(mnt.join("data/b"))), Err(Some(libc::EIO)));
    std::fs::set_permissions(mnt.join("data/b"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(errno(std::fs::read(mnt.join("data/b"))), Err(Some(libc::EIO)), "after a metadata copy-up");
    assert_eq!(std::fs::read(mnt.join("data/a")).unwrap(), b"aaa");
    g.unmount();
}

/// A file removed while open keeps its extended attributes for its open
/// descriptors, as on any local filesystem: read, listed, set and removed
/// through them. Before, each of these failed with ENOENT (fchmod worked).
#[test]
fn xattrs_of_a_file_removed_while_open() {
    let (_tmp, objects, upper, mnt) = work_dirs();
    let g = MountGuard::new(base(&objects), &mnt, opts(&upper));
    let f = std::fs::File::create(mnt.join("data/gone")).unwrap();
    let set = |name: &str, v: &[u8]| rustix::fs::fsetxattr(&f, name, v, rustix::fs::XattrFlags::empty());
    set("user.a", b"1").unwrap();
    std::fs::remove_file(mnt.join("data/gone")).unwrap();
    let get = |name: &str| {
        let mut buf = [0u8; 64];
        rustix::fs::fgetxattr(&f, name, &mut buf).map(|n| buf[..n].to_vec())
    };
    let list = || {
        let mut buf = [0u8; 256];
        let n = rustix::fs::flistxattr(&f, &mut buf).unwrap();
        let mut names: Vec<String> =
            buf[..n].split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into()).collect();
        names.sort();
        names
    };
    assert_eq!(get("user.a").unwrap(), b"1");
    set("user.b", b"2").unwrap();
    set("trusted.t", b"3").unwrap();
    assert_eq!(list(), ["trusted.t", "user.a", "user.b"]);
    rustix::fs::fremovexattr(&f, "user.a").unwrap();
    assert_eq!(list(), ["trusted.t", "user.b"]);
    assert_eq!(get("trusted.t").unwrap(), b"3");
    drop(f);
    g.unmount();
}

/// The runtime's mount points are not a container's changes, nor are the
/// directories made only to hold them (an image without /etc gets one for
/// /etc/hosts): Docker keeps both in its "init" layer.
#[test]
fn hidden_mount_points_and_their_holders_are_no_changes() {
    let (_tmp, objects, upper, _mnt) = work_dirs();
    let lowers = vec![LayerBuilder::new(&objects)
        .dir("", 0o755)
        .dir("bin", 0o755)
        .file("bin/tool", b"t", 0o755)
        .dir("srv", 0o755)
        .mtime(1_000_000, 0)
        .build()];
    // (srv as a copy-up leaves it: its lower mode and time.)
    std::fs::create_dir_all(upper.join("srv/data/x")).unwrap();
    std::fs::set_permissions(upper.join("srv"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = rustix::fs::Timespec { tv_sec: 1_000_000, tv_nsec: 0 };
    let times = rustix::fs::Timestamps { last_access: t, last_modification: t };
    rustix::fs::utimensat(rustix::fs::CWD, upper.join("srv"), &times, rustix::fs::AtFlags::empty()).unwrap();
    for d in ["etc", "dev", "run/deep"] {
        std::fs::create_dir_all(upper.join(d)).unwrap();
    }
    std::fs::write(upper.join("etc/hosts"), b"").unwrap();
    std::fs::write(upper.join("run/deep/sock"), b"").unwrap();
    std::fs::write(upper.join("new"), b"n").unwrap();
    let hidden: &[&[u8]] = &[b"etc/hosts", b"dev", b"run/deep/sock", b"srv/data/x"];
    let listed = |hidden: &[&[u8]]| -> Vec<String> {
        strata_fs::changes_hiding(&lowers, &upper, hidden)
            .unwrap()
            .into_iter()
            .map(|c| format!("{} {}", c.kind.letter(), c.path))
            .collect()
    };
    assert_eq!(listed(hidden), ["A /new"]);
    // A directory that holds something else too stays a change.
    std::fs::write(upper.join("etc/other"), b"o").unwrap();
    assert_eq!(listed(hidden), ["A /etc", "A /etc/other", "A /new"]);
    let all = [
        "A /dev",
        "A /etc",
        "A /etc/hosts",
        "A /etc/other",
        "A /new",
        "A /run",
        "A /run/deep",
        "A /run/deep/sock",
        "C /srv",
        "A /srv/data",
        "A /srv/data/x",
    ];
    assert_eq!(listed(&[]), all);
}

/// An upper directory changed by hand (`--upper` takes any directory):
/// a record that gives a directory the type of a file, or a file that of a
/// directory, is ignored, so each shows as what the host has. Before, the
/// directory showed as a file that no one could open or list.
#[test]
fn a_record_of_the_wrong_type_is_ignored() {
    let (_tmp, objects, upper, mnt) = work_dirs();
    std::fs::create_dir_all(upper.join("etc/made")).unwrap();
    std::fs::write(upper.join("etc/made/inside"), b"in").unwrap();
    std::fs::write(upper.join("etc/plain"), b"plain").unwrap();
    std::fs::write(upper.join("etc/fifo"), b"").unwrap();
    let set = |p: &str, v: &str| {
        rustix::fs::lsetxattr(upper.join(p), "user.strata.meta", v.as_bytes(), rustix::fs::XattrFlags::empty()).unwrap()
    };
    set("etc/made", &format!("{} 0 0 0", libc::S_IFREG | 0o644));
    set("etc/plain", &format!("{} 0 0 0", libc::S_IFDIR | 0o755));
    // (A regular file standing in for a fifo is how strata keeps one
    // where the host refuses mknod: that record is kept.)
    set("etc/fifo", &format!("{} 0 0 0", libc::S_IFIFO | 0o600));
    let g = MountGuard::new(base(&objects), &mnt, opts(&upper));
    let kind = |p: &str| std::fs::symlink_metadata(mnt.join(p)).unwrap().file_type();
    assert!(kind("etc/made").is_dir());
    assert_eq!(std::fs::read(mnt.join("etc/made/inside")).unwrap(), b"in");
    assert!(kind("etc/plain").is_file());
    assert_eq!(std::fs::read(mnt.join("etc/plain")).unwrap(), b"plain");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&kind("etc/fifo")));
    g.unmount();
}

/// Moving lower files and trees copies metadata only (their content is
/// found by digest wherever the name goes), and truncating a lower file
/// copies only what stays; content reads back right through all of it,
/// also after a write, after a remount, and in the upper directory's
/// entries that commit reads.
#[test]
fn moves_and_truncation_copy_no_needless_content() {
    let (_tmp, objects, upper, mnt) = work_dirs();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let cut: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let lowers = vec![LayerBuilder::new(&objects)
        .dir("", 0o755)
        .file("big", &big, 0o640)
        .owner(5, 6)
        .dir("tree", 0o755)
        .file("tree/x", b"xxxx", 0o644)
        .dir("tree/deep", 0o700)
        .file("tree/deep/y", b"yyyyyy", 0o600)
        .file("tree/deep/z", b"zzz", 0o600)
        .file("cut", &cut, 0o644)
        .file("cut0", &big, 0o644)
        .build()];
    // Only the head of `cut`'s object is there (as with an object not fully
    // fetched yet): a copy of more than the head fails with EIO.
    shorten_object(&objects, &cut, 1000);
    let g = MountGuard::new(lowers.clone(), &mnt, opts(&upper));
    std::fs::rename(mnt.join("big"), mnt.join("moved")).unwrap();
    std::fs::rename(mnt.join("tree"), mnt.join("tree2")).unwrap();
    assert_eq!(std::fs::metadata(upper.join("moved")).unwrap().len(), 0, "a moved file is a metacopy");
    assert_eq!(std::fs::metadata(upper.join("tree2/deep/y")).unwrap().len(), 0, "so is a file in a moved tree");
    assert_eq!(std::fs::read(mnt.join("moved")).unwrap(), big);
    assert_eq!(std::fs::read(mnt.join("tree2/deep/y")).unwrap(), b"yyyyyy");
    let m = std::fs::metadata(mnt.join("moved")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777, m.len()), (5, 6, 0o640, big.len() as u64));

    // Truncation: only the part that stays comes up.
    path_truncate(&mnt.join("cut"), 1000);
    assert_eq!(std::fs::read(mnt.join("cut")).unwrap(), &cut[..1000]);
    path_truncate(&mnt.join("cut0"), 0);
    assert_eq!(std::fs::read(mnt.join("cut0")).unwrap(), b"");
    // Growing a moved metacopy file: the content comes up first.
    path_truncate(&mnt.join("tree2/x"), 6);
    assert_eq!(std::fs::read(mnt.join("tree2/x")).unwrap(), b"xxxx\0\0");

    // A second name for a lower file: still no content copied; a write
    // through one name shows through the other.
    std::fs::hard_link(mnt.join("tree2/deep/y"), mnt.join("ylink")).unwrap();
    assert_eq!(std::fs::metadata(upper.join("ylink")).unwrap().len(), 0, "a linked file is a metacopy");
    assert_eq!(std::fs::read(mnt.join("ylink")).unwrap(), b"yyyyyy");
    std::fs::OpenOptions::new().append(true).open(mnt.join("ylink")).unwrap().write_all(b"+").unwrap();
    assert_eq!(std::fs::read(mnt.join("tree2/deep/y")).unwrap(), b"yyyyyy+");
    assert_eq!(std::fs::metadata(mnt.join("tree2/deep/y")).unwrap().nlink(), 2);

    // A write into a moved file fills in the content where it now is.
    let mut f = std::fs::OpenOptions::new().write(true).open(mnt.join("moved")).unwrap();
    f.write_all(b"HEAD").unwrap();
    drop(f);
    let mut want = big.clone();
    want[..4].copy_from_slice(b"HEAD");
    assert_eq!(std::fs::read(mnt.join("moved")).unwrap(), want);
    g.unmount();

    let g = MountGuard::new(lowers.clone(), &mnt, opts(&upper));
    assert_eq!(std::fs::read(mnt.join("moved")).unwrap(), want);
    assert_eq!(std::fs::read(mnt.join("tree2/deep/y")).unwrap(), b"yyyyyy+");
    assert_eq!(std::fs::read(mnt.join("ylink")).unwrap(), b"yyyyyy+");
    assert_eq!(std::fs::metadata(mnt.join("ylink")).unwrap().nlink(), 2);
    assert!(std::fs::symlink_metadata(mnt.join("tree")).is_err());
    assert_eq!(std::fs::read(mnt.join("cut")).unwrap(), &cut[..1000]);
    g.unmount();

    // What commit reads: a metacopy's content is its lower object.
    let entries = strata_fs::upper_entries(&lowers, &upper).unwrap();
    let cut0 = entries.iter().find(|e| e.path == b"cut0").expect("cut0 listed");
    assert!(matches!(cut0.kind, strata_fs::UpperKind::File { size: 0, .. }), "{cut0:?}");
    let z = entries.iter().find(|e| e.path == b"tree2/deep/z").expect("tree2/deep/z listed");
    match &z.kind {
        strata_fs::UpperKind::File { size: 3, content: strata_fs::UpperContent::Object(p) } => {
            assert_eq!(std::fs::read(p).unwrap(), b"zzz")
        }
        other => panic!("tree2/deep/z: {other:?}"),
    }
}

/// With FUSE passthrough (used when running as root): upper files are
/// passed through for readers and writers alike, lower objects only on
/// read-only mounts; cached and passthrough opens of one inode never mix, so
/// every combination below must work and read back what was written.
#[test]
fn passthrough_and_cached_opens_coexist() {
    let (_tmp, objects, upper, mnt) = work_dirs();
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    let lowers = vec![LayerBuilder::new(&objects).dir("", 0o755).file("big", &big, 0o644).build()];
    let o = MountOptions { upper: Some(upper.clone()), passthrough: true, ..MountOptions::default() };
    let g = MountGuard::new(lowers.clone(), &mnt, o);
    // A lower reader, then a writer (copy-up) while it is open.
    let mut r1 = std::fs::File::open(mnt.join("big")).unwrap();
    let mut head = vec![0u8; 1000];
    r1.read_exact(&mut head).unwrap();
    let mut w = std::fs::OpenOptions::new().write(true).open(mnt.join("big")).unwrap();
    w.write_all(b"changed").unwrap();
    drop(w);
    let r2 = std::fs::read(mnt.join("big")).unwrap();
    assert_eq!(&r2[..7], b"changed");
    assert_eq!(&r2[7..], &big[7..]);
    let mut rest = Vec::new();
    r1.read_to_end(&mut rest).unwrap();
    assert_eq!(rest.len() + 1000, big.len());
    drop(r1);
    // Now an upper file: a reader and a writer at once share the backing file.
    let mut r3 = std::fs::File::open(mnt.join("big")).unwrap();
    let mut w = std::fs::OpenOptions::new().write(true).open(mnt.join("big")).unwrap();
    w.write_all(b"AGAIN").unwrap();
    let mut first = [0u8; 7];
    r3.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"AGAINed");
    drop((r3, w));
    // A new file written and read back, large writes included.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 7) as u8).collect();
    std::fs::write(mnt.join("new"), &data).unwrap();
    assert_eq!(std::fs::read(mnt.join("new")).unwrap(), data);
    std::fs::OpenOptions::new().append(true).open(mnt.join("new")).unwrap().write_all(b"tail").unwrap();
    assert_eq!(std::fs::metadata(mnt.join("new")).unwrap().len(), data.len() as u64 + 4);
    g.unmount();
    assert_eq!(std::fs::read(upper.join("new")).unwrap().len(), data.len() + 4);
    // Read-only mount: lower objects are passed through.
    let ro = MountOptions { passthrough: true, ..MountOptions::default() };
    let g = MountGuard::new(lowers, &mnt, ro);
    let a = std::fs::File::open(mnt.join("big")).unwrap();
    assert_eq!(std::fs::read(mnt.join("big")).unwrap(), big);
    drop(a);
    g.unmount();
}

/// Big lower files: an append copies the content up (outside the tree lock),
/// an O_TRUNC open copies nothing; no temporary files are left behind.
#[test]
fn copy_up_of_large_files() {
    let (_tmp, objects, upper, mnt) = work_dirs();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 249) as u8).collect();
    let lowers = vec![LayerBuilder::new(&objects)
        .dir("", 0o755)
        .file("a", &big, 0o644)
        .file("b", &big, 0o600)
        .owner(12, 34)
        .build()];
    let g = MountGuard::new(lowers.clone(), &mnt, opts(&upper));
    // Lookups and reads elsewhere go on while "a" is copied.
    let mut f = std::fs::OpenOptions::new().append(true).open(mnt.join("a")).unwrap();
    f.write_all(b"END").unwrap();
    drop(f);
    let got = std::fs::read(mnt.join("a")).unwrap();
    assert_eq!(got.len(), big.len() + 3);
    assert_eq!(&got[..big.len()], &big[..]);
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(mnt.join("b")).unwrap();
    f.write_all(b"short").unwrap();
    drop(f);
    assert_eq!(std::fs::read(mnt.join("b")).unwrap(), b"short");
    let m = std::fs::metadata(mnt.join("b")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (12, 34, 0o600));
    g.unmount();
    assert_no_copy_up_leftovers(&upper);
    let g = MountGuard::new(lowers, &mnt, opts(&upper));
    assert_eq!(std::fs::read(mnt.join("b")).unwrap(), b"short");
    assert_eq!(std::fs::metadata(mnt.join("a")).unwrap().len(), big.len() as u64 + 3);
    g.unmount();
}

/// Runs `op`, a copy-up of a large file whose content is `object`, with
/// the object swapped for a fifo, so that the copy waits, deterministically,
/// until a lookup of `other` (a name not looked up before: a request the
/// server must answer now) came back, or did not within 20 s, which fails.
/// The fifo cannot be copied from: the copy-up then copies under the lock.
fn copy_waits_on_object(object: &Path, other: &Path, op: impl FnOnce() -> std::io::Result<()> + Send + 'static) {
    use std::os::unix::fs::FileTypeExt;
    // The object becomes a fifo (a second name kept to open it by).
    let real = object.with_extension("real");
    let fifo = object.with_extension("fifo");
    std::fs::rename(object, &real).unwrap();
    let fifo_mode = rustix::fs::Mode::from_raw_mode(0o644);
    rustix::fs::mknodat(rustix::fs::CWD, object, rustix::fs::FileType::Fifo, fifo_mode, 0).unwrap();
    std::fs::hard_link(object, &fifo).unwrap();
    let op = std::thread::spawn(op);
    // Wait until the server waits for a writer of the fifo.
    let waiting = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .any(|t| std::fs::read_to_string(t.path().join("wchan")).is_ok_and(|w| w.contains("wait_for_partner")))
    };
    let t0 = std::time::Instant::now();
    while !waiting() {
        assert!(t0.elapsed().as_secs() < 30, "the copy-up never opened the object");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let lookup = {
        let p = other.to_path_buf();
        std::thread::spawn(move || tx.send(std::fs::read(p).map(|v| v.len())))
    };
    let answered = rx.recv_timeout(std::time::Duration::from_secs(20));
    // Let the copy go on: the object back in place, the fifo released.
    std::fs::rename(&real, object).unwrap();
    drop(std::fs::OpenOptions::new().write(true).open(&fifo).unwrap());
    assert!(matches!(answered, Ok(Ok(_))), "a lookup waited for the copy-up: {answered:?}");
    lookup.join().unwrap().unwrap();
    op.join().unwrap().unwrap();
    std::fs::remove_file(&fifo).unwrap();
    assert!(!std::fs::symlink_metadata(object).unwrap().file_type().is_fifo());
}

/// A large metacopy (a lower file after a chmod or a rename) is filled in
/// from a copy made outside the tree lock: while its object is being read,
/// other requests of the mount are answered. The object is swapped for a
/// fifo so that the copy waits, deterministically, until the test has
/// looked up another name; the filled-in file keeps the metacopy's
/// metadata, also across a remount.
#[test]
fn metacopy_fill_does_not_stall_the_mount() {
    let (_tmp, objects, upper, mnt) = work_dirs();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 247) as u8).collect();
    let lowers = vec![LayerBuilder::new(&objects)
        .dir("", 0o755)
        .file("big", &big, 0o644)
        .xattr("user.lower", b"kept")
        .file("moved", &big, 0o644)
        .file("other", b"other", 0o644)
        .build()];
    let object = strata_layers::layout::object_path_in(&objects, &strata_layers::Digest::of(&big));
    let g = MountGuard::new(lowers.clone(), &mnt, opts(&upper));
    // Metadata-only copy-ups: a chmod and an xattr, and a rename.
    std::fs::set_permissions(mnt.join("big"), std::fs::Permissions::from_mode(0o640)).unwrap();
    rustix::fs::setxattr(mnt.join("big"), "user.mine", b"1", rustix::fs::XattrFlags::empty()).unwrap();
    let when = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: 1_000_000, tv_nsec: 5 },
        last_modification: rustix::fs::Timespec { tv_sec: 2_000_000, tv_nsec: 7 },
    };
    rustix::fs::utimensat(rustix::fs::CWD, mnt.join("big"), &when, rustix::fs::AtFlags::empty()).unwrap();
    std::fs::rename(mnt.join("moved"), mnt.join("renamed")).unwrap();
    let host_ino = std::fs::metadata(upper.join("big")).unwrap().ino();

    let p = mnt.join("big");
    copy_waits_on_object(&object, &mnt.join("other"), move || {
        let mut f = std::fs::OpenOptions::new().append(true).open(p)?;
        f.write_all(b"END")
    });

    // Without the fifo: the copy made beforehand takes the metacopy's place.
    let renamed_ino = std::fs::metadata(upper.join("renamed")).unwrap().ino();
    let mut f = std::fs::OpenOptions::new().append(true).open(mnt.join("renamed")).unwrap();
    f.write_all(b"END").unwrap();
    drop(f);
    let check = |mnt: &Path| {
        let want = [&big[..], b"END"].concat();
        for name in ["big", "renamed"] {
            assert!(std::fs::read(mnt.join(name)).unwrap() == want, "{name}");
        }
        let m = std::fs::metadata(mnt.join("big")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(rustix::fs::getxattr(mnt.join("big"), "user.mine", &mut [0u8; 8][..]).unwrap(), 1);
        assert_eq!(rustix::fs::getxattr(mnt.join("big"), "user.lower", &mut [0u8; 8][..]).unwrap(), 4);
        assert_eq!(rustix::fs::getxattr(mnt.join("renamed"), "user.mine", &mut [0u8; 8][..]).ok(), None);
    };
    check(&mnt);
    g.unmount();
    assert_eq!(std::fs::metadata(upper.join("big")).unwrap().ino(), host_ino, "filled in place (fifo case)");
    let renamed = std::fs::metadata(upper.join("renamed")).unwrap();
    assert_eq!(renamed.len(), big.len() as u64 + 3);
    assert_ne!(renamed.ino(), renamed_ino, "filled in from the copy made outside the lock");
    assert_no_copy_up_leftovers(&upper);
    let g = MountGuard::new(lowers, &mnt, opts(&upper));
    check(&mnt);
    g.unmount();
}

/// A lower hard link group takes a metadata change as one metacopy file
/// under all its names (no content copied), and its filling in later, from
/// a copy made outside the tree lock, keeps the names one inode. A
/// truncation of a large lower file that keeps most of it copies that part
/// outside the lock too.
#[test]
fn linked_and_truncated_copies_do_not_stall_the_mount() {
    let (_tmp, objects, upper, mnt) = work_dirs();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let long: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
    let lowers = vec![LayerBuilder::new(&objects)
        .dir("", 0o755)
        .dir("d", 0o755)
        .file("h1", &big, 0o644)
        .hardlink("d/h2", "h1")
        .hardlink("h3", "h1")
        .file("long", &long, 0o644)
        .file("other", b"other", 0o644)
        .file("more", b"more", 0o644)
        .build()];
    let object = |content: &[u8]| strata_layers::layout::object_path_in(&objects, &strata_layers::Digest::of(content));
    let g = MountGuard::new(lowers.clone(), &mnt, opts(&upper));

    std::fs::set_permissions(mnt.join("d/h2"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let host: Vec<_> = ["h1", "d/h2", "h3"].iter().map(|n| std::fs::metadata(upper.join(n)).unwrap()).collect();
    assert!(host.iter().all(|m| m.ino() == host[0].ino() && m.len() == 0), "one metacopy file for the group");
    for n in ["h1", "d/h2", "h3"] {
        assert_eq!(std::fs::metadata(mnt.join(n)).unwrap().mode() & 0o7777, 0o600, "{n}");
    }

    let p = mnt.join("h3");
    copy_waits_on_object(&object(&big), &mnt.join("other"), move || {
        std::fs::OpenOptions::new().append(true).open(p)?.write_all(b"END")
    });
    let p = mnt.join("long");
    copy_waits_on_object(&object(&long), &mnt.join("more"), move || {
        std::fs::OpenOptions::new().write(true).open(p)?.set_len(2_000_000)
    });

    let check = |mnt: &Path| {
        let want = [&big[..], b"END"].concat();
        let ino = std::fs::metadata(mnt.join("h1")).unwrap().ino();
        for n in ["h1", "d/h2", "h3"] {
            let m = std::fs::metadata(mnt.join(n)).unwrap();
            assert_eq!((m.ino(), m.nlink(), m.mode() & 0o7777), (ino, 3, 0o600), "{n}");
            assert!(std::fs::read(mnt.join(n)).unwrap() == want, "{n}");
        }
        assert!(std::fs::read(mnt.join("long")).unwrap() == long[..2_000_000], "long");
    };
    check(&mnt);
    g.unmount();
    let filled: Vec<_> = ["h1", "d/h2", "h3"].iter().map(|n| std::fs::metadata(upper.join(n)).unwrap()).collect();
    assert!(filled.iter().all(|m| m.ino() == filled[0].ino() && m.len() == big.len() as u64 + 3 && m.nlink() == 3));
    assert_no_copy_up_leftovers(&upper);
    let g = MountGuard::new(lowers, &mnt, opts(&upper));
    check(&mnt);
    g.unmount();
}

/// A large metacopy owned by someone else and carrying file capabilities,
/// opened for writing without a write: the copy that replaces it keeps the
/// capabilities (a chown after them would drop them).
#[test]
fn metacopy_fill_keeps_file_capabilities() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (_tmp, objects, upper, mnt) = work_dirs();
    let cap = file_capability(10); // CAP_NET_BIND_SERVICE
    let lowers = vec![LayerBuilder::new(&objects)
        .dir("", 0o755)
        .file("ping", &vec![b'p'; 2 << 20], 0o755)
        .owner(1000, 1000)
        .xattr("security.capability", &cap)
        .build()];
    let g = MountGuard::new(lowers.clone(), &mnt, opts(&upper));
    let caps = |p: &Path| {
        let mut buf = [0u8; 64];
        rustix::fs::getxattr(p, "security.capability", &mut buf[..]).map(|n| buf[..n].to_vec())
    };
    assert_eq!(caps(&mnt.join("ping")).unwrap(), cap);
    std::fs::set_permissions(mnt.join("ping"), std::fs::Permissions::from_mode(0o750)).unwrap();
    drop(std::fs::OpenOptions::new().append(true).open(mnt.join("ping")).unwrap());
    assert_eq!(caps(&mnt.join("ping")).unwrap(), cap);
    g.unmount();
    assert_eq!(caps(&upper.join("ping")).unwrap(), cap, "on the host");
    let m = std::fs::metadata(upper.join("ping")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.len()), (1000, 1000, 2 << 20));
}

/// The upper directory read back as layer entries: whiteouts, opaque
/// directories, metadata-only changes pointing at the lower object, new
/// files, hard links, symlinks, owners and xattrs as the mount showed them.
#[test]
fn upper_read_back_as_layer_entries() {
    use strata_fs::{UpperContent, UpperKind};
    let (_tmp, objects, upper, mnt) = work_dirs();
    let lowers = base(&objects);
    let g = MountGuard::new(lowers.clone(), &mnt, opts(&upper));
    std::fs::remove_file(mnt.join("data/b")).unwrap();
    std::fs::remove_file(mnt.join("data/sub/c")).unwrap();
    std::fs::remove_dir(mnt.join("data/sub")).unwrap();
    std::fs::create_dir(mnt.join("data/sub")).unwrap();
    std::os::unix::fs::lchown(mnt.join("etc/passwd"), Some(77), Some(88)).unwrap();
    std::fs::write(mnt.join("new"), b"new content").unwrap();
    std::fs::hard_link(mnt.join("new"), mnt.join("new2")).unwrap();
    std::os::unix::fs::symlink("new", mnt.join("sym")).unwrap();
    // A hard link to a symlink is a link entry too (as in Docker's layers).
    std::fs::hard_link(mnt.join("sym"), mnt.join("sym2")).unwrap();
    rustix::fs::setxattr(mnt.join("new"), "user.k", b"v", rustix::fs::XattrFlags::empty()).unwrap();
    g.unmount();

    let entries = strata_fs::upper_entries(&lowers, &upper).unwrap();
    let find = |p: &str| entries.iter().find(|e| e.path == p.as_bytes()).unwrap_or_else(|| panic!("{p}: {entries:#?}"));
    assert_eq!(entries[0].path, b"");
    assert_eq!(find("data/b").kind, UpperKind::Whiteout);
    assert!(entries.iter().any(|e| e.path == b"data/sub" && e.kind == UpperKind::Opaque));
    assert!(entries.iter().any(|e| e.path == b"data/sub" && e.kind == UpperKind::Dir));
    let p = find("etc/passwd");
    assert_eq!((p.uid, p.gid, p.mode), (77, 88, 0o644));
    assert_eq!(p.xattrs, vec![(b"user.origin".to_vec(), b"lower".to_vec())]);
    match &p.kind {
        UpperKind::File { size: 11, content: UpperContent::Object(obj) } => {
            assert_eq!(std::fs::read(obj).unwrap(), b"root:x:0:0\n")
        }
        k => panic!("etc/passwd: {k:?}"),
    }
    let n = find("new");
    assert_eq!(n.kind, UpperKind::File { size: 11, content: UpperContent::Upper });
    assert_eq!(n.xattrs, vec![(b"user.k".to_vec(), b"v".to_vec())]);
    let mut content = String::new();
    strata_fs::open_upper_file(&upper, b"new").unwrap().read_to_string(&mut content).unwrap();
    assert_eq!(content, "new content");
    assert_eq!(find("new2").kind, UpperKind::Hardlink { target: b"new".to_vec() });
    assert_eq!(find("sym").kind, UpperKind::Symlink { target: b"new".to_vec() });
    assert_eq!(find("sym2").kind, UpperKind::Hardlink { target: b"sym".to_vec() });
    assert!(!entries.iter().any(|e| e.path.starts_with(b".wh.") || e.path.windows(4).any(|w| w == b".wh.")));
    // Parents come before their children.
    let pos = |p: &str| entries.iter().position(|e| e.path == p.as_bytes()).unwrap();
    assert!(pos("data") < pos("data/b"));
}

/// A directory in the upper layer (new, or a lower one copied up) shows the
/// size and blocks of its host directory, as after a remount, where they
/// come from the host; before, a new one showed 0 until remounted.
#[test]
fn upper_directories_show_their_host_size() {
    let (_tmp, objects, upper, mnt) = work_dirs();
    let lowers = base(&objects);
    let sizes = |root: &Path| {
        ["new", "new/deeper", "data"].map(|p| {
            let st = std::fs::symlink_metadata(root.join(p)).unwrap();
            (p, st.size(), st.blocks())
        })
    };
    let g = MountGuard::new(lowers.clone(), &mnt, opts(&upper));
    std::fs::create_dir_all(mnt.join("new/deeper")).unwrap();
    for i in 0..200 {
        std::fs::write(mnt.join(format!("new/f{i:03}-with-a-longer-name")), b"x").unwrap();
    }
    std::fs::write(mnt.join("data/c"), b"c").unwrap();
    let live = sizes(&mnt);
    assert_eq!(live, sizes(&upper), "the mount's directory sizes against the host's");
    g.unmount();
    let g = MountGuard::new(lowers, &mnt, opts(&upper));
    assert_eq!(sizes(&mnt), live, "directory sizes before and after a remount");
    g.unmount();
}

/// Two directory streams of one directory, one reading on after the other
/// filled the kernel's cache of it after a change: the first still returns
/// every entry that was there all along, once. (The kernel shares its cache
/// of a directory between opens; READDIR offsets that were positions in one
/// listing made the first stream go on at the same position of the newer
/// listing, one entry too far.)
#[test]
fn a_directory_stream_misses_nothing_when_another_refills_the_cache() {
    let (_tmp, objects, upper, mnt) = work_dirs();
    let g = MountGuard::new(base(&objects), &mnt, opts(&upper));
    let dir = mnt.join("many");
    std::fs::create_dir(&dir).unwrap();
    let names: Vec<String> = (0..60).map(|i| format!("f{i:03}")).collect();
    for n in &names {
        std::fs::write(dir.join(n), b"").unwrap();
    }
    let a = std::fs::File::open(&dir).unwrap();
    let mut small = [0u8; 256];
    let first = getdents_batch(&a, &mut small);
    let gone = first.iter().find(|n| n.starts_with('f')).unwrap().clone();
    std::fs::remove_file(dir.join(&gone)).unwrap();
    // Another stream reads it all, which fills the kernel's cache anew.
    let b = std::fs::File::open(&dir).unwrap();
    let mut big = [0u8; 8192];
    while !getdents_batch(&b, &mut big).is_empty() {}
    let mut seen = first.clone();
    loop {
        let batch = getdents_batch(&a, &mut small);
        if batch.is_empty() {
            break;
        }
        seen.extend(batch);
    }
    let missing: Vec<_> = names.iter().filter(|n| **n != gone && !seen.contains(n)).collect();
    assert!(missing.is_empty(), "missing {missing:?} (saw {seen:?})");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "entries returned twice: {seen:?}");
    drop((a, b));
    g.unmount();
}

/// A copy-up that the kernel is not otherwise told of changes what stat
/// says (the change time and blocks become the host's): an open for
/// writing, the entries inside a renamed directory, the directories above
/// a new entry. What the mount shows then is what a remount shows, also
/// where the kernel had the lower attributes cached.
#[test]
fn copy_ups_show_host_attributes_at_once() {
    let (_tmp, objects, upper, mnt) = work_dirs();
    let lowers = vec![LayerBuilder::new(&objects)
        .dir("", 0o755)
        .dir("p", 0o755)
        .file("p/f", b"f", 0o644)
        .dir("p/q", 0o755)
        .file("p/q/g", b"g", 0o644)
        .dir("s", 0o755)
        .dir("s/t", 0o755)
        .dir("s/t/u", 0o755)
        .mtime(1_000_000, 0)
        .build()];
    let attrs = |root: &Path, p: &str| {
        let m = std::fs::symlink_metadata(root.join(p)).unwrap();
        (p.to_string(), m.size(), m.blocks(), m.ctime(), m.ctime_nsec())
    };
    let g = MountGuard::new(lowers.clone(), &mnt, opts(&upper));
    // The kernel caches the lower attributes first.
    for p in ["p/f", "p/q/g", "s/t"] {
        attrs(&mnt, p);
    }
    drop(std::fs::OpenOptions::new().write(true).open(mnt.join("p/f")).unwrap());
    std::fs::rename(mnt.join("p/q"), mnt.join("p/q2")).unwrap();
    std::fs::write(mnt.join("s/t/u/new"), b"n").unwrap();
    let live: Vec<_> = ["p/f", "p/q2/g", "s/t"].iter().map(|p| attrs(&mnt, p)).collect();
    g.unmount();
    let g = MountGuard::new(lowers, &mnt, opts(&upper));
    let remounted: Vec<_> = ["p/f", "p/q2/g", "s/t"].iter().map(|p| attrs(&mnt, p)).collect();
    assert_eq!(live, remounted, "(path, size, blocks, ctime) live and after a remount");
    g.unmount();
}

/// Entries made through the mount answer xattr requests from memory while
/// strata knows they carry none; what the host passes on (a default ACL of
/// the directory) and what is set through the mount must still show.
#[test]
fn xattrs_of_new_entries() {
    let (_tmp, objects, upper, mnt) = work_dirs();
    let g = MountGuard::new(base(&objects), &mnt, opts(&upper));

    std::fs::create_dir(mnt.join("new")).unwrap();
    std::fs::write(mnt.join("new/f"), b"f").unwrap();
    std::fs::write(mnt.join("data/g"), b"g").unwrap(); // in a copied-up lower directory
    let mut buf = [0u8; 256];
    for p in ["new", "new/f", "data", "data/g"] {
        let p = mnt.join(p);
        assert_eq!(rustix::fs::lgetxattr(&p, "user.x", &mut buf[..]), Err(rustix::io::Errno::NODATA));
        assert_eq!(rustix::fs::llistxattr(&p, &mut buf[..]), Ok(0));
    }
    rustix::fs::lsetxattr(mnt.join("new/f"), "user.x", b"1", rustix::fs::XattrFlags::empty()).unwrap();
    assert_eq!(getxattr(&mnt.join("new/f"), "user.x").as_deref(), Some(&b"1"[..]));

    if is_root() {
        // A default ACL (owner rwx, user 1234 r, mask rwx, group r-x, other
        // r-x) is set on the host directory, which hands an access ACL to
        // every file made in it afterwards.
        let acl =
            posix_acl(&[(1, 7, u32::MAX), (2, 4, 1234), (4, 5, u32::MAX), (0x10, 7, u32::MAX), (0x20, 5, u32::MAX)]);
        rustix::fs::lsetxattr(mnt.join("new"), "system.posix_acl_default", &acl, rustix::fs::XattrFlags::empty())
            .unwrap();
        std::fs::write(mnt.join("new/h"), b"h").unwrap();
        std::fs::create_dir(mnt.join("new/d")).unwrap();
        for p in ["new/h", "new/d"] {
            assert!(getxattr(&mnt.join(p), "system.posix_acl_access").is_some(), "{p} inherits an ACL");
        }
        assert!(getxattr(&mnt.join("new/d"), "system.posix_acl_default").is_some());
    }
    g.unmount();
}

/// An ordinary user's write to a set-uid-root binary clears the bit at
/// once, also in the kernel's cached mode, by which it execs: a stale one
/// would run the changed binary as root (a container's root filesystem is
/// mounted with set-uid honoured).
#[test]
fn a_written_setuid_binary_no_longer_runs_as_root() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (tmp, objects, upper, mnt) = work_dirs();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let g = MountGuard::new(base(&objects), &mnt, MountOptions { suid: true, allow_other: true, ..opts(&upper) });
    std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o755)).unwrap();
    let id = mnt.join("id");
    // Copied by a child process: a file this (multi-threaded) test process
    // held open for writing could leak into another test's fork and make
    // the exec below fail with ETXTBSY.
    let copied = std::process::Command::new("cp").arg("/usr/bin/id").arg(&id).status().unwrap();
    assert!(copied.success());
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o4777)).unwrap();
    let as_user = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid", "1000", "--regid", "1000", "--clear-groups", "--inh-caps=-all", "--"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Set-uid as it should be: the kernel has the mode cached now.
    assert!(as_user(&[id.as_os_str()]).contains("euid=0"), "the set-uid bit works on this mount");
    let append = format!("printf '\\n' >>'{}'", id.display());
    as_user(&["sh".as_ref(), "-c".as_ref(), append.as_ref()]);
    let after = as_user(&[id.as_os_str()]);
    assert!(!after.contains("euid=0"), "a user's write left the binary set-uid root: {after}");
    g.unmount();
}

/// chown(2) and chmod(2) move the change time even when they change
/// nothing, as they do on kernel overlayfs; the host entry needs no change
/// then, and its ctime must move all the same (after a remount too).
#[test]
fn metadata_calls_that_change_nothing_move_ctime() {
    let (_tmp, objects, upper, mnt) = work_dirs();
    let g = MountGuard::new(base(&objects), &mnt, opts(&upper));
    std::fs::write(mnt.join("new"), b"n").unwrap();
    std::fs::create_dir(mnt.join("newdir")).unwrap();
    std::os::unix::fs::symlink("new", mnt.join("newlink")).unwrap();
    std::fs::set_permissions(mnt.join("data/b"), std::fs::Permissions::from_mode(0o640)).unwrap(); // copied up
                                                                                                   // Set-id bits and capabilities, which chown(2) would clear on the host.
    std::fs::write(mnt.join("suid"), b"s").unwrap();
    std::fs::set_permissions(mnt.join("suid"), std::fs::Permissions::from_mode(0o6755)).unwrap();
    // CAP_NET_RAW (setting it takes root).
    let cap = is_root().then(|| file_capability(13));
    if let Some(cap) = &cap {
        rustix::fs::setxattr(mnt.join("suid"), "security.capability", cap, rustix::fs::XattrFlags::empty()).unwrap();
    }
    let ctime = |p: &str| {
        let m = std::fs::symlink_metadata(mnt.join(p)).unwrap();
        (m.ctime(), m.ctime_nsec())
    };
    // The kernel's clock for ctime ticks in jiffies: wait past a few.
    let tick = || std::thread::sleep(std::time::Duration::from_millis(30));
    for p in ["new", "newdir", "newlink", "data/b", "data/a", "suid"] {
        let m = std::fs::symlink_metadata(mnt.join(p)).unwrap();
        let mut after_chown = ctime(p);
        // (A chown, even to the same owner, clears set-id bits and
        // capabilities, as on any Linux filesystem: not of "suid".)
        if p != "suid" {
            tick();
            std::os::unix::fs::lchown(mnt.join(p), Some(m.uid()), Some(m.gid())).unwrap();
            assert!(ctime(p) > after_chown, "{p}: a chown to its own owner left ctime at {after_chown:?}");
            after_chown = ctime(p);
        }
        if !m.file_type().is_symlink() {
            tick();
            std::fs::set_permissions(mnt.join(p), std::fs::Permissions::from_mode(m.mode() & 0o7777)).unwrap();
            assert!(ctime(p) > after_chown, "{p}: a chmod to its own mode left ctime at {after_chown:?}");
        }
    }
    let state = |p: &str| {
        let m = std::fs::symlink_metadata(mnt.join(p)).unwrap();
        (m.ctime(), m.ctime_nsec(), m.mode(), getxattr(&mnt.join(p), "security.capability"))
    };
    let paths = ["new", "newdir", "data/b", "suid"];
    let seen: Vec<_> = paths.iter().map(|p| state(p)).collect();
    assert_eq!(seen[3].2 & 0o7777, 0o6755, "set-id bits kept");
    assert_eq!(seen[3].3, cap, "capability kept");
    g.unmount();
    let g = MountGuard::new(base(&objects), &mnt, opts(&upper));
    let again: Vec<_> = paths.iter().map(|p| state(p)).collect();
    assert_eq!(seen, again, "ctime, mode and capability after a remount");
    g.unmount();
}

/// A tmpfs of `inodes` inodes at `dir`, unmounted when dropped.
struct SmallTmpfs(std::path::PathBuf);

impl SmallTmpfs {
    /// `limit`: its tmpfs mount options (`nr_inodes=64`, `size=512k`).
    fn new(dir: &Path, limit: &str) -> SmallTmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let data = std::ffi::CString::new(limit).unwrap();
        rustix::mount::mount("tmpfs", dir, "tmpfs", rustix::mount::MountFlags::empty(), Some(data.as_c_str())).unwrap();
        SmallTmpfs(dir.to_path_buf())
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// A scratch directory whose upper directory is on a small tmpfs (`limit`:
/// its mount options); None (the test skips) when not root, as mounting
/// the tmpfs needs it.
struct SmallUpper {
    // (Unmounted before the scratch directory goes: fields drop in order.)
    _fs: SmallTmpfs,
    _tmp: tempfile::TempDir,
    objects: std::path::PathBuf,
    upper: std::path::PathBuf,
    mnt: std::path::PathBuf,
}

impl SmallUpper {
    fn new(limit: &str) -> Option<SmallUpper> {
        if !is_root() {
            eprintln!("skipped: mounting a small tmpfs needs root");
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let fs = SmallTmpfs::new(&tmp.path().join("upper-fs"), limit);
        let upper = fs.0.join("upper");
        std::fs::create_dir(&upper).unwrap();
        let (objects, mnt) = (tmp.path().join("objects"), tmp.path().join("mnt"));
        Some(SmallUpper { _fs: fs, _tmp: tmp, objects, upper, mnt })
    }
}

/// Creates empty files in `mnt/fill/` (named 0, 1, ...) until the upper
/// filesystem has no inode left.
fn fill_inodes(mnt: &Path) {
    std::fs::create_dir(mnt.join("fill")).unwrap();
    let mut filled = 0;
    while std::fs::write(mnt.join(format!("fill/{filled}")), b"").is_ok() {
        filled += 1;
        assert!(filled < 1000, "the upper filesystem never filled up");
    }
}

/// On a full upper filesystem (here: out of inodes, so that no whiteout or
/// new entry can be made), a rename or a new directory over a deleted one
/// fails with ENOSPC and changes nothing: the mount shows what it showed,
/// and so does a remount (the host steps are ordered so that no failure in
/// between leaves a state that reads differently). Removing a copied-up file
/// or directory still works there (it frees what its whiteout needs), and
/// stays removed; a file still open frees nothing, so its removal fails
/// and it stays as it was.
#[test]
fn a_full_upper_loses_nothing() {
    let Some(small) = SmallUpper::new("nr_inodes=64") else { return };
    let (objects, upper, mnt) = (&small.objects, &small.upper, &small.mnt);
    let lowers = vec![LayerBuilder::new(objects)
        .dir("", 0o755)
        .file("a", b"lower a", 0o644)
        .file("r", b"lower r", 0o644)
        .dir("d", 0o755)
        .file("d/inside", b"i", 0o644)
        .file("w", b"lower w", 0o644)
        .dir("e", 0o755)
        .build()];
    let g = MountGuard::new(lowers.clone(), mnt, opts(upper));
    std::fs::write(mnt.join("a"), b"changed a").unwrap();
    std::fs::write(mnt.join("w"), b"changed w").unwrap();
    std::fs::set_permissions(mnt.join("r"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_dir_all(mnt.join("d")).unwrap();
    // "e" copied up (and its upper directory at hand to the server).
    std::fs::write(mnt.join("e/n"), b"").unwrap();
    std::fs::remove_file(mnt.join("e/n")).unwrap();
    fill_inodes(mnt);

    // A copied-up file still open: removing it frees nothing for its
    // whiteout, so rm fails and the file stays as it was; once closed, it
    // goes. A copied-up directory goes at once.
    let held = std::fs::File::open(mnt.join("w")).unwrap();
    let r = std::fs::remove_file(mnt.join("w"));
    assert_eq!(r.map_err(|e| e.raw_os_error()), Err(Some(libc::ENOSPC)), "rm of an open copied-up file");
    assert_eq!(std::fs::read(mnt.join("w")).unwrap(), b"changed w");
    drop(held);
    std::fs::remove_file(mnt.join("w")).expect("rm of the closed file");
    assert!(std::fs::symlink_metadata(mnt.join("w")).is_err());
    std::fs::remove_dir(mnt.join("e")).expect("rmdir of a copied-up lower directory on a full upper");
    assert!(std::fs::symlink_metadata(mnt.join("e")).is_err());

    let enospc = |r: std::io::Result<()>, what: &str| {
        assert_eq!(r.map_err(|e| e.raw_os_error()), Err(Some(libc::ENOSPC)), "{what}");
    };
    enospc(std::fs::rename(mnt.join("r"), mnt.join("r2")), "mv of a copied-up lower file");
    enospc(std::fs::create_dir(mnt.join("d")), "mkdir over a deleted lower directory");
    let shown = |mnt: &Path| {
        (
            std::fs::read(mnt.join("a")).ok(),
            std::fs::read(mnt.join("r")).ok(),
            std::fs::symlink_metadata(mnt.join("r2")).is_ok(),
            std::fs::symlink_metadata(mnt.join("d")).is_ok(),
        )
    };
    let want = (Some(b"changed a".to_vec()), Some(b"lower r".to_vec()), false, false);
    assert_eq!(shown(mnt), want, "after the failures");
    std::fs::remove_file(mnt.join("a")).expect("rm of a copied-up lower file on a full upper");
    let want = (None, Some(b"lower r".to_vec()), false, false);
    assert_eq!(shown(mnt), want, "after rm");
    g.unmount();
    let g = MountGuard::new(lowers, mnt, opts(upper));
    assert_eq!(shown(mnt), want, "after a remount");
    g.unmount();
}

/// A copy-up of a lower hard link group that runs out of room half way
/// leaves nothing that a later attempt trips over: once there is room, the
/// group comes up whole (all names one file, the write seen through each).
#[test]
fn a_hard_link_group_copy_up_that_fails_can_be_retried() {
    let Some(small) = SmallUpper::new("nr_inodes=64") else { return };
    let (objects, upper, mnt) = (&small.objects, &small.upper, &small.mnt);
    let lowers = vec![LayerBuilder::new(objects)
        .dir("", 0o755)
        .dir("a", 0o755)
        .dir("b", 0o755)
        .dir("c", 0o755)
        .file("a/x", b"group", 0o644)
        .hardlink("b/y", "a/x")
        .hardlink("c/z", "a/x")
        .build()];
    let g = MountGuard::new(lowers.clone(), mnt, opts(upper));
    fill_inodes(mnt);
    // Room for part of what the copy-up needs: three directories, the copy,
    // and on tmpfs an inode's worth for each further link.
    for i in 0..4 {
        std::fs::remove_file(mnt.join(format!("fill/{i}"))).unwrap();
    }
    let append = || std::fs::OpenOptions::new().append(true).open(mnt.join("a/x"))?.write_all(b"+");
    assert_eq!(append().map_err(|e| e.raw_os_error()), Err(Some(libc::ENOSPC)));
    for i in 4..12 {
        std::fs::remove_file(mnt.join(format!("fill/{i}"))).unwrap();
    }
    append().expect("the copy-up once there is room");
    for p in ["a/x", "b/y", "c/z"] {
        assert_eq!(std::fs::read(mnt.join(p)).unwrap(), b"group+", "{p}");
        assert_eq!(std::fs::metadata(mnt.join(p)).unwrap().nlink(), 3, "{p}");
    }
    g.unmount();
    let g = MountGuard::new(lowers, mnt, opts(upper));
    for p in ["a/x", "b/y", "c/z"] {
        assert_eq!(std::fs::read(mnt.join(p)).unwrap(), b"group+", "{p} after a remount");
    }
    g.unmount();
}

/// A copy-up that runs out of room half way gives the room back: the
/// failing write gets ENOSPC, the file reads as below, the space of the
/// partial copy is free again (before, a failed copy stayed under a
/// temporary name and kept the upper filesystem full until the next
/// attempt). Each way of copying: a large file copied outside the tree
/// lock first, a smaller one under it, and the filling in of a metacopy
/// (after a chmod) of both.
#[test]
fn a_copy_up_out_of_room_gives_the_room_back() {
    let Some(small) = SmallUpper::new("size=512k") else { return };
    let (objects, upper, mnt) = (&small.objects, &small.upper, &small.mnt);
    let content = |len: usize, seed: u8| (0..len).map(|i| (i % 251) as u8 ^ seed).collect::<Vec<u8>>();
    let (big, mid) = (content(3 << 20, 1), content(900 << 10, 2));
    let lowers = vec![LayerBuilder::new(objects)
        .dir("", 0o755)
        .file("big", &big, 0o644)
        .file("mid", &mid, 0o644)
        .file("meta-big", &big, 0o644)
        .file("meta-mid", &mid, 0o644)
        .build()];
    let g = MountGuard::new(lowers.clone(), mnt, opts(upper));
    for p in ["meta-big", "meta-mid"] {
        std::fs::set_permissions(mnt.join(p), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let free = || rustix::fs::statvfs(upper).unwrap().f_bfree;
    let before = free();
    for (p, want) in [("big", &big), ("mid", &mid), ("meta-big", &big), ("meta-mid", &mid)] {
        let append = std::fs::OpenOptions::new().append(true).open(mnt.join(p)).and_then(|mut f| f.write_all(b"+"));
        assert_eq!(append.map_err(|e| e.raw_os_error()), Err(Some(libc::ENOSPC)), "append to {p}");
        assert_eq!(free(), before, "free blocks of the upper after the copy-up of {p} failed");
        assert!(std::fs::read(mnt.join(p)).unwrap() == *want, "{p} reads as below");
        assert_no_copy_up_leftovers(upper);
    }
    // The room is there for what fits.
    std::fs::write(mnt.join("fits"), vec![7u8; 256 << 10]).expect("a write that fits");
    g.unmount();
    let g = MountGuard::new(lowers, mnt, opts(upper));
    assert!(std::fs::read(mnt.join("meta-big")).unwrap() == big, "meta-big after a remount");
    assert_eq!(std::fs::metadata(mnt.join("meta-mid")).unwrap().mode() & 0o777, 0o600);
    g.unmount();
}

/// An upper directory on a filesystem without user xattrs (ramfs here) is
/// refused when mounting, with a message that says why, rather than
/// failing the first chmod or rm that needs one.
#[test]
fn an_upper_without_user_xattrs_is_refused_at_mount() {
    if !is_root() {
        eprintln!("skipped: mounting a ramfs needs root");
        return;
    }
    let (tmp, objects, _, mnt) = work_dirs();
    let ramfs = tmp.path().join("ramfs");
    std::fs::create_dir(&ramfs).unwrap();
    rustix::mount::mount("ramfs", &ramfs, "ramfs", rustix::mount::MountFlags::empty(), None).unwrap();
    let upper = ramfs.join("upper");
    std::fs::create_dir(&upper).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let r = strata_fs::mount(base(&objects), &mnt, opts(&upper));
    let _ = rustix::mount::unmount(&ramfs, rustix::mount::UnmountFlags::DETACH);
    match r {
        Err(e @ strata_fs::FsError::UpperWithoutXattrs { .. }) => {
            assert!(e.to_string().contains("user extended attributes"), "{e}")
        }
        other => panic!("mounting with an upper on ramfs: {other:?}"),
    }
}

/// An upper directory inside another strata mount is refused at mount: the
/// outer mount keeps the user.strata.* attributes for itself (EPERM), where
/// the inner one would record its whiteouts and owners. Before, the mount
/// failed reading the upper with a bare "Operation not permitted".
#[test]
fn an_upper_inside_a_strata_mount_is_refused_at_mount() {
    let (tmp, objects, upper, mnt) = work_dirs();
    let outer = MountGuard::new(base(&objects), &mnt, opts(&upper));
    let inner_upper = mnt.join("inner-upper");
    std::fs::create_dir(&inner_upper).unwrap();
    let inner = tmp.path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    match strata_fs::mount(base(&objects), &inner, opts(&inner_upper)) {
        Err(e @ strata_fs::FsError::UpperRefusesStrataXattrs { .. }) => {
            assert!(e.to_string().contains("cannot be inside one"), "{e}")
        }
        other => panic!("mounting with an upper inside a strata mount: {other:?}"),
    }
    drop(outer);
}

#[test]
fn changes_of_an_upper_directory_in_use() {
    // `docker diff` of a running container: its processes create, remove
    // and move directories while the upper directory is walked. What goes
    // meanwhile is passed over and a walk that lost its way starts again;
    // no listing fails.
    let (_tmp, objects, upper, mnt) = work_dirs();
    let g = MountGuard::new(base(&objects), &mnt, opts(&upper));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (stop, mnt) = (stop.clone(), mnt.clone());
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let d = mnt.join(format!("w/d{}", i % 7));
                std::fs::create_dir_all(d.join("x/y")).unwrap();
                std::fs::write(d.join(format!("x/y/f{}", i % 13)), b"f").unwrap();
                std::fs::write(mnt.join(format!("data/n{}", i % 5)), b"n").unwrap();
                let _ = std::fs::remove_file(mnt.join(format!("data/n{}", (i + 2) % 5)));
                let _ = std::fs::remove_dir_all(mnt.join(format!("w/d{}", (i + 3) % 7)));
                let _ = std::fs::rename(&d, mnt.join(format!("w/e{}", i % 5)));
                let _ = std::fs::remove_dir_all(mnt.join(format!("w/e{}", (i + 1) % 5)));
                i += 1;
            }
            i
        })
    };
    let lowers = base(&objects);
    let started = std::time::Instant::now();
    let (mut listed, mut failed) = (0, Vec::new());
    while started.elapsed() < std::time::Duration::from_secs(3) {
        match strata_fs::changes(&lowers, &upper) {
            Ok(_) => listed += 1,
            Err(e) => failed.push(e.to_string()),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = churn.join().unwrap();
    assert!(failed.is_empty(), "{} of {} listings failed, e.g. {}", failed.len(), listed + failed.len(), failed[0]);
    assert!(listed > 100 && rounds > 100, "{listed} listings beside {rounds} rounds of changes");
    // Once still, the listing is exact.
    let ch: Vec<String> = strata_fs::changes(&lowers, &upper).unwrap().iter().map(|c| c.path.clone()).collect();
    assert!(ch.contains(&"/w".to_string()) && ch.contains(&"/data".to_string()), "{ch:?}");
    g.unmount();
}
