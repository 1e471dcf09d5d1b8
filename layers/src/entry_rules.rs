//! The rules every layer entry must pass before it enters an index, whatever
//! it was read from: a tar stream ([`crate::ingest`]) or a lazily pulled
//! layer's table of contents ([`crate::chunked`]). One place, so the two
//! readers cannot disagree on what a hostile layer is.
//!
//! The rules: paths are canonical and stay inside the layer; `.wh.NAME` and
//! `.wh..wh..opq` become whiteout and opaque entries; nothing is placed
//! through a symlink the same layer made; a hard link names an earlier
//! non-directory entry of the layer; only a directory may be the root.

use crate::error::{Error, Result};
use crate::index::{Entry, EntryKind};
use std::collections::{HashMap, HashSet};

/// What a name says before its entry's type is looked at.
pub(crate) enum Naming {
    /// An ordinary entry at this (canonical) path.
    Plain(Vec<u8>),
    /// A whiteout or opaque marker: the path and kind are final.
    Marker(Vec<u8>, EntryKind),
    /// AUFS metadata (`.wh..wh.plnk`, ...): not part of the filesystem.
    Skip,
}

/// The entries of one layer so far, with what the rules need to know.
#[derive(Default)]
pub(crate) struct EntryRules {
    pub(crate) entries: Vec<Entry>,
    /// Path -> position in `entries` of its latest entry.
    seen: HashMap<Vec<u8>, usize>,
    /// Paths that are symlinks (as of the latest entry for that path).
    symlinks: HashSet<Vec<u8>>,
}

impl EntryRules {
    /// Canonicalises `raw_path` and recognises whiteout names, whatever the
    /// entry's type; refuses a path that goes through this layer's symlinks.
    pub(crate) fn name(&self, raw_path: &[u8]) -> Result<Naming> {
        let mut path = normalize(raw_path)?;
        let name_start = path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
        let mut marker = None;
        if let Some(hidden) = path[name_start..].strip_prefix(b".wh.") {
            if hidden == b".wh..opq" {
                path.truncate(name_start.saturating_sub(1));
                marker = Some(EntryKind::Opaque);
            } else if hidden.starts_with(b".wh.") {
                return Ok(Naming::Skip);
            } else if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(Error::hostile(raw_path, "is a whiteout of an invalid name"));
            } else {
                let hidden = hidden.to_vec();
                path.truncate(name_start);
                path.extend_from_slice(&hidden);
                marker = Some(EntryKind::Whiteout);
            }
        }
        if let Some(link) = self.through_symlink(&path) {
            return Err(Error::hostile(
                raw_path,
                format!("goes through the symlink {:?} created earlier in this layer", lossy(link)),
            ));
        }
        Ok(match marker {
            Some(kind) => Naming::Marker(path, kind),
            None => Naming::Plain(path),
        })
    }

    /// The kind of a hard link to `raw_target`: it must name an earlier
    /// file-like entry of this layer, not through one of its symlinks.
    pub(crate) fn hardlink(&self, raw_path: &[u8], raw_target: &[u8]) -> Result<EntryKind> {
        let target = normalize(raw_target).map_err(|_| {
            Error::hostile(raw_path, format!("is a hardlink to {:?}, outside the layer", lossy(raw_target)))
        })?;
        let not_seen = || {
            Error::hostile(
                raw_path,
                format!("is a hardlink to {:?}, which is not an earlier file of this layer", lossy(raw_target)),
            )
        };
        if self.through_symlink(&target).is_some() {
            return Err(Error::hostile(raw_path, "is a hardlink through a symlink of this layer"));
        }
        let &i = self.seen.get(&target).ok_or_else(not_seen)?;
        match &self.entries[i].kind {
            EntryKind::Dir | EntryKind::Whiteout | EntryKind::Opaque => Err(not_seen()),
            // The immediate target, even when it is a link itself: the
            // original's path may have been replaced since (`tar --append`),
            // and links are resolved in order.
            _ => Ok(EntryKind::Hardlink { target }),
        }
    }

    /// A symlink's kind, its target checked.
    pub(crate) fn symlink(raw_path: &[u8], target: Vec<u8>) -> Result<EntryKind> {
        if target.contains(&0) {
            return Err(Error::hostile(raw_path, "has a symlink target containing a NUL byte"));
        }
        if target.is_empty() {
            return Err(Error::hostile(raw_path, "is a symlink with an empty target"));
        }
        Ok(EntryKind::Symlink { target })
    }

    /// Adds `entry` (named by [`EntryRules::name`]) after the checks that
    /// need its kind.
    pub(crate) fn push(&mut self, raw_path: &[u8], mut entry: Entry) -> Result<()> {
        if matches!(&entry.kind, EntryKind::Hardlink { target } if *target == entry.path) {
            return Err(Error::hostile(raw_path, "is a hardlink to itself"));
        }
        if entry.path.is_empty() && !matches!(entry.kind, EntryKind::Dir | EntryKind::Opaque) {
            return Err(Error::hostile(raw_path, "would replace the layer's root directory"));
        }
        // A hard link to a symlink is that symlink under another name.
        let is_symlink = match &entry.kind {
            EntryKind::Symlink { .. } => true,
            EntryKind::Hardlink { target } => self.symlinks.contains(target),
            _ => false,
        };
        if is_symlink {
            self.symlinks.insert(entry.path.clone());
        } else if !self.symlinks.is_empty() {
            self.symlinks.remove(&entry.path);
        }
        entry.xattrs.sort();
        entry.xattrs.dedup_by(|a, b| a.0 == b.0);
        self.seen.insert(entry.path.clone(), self.entries.len());
        self.entries.push(entry);
        Ok(())
    }

    /// The symlink (from this layer) that some proper ancestor of `path` is.
    fn through_symlink<'p>(&self, path: &'p [u8]) -> Option<&'p [u8]> {
        if self.symlinks.is_empty() {
            return None;
        }
        path.iter()
            .enumerate()
            .filter(|(_, &b)| b == b'/')
            .map(|(i, _)| &path[..i])
            .find(|p| self.symlinks.contains(*p))
    }
}

pub(crate) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A tar path made relative and canonical: no leading `./`, no trailing `/`,
/// no `.` or empty components. Refuses absolute paths, `..` and NUL bytes.
/// The layer root (`.`, `./`) is the empty path.
pub fn normalize(raw: &[u8]) -> Result<Vec<u8>> {
    if raw.contains(&0) {
        return Err(Error::hostile(raw, "contains a NUL byte"));
    }
    if raw.first() == Some(&b'/') {
        return Err(Error::hostile(raw, "has an absolute path"));
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(Error::hostile(raw, "has a '..' component")),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}
