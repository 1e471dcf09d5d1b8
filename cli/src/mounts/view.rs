//! Which layers a `strata mount` shows, and how a single layer shows its
//! whiteouts.
//!
//! A merged view (`strata mount IMAGE`, `--upto N`) hands the layer indexes to
//! the union filesystem unchanged: it applies whiteouts and opaque markers
//! itself. A single layer (`--layer N`) is meant to show what the layer *says*,
//! deletions included, so before mounting its index is rewritten into the
//! representation kernel overlayfs uses for its upper and lower directories:
//!
//! - a whiteout (`.wh.NAME` in the tar) becomes `NAME`, a character device
//!   0/0 with mode 0000;
//! - an opaque directory (`DIR/.wh..wh..opq`) becomes `DIR` carrying the
//!   xattr `trusted.overlay.opaque` = `y` — `user.overlay.opaque` when strata
//!   runs as an ordinary user, as overlayfs does with `userxattr`: only
//!   CAP_SYS_ADMIN may read `trusted.*` attributes, so the `trusted` name
//!   would be invisible to the only user who can see the mount.
//!
//! Rewritten this way a layer alone contains no whiteout markers, so the
//! filesystem shows every entry as it is. A whiteout below a path that the
//! same layer makes a non-directory (umoci writes `d2f` as a file followed by
//! `d2f/.wh.child`) is dropped: it hides nothing the file does not already
//! replace, and it could not be shown without turning the file into a
//! directory. Layers count from 1 = the bottom (oldest) layer.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use strata_layers::index::{Entry, EntryKind, LayerIndex};

/// What part of the image a mount shows.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase", tag = "kind", content = "n")]
pub enum View {
    /// Every layer, merged.
    #[default]
    All,
    /// Layer N alone (1 = bottom), whiteouts shown as such.
    Layer(usize),
    /// Layers 1..=N merged: the image as it stood after layer N.
    Upto(usize),
}

impl View {
    /// Checks N against the image's layer count and returns the 0-based
    /// range of layers to stack.
    pub fn layers(self, count: usize) -> Result<std::ops::Range<usize>, String> {
        let check = |n: usize| {
            if n == 0 {
                Err("layers are numbered from 1 (the bottom layer)".to_string())
            } else if n > count {
                let s = if count == 1 { "" } else { "s" };
                Err(format!("layer {n} is out of range: image has {count} layer{s}"))
            } else {
                Ok(n)
            }
        };
        match self {
            View::All => Ok(0..count),
            View::Layer(n) => check(n).map(|n| n - 1..n),
            View::Upto(n) => check(n).map(|n| 0..n),
        }
    }

    /// The MODE column's qualifier (`layer=2`, `upto=3`), if any.
    pub fn describe(self) -> Option<String> {
        match self {
            View::All => None,
            View::Layer(n) => Some(format!("layer={n}")),
            View::Upto(n) => Some(format!("upto={n}")),
        }
    }
}

/// The xattr that marks an opaque directory in a single-layer view.
pub fn opaque_xattr_name(rootless: bool) -> &'static [u8] {
    if rootless {
        b"user.overlay.opaque"
    } else {
        b"trusted.overlay.opaque"
    }
}

/// Rewrites one layer's whiteout and opaque markers into overlayfs form (see
/// the module docs).
pub fn expose_whiteouts(index: &LayerIndex, rootless: bool) -> LayerIndex {
    let xattr = opaque_xattr_name(rootless);
    let opaque: HashSet<&[u8]> =
        index.entries.iter().filter(|e| e.kind == EntryKind::Opaque).map(|e| e.path.as_slice()).collect();
    let dirs: HashSet<&[u8]> =
        index.entries.iter().filter(|e| e.kind == EntryKind::Dir).map(|e| e.path.as_slice()).collect();
    let non_dirs: HashSet<&[u8]> = index
        .entries
        .iter()
        .filter(|e| !matches!(e.kind, EntryKind::Dir | EntryKind::Opaque | EntryKind::Whiteout))
        .map(|e| e.path.as_slice())
        .collect();
    let under_non_dir = |path: &[u8]| path.iter().enumerate().any(|(i, &b)| b == b'/' && non_dirs.contains(&path[..i]));
    let mark = |e: &mut Entry| {
        e.xattrs.retain(|(k, _)| k != xattr);
        e.xattrs.push((xattr.to_vec(), b"y".to_vec()));
        e.xattrs.sort();
    };
    let mut entries = Vec::with_capacity(index.entries.len());
    for e in &index.entries {
        let mut e = e.clone();
        match e.kind {
            EntryKind::Whiteout if under_non_dir(&e.path) => continue,
            EntryKind::Whiteout => {
                e.kind = EntryKind::CharDevice { major: 0, minor: 0 };
                e.mode = 0;
                e.xattrs.clear();
            }
            // The directory's own entry carries the mark; the marker goes.
            EntryKind::Opaque if dirs.contains(e.path.as_slice()) => continue,
            EntryKind::Opaque => {
                // No entry of its own in this layer: the directory as tar
                // extraction would create it, marked opaque.
                e.kind = EntryKind::Dir;
                e.mode = 0o755;
                e.xattrs.clear();
                mark(&mut e);
            }
            EntryKind::Dir if opaque.contains(e.path.as_slice()) => mark(&mut e),
            _ => {}
        }
        entries.push(e);
    }
    LayerIndex::new(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_layers::Digest;

    fn e(path: &str, kind: EntryKind) -> Entry {
        Entry { path: path.into(), kind, mode: 0o644, uid: 7, gid: 8, mtime: 1, mtime_nsec: 0, xattrs: vec![] }
    }

    #[test]
    fn whiteouts_become_devices_and_opaque_dirs_get_the_xattr() {
        let index = LayerIndex::new(vec![
            e("a", EntryKind::Dir),
            e("a", EntryKind::Opaque),
            e("a/f", EntryKind::File { size: 1, digest: Digest::of(b"x") }),
            e("b/gone", EntryKind::Whiteout),
            e("c", EntryKind::Opaque),
            e("d2f", EntryKind::File { size: 1, digest: Digest::of(b"y") }),
            e("d2f/child", EntryKind::Whiteout),
        ]);
        let out = expose_whiteouts(&index, false);
        assert_eq!(out.entries.len(), 5);
        assert_eq!(out.entries[0].xattrs, vec![(b"trusted.overlay.opaque".to_vec(), b"y".to_vec())]);
        assert_eq!(out.entries[0].mode, 0o644);
        assert_eq!(out.entries[2].kind, EntryKind::CharDevice { major: 0, minor: 0 });
        assert_eq!((out.entries[2].mode, out.entries[2].uid), (0, 7));
        assert_eq!(out.entries[3].kind, EntryKind::Dir);
        assert_eq!(out.entries[3].mode, 0o755);
        let rootless = expose_whiteouts(&index, true);
        assert_eq!(rootless.entries[0].xattrs[0].0, b"user.overlay.opaque".to_vec());
    }

    #[test]
    fn layer_numbers_are_checked() {
        assert_eq!(View::All.layers(3), Ok(0..3));
        assert_eq!(View::Layer(1).layers(3), Ok(0..1));
        assert_eq!(View::Layer(3).layers(3), Ok(2..3));
        assert_eq!(View::Upto(2).layers(3), Ok(0..2));
        assert_eq!(View::Layer(4).layers(3), Err("layer 4 is out of range: image has 3 layers".to_string()));
        assert!(View::Upto(0).layers(3).is_err());
    }
}
