//! Garbage collection and disk usage.
//!
//! GC is mark and sweep from the image records: a blob lives if an image
//! names it (config, manifest, index, layer blob), a layer if an image lists
//! its diff_id (or the TOC of its lazy form), an object if the index of a
//! live layer names it. Everything else under `blobs/`, `layers/`, `lazy/`
//! and `objects/` goes, as does `tmp/`, and the parts file of a live lazy
//! layer's file that is whole in `objects/` by now. It runs
//! under the exclusive content lock, so no pull is between "this object
//! exists, reuse it" and writing the index that references it.

use super::{ExclusiveLock, Store, RECORD_WRITE_PREFIX};
use crate::digest::Digest;
use crate::error::{IoContext, Result};
use crate::index::EntryKind;
use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;

/// What [`Store::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcStats {
    pub blobs: u64,
    pub layers: u64,
    pub objects: u64,
    /// Apparent size of the removed blobs, indexes and objects.
    pub bytes: u64,
}

/// Store-wide disk usage, for `system df`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub images: u64,
    pub layers: u64,
    /// Sum of the unpacked sizes of distinct layers (shared layers once):
    /// the images' size as Docker reports it.
    pub layers_unpacked: u64,
    /// Bytes on disk (apparent size) in each area.
    pub blobs_bytes: u64,
    pub objects_bytes: u64,
    pub indexes_bytes: u64,
    pub tmp_bytes: u64,
}

impl DiskUsage {
    /// Everything the store holds for images.
    pub fn total_bytes(&self) -> u64 {
        self.blobs_bytes + self.objects_bytes + self.indexes_bytes
    }
}

impl Store {
    /// Removes every blob, layer and object no image references, and the
    /// staging area. See the module docs.
    pub fn gc(&self, lock: &ExclusiveLock) -> Result<GcStats> {
        let mut live_blobs = HashSet::new();
        let mut live_layers = HashSet::new();
        let mut live_lazy = HashSet::new();
        for img in self.images()? {
            live_blobs.insert(img.id);
            live_blobs.insert(img.manifest_digest);
            live_blobs.extend(img.index_digest);
            for l in &img.layers {
                live_blobs.insert(l.blob_digest);
                live_layers.insert(l.diff_id);
                live_lazy.extend(l.lazy_toc);
            }
        }
        // Every live layer's index must be readable: an object we cannot
        // account for is never deleted (the error stops the sweep).
        let mut live_objects = HashSet::new();
        for diff_id in &live_layers {
            if !self.has_layer(diff_id) {
                continue;
            }
            for e in self.layer_index(diff_id)?.entries {
                if let EntryKind::File { digest, .. } = e.kind {
                    live_objects.insert(digest);
                }
            }
        }

        for toc in &live_lazy {
            if let Some((index, _)) = self.lazy_layer(toc)? {
                for e in index.entries {
                    if let EntryKind::File { digest, .. } = e.kind {
                        live_objects.insert(digest);
                    }
                }
            }
        }

        let mut stats = GcStats::default();
        let blobs = self.layout.blobs_dir();
        for (path, digest) in hex_named(&blobs, "")? {
            if !live_blobs.contains(&digest) {
                stats.bytes += remove_file_counting(&path)?;
                stats.blobs += 1;
            }
        }
        let layers = self.layout.layers_dir();
        for (path, digest) in hex_named(&layers, "")? {
            if !live_layers.contains(&digest) {
                stats.bytes += tree_size(&path);
                fs::remove_dir_all(&path).at(&path)?;
                stats.layers += 1;
            }
        }
        let lazy = self.layout.lazy_dir();
        for (path, toc) in hex_named(&lazy, "")? {
            if !live_lazy.contains(&toc) {
                stats.bytes += tree_size(&path);
                fs::remove_dir_all(&path).at(&path)?;
                stats.layers += 1;
            }
        }
        for toc in &live_lazy {
            let parts = self.layout.lazy_parts_dir(toc);
            for (path, digest) in hex_named(&parts, "")? {
                if self.has_object(&digest) {
                    stats.bytes += remove_file_counting(&path)?;
                }
            }
        }
        let objects = self.layout.objects_dir();
        for fan in read_dir_names(&objects)? {
            if fan.len() != 2 || !fan.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let dir = objects.join(&fan);
            for (path, digest) in hex_named(&dir, &fan)? {
                if !live_objects.contains(&digest) {
                    stats.bytes += remove_file_counting(&path)?;
                    stats.objects += 1;
                }
            }
        }
        // Layers a push recompressed are no image's blobs: swept above,
        // and their records with them.
        let conversions = self.layout.conversions_dir();
        if conversions.exists() {
            fs::remove_dir_all(&conversions).at(&conversions)?;
        }
        self.clean_tmp(lock)?;
        Ok(stats)
    }

