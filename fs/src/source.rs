//! Where the read-only layers come from.
//!
//! The merged tree only needs two things from a layer: its entries (in tar
//! order, with whiteout and opaque markers) and a way to open a regular file's
//! content. [`LayerSource`] is that interface. Today the only source is a
//! [`Lower`]: a layer index from the store plus the object directory that holds
//! file contents by digest. A second source (plain extracted directories with
//! overlay-style whiteouts, for `mount_program` use) can implement the same
//! trait without touching the tree code.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use strata_layers::index::{Entry, EntryKind, LayerIndex};
use strata_layers::Digest;

/// One read-only layer of a mount: its index and the store's object directory.
#[derive(Debug, Clone)]
pub struct Lower {
    pub index: Arc<LayerIndex>,
    pub objects_dir: PathBuf,
    /// For a lazily pulled layer: what brings a missing object into
    /// `objects_dir` when a file is first opened.
    pub fetch: Option<Arc<dyn FetchObject>>,
}

/// Brings the content of a lazily pulled layer's file into the object
/// directory, checked against its digest (strata_layers::chunked does the
/// work; the CLI, which has the registry client, provides it).
pub trait FetchObject: Send + Sync + std::fmt::Debug {
    /// True when `digest` is content of this layer that can be fetched.
    fn covers(&self, digest: &Digest) -> bool;
    /// Fetches `digest` and stores it as an object; Ok once it is there.
    fn fetch(&self, digest: &Digest) -> io::Result<()>;
    /// Fetches all of the layer (a background task of a running container).
    fn complete(&self) -> io::Result<()>;
    /// `digest` opened for reading before all of it is here, when the layer
    /// can fetch it in parts (a large file); None: fetch it whole.
    fn open_partial(&self, _digest: &Digest) -> io::Result<Option<PartialContent>> {
        Ok(None)
    }
}

/// A file being fetched in parts: reads of `file` are valid only in ranges
/// that `fill` has returned Ok for.
pub struct PartialContent {
    pub file: File,
    pub fill: Arc<dyn FillRange>,
}

/// Brings a byte range of a [`PartialContent`] file in.
pub trait FillRange: Send + Sync {
    fn fill(&self, offset: u64, len: u64) -> io::Result<()>;
}

/// A lower file's content opened for reading: whole, or being fetched in
/// parts ([`FetchObject::open_partial`]).
pub enum Content {
    Whole(File),
    Partial(PartialContent),
}

impl Lower {
    /// A layer whose objects are all in `objects_dir`.
    pub fn new(index: Arc<LayerIndex>, objects_dir: PathBuf) -> Lower {
        Lower { index, objects_dir, fetch: None }
    }

    /// The layer as a mount serves it, its object directory opened now.
    pub(crate) fn open(&self, objects: Arc<OwnedFd>) -> StoreLayer {
        StoreLayer {
            index: self.index.clone(),
            objects_dir: self.objects_dir.clone(),
            objects,
            fetch: self.fetch.clone(),
        }
    }
}

