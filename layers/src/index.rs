//! The per-layer metadata index: what one layer tarball holds, minus the file
//! contents (those live in the object store, named by their sha256).
//!
//! Every attribute a container can observe is kept here, not in host inodes:
//! owner, mode with setuid/setgid/sticky, mtime to the nanosecond, xattrs,
//! device numbers, hardlinks, symlink targets, and the OCI whiteout and opaque
//! markers. That is what makes a pull by an ordinary user exactly as faithful
//! as one by root, and what the union filesystem serves from memory.
//!
//! Entries are kept in tar order (hardlinks always follow their target).
//! Paths are relative, `/`-separated, without `./` or a trailing slash; the
//! layer's root directory, when the tar has one, is the empty path.
//!
//! On-disk form (little-endian, versioned so later formats can be told apart):
//! `b"STRATAIX"`, u32 version, u64 entry count, then per entry:
//! u8 kind, u32 mode, u32 uid, u32 gid, i64 mtime secs, u32 mtime nanos,
//! bytes path, kind payload, u32 xattr count, (bytes name, bytes value)*;
//! `bytes` is a u32 length and the bytes. Payloads: File = u64 size + 32-byte
//! digest; Symlink/Hardlink = bytes target; Char/Block = u32 major + u32 minor.

use crate::digest::Digest;
use std::io::{self, Read, Write};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"STRATAIX";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file; its content is the object named by `digest`.
    File {
        size: u64,
        digest: Digest,
    },
    Dir,
    Symlink {
        target: Vec<u8>,
    },
    /// A hard link to an earlier entry of the same layer (a path in this
    /// index; possibly a hard link itself: links are resolved in order, each
    /// to what its target path held at that point).
    Hardlink {
        target: Vec<u8>,
    },
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    /// `.wh.NAME` in the tar: `path` is the name it hides in lower layers.
    Whiteout,
    /// `DIR/.wh..wh..opq` in the tar: `path` is DIR, whose lower content is hidden.
    Opaque,
}

impl EntryKind {
    fn code(&self) -> u8 {
        match self {
            EntryKind::File { .. } => 0,
            EntryKind::Dir => 1,
            EntryKind::Symlink { .. } => 2,
            EntryKind::Hardlink { .. } => 3,
            EntryKind::CharDevice { .. } => 4,
            EntryKind::BlockDevice { .. } => 5,
            EntryKind::Fifo => 6,
            EntryKind::Whiteout => 7,
            EntryKind::Opaque => 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (`0o7777`); no type bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// The file-type bits (`S_IFREG` etc.) for this entry; hardlinks report
    /// `S_IFREG` (tar only hardlinks non-directories; the target's kind wins
    /// when the filesystem resolves the link).
    pub fn type_bits(&self) -> u32 {
        match self.kind {
            EntryKind::File { .. } | EntryKind::Hardlink { .. } => libc::S_IFREG,
            EntryKind::Dir | EntryKind::Opaque => libc::S_IFDIR,
            EntryKind::Symlink { .. } => libc::S_IFLNK,
            EntryKind::CharDevice { .. } | EntryKind::Whiteout => libc::S_IFCHR,
            EntryKind::BlockDevice { .. } => libc::S_IFBLK,
            EntryKind::Fifo => libc::S_IFIFO,
        }
    }

    /// The last path component.
    pub fn name(&self) -> &[u8] {
        match self.path.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.path[i + 1..],
            None => &self.path,
        }
    }

    /// The parent directory's path (empty for top-level entries).
    pub fn parent(&self) -> &[u8] {
        match self.path.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.path[..i],
            None => b"",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("layer index {path}: {cause}")]
    Io { path: String, cause: io::Error },
    #[error("layer index {path} is not a strata index (bad magic); remove the layer and pull again")]
    BadMagic { path: String },
    #[error("layer index {path} has format version {version}, this strata reads version {VERSION}")]
    Version { path: String, version: u32 },
    #[error("layer index {path} is truncated or corrupt ({what}); remove the layer and pull again")]
    Corrupt { path: String, what: &'static str },
}

/// One layer's entries, in tar order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerIndex {
    pub entries: Vec<Entry>,
}

impl LayerIndex {
    pub fn new(entries: Vec<Entry>) -> Self {
        LayerIndex { entries }
    }

