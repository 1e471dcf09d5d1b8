//! `debug tree IMAGE`: the merged image as canonical lines, one per path.
//!
//! The format is a contract with the end-to-end tests, which compare it
//! with a listing of the same image unpacked by a reference tool:
//!
//! ```text
//! PATH TYPE MODE UID GID SIZE TARGET[ RDEV][ XATTR...]
//! ```
//!
//! `PATH` absolute and escaped (bytes 0x21..=0x7e except `\` as themselves,
//! others `\xHH`); `TYPE` one of `f d l p c b s`; `MODE` four octal digits
//! including setuid/setgid/sticky (always `0777` for symlinks, as lstat
//! reports them); `UID`/`GID` as recorded in the image;
//! `SIZE` bytes for files, else 0; `TARGET` the content's sha256 hex for
//! files, the escaped link target for symlinks, `-` otherwise; `RDEV`
//! `MAJOR,MINOR` for devices only; `XATTR` `NAME=HEX` tokens sorted by name
//! (`security.selinux` left out). Lines are sorted byte-wise; the root
//! directory is not listed; hard links appear as the files they link to.

use super::support::{exit_code_for, open_store};
use crate::context::Context;
use anyhow::Context as _;
use std::fmt::Write as _;
use std::io::Write;
use strata_layers::merge::MergedTree;
use strata_layers::{Entry, EntryKind};

pub fn tree(ctx: &Context, image: &str) -> anyhow::Result<i32> {
    let store = open_store(ctx)?;
    let rec = store.resolve_image(image).map_err(exit_code_for)?;
    let mut indexes = Vec::with_capacity(rec.layers.len());
    for l in &rec.layers {
        indexes.push(store.open_layer(&l.mount_key(&store))?.index);
    }
    let merged = MergedTree::from_layers(&indexes).with_context(|| format!("merging the layers of {image}"))?;
    let mut lines: Vec<String> = merged.entries.values().filter(|e| !e.path.is_empty()).map(canonical_line).collect();
    lines.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for l in lines {
        writeln!(out, "{l}")?;
    }
    out.flush()?;
    Ok(0)
}

/// One entry of the merged tree in the canonical format (module docs).
pub fn canonical_line(e: &Entry) -> String {
    let mut s = String::with_capacity(128);
    s.push_str(&escape(&[b"/".as_slice(), &e.path].concat()));
    let (kind, size, target, rdev) = match &e.kind {
        EntryKind::File { size, digest } => ('f', *size, digest.hex(), None),
        EntryKind::Dir | EntryKind::Opaque => ('d', 0, "-".to_string(), None),
        EntryKind::Symlink { target } => ('l', 0, escape(target), None),
        EntryKind::CharDevice { major, minor } => ('c', 0, "-".to_string(), Some((*major, *minor))),
        EntryKind::BlockDevice { major, minor } => ('b', 0, "-".to_string(), Some((*major, *minor))),
        EntryKind::Fifo => ('p', 0, "-".to_string(), None),
        // The merge resolves hard links and drops whiteouts; kept total for safety.
        EntryKind::Hardlink { target } => ('h', 0, escape(target), None),
        EntryKind::Whiteout => ('w', 0, "-".to_string(), None),
    };
    // Symlinks have no permissions of their own on Linux: lstat says 0777
    // whatever the tar header recorded.
    let mode = if kind == 'l' { 0o777 } else { e.mode & 0o7777 };
    let _ = write!(s, " {kind} {mode:04o} {} {} {size} {target}", e.uid, e.gid);
    if let Some((ma, mi)) = rdev {
        let _ = write!(s, " {ma},{mi}");
    }
    let mut xattrs: Vec<&(Vec<u8>, Vec<u8>)> = e.xattrs.iter().filter(|(k, _)| k != b"security.selinux").collect();
    xattrs.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in xattrs {
        let _ = write!(s, " {}={}", escape(k), hex_lower(v));
    }
    s
}

/// Escapes bytes for the canonical listing (module docs).
pub fn escape(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        if (0x21..=0x7e).contains(&c) && c != b'\\' {
            s.push(c as char);
        } else {
            let _ = write!(s, "\\x{c:02x}");
        }
    }
    s
}

fn hex_lower(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for c in b {
        let _ = write!(s, "{c:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_layers::Digest;

    fn entry(path: &str, kind: EntryKind, mode: u32) -> Entry {
        Entry { path: path.as_bytes().to_vec(), kind, mode, uid: 0, gid: 0, mtime: 0, mtime_nsec: 0, xattrs: vec![] }
    }

    #[test]
    fn canonical_lines() {
        let d = Digest::of(b"hi");
        let mut f = entry("bin/su", EntryKind::File { size: 2, digest: d }, 0o4755);
        f.uid = 0;
        f.gid = 42;
        f.xattrs = vec![
            (b"user.b".to_vec(), b"y".to_vec()),
            (b"security.selinux".to_vec(), b"x".to_vec()),
            (b"user.a".to_vec(), b"x".to_vec()),
        ];
        assert_eq!(canonical_line(&f), format!("/bin/su f 4755 0 42 2 {} user.a=78 user.b=79", d.hex()));
        assert_eq!(canonical_line(&entry("tmp", EntryKind::Dir, 0o1777)), "/tmp d 1777 0 0 0 -");
        assert_eq!(
            canonical_line(&entry("lib", EntryKind::Symlink { target: b"usr/lib".to_vec() }, 0o777)),
            "/lib l 0777 0 0 0 usr/lib"
        );
        assert_eq!(
            canonical_line(&entry("dev/null", EntryKind::CharDevice { major: 1, minor: 3 }, 0o666)),
            "/dev/null c 0666 0 0 0 - 1,3"
        );
        assert_eq!(canonical_line(&entry("a b\\", EntryKind::Fifo, 0o644)), "/a\\x20b\\x5c p 0644 0 0 0 -");
    }
}
