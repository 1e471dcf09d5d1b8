//! The store's error type, shared by the store, layer ingestion and pull.
//!
//! Messages are meant to be shown to users as they are (the CLI prefixes
//! "Error: "), so each one says what went wrong and, where there is one, what
//! to do about it. Some texts are Docker's verbatim because scripts match them
//! (`No such image: busybox`, the `conflict: unable to delete ...` family).
//!
//! An error that wraps an OS error writes it into its own message and keeps
//! it as a plain field (`cause`), not as its `source()`: the CLI prints an
//! error's chain of sources after it, which said the cause twice.

use crate::digest::Digest;
use std::io;
use std::path::Path;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure; `what` names the file or the operation.
    #[error("{what}: {cause}")]
    Io { what: String, cause: io::Error },

    #[error("No such image: {0}")]
    NoSuchImage(String),

    /// A short image ID prefix that matches more than one image.
    #[error("multiple IDs found with provided prefix: {0}")]
    AmbiguousId(String),

    /// Docker's `conflict: unable to ...` family; the text is complete.
    #[error("{0}")]
    Conflict(String),

    /// A record file (image record, tags.json) that cannot be parsed.
    #[error("corrupt store record {path}: {message}; remove it or the store")]
    CorruptRecord { path: String, message: String },

    #[error(transparent)]
    Index(#[from] crate::index::IndexError),

    /// Content whose digest is not the one it was asked for under.
    #[error("{what} {expected} digest mismatch: expected {expected}, got {actual}{hint}")]
    DigestMismatch { what: &'static str, expected: Digest, actual: Digest, hint: &'static str },

    /// A blob shorter or longer than its descriptor says.
    #[error("blob {digest} size mismatch: expected {expected} bytes, got {actual}{hint}")]
    SizeMismatch { digest: Digest, expected: u64, actual: u64, hint: &'static str },

    /// The uncompressed layer does not hash to the diff_id the image config names.
    #[error("layer diff_id mismatch: expected {expected}, got {actual}; the layer does not match the image config")]
    DiffIdMismatch { expected: Digest, actual: Digest },

    /// A tar entry strata refuses to store (path traversal and friends).
    #[error("refusing layer: tar entry {path:?} {reason}")]
    HostileEntry { path: String, reason: String },

    /// A layer tarball that cannot be parsed.
    #[error("malformed layer tarball: {0}")]
    BadTar(String),

    /// A manifest or config that does not make sense (layer count, JSON).
    #[error("invalid image: {0}")]
    InvalidImage(String),

    /// A failure reported by the registry client (network, auth, HTTP).
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),

    /// A manifest that cannot be used (schema 1, unknown media types, no
    /// matching platform).
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),

    /// The operation was abandoned because a sibling task failed.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// Ok when `actual` is `expected`; else [`Error::DigestMismatch`].
    pub fn check_digest(what: &'static str, expected: Digest, actual: Digest, hint: &'static str) -> Result<()> {
        if actual == expected {
            return Ok(());
        }
        Err(Error::DigestMismatch { what, expected, actual, hint })
    }

    pub fn io(what: impl Into<String>, cause: io::Error) -> Self {
        Error::Io { what: what.into(), cause }
    }
    pub(crate) fn hostile(path: &[u8], reason: impl Into<String>) -> Self {
        Error::HostileEntry { path: String::from_utf8_lossy(path).into_owned(), reason: reason.into() }
    }
}

/// `.at(path)` / `.ctx("what")` on io results: attach what failed.
pub(crate) trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(path.display().to_string(), e))
    }
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}
