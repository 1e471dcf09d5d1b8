//! The merged in-memory tree: one node per inode of the mounted view.
//!
//! At mount the lower layers are folded into this tree once, bottom to top,
//! applying whiteouts and opaque markers as they come; an existing upper
//! directory is then folded in on top (see `upper.rs`). After that every
//! lookup, getattr and readdir is a memory operation. Inode numbers are indexes
//! into `nodes` and never change while the node lives; a slot is reused only
//! once the node is unlinked and the kernel has forgotten it (FORGET brought
//! its lookup count to 0). A hard link group of a layer is one node with
//! several [`Link`]s.
//!
//! Per name the tree remembers whether something in the lower layers sits at
//! that path (`Link::covers`) and per directory which lower names are hidden by
//! a whiteout (`Dir::hidden`): that is all the writable layer needs to decide
//! when an unlink must leave a `.wh.` whiteout and when a new directory must be
//! opaque, without consulting the layers again.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use strata_layers::index::{Entry, EntryKind};

use crate::source::LayerSource;

pub(crate) type Ino = u64;
pub(crate) const ROOT: Ino = 1;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ts {
    pub sec: i64,
    pub nsec: u32,
}

impl Ts {
    /// The access time of a host stat.
    pub fn atime(st: &rustix::fs::Stat) -> Ts {
        Ts { sec: st.st_atime, nsec: st.st_atime_nsec as u32 }
    }

    /// The modification time of a host stat.
    pub fn mtime(st: &rustix::fs::Stat) -> Ts {
        Ts { sec: st.st_mtime, nsec: st.st_mtime_nsec as u32 }
    }

    /// The change time of a host stat.
    pub fn ctime(st: &rustix::fs::Stat) -> Ts {
        Ts { sec: st.st_ctime, nsec: st.st_ctime_nsec as u32 }
    }
}

/// What stat(2) reports for a node, except nlink (counted from the links).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Attr {
    /// File type and permission bits (`st_mode`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Device number in the kernel's "new" encoding (what FUSE carries).
    pub rdev: u32,
    pub size: u64,
    pub blocks: u64,
    pub atime: Ts,
    pub mtime: Ts,
    pub ctime: Ts,
}

impl Attr {
    pub fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }
    pub fn is_reg(&self) -> bool {
        self.kind() == libc::S_IFREG
    }
}

/// The kernel's `new_encode_dev`.
pub(crate) fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// The kernel's `new_decode_dev`: (major, minor).
pub(crate) fn decode_dev(dev: u32) -> (u32, u32) {
    ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
}

/// One name of a node.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    /// Parent directory; 0 when the node is no longer linked anywhere.
    pub parent: Ino,
    pub name: Box<[u8]>,
    /// The lower layers have something at this path (so removing or moving
    /// the name away needs a whiteout).
    pub covers: bool,
    /// The name's READDIR offset in its directory (see [`Dir::next_cookie`]).
    pub cookie: u64,
}

