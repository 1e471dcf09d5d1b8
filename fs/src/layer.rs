//! An upper directory read back as a layer: the entries a commit or export
//! writes into a layer tarball, with strata's records (see `upper.rs`)
//! already applied — owners and modes the host could not hold, stand-in
//! special files, metacopy files whose content is still a lower object, long
//! whiteouts, escaped xattrs — so that writers of layers need not know them.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::source::Lower;
use crate::tree::decode_dev;
use crate::upper::{Upper, WH_PREFIX};
use crate::walk::Visit;
use crate::{load, FsError};

/// One entry of the layer an upper directory stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpperEntry {
    /// Relative, `/`-separated, no leading slash; "" is the root directory.
    /// For a whiteout: the path it hides; for an opaque marker: the directory.
    pub path: Vec<u8>,
    pub kind: UpperKind,
    /// Permission bits with setuid/setgid/sticky (`0o7777`), no type bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// As the mount shows them, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl UpperEntry {
    fn with_path(self, path: &[u8]) -> UpperEntry {
        UpperEntry { path: path.to_vec(), ..self }
    }

    /// A whiteout or opaque marker: a kind and a path, no metadata.
    fn marker(path: Vec<u8>, kind: UpperKind) -> UpperEntry {
        UpperEntry { path, kind, mode: 0, uid: 0, gid: 0, mtime: 0, mtime_nsec: 0, xattrs: vec![] }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpperKind {
    File {
        size: u64,
        content: UpperContent,
    },
    Dir,
    Symlink {
        target: Vec<u8>,
    },
    /// Another name of a file listed earlier (its `path`).
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
    Socket,
    Whiteout,
    Opaque,
}

/// Where a regular file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpperContent {
    /// In the upper directory: read with [`open_upper_file`].
    Upper,
    /// Unchanged below (only metadata changed): this object file.
    Object(PathBuf),
}

/// The upper directory's entries, parents before children, siblings by name.
pub fn upper_entries(lowers: &[Lower], upper: &Path) -> Result<Vec<UpperEntry>, FsError> {
    let io = |cause| FsError::Io { what: "reading upper directory", path: upper.to_path_buf(), cause };
    let up = Upper::open(upper).map_err(io)?;
    let mut out = Vec::new();
    let mut links = std::collections::HashMap::new();
    let root = up.stat(up.root_fd(), b".").map_err(io)?;
    out.push(entry_of(&up, lowers, b"", b".", up.root_fd(), &root, &mut links).map_err(io)?);
    let top = up.dir_readable(b"").map_err(io)?;
    crate::walk::walk(
        top,
        Vec::new(),
        |fd, rel| entries_in(&up, lowers, fd, rel, &mut links),
        |_, e| {
            out.push(e);
            Ok(())
        },
    )
    .map_err(io)?;
    Ok(out)
}

/// Opens a regular file of the upper directory by its entry path, never
/// following a symlink on the way.
pub fn open_upper_file(upper: &Path, path: &[u8]) -> Result<File, FsError> {
    let io = |cause| FsError::Io { what: "opening upper file", path: upper.to_path_buf(), cause };
    let up = Upper::open(upper).map_err(io)?;
    let (dir, name) = crate::tree::split_last(path);
    let fd = up.dir(dir).map_err(io)?;
    up.open_file(fd.as_fd(), name, rustix::fs::OFlags::RDONLY).map_err(io)
}

fn join(rel: &[u8], n: &[u8]) -> Vec<u8> {
    if rel.is_empty() {
        n.to_vec()
    } else {
        [rel, b"/", n].concat()
    }
}

/// The entries of the upper directory `rel` (open as `fd`), with its
/// subdirectories to walk right after their own entries.
fn entries_in(
    up: &Upper,
    lowers: &[Lower],
    fd: BorrowedFd,
    rel: Vec<u8>,
    links: &mut std::collections::HashMap<(u64, u64), Vec<u8>>,
) -> std::io::Result<Vec<Visit<UpperEntry, Vec<u8>>>> {
    let mut todo = Vec::new();
    let (names, opaque) = load::upper_names_sorted(up, fd)?;
    if opaque {
        todo.push(Visit::Emit(UpperEntry::marker(rel.clone(), UpperKind::Opaque)));
    }
    for (key, n) in names {
        let path = join(&rel, &key);
        if n.starts_with(WH_PREFIX) {
            todo.push(Visit::Emit(UpperEntry::marker(path, UpperKind::Whiteout)));
            continue;
        }
        let h = up.stat(fd, &n)?;
        let e = entry_of(up, lowers, &path, &n, fd, &h, links)?;
        let is_dir = e.kind == UpperKind::Dir;
        todo.push(Visit::Emit(e));
        if is_dir {
            todo.push(Visit::Descend(n, path));
        }
    }
    Ok(todo)
}