    /// Empties `ROOT/tmp` (staging debris of killed pulls and writes). Only
    /// safe when nobody is writing content: hence the exclusive lock. Record
    /// writes ([`Store::write_atomic`]) happen under the records lock alone,
    /// so their temporary files are left alone for a while: one that is
    /// minutes old is debris.
    pub fn clean_tmp(&self, _lock: &ExclusiveLock) -> Result<()> {
        const RECORD_WRITE_GRACE: std::time::Duration = std::time::Duration::from_secs(600);
        let tmp = self.layout.tmp_dir();
        for name in read_dir_names(&tmp)? {
            let path = tmp.join(&name);
            let res = match fs::symlink_metadata(&path) {
                Ok(m)
                    if name.starts_with(RECORD_WRITE_PREFIX)
                        && m.modified()
                            .ok()
                            .and_then(|t| t.elapsed().ok())
                            .is_none_or(|age| age < RECORD_WRITE_GRACE) =>
                {
                    continue
                }
                Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
                Ok(_) => fs::remove_file(&path),
                Err(e) => Err(e),
            };
            match res {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e).at(&path),
                _ => {}
            }
        }
        Ok(())
    }

    /// Cleans `tmp/` if no other strata process holds the content lock right
    /// now; a no-op otherwise. Cheap enough to call at the start of commands.
    pub fn try_clean_tmp(&self) -> Result<bool> {
        match self.try_lock_exclusive()? {
            Some(lock) => self.clean_tmp(&lock).map(|_| true),
            None => Ok(false),
        }
    }

    /// Store-wide disk usage (walks the store: not free on big stores).
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let images = self.images()?;
        let mut seen = HashSet::new();
        let mut du = DiskUsage { images: images.len() as u64, ..Default::default() };
        for img in &images {
            for l in &img.layers {
                if seen.insert(l.diff_id) {
                    du.layers += 1;
                    du.layers_unpacked += l.unpacked_size;
                }
            }
        }
        du.blobs_bytes = tree_size(&self.layout.blobs_dir());
        du.objects_bytes = tree_size(&self.layout.objects_dir());
        du.indexes_bytes = tree_size(&self.layout.layers_dir());
        du.tmp_bytes = tree_size(&self.layout.tmp_dir());
        Ok(du)
    }
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).at(dir),
    };
    for entry in rd {
        if let Some(name) = entry.at(dir)?.file_name().to_str() {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

/// Entries of `dir` whose name, after `prefix`, completes a sha256 hex digest.
fn hex_named(dir: &Path, prefix: &str) -> Result<Vec<(std::path::PathBuf, Digest)>> {
    Ok(read_dir_names(dir)?
        .into_iter()
        .filter_map(|name| {
            let d = Digest::from_hex(&format!("{prefix}{name}")).ok()?;
            Some((dir.join(name), d))
        })
        .collect())
}

fn remove_file_counting(path: &Path) -> Result<u64> {
    let size = fs::symlink_metadata(path).map(|m| m.len()).unwrap_or(0);
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).at(path),
        _ => Ok(size),
    }
}

/// Apparent size of the regular files under `path` (symlinks not followed;
/// unreadable parts count as empty: this is a report, not an invariant).
fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return if meta.is_file() { meta.len() } else { 0 };
    }
    let Ok(rd) = fs::read_dir(path) else { return 0 };
    rd.filter_map(|e| e.ok()).map(|e| tree_size(&e.path())).sum()
}