/// Where the node's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Up {
    /// Only in the lower layers.
    No,
    /// Metadata copied up (an upper file marked metacopy); content still below.
    Meta,
    /// Entirely in the upper directory.
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LowerRef {
    pub layer: u32,
    pub entry: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Dir {
    pub children: BTreeMap<Box<[u8]>, Ino>,
    /// Lower names hidden by a whiteout in the upper directory.
    pub hidden: Option<HashSet<Box<[u8]>>>,
    /// The upper directory carries an opaque marker.
    pub opaque: bool,
    /// How many children are directories (a directory's link count is 2 + this).
    pub subdirs: u32,
    /// Names get READDIR offsets ("cookies") in the order they are added,
    /// from [`FIRST_COOKIE`] on, and keep them while they stay. A listing is
    /// in cookie order, so a directory stream that goes on after offset N
    /// gets what follows the last entry it returned in any listing taken
    /// since: nothing present all along is skipped or repeated. The
    /// kernel's directory cache is shared by every open of the directory:
    /// with offsets that were positions in one listing, a stream that had
    /// read part of it went on at that position in another (after a
    /// removal, a later one), and skipped an entry.
    ///
    /// A name removed (or replaced by a rename) and made again while a
    /// stream reads may come twice, as on btrfs, whose offsets are made the
    /// same way; POSIX leaves entries removed or added since opendir
    /// unspecified. Offsets hashed from the names (ext4's way) avoid that,
    /// but need 63 bits to make collisions rare enough, and a 32-bit
    /// program reading without large-file support then fails with
    /// EOVERFLOW (ext4 sees such callers and gives them 31-bit hashes; a
    /// FUSE server cannot tell). These stay small.
    pub next_cookie: u64,
}

/// The first cookie of a name: 1 and 2 are `.` and `..`.
pub(crate) const FIRST_COOKIE: u64 = 3;

impl Dir {
    pub fn is_hidden(&self, name: &[u8]) -> bool {
        self.hidden.as_ref().is_some_and(|h| h.contains(name))
    }
    pub fn hide(&mut self, name: &[u8]) {
        self.hidden.get_or_insert_with(Default::default).insert(name.into());
    }
    pub fn unhide(&mut self, name: &[u8]) -> bool {
        let Some(h) = self.hidden.as_mut() else { return false };
        let was = h.remove(name);
        if h.is_empty() {
            self.hidden = None;
        }
        was
    }
}

#[derive(Debug)]
pub(crate) struct Node {
    pub link: Link,
    pub more: Vec<Link>,
    pub attr: Attr,
    pub lower: Option<LowerRef>,
    pub up: Up,
    /// Upper node kept as a regular file with its real type in an xattr
    /// (special files and symlinks the host cannot hold as they are).
    pub stand_in: bool,
    pub dir: Option<Box<Dir>>,
    /// References the kernel holds (lookups answered minus forgets).
    pub lookups: AtomicU64,
    /// The upper entry is known to carry no xattrs but strata's own records
    /// (set where strata made it and knows what it wrote): getxattr and
    /// listxattr then answer from memory. False means "ask the host".
    pub no_xattrs: bool,
    /// The upper entry may carry a `user.strata.meta` record (true unless
    /// strata knows it does not: then a metadata change need not remove one).
    pub meta_rec: bool,
    /// The lower object was found to have the entry's size at an open (it
    /// is checked once per mount, not at every open).
    pub object_size_checked: std::sync::atomic::AtomicBool,
}

impl Node {
    pub fn new(attr: Attr, lower: Option<LowerRef>, up: Up) -> Node {
        let dir = if attr.is_dir() { Some(Box::default()) } else { None };
        Node {
            link: Link { parent: 0, name: Box::default(), covers: false, cookie: 0 },
            more: Vec::new(),
            attr,
            lower,
            up,
            stand_in: false,
            dir,
            lookups: AtomicU64::new(0),
            no_xattrs: false,
            meta_rec: true,
            object_size_checked: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Counts a reference handed to the kernel (an entry reply).
    pub fn looked_up(&self) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
    }

    pub fn nlink(&self) -> u32 {
        if self.link.parent == 0 && self.more.is_empty() {
            0
        } else {
            1 + self.more.len() as u32
        }
    }

    pub fn links(&self) -> impl Iterator<Item = &Link> {
        std::iter::once(&self.link).filter(|l| l.parent != 0).chain(self.more.iter())
    }

    pub fn link_to(&self, parent: Ino, name: &[u8]) -> Option<&Link> {
        self.links().find(|l| l.parent == parent && &*l.name == name)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Tree {
    nodes: Vec<Node>,
    /// Slots of nodes neither linked nor known to the kernel: reused.
    free: Vec<Ino>,
    /// Bumped whenever a slot is freed (invalidates cached inode numbers).
    epoch: u64,
}

fn attr_of(e: &Entry) -> Attr {
    let (kind_bits, rdev, size) = match &e.kind {
        EntryKind::File { size, .. } => (libc::S_IFREG, 0, *size),
        EntryKind::Dir | EntryKind::Opaque => (libc::S_IFDIR, 0, 4096),
        EntryKind::Symlink { target } => (libc::S_IFLNK, 0, target.len() as u64),
        EntryKind::CharDevice { major, minor } => (libc::S_IFCHR, encode_dev(*major, *minor), 0),
        EntryKind::BlockDevice { major, minor } => (libc::S_IFBLK, encode_dev(*major, *minor), 0),
        EntryKind::Fifo => (libc::S_IFIFO, 0, 0),
        EntryKind::Hardlink { .. } | EntryKind::Whiteout => (libc::S_IFREG, 0, 0),
    };
    let t = Ts { sec: e.mtime, nsec: e.mtime_nsec.min(999_999_999) };
    Attr {
        mode: kind_bits | (e.mode & 0o7777),
        uid: e.uid,
        gid: e.gid,
        rdev,
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
    }
}

/// Directories a layer implies without listing them: root-owned, 0755.
fn implicit_dir_attr() -> Attr {
    Attr { mode: libc::S_IFDIR | 0o755, size: 4096, ..Attr::default() }
}

fn split(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".")
}

/// Normalises a path as found in an index or a hardlink target.
fn clean(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for c in split(path) {
        if c == b".." {
            // Never climb above the root; drop the last component.
            while let Some(b) = out.pop() {
                if b == b'/' {
                    break;
                }
            }
            continue;
        }
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(c);
    }
    out
}

impl Tree {
    /// A tree holding only an empty root directory.
    pub fn empty() -> Tree {
        let mut t = Tree { nodes: Vec::new(), free: Vec::new(), epoch: 0 };
        let mut root = Node::new(implicit_dir_attr(), None, Up::No);
        root.link.parent = ROOT; // the root is its own parent, as ".." in it
        t.nodes.push(root);
        t
    }

    /// The node, also when it is no longer linked (it may still be open).
    pub fn get(&self, ino: Ino) -> Option<&Node> {
        let i = usize::try_from(ino).ok()?.checked_sub(1)?;
        self.nodes.get(i)
    }

    pub fn get_mut(&mut self, ino: Ino) -> Option<&mut Node> {
        let i = usize::try_from(ino).ok()?.checked_sub(1)?;
        self.nodes.get_mut(i)
    }

    pub fn node(&self, ino: Ino) -> &Node {
        &self.nodes[(ino - 1) as usize]
    }

    pub fn node_mut(&mut self, ino: Ino) -> &mut Node {
        &mut self.nodes[(ino - 1) as usize]
    }

    pub fn dir(&self, ino: Ino) -> Option<&Dir> {
        self.get(ino)?.dir.as_deref()
    }

    pub fn dir_mut(&mut self, ino: Ino) -> Option<&mut Dir> {
        self.get_mut(ino)?.dir.as_deref_mut()
    }

    pub fn child(&self, parent: Ino, name: &[u8]) -> Option<Ino> {
        self.dir(parent)?.children.get(name).copied()
    }

    pub fn alloc(&mut self, node: Node) -> Ino {
        if let Some(ino) = self.free.pop() {
            *self.node_mut(ino) = node;
            return ino;
        }
        self.nodes.push(node);
        self.nodes.len() as Ino
    }

    /// Makes a slot reusable: the node is unlinked and the kernel forgot it.
    fn reclaim(&mut self, ino: Ino) {
        if ino == ROOT {
            return;
        }
        *self.node_mut(ino) = Node::new(Attr::default(), None, Up::No);
        self.free.push(ino);
        self.epoch += 1;
    }

    /// The kernel dropped `n` references to `ino`. Needs only shared access
    /// (the count is atomic); returns true when the node is now unreachable
    /// and unknown to the kernel, so that [`Tree::reclaim_forgotten`] should
    /// run under exclusive access.
    pub fn forget(&self, ino: Ino, n: u64) -> bool {
        let Some(node) = self.get(ino) else { return false };
        let dec = |c: u64| Some(c.saturating_sub(n));
        let before = node.lookups.fetch_update(Ordering::AcqRel, Ordering::Acquire, dec).unwrap_or(0);
        before > 0 && before <= n && node.nlink() == 0
    }

    /// Frees a node [`Tree::forget`] found unused, unless that changed
    /// meanwhile (or its slot was freed already: a free slot has mode 0).
    pub fn reclaim_forgotten(&mut self, ino: Ino) {
        let Some(node) = self.get(ino) else { return };
        if node.attr.mode != 0 && node.nlink() == 0 && node.lookups.load(Ordering::Acquire) == 0 {
            self.free_subtree(ino);
        }
    }

    /// Adds a name for `ino` in directory `parent` (which must not have it yet).
    pub fn add_link(&mut self, ino: Ino, parent: Ino, name: &[u8], covers: bool) {
        let cookie = self.dir_mut(parent).map_or(0, |d| {
            d.next_cookie += 1;
            FIRST_COOKIE + d.next_cookie - 1
        });
        let link = Link { parent, name: name.into(), covers, cookie };
        let n = self.node_mut(ino);
        let is_dir = n.attr.is_dir();
        if n.link.parent == 0 {
            n.link = link;
        } else {
            n.more.push(link);
        }
        if let Some(d) = self.dir_mut(parent) {
            if d.children.insert(name.into(), ino).is_none() && is_dir {
                d.subdirs += 1;
            }
        }
    }

    /// Removes one name of `ino`; returns the removed link.
    pub fn remove_link(&mut self, ino: Ino, parent: Ino, name: &[u8]) -> Option<Link> {
        let is_dir = self.node(ino).attr.is_dir();
        if let Some(d) = self.dir_mut(parent) {
            if d.children.get(name) == Some(&ino) {
                d.children.remove(name);
                if is_dir {
                    d.subdirs = d.subdirs.saturating_sub(1);
                }
            }
        }
        let n = self.node_mut(ino);
        if n.link.parent == parent && &*n.link.name == name {
            let replacement =
                n.more.pop().unwrap_or(Link { parent: 0, name: Box::default(), covers: false, cookie: 0 });
            return Some(std::mem::replace(&mut n.link, replacement));
        }
        let i = n.more.iter().position(|l| l.parent == parent && &*l.name == name)?;
        Some(n.more.swap_remove(i))
    }

    /// Frees what an unreachable subtree holds (names, child maps); slots the
    /// kernel does not know (any more) become reusable, the others when the
    /// kernel forgets them.
    pub fn free_subtree(&mut self, ino: Ino) {
        let mut stack = vec![ino];
        while let Some(i) = stack.pop() {
            if self.node(i).nlink() > 0 {
                continue; // still reachable through another name (hard link)
            }
            if self.node(i).attr.mode == 0 {
                // Freed already: a hard link group comes up once per name.
                continue;
            }
            if let Some(d) = self.node_mut(i).dir.take() {
                for (name, c) in d.children {
                    self.remove_link(c, i, &name);
                    stack.push(c);
                }
            }
            if self.node(i).lookups.load(Ordering::Relaxed) == 0 {
                self.reclaim(i);
            }
        }
    }

    /// Detaches every child of a directory (used for opaque directories).
    pub fn clear_children(&mut self, dir: Ino) {
        let children: Vec<(Box<[u8]>, Ino)> = match self.dir_mut(dir) {
            Some(d) => {
                d.subdirs = 0;
                std::mem::take(&mut d.children).into_iter().collect()
            }
            None => return,
        };
        for (name, c) in children {
            self.remove_link(c, dir, &name);
            if self.node(c).nlink() == 0 {
                self.free_subtree(c);
            }
        }
    }

    /// Unlinks the name and frees the subtree when nothing else links it.
    pub fn remove_name(&mut self, parent: Ino, name: &[u8]) -> Option<Ino> {
        let c = self.child(parent, name)?;
        self.remove_link(c, parent, name);
        if self.node(c).nlink() == 0 {
            self.free_subtree(c);
        }
        Some(c)
    }

    /// The path of a node from the root, without a leading slash ("" for
    /// the root); `None` for a node no longer linked into the tree. However
    /// deep: a container may nest directories past any limit of ours.
    pub fn path_of(&self, ino: Ino) -> Option<Vec<u8>> {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let n = self.get(cur)?;
            if n.link.parent == 0 {
                return None;
            }
            parts.push(&n.link.name);
            cur = n.link.parent;
        }
        let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
        for p in parts.iter().rev() {
            if !out.is_empty() {
                out.push(b'/');
            }
            out.extend_from_slice(p);
        }
        Some(out)
    }

    pub fn lookup_path(&self, path: &[u8]) -> Option<Ino> {
        let mut cur = ROOT;
        for c in split(path) {
            cur = self.child(cur, c)?;
        }
        Some(cur)
    }

    /// The number of subdirectories (for a directory's link count).
    pub fn subdirs(&self, dir: &Dir) -> u32 {
        dir.subdirs
    }

    /// Walks to the directory at `path`, creating implicit directories and
    /// replacing non-directories on the way (what a tar extraction does).
    fn ensure_dir(&mut self, path: &[u8], layer_covers: bool) -> Ino {
        let mut cur = ROOT;
        for c in split(path) {
            cur = match self.child(cur, c) {
                Some(i) if self.node(i).attr.is_dir() => i,
                _ => {
                    self.remove_name(cur, c);
                    let n = self.alloc(Node::new(implicit_dir_attr(), None, Up::No));
                    self.add_link(n, cur, c, layer_covers);
                    n
                }
            };
        }
        cur
    }

    /// Folds one layer in on top of what the tree holds.
    pub fn apply_layer(&mut self, layer: u32, src: &dyn LayerSource) {
        let entries = src.entries();
        // Whiteouts and opaque markers hide only what lies below this layer:
        // apply them before adding this layer's own entries.
        for e in entries {
            match e.kind {
                EntryKind::Whiteout => {
                    let p = clean(&e.path);
                    let (parent, name) = split_last(&p);
                    if let Some(d) = self.lookup_path(parent) {
                        self.remove_name(d, name);
                    }
                }
                EntryKind::Opaque => {
                    if let Some(d) = self.lookup_path(&clean(&e.path)) {
                        if self.node(d).attr.is_dir() {
                            self.clear_children(d);
                        }
                    }
                }
                _ => {}
            }
        }
        let mut last_parent: (Vec<u8>, Ino, u64) = (Vec::new(), ROOT, self.epoch);
        for (i, e) in entries.iter().enumerate() {
            // Whiteouts were applied above; they must not create their parent
            // (a layer may hold file `a` and `a/.wh.x`: `a` stays a file).
            if matches!(e.kind, EntryKind::Whiteout) {
                continue;
            }
            let lref = LowerRef { layer, entry: i as u32 };
            let p = clean(&e.path);
            if p.is_empty() {
                if matches!(e.kind, EntryKind::Dir) {
                    let root = self.node_mut(ROOT);
                    root.attr = attr_of(e);
                    root.lower = Some(lref);
                }
                continue;
            }
            let (parent_path, name) = split_last(&p);
            // Tar order keeps siblings together: remember the last parent
            // (until a slot is freed: its number might be reused).
            let parent = if last_parent.0 == parent_path && last_parent.2 == self.epoch {
                last_parent.1
            } else {
                let d = self.ensure_dir(parent_path, true);
                last_parent = (parent_path.to_vec(), d, self.epoch);
                d
            };
            match &e.kind {
                EntryKind::Whiteout => {}
                // The opaque marker's own metadata is not the directory's.
                EntryKind::Opaque => {
                    if !self.child(parent, name).is_some_and(|c| self.node(c).attr.is_dir()) {
                        self.remove_name(parent, name);
                        let n = self.alloc(Node::new(implicit_dir_attr(), None, Up::No));
                        self.add_link(n, parent, name, true);
                    }
                }
                EntryKind::Dir => match self.child(parent, name) {
                    Some(c) if self.node(c).attr.is_dir() => {
                        let n = self.node_mut(c);
                        n.attr = attr_of(e);
                        n.lower = Some(lref);
                    }
                    _ => {
                        self.remove_name(parent, name);
                        let n = self.alloc(Node::new(attr_of(e), Some(lref), Up::No));
                        self.add_link(n, parent, name, true);
                    }
                },
                EntryKind::Hardlink { target } => {
                    let Some(t) = self.lookup_path(&clean(target)) else { continue };
                    if self.node(t).attr.is_dir() || self.child(parent, name) == Some(t) {
                        continue;
                    }
                    self.remove_name(parent, name);
                    // The target was inside what that name held (a directory
                    // replaced by a link to its own child): it is gone too.
                    if self.get(t).is_none_or(|n| n.nlink() == 0) {
                        continue;
                    }
                    self.add_link(t, parent, name, true);
                }
                _ => {
                    self.remove_name(parent, name);
                    let n = self.alloc(Node::new(attr_of(e), Some(lref), Up::No));
                    self.add_link(n, parent, name, true);
                }
            }
        }
    }

    /// The merged tree of the given layers, bottom first.
    pub fn build(sources: &[Arc<dyn LayerSource>]) -> Tree {
        let mut t = Tree::empty();
        for (i, s) in sources.iter().enumerate() {
            t.apply_layer(i as u32, s.as_ref());
        }
        t
    }
}

/// Splits "a/b/c" into ("a/b", "c").
pub(crate) fn split_last(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (b"", p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Lower;
    use strata_layers::index::LayerIndex;
    use strata_layers::Digest;

    fn e(path: &str, kind: EntryKind) -> Entry {
        Entry { path: path.into(), kind, mode: 0o644, uid: 0, gid: 0, mtime: 1, mtime_nsec: 0, xattrs: vec![] }
    }
    fn file(path: &str) -> Entry {
        e(path, EntryKind::File { size: 1, digest: Digest::of(path.as_bytes()) })
    }
    fn src(entries: Vec<Entry>) -> Arc<dyn LayerSource> {
        let objects = std::env::temp_dir();
        let fd = Arc::new(crate::source::open_objects_dir(&objects).unwrap());
        Arc::new(Lower::new(Arc::new(LayerIndex::new(entries)), objects).open(fd))
    }

    #[test]
    fn whiteouts_opaque_and_hardlinks() {
        let l0 = src(vec![
            e("a", EntryKind::Dir),
            file("a/x"),
            file("a/y"),
            e("b", EntryKind::Dir),
            file("b/z"),
            file("c"),
            e("d", EntryKind::Hardlink { target: b"c".to_vec() }),
        ]);
        let l1 = src(vec![
            e("a/x", EntryKind::Whiteout),
            e("b", EntryKind::Opaque),
            file("b/new"),
            e("c", EntryKind::Whiteout),
            file("implicit/dir/f"),
        ]);
        let t = Tree::build(&[l0, l1]);
        assert!(t.lookup_path(b"a/x").is_none());
        assert!(t.lookup_path(b"a/y").is_some());
        assert!(t.lookup_path(b"b/z").is_none());
        assert!(t.lookup_path(b"b/new").is_some());
        assert!(t.lookup_path(b"c").is_none());
        let d = t.lookup_path(b"d").unwrap();
        assert_eq!(t.node(d).nlink(), 1);
        assert_eq!(t.path_of(d).unwrap(), b"d");
        let f = t.lookup_path(b"implicit/dir/f").unwrap();
        assert_eq!(t.path_of(f).unwrap(), b"implicit/dir/f");
        assert!(t.node(t.lookup_path(b"implicit").unwrap()).attr.is_dir());
    }

    #[test]
    fn a_link_replacing_the_directory_of_its_target_links_nothing() {
        let l0 = src(vec![
            e("a", EntryKind::Dir),
            file("a/f"),
            e("a", EntryKind::Hardlink { target: b"a/f".to_vec() }),
            file("x"),
            file("z"),
        ]);
        let t = Tree::build(&[l0]);
        assert!(t.lookup_path(b"a").is_none());
        // No name shares a node it should not (a freed slot linked by name).
        let (x, z) = (t.lookup_path(b"x").unwrap(), t.lookup_path(b"z").unwrap());
        assert_ne!(x, z);
        assert_eq!((t.node(x).nlink(), t.node(z).nlink()), (1, 1));
        assert_eq!((t.path_of(x), t.path_of(z)), (Some(b"x".to_vec()), Some(b"z".to_vec())));
    }

    #[test]
    fn hardlink_group_is_one_node() {
        let l0 = src(vec![file("x"), e("y", EntryKind::Hardlink { target: b"./x".to_vec() })]);
        let t = Tree::build(&[l0]);
        let (x, y) = (t.lookup_path(b"x").unwrap(), t.lookup_path(b"y").unwrap());
        assert_eq!(x, y);
        assert_eq!(t.node(x).nlink(), 2);
    }

    #[test]
    fn replaced_entries_free_their_slots() {
        let l0 = src(vec![e("d", EntryKind::Dir), file("d/a"), file("d/b"), file("x")]);
        let l1 = src(vec![file("x"), e("d", EntryKind::Whiteout), file("y")]);
        let t = Tree::build(&[l0, l1]);
        // root, x (replaced in place of a freed slot), y (reusing another)
        assert_eq!(t.nodes.len() - t.free.len(), 3);
        assert!(t.nodes.len() <= 5);
        let y = t.lookup_path(b"y").unwrap();
        assert_eq!(t.path_of(y).unwrap(), b"y");
    }

    #[test]
    fn removing_a_hard_link_group_frees_its_slot_once() {
        let link = |p: &str| e(p, EntryKind::Hardlink { target: b"d/a".to_vec() });
        let l0 = src(vec![e("d", EntryKind::Dir), file("d/a"), link("d/b"), link("d/c")]);
        let l1 = src(vec![e("d", EntryKind::Whiteout)]);
        let mut t = Tree::build(&[l0, l1]);
        let mut free = t.free.clone();
        free.sort();
        free.dedup();
        assert_eq!(free.len(), t.free.len(), "a slot is free twice: {:?}", t.free);
        // So new nodes get distinct inode numbers.
        let a = t.alloc(Node::new(Attr { mode: libc::S_IFDIR | 0o755, ..Attr::default() }, None, Up::Full));
        let b = t.alloc(Node::new(Attr { mode: libc::S_IFLNK | 0o777, ..Attr::default() }, None, Up::Full));
        assert_ne!(a, b);
    }

    #[test]
    fn dev_encoding_round_trips() {
        for (ma, mi) in [(1, 3), (8, 0), (259, 70000), (0, 0)] {
            assert_eq!(decode_dev(encode_dev(ma, mi)), (ma, mi));
        }
    }
}
