//! Where everything lives inside a store root. One place for every path so
//! that the store, the filesystem, the runner and the CLI agree.
//!
//! ```text
//! ROOT/lock                      content lock (shared: pull; exclusive: rmi/prune/gc)
//! ROOT/records.lock              short exclusive lock around JSON record updates
//! ROOT/blobs/sha256/HEX          manifests, configs, compressed layers as served
//! ROOT/objects/HE/X...           regular-file contents, named by sha256 (read-only)
//! ROOT/layers/HEX/index          layer index (see index.rs), named by diff_id
//! ROOT/lazy/HEX/                lazily pulled layer: index + source.json, by TOC digest
//! ROOT/lazy/HEX/parts/HEX        its large files being fetched in parts (sparse), by content
//! ROOT/images/HEX.json           image records, named by config digest (IMAGE ID)
//! ROOT/tags.json                 repository:tag and repo@digest -> IMAGE ID
//! ROOT/containers/ID/            per-container state, upper/ and logs
//! ROOT/volumes/NAME/             named volumes
//! ROOT/mounts/                   records of `strata mount` mounts
//! ROOT/tmp/                      staging; cleared when the store is idle
//! ```

use crate::digest::Digest;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLayout {
    root: PathBuf,
}

impl StoreLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StoreLayout { root: root.into() }
    }

    /// The store root strata uses when neither `--root` nor `STRATA_ROOT` is
    /// given: `/var/lib/strata` for root, `$XDG_DATA_HOME/strata` (or
    /// `~/.local/share/strata`) for everyone else.
    pub fn default_root() -> PathBuf {
        if let Some(r) = std::env::var_os("STRATA_ROOT").filter(|r| !r.is_empty()) {
            return PathBuf::from(r);
        }
        if rustix::process::geteuid().is_root() {
            return PathBuf::from("/var/lib/strata");
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join("strata");
        }
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
        home.join(".local/share/strata")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }
    pub fn records_lock_path(&self) -> PathBuf {
        self.root.join("records.lock")
    }
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(d.hex())
    }
    pub fn objects_dir(&self) -> PathBuf {
        self.root.join("objects")
    }
    pub fn object_path(&self, d: &Digest) -> PathBuf {
        object_path_in(&self.objects_dir(), d)
    }
    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.layers_dir().join(diff_id.hex())
    }
    pub fn layer_index_path(&self, diff_id: &Digest) -> PathBuf {
        self.layer_dir(diff_id).join("index")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn image_record_path(&self, id: &Digest) -> PathBuf {
        self.images_dir().join(format!("{}.json", id.hex()))
    }
    pub fn tags_path(&self) -> PathBuf {
        self.root.join("tags.json")
    }
    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir().join(id)
    }
    pub fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }
    pub fn mounts_dir(&self) -> PathBuf {
        self.root.join("mounts")
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// Lazily pulled layers, by TOC digest (see `chunked`).
    pub fn lazy_dir(&self) -> PathBuf {
        self.root.join("lazy")
    }
    pub fn lazy_layer_dir(&self, toc: &Digest) -> PathBuf {
        self.lazy_dir().join(toc.hex())
    }
    /// Files of a lazy layer being fetched in parts, by content digest.
    pub fn lazy_parts_dir(&self, toc: &Digest) -> PathBuf {
        self.lazy_layer_dir(toc).join("parts")
    }
    /// `build`'s cache: one small file per RUN step, naming the layer it made.
    pub fn build_cache_dir(&self) -> PathBuf {
        self.root.join("buildcache")
    }
    /// Layers a push recompressed, by format and source blob (see `push`).
    pub fn conversions_dir(&self) -> PathBuf {
        self.root.join("conversions")
    }
}

/// `OBJECTS/HE/X...`: the object file for content digest `d`.
pub fn object_path_in(objects_dir: &Path, d: &Digest) -> PathBuf {
    let hex = d.hex();
    objects_dir.join(&hex[..2]).join(&hex[2..])
}