    /// Serialises the index (see the module docs for the format).
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let mut buf = Vec::with_capacity(64 + self.entries.len() * 96);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            buf.push(e.kind.code());
            for v in [e.mode, e.uid, e.gid] {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            buf.extend_from_slice(&e.mtime.to_le_bytes());
            buf.extend_from_slice(&e.mtime_nsec.to_le_bytes());
            put_bytes(&mut buf, &e.path);
            match &e.kind {
                EntryKind::File { size, digest } => {
                    buf.extend_from_slice(&size.to_le_bytes());
                    buf.extend_from_slice(digest.as_bytes());
                }
                EntryKind::Symlink { target } | EntryKind::Hardlink { target } => put_bytes(&mut buf, target),
                EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
                    buf.extend_from_slice(&major.to_le_bytes());
                    buf.extend_from_slice(&minor.to_le_bytes());
                }
                EntryKind::Dir | EntryKind::Fifo | EntryKind::Whiteout | EntryKind::Opaque => {}
            }
            buf.extend_from_slice(&(e.xattrs.len() as u32).to_le_bytes());
            for (k, v) in &e.xattrs {
                put_bytes(&mut buf, k);
                put_bytes(&mut buf, v);
            }
        }
        w.write_all(&buf)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v).expect("writing to a Vec cannot fail");
        v
    }

    /// Parses an index; `origin` names it in errors.
    pub fn from_bytes(data: &[u8], origin: &str) -> Result<Self, IndexError> {
        let corrupt = |what| IndexError::Corrupt { path: origin.to_string(), what };
        if data.len() < 20 || &data[..8] != MAGIC {
            return Err(IndexError::BadMagic { path: origin.to_string() });
        }
        let mut r = Cursor { data, pos: 8 };
        let version = r.u32().ok_or_else(|| corrupt("header"))?;
        if version != VERSION {
            return Err(IndexError::Version { path: origin.to_string(), version });
        }
        let count = r.u64().ok_or_else(|| corrupt("header"))?;
        // Each entry takes at least 37 bytes: refuse counts the data cannot hold.
        if count > (data.len() as u64) / 37 + 1 {
            return Err(corrupt("entry count"));
        }
        let mut entries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            entries.push(r.entry().ok_or_else(|| corrupt("entry"))?);
        }
        if r.pos != data.len() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(LayerIndex { entries })
    }

    pub fn read_from_file(path: &Path) -> Result<Self, IndexError> {
        let origin = path.display().to_string();
        let mut data = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|cause| IndexError::Io { path: origin.clone(), cause })?;
        Self::from_bytes(&data, &origin)
    }
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
    buf.extend_from_slice(b);
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        self.take(n).map(|b| b.to_vec())
    }
    fn entry(&mut self) -> Option<Entry> {
        let code = self.u8()?;
        let mode = self.u32()?;
        let uid = self.u32()?;
        let gid = self.u32()?;
        let mtime = self.u64()? as i64;
        let mtime_nsec = self.u32()?;
        let path = self.bytes()?;
        let kind = match code {
            0 => {
                let size = self.u64()?;
                let d: [u8; 32] = self.take(32)?.try_into().ok()?;
                EntryKind::File { size, digest: Digest::from_bytes(d) }
            }
            1 => EntryKind::Dir,
            2 => EntryKind::Symlink { target: self.bytes()? },
            3 => EntryKind::Hardlink { target: self.bytes()? },
            4 => EntryKind::CharDevice { major: self.u32()?, minor: self.u32()? },
            5 => EntryKind::BlockDevice { major: self.u32()?, minor: self.u32()? },
            6 => EntryKind::Fifo,
            7 => EntryKind::Whiteout,
            8 => EntryKind::Opaque,
            _ => return None,
        };
        let n = self.u32()? as usize;
        let mut xattrs = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            xattrs.push((self.bytes()?, self.bytes()?));
        }
        Some(Entry { path, kind, mode, uid, gid, mtime, mtime_nsec, xattrs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LayerIndex {
        let e = |path: &str, kind| Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o4755,
            uid: 1000,
            gid: 2000,
            mtime: 1_700_000_000,
            mtime_nsec: 123,
            xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
        };
        LayerIndex::new(vec![
            e("", EntryKind::Dir),
            e("bin/sh", EntryKind::File { size: 5, digest: Digest::of(b"hello") }),
            e("bin/ln", EntryKind::Hardlink { target: b"bin/sh".to_vec() }),
            e("lib", EntryKind::Symlink { target: b"usr/lib".to_vec() }),
            e("dev/null", EntryKind::CharDevice { major: 1, minor: 3 }),
            e("dev/sda", EntryKind::BlockDevice { major: 8, minor: 0 }),
            e("fifo", EntryKind::Fifo),
            e("gone", EntryKind::Whiteout),
            e("etc", EntryKind::Opaque),
        ])
    }

    #[test]
    fn round_trips() {
        let idx = sample();
        let bytes = idx.to_bytes();
        assert_eq!(LayerIndex::from_bytes(&bytes, "t").unwrap(), idx);
    }

    #[test]
    fn refuses_truncated_and_foreign_data() {
        let bytes = sample().to_bytes();
        for cut in [0, 7, 19, 40, bytes.len() - 1] {
            assert!(LayerIndex::from_bytes(&bytes[..cut], "t").is_err(), "cut at {cut}");
        }
        let mut v = bytes.clone();
        v[8] = 9;
        assert!(matches!(LayerIndex::from_bytes(&v, "t"), Err(IndexError::Version { .. })));
        assert!(matches!(LayerIndex::from_bytes(b"not an index at all!!", "t"), Err(IndexError::BadMagic { .. })));
    }

    #[test]
    fn names_and_parents() {
        let idx = sample();
        assert_eq!(idx.entries[1].name(), b"sh");
        assert_eq!(idx.entries[1].parent(), b"bin");
        assert_eq!(idx.entries[3].parent(), b"");
    }
}