/// The path of object `d` of some of `lowers`, fetched first when a lazy
/// layer has it and the store does not yet.
pub(crate) fn object_of_lowers(lowers: &[Lower], d: &Digest) -> io::Result<PathBuf> {
    let path = |l: &Lower| strata_layers::layout::object_path_in(&l.objects_dir, d);
    if let Some(p) = lowers.iter().map(path).find(|p| p.exists()) {
        return Ok(p);
    }
    for l in lowers {
        if let Some(f) = l.fetch.as_ref().filter(|f| f.covers(d)) {
            f.fetch(d)?;
            return Ok(path(l));
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}

/// Opens an object directory for [`Lower::open`].
pub(crate) fn open_objects_dir(dir: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(io::Error::from)
}

/// A read-only layer as the union filesystem sees it.
pub trait LayerSource: Send + Sync {
    /// The layer's entries in tar order.
    fn entries(&self) -> &[Entry];
    /// Where a regular-file entry's content is.
    fn object(&self, entry: &Entry) -> Option<ObjectRef>;
    /// Opens the content of a regular-file entry for reading.
    fn open_content(&self, entry: &Entry) -> io::Result<File> {
        self.object(entry).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?.open()
    }
    /// Opens the content of a regular-file entry for a reader, who may get
    /// it before all of it is here.
    fn open_for_reader(&self, entry: &Entry) -> io::Result<Content> {
        self.open_content(entry).map(Content::Whole)
    }

    /// A host path of the content, when the source has one (for messages).
    fn content_path(&self, entry: &Entry) -> Option<PathBuf>;
}

/// A layer of the store as a mount serves it: its index, and an fd of the
/// object directory opened before the mount existed. Content is opened
/// relative to that fd, never by a path from `/`: a mount over the store
/// or one of its parents (the mount point is the user's choice) would send
/// the server's own opens into itself and hang it. It also saves walking
/// the store's path for every open.
pub(crate) struct StoreLayer {
    index: Arc<LayerIndex>,
    objects_dir: PathBuf,
    objects: Arc<OwnedFd>,
    fetch: Option<Arc<dyn FetchObject>>,
}

impl LayerSource for StoreLayer {
    fn entries(&self) -> &[Entry] {
        &self.index.entries
    }

    fn object(&self, entry: &Entry) -> Option<ObjectRef> {
        match &entry.kind {
            EntryKind::File { digest, .. } => {
                Some(ObjectRef::new(self.objects.clone(), strata_layers::layout::object_path_in(Path::new(""), digest)))
            }
            _ => None,
        }
    }

    /// Opens the object, first fetching it if this layer is lazy and the
    /// store does not have it yet. Several threads opening one missing
    /// file each fetch it; the store keeps the first copy.
    fn open_content(&self, entry: &Entry) -> io::Result<File> {
        let object = self.object(entry).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        match (object.open(), &self.fetch, &entry.kind) {
            (Err(e), Some(fetch), EntryKind::File { digest, .. }) if e.raw_os_error() == Some(libc::EIO) => {
                fetch.fetch(digest)?;
                object.open()
            }
            (r, _, _) => r,
        }
    }

    /// A large file of a lazy layer that the store does not have yet is
    /// served in parts as they are fetched; others as `open_content`.
    fn open_for_reader(&self, entry: &Entry) -> io::Result<Content> {
        if let (Some(fetch), EntryKind::File { digest, .. }) = (&self.fetch, &entry.kind) {
            let object = self.object(entry).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            match object.open() {
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    if let Some(partial) = fetch.open_partial(digest)? {
                        return Ok(Content::Partial(partial));
                    }
                }
                r => return r.map(Content::Whole),
            }
        }
        self.open_content(entry).map(Content::Whole)
    }

    fn content_path(&self, entry: &Entry) -> Option<PathBuf> {
        self.object(entry).map(|o| self.objects_dir.join(o.rel))
    }
}

/// A file's content in an object directory.
#[derive(Debug, Clone)]
pub struct ObjectRef {
    dir: Arc<OwnedFd>,
    rel: PathBuf,
}

impl ObjectRef {
    /// `rel` below the object directory `dir`.
    pub(crate) fn new(dir: Arc<OwnedFd>, rel: PathBuf) -> ObjectRef {
        ObjectRef { dir, rel }
    }

    /// Opens it for reading. Objects are plain files written by the store:
    /// the walk follows no symlink, stays below the object directory and
    /// crosses no mount.
    pub fn open(&self) -> io::Result<File> {
        let open = |flags: OFlags| {
            rustix::fs::openat2(
                self.dir.as_fd(),
                &self.rel,
                flags | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
            )
        };
        // O_NOATIME is refused for files we do not own.
        let fd = match open(OFlags::NOATIME) {
            Err(rustix::io::Errno::PERM) => open(OFlags::empty()),
            r => r,
        };
        match fd {
            Ok(fd) => Ok(File::from(fd)),
            // The entry exists; its content is missing from the store (or
            // is no plain file there): an I/O error, not "no such file",
            // which a program would take as the file's absence.
            Err(
                rustix::io::Errno::NOENT
                | rustix::io::Errno::NOTDIR
                | rustix::io::Errno::LOOP
                | rustix::io::Errno::XDEV
                | rustix::io::Errno::AGAIN,
            ) => Err(io::Error::from_raw_os_error(libc::EIO)),
            Err(e) => Err(e.into()),
        }
    }
}
