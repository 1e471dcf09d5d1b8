//! Folding an existing upper directory into the merged tree at mount, so a
//! remount shows exactly what the previous mount left (see `upper.rs` for the
//! on-disk conventions read here).

use std::collections::HashMap;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use strata_layers::index::EntryKind;
use strata_layers::Digest;

use crate::source::LayerSource;
use crate::tree::{Ino, LowerRef, Node, Tree, Up, ROOT};
use crate::upper::{self, list_dir, Upper, LONG_WH_PREFIX, OPAQUE, WH_PREFIX};
use crate::walk::Visit;

/// (name an upper entry stands for, its name on disk) pairs.
pub(crate) type UpperNames = Vec<(Vec<u8>, Vec<u8>)>;

/// The entries of one upper directory as (name it stands for, name on disk),
/// sorted by the first: a whiteout by the name it hides, which is the order
/// Docker's walk of an overlay upper gives. Strata's own markers (`.wh..wh.*`,
/// the opaque marker included) are left out; the flag says whether the
/// directory is opaque.
pub(crate) fn upper_names_sorted(up: &Upper, dir: BorrowedFd) -> io::Result<(UpperNames, bool)> {
    let mut names = Vec::new();
    let mut opaque = false;
    for n in list_dir(dir)? {
        let key = if n == OPAQUE {
            opaque = true;
            continue;
        } else if n.starts_with(LONG_WH_PREFIX) {
            match long_whiteout_target(up, dir, &n) {
                // Removed since it was listed (a running container's).
                Err(e) if crate::walk::vanished(&e) => continue,
                r => r?,
            }
        } else if n.starts_with(b".wh..wh.") {
            continue;
        } else if let Some(h) = n.strip_prefix(WH_PREFIX) {
            h.to_vec()
        } else {
            n.clone()
        };
        names.push((key, n));
    }
    names.sort();
    Ok((names, opaque))
}

/// Reads the name a long whiteout stands for.
pub(crate) fn long_whiteout_target(up: &Upper, dir: BorrowedFd, name: &[u8]) -> io::Result<Vec<u8>> {
    let f = up.open_file(dir, name, rustix::fs::OFlags::RDONLY)?;
    let mut v = Vec::new();
    io::Read::read_to_end(&mut &f, &mut v)?;
    Ok(v)
}

fn find_digest(sources: &[Arc<dyn LayerSource>], d: &Digest) -> Option<LowerRef> {
    for (li, s) in sources.iter().enumerate().rev() {
        for (ei, e) in s.entries().iter().enumerate() {
            if matches!(&e.kind, EntryKind::File { digest, .. } if digest == d) {
                return Some(LowerRef { layer: li as u32, entry: ei as u32 });
            }
        }
    }
    None
}

pub(crate) fn load_upper(t: &mut Tree, up: &Upper, sources: &[Arc<dyn LayerSource>]) -> io::Result<()> {
    let root_listing = list_dir(&up.dir_readable(b"")?)?;
    if root_listing.is_empty() {
        // A fresh upper directory: it takes the image root's metadata.
        let a = t.node(ROOT).attr;
        up.write_meta(up.root_fd(), b".", &a, &mut true)?;
        up.set_times(up.root_fd(), b".", Some(a.atime), Some(a.mtime))?;
    } else {
        let h = up.stat(up.root_fd(), b".")?;
        t.node_mut(ROOT).attr = h.attr();
    }
    t.node_mut(ROOT).up = Up::Full;
    // What the root carries visibly (a default ACL, a host security label)
    // is passed on to what gets created in it; see `Node::no_xattrs`.
    t.node_mut(ROOT).no_xattrs = up.list_xattrs(up.root_fd(), b".")?.is_empty();
    let mut links = HashMap::new();
    crate::walk::walk(
        up.dir_readable(b"")?,
        ROOT,
        |fd, dir| load_dir(t, up, sources, fd, dir, &mut links),
        |_, ()| Ok(()),
    )
}

/// Folds one upper directory into the tree; returns its subdirectories.
fn load_dir(
    t: &mut Tree,
    up: &Upper,
    sources: &[Arc<dyn LayerSource>],
    fd: BorrowedFd,
    dir: Ino,
    links: &mut HashMap<(u64, u64), Ino>,
) -> io::Result<Vec<Visit<(), Ino>>> {
    let mut subdirs = Vec::new();
    let mut names = list_dir(fd)?;
    names.sort();
    if names.iter().any(|n| n == OPAQUE) {
        t.clear_children(dir);
        if let Some(d) = t.dir_mut(dir) {
            d.opaque = true;
        }
    }
    let mut plain = Vec::with_capacity(names.len());
    for n in names {
        if n == OPAQUE {
            continue;
        }
        let hidden = if n.starts_with(LONG_WH_PREFIX) {
            long_whiteout_target(up, fd, &n)?
        } else if n.starts_with(b".wh..wh..cu.") {
            // An interrupted copy-up.
            upper::unlink_if_exists(fd, &n, false)?;
            continue;
        } else if n.starts_with(b".wh..wh.") {
            continue;
        } else if let Some(h) = n.strip_prefix(WH_PREFIX) {
            h.to_vec()
        } else {
            plain.push(n);
            continue;
        };
        t.remove_name(dir, &hidden);
        if let Some(d) = t.dir_mut(dir) {
            d.hide(&hidden);
        }
    }
    for n in plain {
        let h = up.stat(fd, &n)?;
        let mut attr = h.attr();
        let existing = t.child(dir, &n);
        let covers = existing.is_some();
        if let Some(e) = existing.filter(|&e| attr.is_dir() && t.node(e).attr.is_dir()) {
            let node = t.node_mut(e);
            node.attr = attr;
            node.up = Up::Full;
            subdirs.push(Visit::Descend(n, e));
            continue;
        }
        let existing_lower = existing.and_then(|e| t.node(e).lower);
        if existing.is_some() {
            t.remove_name(dir, &n);
        }
        let key = (h.st.st_dev, h.st.st_ino);
        if h.host_kind() != libc::S_IFDIR && h.st.st_nlink > 1 {
            if let Some(&ino) = links.get(&key) {
                t.add_link(ino, dir, &n, covers);
                continue;
            }
        }
        let mut state = Up::Full;
        let mut lower = None;
        if let Some(d) = &h.metacopy {
            let same = existing_lower.filter(|l| {
                sources
                    .get(l.layer as usize)
                    .and_then(|s| s.entries().get(l.entry as usize))
                    .is_some_and(|e| matches!(&e.kind, EntryKind::File { digest, .. } if digest == d))
            });
            lower = same.or_else(|| find_digest(sources, d));
            if let Some(l) = lower {
                state = Up::Meta;
                if let Some(EntryKind::File { size, .. }) =
                    sources.get(l.layer as usize).and_then(|s| s.entries().get(l.entry as usize)).map(|e| &e.kind)
                {
                    attr.size = *size;
                    attr.blocks = size.div_ceil(512);
                }
            }
        }
        let mut node = Node::new(attr, lower, state);
        node.stand_in = h.is_stand_in();
        let ino = t.alloc(node);
        t.add_link(ino, dir, &n, covers);
        if h.host_kind() != libc::S_IFDIR && h.st.st_nlink > 1 {
            links.insert(key, ino);
        }
        if attr.is_dir() {
            subdirs.push(Visit::Descend(n, ino));
        }
    }
    Ok(subdirs)
}
