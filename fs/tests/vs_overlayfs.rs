//! Differential test against the kernel's overlayfs: the same layers, the same
//! script of operations on both mounts; the per-operation results, the
//! resulting trees and the `docker diff` change lists must agree.
//!
//! Needs root (overlayfs mounts, chown to any uid); skipped otherwise.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;
use strata_fs::MountOptions;
use strata_layers::index::{Entry, EntryKind};

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
        .file("data/setuid", b"suid", 0o4755)
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
        .symlink("lib", "usr/lib")
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .file("usr/lib/libc.so", b"libc", 0o755)
        .dir("dev", 0o755)
        .chardev("dev/null", 1, 3)
        .fifo("dev/fifo")
        .dir("lowerdel", 0o755);
    for i in 0..50 {
        b = b.file(&format!("lowerdel/f{i}"), format!("{i}").as_bytes(), 0o644);
    }
    b
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

/// Writes a layer as a directory the way overlayfs wants it.
fn materialize(entries: &[Entry], objects: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for e in entries {
        let p = dir.join(std::ffi::OsStr::from_bytes(&e.path));
        if let Some(parent) = p.parent().filter(|_| !e.path.is_empty()) {
            std::fs::create_dir_all(parent).unwrap();
        }
        match &e.kind {
            EntryKind::Dir => {
                std::fs::create_dir_all(&p).unwrap();
            }
            EntryKind::File { digest, .. } => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::copy(strata_layers::layout::object_path_in(objects, digest), &p).unwrap();
            }
            EntryKind::Symlink { target } => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &p).unwrap();
            }
            EntryKind::Hardlink { target } => {
                std::fs::hard_link(dir.join(std::ffi::OsStr::from_bytes(target)), &p).unwrap();
            }
            EntryKind::CharDevice { major, minor } => {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &p,
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::Mode::from_raw_mode(0o666),
                    rustix::fs::makedev(*major, *minor),
                )
                .unwrap();
            }
            EntryKind::BlockDevice { .. } => unimplemented!(),
            EntryKind::Fifo => {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &p,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o644),
                    0,
                )
                .unwrap();
            }
            EntryKind::Whiteout => {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &p,
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .unwrap();
                continue;
            }
            EntryKind::Opaque => {
                std::fs::create_dir_all(&p).unwrap();
                rustix::fs::setxattr(&p, "trusted.overlay.opaque", b"y", rustix::fs::XattrFlags::empty()).unwrap();
                continue;
            }
        }
        rustix::fs::chownat(
            rustix::fs::CWD,
            &p,
            Some(rustix::fs::Uid::from_raw(e.uid)),
            Some(rustix::fs::Gid::from_raw(e.gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
        if !matches!(e.kind, EntryKind::Symlink { .. }) {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode)).unwrap();
        }
        for (k, v) in &e.xattrs {
            rustix::fs::lsetxattr(&p, std::ffi::OsStr::from_bytes(k), v, rustix::fs::XattrFlags::empty()).unwrap();
        }
    }
    // Times last, children before parents.
    for e in entries.iter().rev() {
        if matches!(e.kind, EntryKind::Whiteout | EntryKind::Opaque) {
            continue;
        }
        let p = dir.join(std::ffi::OsStr::from_bytes(&e.path));
        let t = rustix::fs::Timespec { tv_sec: e.mtime, tv_nsec: e.mtime_nsec as _ };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &p,
            &rustix::fs::Timestamps { last_access: t, last_modification: t },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
}

struct OverlayGuard(PathBuf);
impl Drop for OverlayGuard {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

type OpResult = Result<(), i32>;

fn r<T>(x: std::io::Result<T>) -> OpResult {
    x.map(|_| ()).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn rename_flags(m: &Path, a: &str, b: &str, flags: rustix::fs::RenameFlags) -> OpResult {
    rustix::fs::renameat_with(rustix::fs::CWD, m.join(a), rustix::fs::CWD, m.join(b), flags)
        .map_err(|e| e.raw_os_error())
}

/// `mv`: rename, and on EXDEV copy and delete (what kernel overlayfs without
/// redirect_dir makes mv do for lower directories).
fn mv(m: &Path, a: &str, b: &str) -> OpResult {
    match std::fs::rename(m.join(a), m.join(b)) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let st = std::process::Command::new("cp").arg("-a").arg(m.join(a)).arg(m.join(b)).status().unwrap();
            assert!(st.success());
            r(std::fs::remove_dir_all(m.join(a)))
        }
        x => r(x),
    }
}