fn entry_of(
    up: &Upper,
    lowers: &[Lower],
    path: &[u8],
    name: &[u8],
    dir: std::os::fd::BorrowedFd,
    h: &crate::upper::HostEntry,
    links: &mut std::collections::HashMap<(u64, u64), Vec<u8>>,
) -> std::io::Result<UpperEntry> {
    let a = h.attr();
    // Any non-directory can have several names (a hard link to a symlink,
    // a fifo, a device: what Docker's layer tars hold as link entries too).
    if a.kind() != libc::S_IFDIR && h.st.st_nlink > 1 {
        let key = (h.st.st_dev, h.st.st_ino);
        if let Some(first) = links.get(&key) {
            return Ok(UpperEntry {
                path: path.to_vec(),
                kind: UpperKind::Hardlink { target: first.clone() },
                mode: a.mode & 0o7777,
                uid: a.uid,
                gid: a.gid,
                mtime: a.mtime.sec,
                mtime_nsec: a.mtime.nsec,
                xattrs: vec![],
            });
        }
        links.insert(key, path.to_vec());
    }
    let (major, minor) = decode_dev(a.rdev);
    let kind = match a.kind() {
        libc::S_IFDIR => UpperKind::Dir,
        libc::S_IFLNK if h.is_stand_in() => {
            let f = up.open_file(dir, name, rustix::fs::OFlags::RDONLY)?;
            let mut target = Vec::new();
            std::io::Read::read_to_end(&mut &f, &mut target)?;
            UpperKind::Symlink { target }
        }
        libc::S_IFLNK => UpperKind::Symlink {
            target: rustix::fs::readlinkat(dir, std::ffi::OsStr::from_bytes(name), Vec::new())
                .map_err(crate::upper::errno)?
                .into_bytes(),
        },
        libc::S_IFCHR => UpperKind::CharDevice { major, minor },
        libc::S_IFBLK => UpperKind::BlockDevice { major, minor },
        libc::S_IFIFO => UpperKind::Fifo,
        libc::S_IFSOCK => UpperKind::Socket,
        _ => match &h.metacopy {
            Some(d) => {
                let obj = crate::source::object_of_lowers(lowers, d)?;
                let size = std::fs::metadata(&obj)?.len();
                UpperKind::File { size, content: UpperContent::Object(obj) }
            }
            None => UpperKind::File { size: a.size, content: UpperContent::Upper },
        },
    };
    let mut xattrs = Vec::new();
    for k in up.list_xattrs(dir, name)? {
        if let Some(v) = up.get_xattr(dir, name, &k)? {
            xattrs.push((k, v));
        }
    }
    xattrs.sort();
    Ok(UpperEntry {
        path: path.to_vec(),
        kind,
        mode: a.mode & 0o7777,
        uid: a.uid,
        gid: a.gid,
        mtime: a.mtime.sec,
        mtime_nsec: a.mtime.nsec,
        xattrs,
    })
}

/// [`upper_entries`] less a container runtime's mount points and what holds
/// only them (the `hidden` paths of [`crate::changes_hiding`], which Docker
/// keeps in its "init" layer): every entry that is a change, or a directory
/// on the way to one. This is what `strata commit` writes as the new layer.
pub fn upper_entries_hiding(lowers: &[Lower], upper: &Path, hidden: &[&[u8]]) -> Result<Vec<UpperEntry>, FsError> {
    let changes = crate::changes_hiding(lowers, upper, hidden)?;
    let mut keep: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for c in &changes {
        let mut p = c.path.as_str();
        while !p.is_empty() && keep.insert(p) {
            p = p.rsplit_once('/').map_or("", |(parent, _)| parent);
        }
    }
    let shown = |p: &[u8]| format!("/{}", String::from_utf8_lossy(p));
    Ok(upper_entries(lowers, upper)?
        .into_iter()
        .filter(|e| !e.path.is_empty() && keep.contains(shown(&e.path).as_str()))
        .collect())
}

