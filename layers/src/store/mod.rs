//! The content store: blobs, file objects, layer indexes, image records and
//! tags under one root (paths: [`StoreLayout`]).
//!
//! Durability and crash safety: everything that enters the store is first
//! written under `ROOT/tmp`, flushed, and renamed into place, and nothing is
//! ever referenced before what it references is in place (objects before the
//! layer index that names them, layers and blobs before the image record,
//! the record before its tags). A process killed at any point therefore
//! leaves at worst unreferenced files (removed by [`Store::gc`]) and staging
//! debris in `tmp/` (removed by [`Store::clean_tmp`]); never a record that
//! points at something missing.
//!
//! Locking, two levels, both `flock`s on files in the root:
//! - the content lock `ROOT/lock`: shared while adding content (pull, load,
//!   commit), exclusive while deleting it (rmi, prune, gc). Deleters thus never
//!   remove an object a concurrent pull has just decided to reuse. The guard
//!   types ([`SharedLock`], [`ExclusiveLock`]) are what the deleting methods
//!   take as proof.
//! - the records lock `ROOT/records.lock`: held only for the read-modify-write
//!   of the small JSON records ([`Store::update_records`]).
//!
//! `flock` locks belong to an open file description, so one process taking
//! the same lock twice through two guards waits for itself: take each lock
//! once per operation and pass the guard down.
//!
//! Permissions: the root is created 0700 for an ordinary user and 0711 for
//! root; every directory inside is 0700. Containers never see store paths
//! directly, only through the union mount and bind mounts that the runner
//! (running as the store's owner) sets up; the runner relaxes specific
//! directories if it must. Blobs and objects are regular files, mode 0444,
//! owned by the user running strata, and never rewritten once present.

mod gc;
mod records;

pub use crate::error::{Error, Result};
pub use gc::{DiskUsage, GcStats};
pub use records::{is_image_in_use, ContainerUse, Records, Removed};

use crate::digest::{Digest, Hasher};
use crate::error::IoContext;
use crate::index::LayerIndex;
use crate::layout::StoreLayout;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every directory strata creates inside the root.
const DIR_MODE: u32 = 0o700;
/// Mode of blobs, objects and layer indexes: immutable content.
pub(crate) const CONTENT_MODE: u32 = 0o444;
/// Prefix of [`Store::write_atomic`]'s temporary files in `ROOT/tmp`.
pub(crate) const RECORD_WRITE_PREFIX: &str = ".write-";

/// An open store. Cheap to share by reference across threads.
#[derive(Debug)]
pub struct Store {
    layout: StoreLayout,
}

/// Proof that the content lock is held shared (adding content).
#[derive(Debug)]
pub struct SharedLock {
    _file: File,
}

/// Proof that the content lock is held exclusively (deleting content).
#[derive(Debug)]
pub struct ExclusiveLock {
    _file: File,
}

impl Store {
    /// Opens the store at `layout`, creating the root and its directories
    /// when missing (see the module docs for their modes). Existing
    /// directories are left as they are.
    pub fn open(layout: StoreLayout) -> Result<Store> {
        let root = layout.root();
        if !root.is_dir() {
            let root_mode = if rustix::process::geteuid().is_root() { 0o711 } else { DIR_MODE };
            DirBuilder::new().recursive(true).mode(root_mode).create(root).at(root)?;
        }
        let store = Store { layout };
        let l = &store.layout;
        for dir in [
            l.blobs_dir(),
            l.objects_dir(),
            l.layers_dir(),
            l.images_dir(),
            l.containers_dir(),
            l.volumes_dir(),
            l.mounts_dir(),
            l.tmp_dir(),
        ] {
            store.ensure_dir(&dir)?;
        }
        Ok(store)
    }

    pub fn layout(&self) -> &StoreLayout {
        &self.layout
    }

