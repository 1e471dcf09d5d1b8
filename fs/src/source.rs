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
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use strata_layers::index::{Entry, EntryKind, LayerIndex};

/// One read-only layer of a mount: its index and the store's object directory.
#[derive(Debug, Clone)]
pub struct Lower {
    pub index: Arc<LayerIndex>,
    pub objects_dir: PathBuf,
}

/// A read-only layer as the union filesystem sees it.
pub trait LayerSource: Send + Sync {
    /// The layer's entries in tar order.
    fn entries(&self) -> &[Entry];
    /// Opens the content of a regular-file entry for reading.
    fn open_content(&self, entry: &Entry) -> io::Result<File>;
    /// A host path of the content, when the source has one (used for messages).
    fn content_path(&self, entry: &Entry) -> Option<PathBuf>;
}

impl LayerSource for Lower {
    fn entries(&self) -> &[Entry] {
        &self.index.entries
    }

    fn open_content(&self, entry: &Entry) -> io::Result<File> {
        let path = self.content_path(entry).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // Objects are plain files written by the store: never follow a symlink there.
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOATIME)
            .open(&path)
            .or_else(|e| {
                // O_NOATIME is refused for files we do not own.
                if e.raw_os_error() == Some(libc::EPERM) {
                    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(&path)
                } else {
                    Err(e)
                }
            })
    }

    fn content_path(&self, entry: &Entry) -> Option<PathBuf> {
        match &entry.kind {
            EntryKind::File { digest, .. } => Some(strata_layers::layout::object_path_in(&self.objects_dir, digest)),
            _ => None,
        }
    }
}