/// Writes `entries` (of the upper directory `upper`, as [`upper_entries`]
/// lists them) as an OCI layer tarball: whiteouts as `.wh.NAME`, opaque
/// directories as `DIR/.wh..wh..opq`, xattrs as PAX `SCHILY.xattr.*`
/// records, hard links as link entries. Sockets are left out, as Docker
/// does. A file is read through a descriptor opened beneath `upper` (never
/// following a symlink); its size is taken from that descriptor, and a
/// file that shrinks while it is read (a running container) is padded with
/// zeros so that the archive stays well formed.
pub fn write_layer_tar(upper: &Path, entries: &[UpperEntry], out: impl std::io::Write) -> Result<(), FsError> {
    let io = |cause| FsError::Io { what: "writing a layer from upper directory", path: upper.to_path_buf(), cause };
    let up = Upper::open(upper).map_err(io)?;
    let mut tar = tar::Builder::new(out);
    for e in entries {
        append_entry(&up, &mut tar, e).map_err(io)?;
    }
    tar.into_inner().map_err(io)?.flush().map_err(io)
}

fn append_entry<W: std::io::Write>(up: &Upper, tar: &mut tar::Builder<W>, e: &UpperEntry) -> std::io::Result<()> {
    use std::io::Read;
    use tar::EntryType;
    let (dir, name) = crate::tree::split_last(&e.path);
    let marker = |suffix: &[u8]| -> (tar::Header, PathBuf) {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0);
        h.set_size(0);
        (h, bytes_path(suffix))
    };
    match &e.kind {
        UpperKind::Whiteout => {
            let (mut h, p) = marker(&join(dir, &[WH_PREFIX, name].concat()));
            return tar.append_data(&mut h, p, std::io::empty());
        }
        UpperKind::Opaque => {
            let (mut h, p) = marker(&join(&e.path, b".wh..wh..opq"));
            return tar.append_data(&mut h, p, std::io::empty());
        }
        UpperKind::Socket => return Ok(()),
        _ => {}
    }
    let mut h = tar::Header::new_ustar();
    h.set_mode(e.mode);
    h.set_uid(e.uid.into());
    h.set_gid(e.gid.into());
    h.set_mtime(e.mtime.max(0) as u64);
    h.set_size(0);
    if !e.xattrs.is_empty() {
        let mut records = Vec::with_capacity(e.xattrs.len());
        for (k, v) in &e.xattrs {
            let k = std::str::from_utf8(k).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "an extended attribute's name is not UTF-8")
            })?;
            records.push((format!("SCHILY.xattr.{k}"), v.as_slice()));
        }
        tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
    }
    let path = bytes_path(&e.path);
    match &e.kind {
        UpperKind::Dir => {
            h.set_entry_type(EntryType::Directory);
            tar.append_data(&mut h, path, std::io::empty())
        }
        UpperKind::Symlink { target } => {
            h.set_entry_type(EntryType::Symlink);
            tar.append_link(&mut h, path, bytes_path(target))
        }
        UpperKind::Hardlink { target } => {
            h.set_entry_type(EntryType::Link);
            tar.append_link(&mut h, path, bytes_path(target))
        }
        UpperKind::CharDevice { major, minor } | UpperKind::BlockDevice { major, minor } => {
            let block = matches!(e.kind, UpperKind::BlockDevice { .. });
            h.set_entry_type(if block { EntryType::Block } else { EntryType::Char });
            h.set_device_major(*major)?;
            h.set_device_minor(*minor)?;
            tar.append_data(&mut h, path, std::io::empty())
        }
        UpperKind::Fifo => {
            h.set_entry_type(EntryType::Fifo);
            tar.append_data(&mut h, path, std::io::empty())
        }
        UpperKind::File { content, .. } => {
            let file = match content {
                UpperContent::Upper => {
                    let dir_fd = up.dir(dir)?;
                    up.open_file(dir_fd.as_fd(), name, rustix::fs::OFlags::RDONLY)?
                }
                UpperContent::Object(obj) => std::fs::File::open(obj)?,
            };
            let size = file.metadata()?.len();
            h.set_entry_type(EntryType::Regular);
            h.set_size(size);
            let data = file.take(size).chain(std::io::repeat(0)).take(size);
            tar.append_data(&mut h, path, data)
        }
        UpperKind::Whiteout | UpperKind::Opaque | UpperKind::Socket => Ok(()),
    }
}