    /// Creates `dir` (and missing parents) with the store's directory mode.
    pub fn ensure_dir(&self, dir: &Path) -> Result<()> {
        match DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
            Err(e) => Err(Error::io(dir.display().to_string(), e)),
        }
    }

    // ---- locks ---------------------------------------------------------

    fn open_lock_file(&self, path: &Path) -> Result<File> {
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).at(path)
    }

    /// Takes the content lock shared (blocks while an rmi/gc runs).
    pub fn lock_shared(&self) -> Result<SharedLock> {
        let path = self.layout.lock_path();
        let file = self.open_lock_file(&path)?;
        file.lock_shared().ctx(|| format!("locking {} (shared)", path.display()))?;
        Ok(SharedLock { _file: file })
    }

    /// Takes the content lock exclusively (blocks while pulls run).
    pub fn lock_exclusive(&self) -> Result<ExclusiveLock> {
        let path = self.layout.lock_path();
        let file = self.open_lock_file(&path)?;
        file.lock().ctx(|| format!("locking {} (exclusive)", path.display()))?;
        Ok(ExclusiveLock { _file: file })
    }

    /// The exclusive content lock if nobody holds the lock right now.
    pub fn try_lock_exclusive(&self) -> Result<Option<ExclusiveLock>> {
        let path = self.layout.lock_path();
        let file = self.open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(ExclusiveLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(Error::io(format!("locking {}", path.display()), e)),
        }
    }

    /// Runs `f` with the records lock held and the tags loaded; writes
    /// `tags.json` back (atomically) if `f` changed it and succeeded.
    pub fn update_records<T>(&self, f: impl FnOnce(&mut Records<'_>) -> Result<T>) -> Result<T> {
        let path = self.layout.records_lock_path();
        let file = self.open_lock_file(&path)?;
        file.lock().ctx(|| format!("locking {}", path.display()))?;
        let mut records = Records::load(self)?;
        let out = f(&mut records)?;
        records.save()?;
        drop(file);
        Ok(out)
    }

    // ---- atomic writes -------------------------------------------------

    /// A new temporary file in `ROOT/tmp` (removed when dropped unless persisted).
    pub fn temp_file(&self, prefix: &str) -> Result<tempfile::NamedTempFile> {
        let dir = self.layout.tmp_dir();
        tempfile::Builder::new().prefix(prefix).tempfile_in(&dir).at(&dir)
    }

    /// A new temporary directory in `ROOT/tmp` (removed when dropped).
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        let dir = self.layout.tmp_dir();
        tempfile::Builder::new().prefix(prefix).tempdir_in(&dir).at(&dir)
    }

    /// Replaces `path` with `data` atomically: temp file in `ROOT/tmp`,
    /// fsync, chmod `mode`, rename, fsync of the directory.
    pub fn write_atomic(&self, path: &Path, data: &[u8], mode: u32) -> Result<()> {
        let mut tmp = self.temp_file(RECORD_WRITE_PREFIX)?;
        let what = || format!("writing {}", path.display());
        tmp.write_all(data).ctx(what)?;
        tmp.as_file().set_permissions(Permissions::from_mode(mode)).ctx(what)?;
        tmp.as_file().sync_all().ctx(what)?;
        tmp.persist(path).map_err(|e| Error::io(what(), e.error))?;
        sync_parent(path)
    }

    // ---- blobs -----------------------------------------------------------

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.layout.blob_path(digest)
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// A blob's bytes, verified against its digest (use [`Store::open_blob`]
    /// for large layer blobs).
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let data = fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::io(format!("blob {digest} is missing from the store"), e),
            _ => Error::io(path.display().to_string(), e),
        })?;
        let actual = Digest::of(&data);
        Error::check_digest(
            "stored blob",
            *digest,
            actual,
            "; the store is corrupt: remove the image and pull it again",
        )?;
        Ok(data)
    }

    /// Opens a blob for streaming (not verified: the caller hashes if it needs to).
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        File::open(&path).at(&path)
    }

    /// A temporary blob file that hashes what is written to it; admit it
    /// with [`Store::put_blob_from_temp`].
    pub fn temp_blob(&self) -> Result<TempBlob> {
        Ok(TempBlob { file: self.temp_file(".blob-")?, hasher: Hasher::new(), size: 0 })
    }

    /// Admits a temp blob under `expected` after checking its digest.
    /// Idempotent: an existing blob is left as it is.
    pub fn put_blob_from_temp(&self, blob: TempBlob, expected: &Digest) -> Result<()> {
        let (actual, _) = blob.digest();
        Error::check_digest("blob", *expected, actual, "")?;
        let dest = self.blob_path(expected);
        if dest.is_file() {
            return Ok(());
        }
        admit_content(blob.file, &dest, || format!("storing blob {expected}"))
    }

    /// Stores `data` as a blob and returns its digest.
    pub fn put_blob(&self, data: &[u8]) -> Result<Digest> {
        let digest = Digest::of(data);
        self.put_blob_verified(data, &digest)?;
        Ok(digest)
    }

    /// Stores `data` as a blob after checking that it hashes to `expected`.
    pub fn put_blob_verified(&self, data: &[u8], expected: &Digest) -> Result<()> {
        if self.has_blob(expected) {
            return Error::check_digest("blob", *expected, Digest::of(data), "");
        }
        let mut blob = self.temp_blob()?;
        blob.write_all(data).ctx(|| format!("storing blob {expected}"))?;
        self.put_blob_from_temp(blob, expected)
    }

    // ---- objects and layers --------------------------------------------

    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        self.layout.object_path(digest)
    }

    pub fn has_object(&self, digest: &Digest) -> bool {
        self.object_path(digest).is_file()
    }

    /// Admits a temporary file as the object `digest`; the caller has
    /// checked its content. Idempotent: an existing object stays.
    pub fn put_object_from_temp(&self, file: tempfile::NamedTempFile, digest: &Digest) -> Result<()> {
        let dest = self.object_path(digest);
        if let Some(fan) = dest.parent() {
            self.ensure_dir(fan)?;
        }
        admit_content(file, &dest, || format!("storing object {digest}"))
    }

    /// True when the layer with this diff_id is stored (its index exists;
    /// an index is only written after all its objects are in place).
    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layout.layer_index_path(diff_id).is_file()
    }

    pub fn layer_index(&self, diff_id: &Digest) -> Result<LayerIndex> {
        let path = self.layout.layer_index_path(diff_id);
        if !path.is_file() {
            return Err(Error::io(
                format!("layer {diff_id} is missing from the store"),
                io::Error::from(io::ErrorKind::NotFound),
            ));
        }
        Ok(LayerIndex::read_from_file(&path)?)
    }

    /// Writes a layer's index (atomically). Every object it names must
    /// already be in `objects/`.
    pub fn put_layer_index(&self, diff_id: &Digest, index: &LayerIndex) -> Result<()> {
        self.ensure_dir(&self.layout.layer_dir(diff_id))?;
        self.write_atomic(&self.layout.layer_index_path(diff_id), &index.to_bytes(), CONTENT_MODE)
    }
}

