//! A mounted tree as one line per path, for comparing two mounts.
//!
//! [`snapshot`] says what every path is: type, permission bits, owner, size
//! and content hash of regular files, symlink targets, device numbers.
//! [`describe`] adds what a differential test also compares: link counts,
//! `user.*` xattrs, and modification times that predate the test (times the
//! test itself causes differ by microseconds between two mounts).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use strata_layers::Digest;

use super::ok;

/// Relative path -> description.
pub type TreeDesc = BTreeMap<String, String>;

/// path -> "TYPE mode=MODE owner=UID:GID" where TYPE is `dir`, `link->TARGET`,
/// `file size=N sha=HASH`, `fifo`, `chr RDEV`, `blk RDEV` or `socket`.
pub fn snapshot(root: &Path) -> TreeDesc {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut TreeDesc) {
    let rd = ok(std::fs::read_dir(dir), || format!("read_dir {}", dir.display()));
    let mut names: Vec<_> = rd.map(|e| ok(e, || format!("read_dir {}", dir.display())).file_name()).collect();
    names.sort();
    for n in names {
        let p = dir.join(&n);
        let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().into_owned();
        let m = ok(std::fs::symlink_metadata(&p), || format!("lstat {}", p.display()));
        let ft = m.file_type();
        let what = if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("link->{}", ok(std::fs::read_link(&p), || format!("readlink {}", p.display())).display())
        } else if ft.is_file() {
            let data = ok(std::fs::read(&p), || format!("read {}", p.display()));
            format!("file size={} sha={}", m.len(), Digest::of(&data).short())
        } else if ft.is_fifo() {
            "fifo".into()
        } else if ft.is_char_device() {
            format!("chr {}", m.rdev())
        } else if ft.is_block_device() {
            format!("blk {}", m.rdev())
        } else {
            "socket".into()
        };
        out.insert(rel, format!("{what} mode={:o} owner={}:{}", m.mode() & 0o7777, m.uid(), m.gid()));
        if ft.is_dir() {
            walk(root, &p, out);
        }
    }
}

/// [`snapshot`] plus ` nlink=N` for non-directories, ` mtime=S.NS` where
/// the modification time is older than `times_before` (seconds since the
/// epoch), and every `user.*` xattr as ` NAME=Some("VALUE")`.
pub fn describe(root: &Path, times_before: i64) -> TreeDesc {
    let mut out = snapshot(root);
    for (k, v) in out.iter_mut() {
        let p = root.join(k);
        let m = ok(std::fs::symlink_metadata(&p), || format!("lstat {}", p.display()));
        if m.mtime() < times_before {
            v.push_str(&format!(" mtime={}.{}", m.mtime(), m.mtime_nsec()));
        }
        if !m.is_dir() {
            v.push_str(&format!(" nlink={}", m.nlink()));
        }
        for name in xattr_names(&p).into_iter().filter(|k| k.starts_with("user.")) {
            let value = getxattr(&p, &name).map(|x| String::from_utf8_lossy(&x).into_owned());
            v.push_str(&format!(" {name}={value:?}"));
        }
    }
    out
}

/// [`describe`] plus everything else `lstat` says that a filesystem keeps
/// (sizes and blocks of directories too, link counts, device numbers, every
/// modification and change time) and every xattr: for comparing one
/// filesystem with itself, such as a mount before and after a remount.
/// Access times are left out (reading the tree moves them), and so are inode
/// numbers and the change times, sizes and blocks of directories: a union
/// filesystem's directory shows those of its upper directory, which move
/// with changes the union makes there itself (a file copied up into it;
/// on a tmpfs every entry counts in the size), and strata does not make
/// the kernel ask again after each of those (it would cost every copy-up a
/// round trip).
pub fn describe_exact(root: &Path) -> TreeDesc {
    let mut out = describe(root, 0);
    for (k, v) in out.iter_mut() {
        let p = root.join(k);
        let m = ok(std::fs::symlink_metadata(&p), || format!("lstat {}", p.display()));
        v.push_str(&format!(" nlink={} rdev={} mtime={}.{}", m.nlink(), m.rdev(), m.mtime(), m.mtime_nsec()));
        if !m.is_dir() {
            v.push_str(&format!(" size={} blocks={} ctime={}.{}", m.size(), m.blocks(), m.ctime(), m.ctime_nsec()));
        }
        for name in xattr_names(&p).into_iter().filter(|k| !k.starts_with("user.")) {
            let value = getxattr(&p, &name).map(|x| String::from_utf8_lossy(&x).into_owned());
            v.push_str(&format!(" {name}={value:?}"));
        }
    }
    out
}

/// The names of `p`'s xattrs (not following a symlink), sorted.
pub fn xattr_names(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 64 * 1024];
    let Ok(n) = rustix::fs::llistxattr(p, &mut buf[..]) else { return Vec::new() };
    let mut names: Vec<String> = buf[..n]
        .split(|&b| b == 0)
        .filter(|k| !k.is_empty())
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    names.sort();
    names
}

/// The value of xattr `name` of `p` (not following a symlink).
pub fn getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    match rustix::fs::lgetxattr(p, name, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(_) => None,
    }
}

/// One message per path whose descriptions differ; `left` and `right` are
/// (label, tree).
pub fn tree_diff(left: (&str, &TreeDesc), right: (&str, &TreeDesc)) -> Vec<String> {
    let ((la, a), (lb, b)) = (left, right);
    let width = la.len().max(lb.len());
    let mut diffs = Vec::new();
    for k in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
        let (x, y) = (a.get(k), b.get(k));
        if x != y {
            diffs.push(format!("{k}:\n  {la:width$} {x:?}\n  {lb:width$} {y:?}"));
        }
    }
    diffs
}

/// Panics listing (the first 40) paths whose descriptions differ.
#[track_caller]
pub fn assert_same_tree(what: &str, left: (&str, &TreeDesc), right: (&str, &TreeDesc)) {
    let diffs = tree_diff(left, right);
    if !diffs.is_empty() {
        let shown: Vec<&str> = diffs.iter().take(40).map(String::as_str).collect();
        panic!("{what}: {} paths differ:\n{}", diffs.len(), shown.join("\n"));
    }
}