fn bytes_path(p: &[u8]) -> PathBuf {
    PathBuf::from(std::ffi::OsStr::from_bytes(p))
}

/// The whole tree a container sees, as a flat list for `strata export`:
/// the lower layers merged (their hard links already copies), then the
/// upper directory's entries applied as a layer on top (whiteouts and
/// opaque directories hide what is below, a non-directory replaces a
/// directory with everything under it; a hard link stays one when its
/// target comes first in the list and becomes a copy of it otherwise, as
/// lower layers' links already are).
/// Sorted by path, parents first; the root directory is not listed.
pub fn merged_entries(lowers: &[Lower], upper: &Path) -> Result<Vec<UpperEntry>, FsError> {
    use std::collections::BTreeMap;
    use strata_layers::index::EntryKind;
    let indexes: Vec<&strata_layers::LayerIndex> = lowers.iter().map(|l| l.index.as_ref()).collect();
    let merged = strata_layers::merge::MergedTree::from_layers(indexes).map_err(|e| FsError::Io {
        what: "merging the layers",
        path: upper.to_path_buf(),
        cause: std::io::Error::other(e.to_string()),
    })?;
    let objects = |d: &strata_layers::Digest| {
        crate::source::object_of_lowers(lowers, d)
            .unwrap_or_else(|_| strata_layers::layout::object_path_in(&lowers[0].objects_dir, d))
    };
    let mut tree: BTreeMap<Vec<u8>, UpperEntry> = BTreeMap::new();
    for (path, e) in merged.entries {
        if path.is_empty() {
            continue;
        }
        let kind = match &e.kind {
            EntryKind::File { size, digest } => {
                UpperKind::File { size: *size, content: UpperContent::Object(objects(digest)) }
            }
            EntryKind::Dir | EntryKind::Opaque => UpperKind::Dir,
            EntryKind::Symlink { target } => UpperKind::Symlink { target: target.clone() },
            EntryKind::CharDevice { major, minor } => UpperKind::CharDevice { major: *major, minor: *minor },
            EntryKind::BlockDevice { major, minor } => UpperKind::BlockDevice { major: *major, minor: *minor },
            EntryKind::Fifo => UpperKind::Fifo,
            EntryKind::Hardlink { .. } | EntryKind::Whiteout => continue,
        };
        let entry = UpperEntry {
            path: path.clone(),
            kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
            xattrs: e.xattrs.clone(),
        };
        tree.insert(path, entry);
    }
    let below = |tree: &mut BTreeMap<Vec<u8>, UpperEntry>, dir: &[u8]| {
        let prefix = if dir.is_empty() { Vec::new() } else { [dir, b"/"].concat() };
        let doomed: Vec<Vec<u8>> =
            tree.range(prefix.clone()..).take_while(|(p, _)| p.starts_with(&prefix)).map(|(p, _)| p.clone()).collect();
        for p in doomed {
            tree.remove(&p);
        }
    };
    for e in upper_entries(lowers, upper)? {
        match &e.kind {
            UpperKind::Whiteout => {
                tree.remove(&e.path);
                below(&mut tree, &e.path);
            }
            UpperKind::Opaque => below(&mut tree, &e.path),
            _ if e.path.is_empty() => {}
            UpperKind::Hardlink { target } => match tree.get(target).cloned() {
                // A link entry needs its target earlier in the archive.
                Some(t) if *target < e.path && matches!(t.kind, UpperKind::File { .. }) => {
                    tree.insert(e.path.clone(), UpperEntry { kind: e.kind.clone(), ..t.clone() }.with_path(&e.path));
                }
                Some(t) => {
                    tree.insert(e.path.clone(), t.with_path(&e.path));
                }
                None => {}
            },
            kind => {
                if *kind != UpperKind::Dir {
                    below(&mut tree, &e.path);
                }
                tree.insert(e.path.clone(), e);
            }
        }
    }
    Ok(tree.into_values().collect())
}