fn append(p: &Path, data: &[u8]) -> OpResult {
    r(std::fs::OpenOptions::new().append(true).open(p).and_then(|mut f| f.write_all(data)))
}

type Op = Box<dyn Fn(&Path) -> OpResult>;

fn script() -> Vec<(&'static str, Op)> {
    let t = rustix::fs::Timespec { tv_sec: 1_000_000_000, tv_nsec: 5 };
    vec![
        ("create", Box::new(|m: &Path| r(std::fs::write(m.join("new.txt"), b"new file\n")))),
        ("overwrite lower", Box::new(|m: &Path| r(std::fs::write(m.join("etc/hosts"), b"overwritten\n")))),
        ("append lower", Box::new(|m: &Path| append(&m.join("etc/passwd"), b"user:x:1000:1000::/home/user:/bin/sh\n"))),
        (
            "truncate lower",
            Box::new(|m: &Path| {
                r(std::fs::OpenOptions::new().write(true).open(m.join("data/big")).and_then(|f| f.set_len(10)))
            }),
        ),
        (
            "O_TRUNC lower",
            Box::new(|m: &Path| r(std::fs::OpenOptions::new().write(true).truncate(true).open(m.join("data/f")))),
        ),
        (
            "O_EXCL existing",
            Box::new(|m: &Path| r(std::fs::OpenOptions::new().write(true).create_new(true).open(m.join("data/e")))),
        ),
        (
            "chmod lower",
            Box::new(|m: &Path| r(std::fs::set_permissions(m.join("data/a"), std::fs::Permissions::from_mode(0o600)))),
        ),
        (
            "chmod setuid kept",
            Box::new(|m: &Path| {
                r(std::fs::set_permissions(m.join("data/setuid"), std::fs::Permissions::from_mode(0o6711)))
            }),
        ),
        ("chown lower", Box::new(|m: &Path| r(std::os::unix::fs::lchown(m.join("data/b"), Some(1234), Some(5678))))),
        ("chown lower dir", Box::new(|m: &Path| r(std::os::unix::fs::lchown(m.join("emptydir"), Some(99), Some(98))))),
        (
            "utimes lower",
            Box::new(move |m: &Path| {
                rustix::fs::utimensat(
                    rustix::fs::CWD,
                    m.join("data/c"),
                    &rustix::fs::Timestamps { last_access: t, last_modification: t },
                    rustix::fs::AtFlags::empty(),
                )
                .map_err(|e| e.raw_os_error())
            }),
        ),
        ("symlink", Box::new(|m: &Path| r(std::os::unix::fs::symlink("etc/hosts", m.join("sym"))))),
        ("link lower", Box::new(|m: &Path| r(std::fs::hard_link(m.join("data/d"), m.join("data/d.link"))))),
        ("write through link", Box::new(|m: &Path| append(&m.join("data/d.link"), b"+more"))),
        ("unlink lower", Box::new(|m: &Path| r(std::fs::remove_file(m.join("etc/motd"))))),
        ("unlink missing", Box::new(|m: &Path| r(std::fs::remove_file(m.join("etc/motd"))))),
        ("rmdir lower empty", Box::new(|m: &Path| r(std::fs::remove_dir(m.join("emptydir"))))),
        ("rmdir non-empty", Box::new(|m: &Path| r(std::fs::remove_dir(m.join("var/cache"))))),
        ("rm -rf lower dir", Box::new(|m: &Path| r(std::fs::remove_dir_all(m.join("var/cache"))))),
        ("rename file", Box::new(|m: &Path| r(std::fs::rename(m.join("etc/hostname"), m.join("etc/hostname.old"))))),
        ("rename lower dir with content", Box::new(|m: &Path| mv(m, "srv", "srv2"))),
        ("rename file over lower file", Box::new(|m: &Path| r(std::fs::rename(m.join("data/e"), m.join("data/a"))))),
        ("unlink for whiteout", Box::new(|m: &Path| r(std::fs::remove_file(m.join("etc/issue"))))),
        ("rename over whiteout", Box::new(|m: &Path| r(std::fs::rename(m.join("new.txt"), m.join("etc/issue"))))),
        (
            "noreplace existing",
            Box::new(|m: &Path| rename_flags(m, "etc/hosts", "etc/passwd", rustix::fs::RenameFlags::NOREPLACE)),
        ),
        (
            "noreplace ok",
            Box::new(|m: &Path| {
                rename_flags(m, "etc/hostname.old", "etc/hostname", rustix::fs::RenameFlags::NOREPLACE)
            }),
        ),
        (
            "exchange lower files",
            Box::new(|m: &Path| rename_flags(m, "data/b", "data/c", rustix::fs::RenameFlags::EXCHANGE)),
        ),
        (
            "mkdir new dirs",
            Box::new(|m: &Path| {
                r(std::fs::create_dir_all(m.join("x1/y")).and_then(|_| std::fs::create_dir(m.join("x2"))))
            }),
        ),
        ("exchange upper dirs", Box::new(|m: &Path| rename_flags(m, "x1", "x2", rustix::fs::RenameFlags::EXCHANGE))),
        ("exchange missing", Box::new(|m: &Path| rename_flags(m, "x1", "nothere", rustix::fs::RenameFlags::EXCHANGE))),
        (
            "rename upper dir over empty lower dir",
            Box::new(|m: &Path| r(std::fs::rename(m.join("x2"), m.join("emptydir2")))),
        ),
        ("rm -rf lower dir for recreate", Box::new(|m: &Path| r(std::fs::remove_dir_all(m.join("opt/app"))))),
        ("mkdir recreate", Box::new(|m: &Path| r(std::fs::create_dir(m.join("opt/app"))))),
        ("file in recreated", Box::new(|m: &Path| r(std::fs::write(m.join("opt/app/bin"), b"v2")))),
        ("mkdir existing", Box::new(|m: &Path| r(std::fs::create_dir(m.join("etc"))))),
        (
            "mknod fifo",
            Box::new(|m: &Path| {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    m.join("fifo1"),
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o640),
                    0,
                )
                .map_err(|e| e.raw_os_error())
            }),
        ),
        (
            "setxattr lower",
            Box::new(|m: &Path| {
                rustix::fs::setxattr(m.join("data/d"), "user.test", b"value", rustix::fs::XattrFlags::empty())
                    .map_err(|e| e.raw_os_error())
            }),
        ),
        (
            "removexattr lower",
            Box::new(|m: &Path| {
                rustix::fs::removexattr(m.join("etc/passwd"), "user.origin").map_err(|e| e.raw_os_error())
            }),
        ),
        (
            "removexattr missing",
            Box::new(|m: &Path| rustix::fs::removexattr(m.join("data/f"), "user.none").map_err(|e| e.raw_os_error())),
        ),
        (
            "setxattr new file",
            Box::new(|m: &Path| {
                rustix::fs::setxattr(m.join("sym"), "user.onlink", b"v", rustix::fs::XattrFlags::empty())
                    .map_err(|e| e.raw_os_error())
            }),
        ),
        (
            "readdir while creating and removing",
            Box::new(|m: &Path| {
                let mut seen = 0;
                let mut it = std::fs::read_dir(m.join("lowerdel")).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
                for i in 0..50 {
                    if let Some(e) = it.next() {
                        e.map_err(|e| e.raw_os_error().unwrap_or(-1))?;
                        seen += 1;
                    }
                    if i % 2 == 0 {
                        r(std::fs::remove_file(m.join(format!("lowerdel/f{i}"))))?;
                    }
                    r(std::fs::write(m.join(format!("lowerdel/n{i}")), b"n"))?;
                }
                for e in it {
                    e.map_err(|e| e.raw_os_error().unwrap_or(-1))?;
                    seen += 1;
                }
                assert!(seen >= 25, "readdir saw only {seen} entries");
                Ok(())
            }),
        ),
        (
            "deep tree",
            Box::new(|m: &Path| {
                let p = m.join("deep/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p");
                r(std::fs::create_dir_all(&p).and_then(|_| std::fs::write(p.join("leaf"), b"leaf")))
            }),
        ),
        (
            "10000-entry directory",
            Box::new(|m: &Path| {
                r(std::fs::create_dir(m.join("many")))?;
                for i in 0..10_000 {
                    r(std::fs::write(m.join(format!("many/file{i:05}")), i.to_string()))?;
                }
                for i in (0..10_000).step_by(3) {
                    r(std::fs::remove_file(m.join(format!("many/file{i:05}"))))?;
                }
                let n = std::fs::read_dir(m.join("many")).unwrap().count();
                assert_eq!(n, 6666);
                Ok(())
            }),
        ),
        (
            "truncate grow new",
            Box::new(|m: &Path| {
                r(std::fs::OpenOptions::new().write(true).open(m.join("etc/hosts")).and_then(|f| f.set_len(100)))
            }),
        ),
        (
            "read after writes",
            Box::new(|m: &Path| {
                let mut s = String::new();
                r(std::fs::File::open(m.join("data/d")).and_then(|mut f| f.read_to_string(&mut s)))?;
                assert_eq!(s, "d-content+more");
                Ok(())
            }),
        ),
    ]
}