/// A blob being written to `ROOT/tmp`, hashed on the way.
pub struct TempBlob {
    file: tempfile::NamedTempFile,
    hasher: Hasher,
    size: u64,
}

impl TempBlob {
    /// Digest and size of what was written so far.
    pub fn digest(&self) -> (Digest, u64) {
        (self.hasher.clone().finish(), self.size)
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    /// The bytes written so far, from their start (another descriptor).
    pub fn reopen(&self) -> io::Result<File> {
        self.file.reopen()
    }
}

impl Write for TempBlob {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// fsync of `path`'s directory, so that a rename into it is durable.
/// Makes a checked temporary file the read-only, durable content at `dest`.
/// Content is named by its digest, so one already there is the same: kept.
fn admit_content(file: tempfile::NamedTempFile, dest: &Path, what: impl Fn() -> String) -> Result<()> {
    file.as_file().set_permissions(Permissions::from_mode(CONTENT_MODE)).ctx(&what)?;
    file.as_file().sync_all().ctx(&what)?;
    match file.persist_noclobber(dest) {
        Ok(_) => sync_parent(dest),
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(what(), e.error)),
    }
}

pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    File::open(parent).and_then(|d| d.sync_all()).at(parent)
}

/// Reads a whole small file, `None` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path.display().to_string(), e)),
    };
    let mut v = Vec::new();
    f.read_to_end(&mut v).at(path)?;
    Ok(Some(v))
}

#[cfg(test)]
mod tests;
