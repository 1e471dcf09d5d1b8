//! strata's image store and OCI distribution client.
//!
//! This crate owns everything about images that does not need FUSE or
//! namespaces: parsing references, talking to registries, verifying and
//! keeping blobs, turning layer tarballs into deduplicated file objects plus a
//! per-layer metadata [`index`], and the small JSON records (images, tags)
//! that name them. `fs` mounts what this crate stores; `cli` drives it.

pub mod archive;
pub mod chunked;
pub mod commit;
pub mod digest;
mod entry_rules;
pub mod error;
pub mod image;
pub mod index;
pub mod ingest;
pub mod layout;
pub mod manifest;
pub mod merge;
pub mod pull;
pub mod push;
pub mod reference;
pub mod registry;
pub mod store;

pub use digest::{Digest, DigestError};
pub use index::{Entry, EntryKind, IndexError, LayerIndex};
pub use layout::StoreLayout;
