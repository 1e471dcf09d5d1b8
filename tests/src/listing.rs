//! The canonical tree listing (format: see the crate docs — it is the
//! contract with `strata debug tree`) of a directory on the host, and the
//! reference listing of an image: `umoci unpack` as root, then that walk.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Escapes bytes for PATH / TARGET / xattr names: 0x21..=0x7e except `\` as
/// themselves, everything else as `\xHH`.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x21..=0x7e).contains(&b) && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// The canonical listing of the tree below `root` (root itself excluded),
/// never following symlinks.
pub fn canonical_listing(root: &Path) -> String {
    let mut lines = Vec::new();
    walk(root, &mut Vec::new(), &mut lines);
    lines.sort();
    let mut out = String::new();
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    out
}

fn walk(dir: &Path, rel: &mut Vec<u8>, lines: &mut Vec<String>) {
    let rd = fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
    for entry in rd {
        let entry = entry.unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        let path = entry.path();
        let len = rel.len();
        rel.push(b'/');
        rel.extend_from_slice(entry.file_name().as_bytes());
        let meta = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        lines.push(line_for(&path, rel, &meta));
        if meta.is_dir() {
            walk(&path, rel, lines);
        }
        rel.truncate(len);
    }
}

fn line_for(path: &Path, rel: &[u8], meta: &fs::Metadata) -> String {
    let ft = meta.file_type();
    let (kind, size, target) = if ft.is_file() {
        let data = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        ("f", meta.len(), crate::sha256_hex(&data))
    } else if ft.is_dir() {
        ("d", 0, "-".to_string())
    } else if ft.is_symlink() {
        let t = fs::read_link(path).unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()));
        ("l", 0, escape(t.as_os_str().as_bytes()))
    } else if ft.is_fifo() {
        ("p", 0, "-".to_string())
    } else if ft.is_char_device() {
        ("c", 0, "-".to_string())
    } else if ft.is_block_device() {
        ("b", 0, "-".to_string())
    } else {
        ("s", 0, "-".to_string())
    };
    let mut line =
        format!("{} {kind} {:04o} {} {} {size} {target}", escape(rel), meta.mode() & 0o7777, meta.uid(), meta.gid());
    if kind == "c" || kind == "b" {
        let rdev = meta.rdev();
        line.push_str(&format!(" {},{}", libc::major(rdev), libc::minor(rdev)));
    }
    for (name, value) in xattrs(path) {
        line.push_str(&format!(" {}={}", escape(&name), hex::encode(value)));
    }
    line
}

/// Extended attributes of `path` (not following symlinks), sorted by name,
/// without `security.selinux`.
fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return Vec::new() };
    // SAFETY: c is a valid NUL-terminated string; a null buffer asks for the size.
    let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if n <= 0 {
        return Vec::new();
    }
    let mut names = vec![0u8; n as usize];
    // SAFETY: names has the length we pass.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name == b"security.selinux" {
            continue;
        }
        let Ok(cn) = CString::new(name) else { continue };
        // SAFETY: both strings are NUL-terminated; null buffer asks for the size.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            continue;
        }
        let mut value = vec![0u8; len as usize];
        // SAFETY: value has the length we pass.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        if len < 0 {
            continue;
        }
        value.truncate(len as usize);
        out.push((name.to_vec(), value));
    }
    out.sort();
    out
}

/// The reference listing of `layout:tag`: `umoci unpack` (as root, so owners,
/// devices and xattrs are kept) and [`canonical_listing`] of the rootfs.
/// Memoised per process.
pub fn unpack_reference(layout: &Path, tag: &str) -> String {
    static CACHE: OnceLock<Mutex<HashMap<(std::path::PathBuf, String), String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (layout.to_path_buf(), tag.to_string());
    if let Some(l) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return l.clone();
    }
    let tmp = tempfile::Builder::new()
        .prefix("strata-e2e-unpack-")
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
    let bundle = tmp.path().join("bundle");
    crate::run_tool(
        Command::new("umoci").arg("unpack").arg("--image").arg(format!("{}:{tag}", layout.display())).arg(&bundle),
    );
    let listing = canonical_listing(&bundle.join("rootfs"));
    cache.lock().unwrap_or_else(|p| p.into_inner()).insert(key, listing.clone());
    listing
}

/// Panics with a readable diff (lines only in one side) unless the listings are equal.
pub fn assert_same_listing(expected: &str, actual: &str, what: &str) {
    if expected == actual {
        return;
    }
    let e: std::collections::BTreeSet<&str> = expected.lines().collect();
    let a: std::collections::BTreeSet<&str> = actual.lines().collect();
    let mut msg = format!("{what}: listings differ ({} expected lines, {} actual)\n", e.len(), a.len());
    for l in e.difference(&a).take(40) {
        msg.push_str(&format!("- {l}\n"));
    }
    for l in a.difference(&e).take(40) {
        msg.push_str(&format!("+ {l}\n"));
    }
    if e == a {
        msg.push_str("(same lines: order, duplicates or line endings differ)\n");
    }
    panic!("{msg}");
}

/// The line for `path` in a listing, if any.
pub fn find_line<'a>(listing: &'a str, path: &str) -> Option<&'a str> {
    listing.lines().find(|l| l.split(' ').next() == Some(path))
}