/// The view as (path -> description); times only where they predate the test.
fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = snapshot(root);
    for (k, v) in out.iter_mut() {
        let p = root.join(k);
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.mtime() < 1_700_000_000 {
            v.push_str(&format!(" mtime={}.{}", m.mtime(), m.mtime_nsec()));
        }
        if !m.is_dir() {
            v.push_str(&format!(" nlink={}", m.nlink()));
        }
        let mut names = vec![0u8; 4096];
        if let Ok(n) = rustix::fs::llistxattr(&p, &mut names[..]) {
            let mut keys: Vec<&[u8]> = names[..n].split(|&b| b == 0).filter(|k| k.starts_with(b"user.")).collect();
            keys.sort();
            for k in keys {
                let ks = String::from_utf8_lossy(k).into_owned();
                v.push_str(&format!(" {ks}={:?}", getxattr(&p, &ks).map(|x| String::from_utf8_lossy(&x).into_owned())));
            }
        }
    }
    out
}

/// Docker's change list from an overlayfs upper directory (whiteouts are
/// char 0/0 devices), with the same rules strata's `changes` uses.
fn overlay_changes(entries: &[&[Entry]], upper: &Path) -> Vec<String> {
    let mut lower: HashMap<Vec<u8>, (u32, i64, u32)> = HashMap::new();
    for l in entries.iter().rev() {
        for e in l.iter() {
            if !matches!(e.kind, EntryKind::Whiteout) {
                lower.entry(e.path.clone()).or_insert((e.type_bits() | e.mode, e.mtime, e.mtime_nsec));
            }
        }
    }
    let mut out = Vec::new();
    let mut changed = HashSet::new();
    ov_walk(upper, b"", &lower, &mut out, &mut changed);
    out
}

