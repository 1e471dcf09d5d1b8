//! The merged view of an image: its layer indexes applied bottom to top, as
//! a plain sorted map from path to entry. Used where the whole tree is wanted
//! once (`strata debug tree`, export); the union filesystem keeps its own
//! in-memory tree because it must also change it.
//!
//! Rules (the OCI image layer spec, as overlayfs and Docker apply them):
//! - a layer's whiteouts (`.wh.NAME`) and opaque markers apply to the layers
//!   *below* it only, whatever their position in the tar, so each layer's
//!   deletions are applied before its additions;
//! - an entry replaces what a lower layer had at its path; a non-directory
//!   replacing a directory hides everything under it; a directory over a
//!   directory merges with it;
//! - a hard link becomes a copy of its target's entry (content, mode, owner,
//!   xattrs) as the tree stood when the link was applied: hard-linked paths
//!   share one inode, and later changes to the target path in upper layers
//!   replace the path, not the inode;
//! - a parent directory a layer implies without listing it is created as
//!   `0755 root:root` (what extraction tools do).

use crate::index::{Entry, EntryKind, LayerIndex};
use std::collections::BTreeMap;
use std::ops::Bound;

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("layer {layer}: hard link {path:?} points to {target:?}, which is not a file in the image")]
    DanglingHardlink { layer: usize, path: String, target: String },
}

/// The merged tree: relative paths (no leading `/`) to entries. Holds no
/// whiteouts, opaque markers or hard links. The root directory, when a layer
/// recorded one, is under the empty path.
#[derive(Debug, Clone, Default)]
pub struct MergedTree {
    pub entries: BTreeMap<Vec<u8>, Entry>,
}