fn ov_walk(
    upper: &Path,
    rel: &[u8],
    lower: &HashMap<Vec<u8>, (u32, i64, u32)>,
    out: &mut Vec<String>,
    changed: &mut HashSet<Vec<u8>>,
) {
    let dir = upper.join(std::ffi::OsStr::from_bytes(rel));
    let mut names: Vec<Vec<u8>> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().as_bytes().to_vec()).collect();
    names.sort();
    for n in names {
        let path = if rel.is_empty() { n.clone() } else { [rel, b"/", &n].concat() };
        let m = std::fs::symlink_metadata(dir.join(std::ffi::OsStr::from_bytes(&n))).unwrap();
        let is_dir = m.is_dir();
        let kind = if m.mode() & libc::S_IFMT == libc::S_IFCHR && m.rdev() == 0 {
            'D'
        } else {
            match lower.get(&path) {
                Some(&(mode, sec, nsec)) => {
                    let same_time = (sec, nsec) == (m.mtime(), m.mtime_nsec() as u32)
                        || (sec == m.mtime() && (nsec == 0 || m.mtime_nsec() == 0));
                    if is_dir && mode & libc::S_IFMT == libc::S_IFDIR && mode == m.mode() && same_time {
                        ov_walk(upper, &path, lower, out, changed);
                        continue;
                    }
                    'C'
                }
                None => 'A',
            }
        };
        if is_dir {
            changed.insert(path.clone());
        }
        if kind != 'C' && !rel.is_empty() && !changed.contains(rel) {
            out.push(format!("C /{}", String::from_utf8_lossy(rel)));
            changed.insert(rel.to_vec());
        }
        out.push(format!("{kind} /{}", String::from_utf8_lossy(&path)));
        if is_dir {
            ov_walk(upper, &path, lower, out, changed);
        }
    }
}