impl MergedTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies layers bottom first.
    pub fn from_layers<'a>(layers: impl IntoIterator<Item = &'a LayerIndex>) -> Result<Self, MergeError> {
        let mut t = MergedTree::new();
        for (i, l) in layers.into_iter().enumerate() {
            t.apply(l, i)?;
        }
        Ok(t)
    }

    /// Applies one layer (`number` only names it in errors).
    pub fn apply(&mut self, layer: &LayerIndex, number: usize) -> Result<(), MergeError> {
        // Deletions first: they only ever hide lower content.
        for e in &layer.entries {
            match e.kind {
                EntryKind::Whiteout => {
                    self.entries.remove(&e.path);
                    self.remove_children(&e.path);
                }
                EntryKind::Opaque => self.remove_children(&e.path),
                _ => {}
            }
        }
        for e in &layer.entries {
            match &e.kind {
                EntryKind::Whiteout => {}
                EntryKind::Opaque => {
                    // The marker implies the directory exists; keep a lower
                    // directory's metadata when the layer does not list it.
                    // (the marker file's own mode and owner say nothing about the directory).
                    if !matches!(self.entries.get(&e.path).map(|x| &x.kind), Some(EntryKind::Dir)) {
                        self.insert(Entry {
                            kind: EntryKind::Dir,
                            mode: 0o755,
                            uid: 0,
                            gid: 0,
                            xattrs: vec![],
                            ..e.clone()
                        });
                    }
                }
                EntryKind::Hardlink { target } => {
                    let resolved = match self.entries.get(target) {
                        Some(t) if !matches!(t.kind, EntryKind::Dir) => Entry { path: e.path.clone(), ..t.clone() },
                        _ => {
                            return Err(MergeError::DanglingHardlink {
                                layer: number,
                                path: String::from_utf8_lossy(&e.path).into_owned(),
                                target: String::from_utf8_lossy(target).into_owned(),
                            })
                        }
                    };
                    self.insert(resolved);
                }
                _ => self.insert(e.clone()),
            }
        }
        Ok(())
    }

    fn insert(&mut self, e: Entry) {
        let is_dir = matches!(e.kind, EntryKind::Dir);
        if !is_dir {
            // A non-directory hides whatever a lower directory held.
            self.remove_children(&e.path);
        }
        self.ensure_parents(&e.path, &e);
        self.entries.insert(e.path.clone(), e);
    }

    /// Creates missing parent directories of `path` (and replaces
    /// non-directories standing where a parent must be).
    fn ensure_parents(&mut self, path: &[u8], like: &Entry) {
        let mut end = 0;
        while let Some(i) = path[end..].iter().position(|&b| b == b'/') {
            let parent = &path[..end + i];
            let ok = matches!(self.entries.get(parent).map(|p| &p.kind), Some(EntryKind::Dir));
            if !ok {
                self.entries.insert(
                    parent.to_vec(),
                    Entry {
                        path: parent.to_vec(),
                        kind: EntryKind::Dir,
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                        mtime: like.mtime,
                        mtime_nsec: like.mtime_nsec,
                        xattrs: vec![],
                    },
                );
            }
            end += i + 1;
        }
    }

    /// Removes every entry strictly below directory `path`.
    fn remove_children(&mut self, path: &[u8]) {
        let mut prefix = path.to_vec();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        let doomed: Vec<Vec<u8>> = self
            .entries
            .range::<[u8], _>((Bound::Included(prefix.as_slice()), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.entries.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn e(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: vec![],
        }
    }
    fn file(path: &str, content: &[u8]) -> Entry {
        e(path, EntryKind::File { size: content.len() as u64, digest: Digest::of(content) })
    }
    fn paths(t: &MergedTree) -> Vec<String> {
        t.entries.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect()
    }

    #[test]
    fn whiteouts_and_opaque_dirs_hide_lower_content_only() {
        let l0 = LayerIndex::new(vec![
            e("etc", EntryKind::Dir),
            file("etc/a", b"a"),
            file("etc/b", b"b"),
            e("var", EntryKind::Dir),
            file("var/x", b"x"),
            e("gone", EntryKind::Dir),
            file("gone/deep", b"d"),
        ]);
        // The whiteout and the opaque marker come after the layer's own entries:
        // they still only hide lower content.
        let l1 = LayerIndex::new(vec![
            file("var/new", b"n"),
            e("var", EntryKind::Opaque),
            file("gone", b"now a file"),
            e("etc/a", EntryKind::Whiteout),
        ]);
        let t = MergedTree::from_layers([&l0, &l1]).unwrap();
        assert_eq!(paths(&t), ["etc", "etc/b", "gone", "var", "var/new"]);
        assert!(matches!(t.entries[b"gone".as_slice()].kind, EntryKind::File { .. }));
    }

    #[test]
    fn whiteout_of_a_directory_removes_its_subtree() {
        let l0 = LayerIndex::new(vec![e("d", EntryKind::Dir), file("d/f", b"1"), file("d2", b"2")]);
        let l1 = LayerIndex::new(vec![e("d", EntryKind::Whiteout)]);
        let t = MergedTree::from_layers([&l0, &l1]).unwrap();
        assert_eq!(paths(&t), ["d2"]);
    }

    #[test]
    fn hardlinks_copy_the_target_entry() {
        let mut target = file("bin/busybox", b"elf");
        target.mode = 0o4755;
        let l0 = LayerIndex::new(vec![
            e("bin", EntryKind::Dir),
            target,
            e("bin/sh", EntryKind::Hardlink { target: b"bin/busybox".to_vec() }),
        ]);
        // An upper layer replacing the target path does not change the link.
        let l1 = LayerIndex::new(vec![file("bin/busybox", b"new")]);
        let t = MergedTree::from_layers([&l0, &l1]).unwrap();
        let sh = &t.entries[b"bin/sh".as_slice()];
        assert_eq!(sh.mode, 0o4755);
        assert_eq!(sh.kind, EntryKind::File { size: 3, digest: Digest::of(b"elf") });
        assert_eq!(sh.path, b"bin/sh");
        let bad = LayerIndex::new(vec![e("x", EntryKind::Hardlink { target: b"nope".to_vec() })]);
        assert!(MergedTree::from_layers([&bad]).is_err());
    }

    #[test]
    fn implied_parents_and_dir_over_file() {
        let l0 = LayerIndex::new(vec![file("a", b"file")]);
        let l1 = LayerIndex::new(vec![file("a/b/c", b"c")]);
        let t = MergedTree::from_layers([&l0, &l1]).unwrap();
        assert_eq!(paths(&t), ["a", "a/b", "a/b/c"]);
        assert_eq!(t.entries[b"a".as_slice()].kind, EntryKind::Dir);
        assert_eq!(t.entries[b"a".as_slice()].mode, 0o755);
    }
}