fn tree_diff(ov: &BTreeMap<String, String>, st: &BTreeMap<String, String>) -> Vec<String> {
    let mut diffs = Vec::new();
    for k in ov.keys().chain(st.keys()).collect::<std::collections::BTreeSet<_>>() {
        let (a, b) = (ov.get(k), st.get(k));
        if a != b {
            diffs.push(format!("{k}:\n  overlayfs {a:?}\n  strata    {b:?}"));
        }
    }
    diffs
}

#[test]
fn same_results_as_kernel_overlayfs() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let objects = base.join("objects");
    let b0 = layer0(&objects);
    let b1 = layer1(&objects);
    let e0 = b0.entries().to_vec();
    let e1 = b1.entries().to_vec();
    let lowers = vec![b0.build(), b1.build()];

    materialize(&e0, &objects, &base.join("l0"));
    materialize(&e1, &objects, &base.join("l1"));
    for d in ["ov_upper", "ov_work", "ov", "st_upper", "st"] {
        std::fs::create_dir(base.join(d)).unwrap();
    }
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off,xino=off",
        base.join("l1").display(),
        base.join("l0").display(),
        base.join("ov_upper").display(),
        base.join("ov_work").display()
    );
    rustix::mount::mount(
        "overlay",
        base.join("ov"),
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(std::ffi::CString::new(opts).unwrap().as_c_str()),
    )
    .expect("mount overlayfs");
    let _og = OverlayGuard(base.join("ov"));
    let st = MountGuard::new(
        lowers.clone(),
        &base.join("st"),
        MountOptions { upper: Some(base.join("st_upper")), ..MountOptions::default() },
    );

    let (ov, stm) = (base.join("ov"), base.join("st"));
    let diffs = tree_diff(&describe(&ov), &describe(&stm));
    assert!(diffs.is_empty(), "the untouched views differ:\n{}", diffs.join("\n"));

    let mut mismatches = Vec::new();
    for (name, op) in script() {
        let t0 = std::time::Instant::now();
        let a = op(&ov);
        let t1 = std::time::Instant::now();
        let b = op(&stm);
        eprintln!("{name}: overlayfs {:?}, strata {:?}", t1 - t0, t1.elapsed());
        if a != b {
            mismatches.push(format!("{name}: overlayfs {a:?}, strata {b:?}"));
        }
    }
    assert!(mismatches.is_empty(), "operation results differ:\n{}", mismatches.join("\n"));

    let after_ov = describe(&ov);
    let after_st = describe(&stm);
    let diffs = tree_diff(&after_ov, &after_st);
    assert!(
        diffs.is_empty(),
        "{} paths differ:\n{}",
        diffs.len(),
        diffs.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );

    // Remounting strata's upper gives the same view again.
    st.unmount();
    let st = MountGuard::new(
        lowers.clone(),
        &base.join("st"),
        MountOptions { upper: Some(base.join("st_upper")), ..MountOptions::default() },
    );
    let again = describe(&stm);
    assert_eq!(again.len(), after_st.len());
    for (k, v) in &after_st {
        assert_eq!(again.get(k), Some(v), "after remount: {k}");
    }
    st.unmount();

    let ours: Vec<String> = strata_fs::changes(&lowers, &base.join("st_upper"))
        .unwrap()
        .into_iter()
        .map(|c| format!("{} {}", c.kind.letter(), c.path))
        .collect();
    let theirs = overlay_changes(&[&e0, &e1], &base.join("ov_upper"));
    if ours != theirs {
        let so: HashSet<_> = ours.iter().collect();
        let st: HashSet<_> = theirs.iter().collect();
        let only_ours: Vec<_> = ours.iter().filter(|x| !st.contains(x)).take(30).collect();
        let only_theirs: Vec<_> = theirs.iter().filter(|x| !so.contains(x)).take(30).collect();
        panic!(
            "change lists differ\nonly strata: {only_ours:?}\nonly overlayfs: {only_theirs:?}\n(lengths {} vs {})",
            ours.len(),
            theirs.len()
        );
    }
}
