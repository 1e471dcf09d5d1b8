//! The build cache: `ROOT/buildcache/KEY`, one small JSON record per RUN
//! step naming the layer it made, under the key of everything the step
//! depended on (see [`crate::build`]). A record is only used while its
//! layer is still in the store; `builder prune` removes the records, and
//! the store's garbage collection then frees the layers no image uses.

use std::collections::HashMap;

use strata_layers::image::LayerRecord;
use strata_layers::store::Store;
use strata_layers::Digest;

/// The layer the cache holds for `key`, if it is still stored.
pub fn lookup(store: &Store, key: &Digest) -> Option<LayerRecord> {
    let path = store.layout().build_cache_dir().join(key.hex());
    let record: LayerRecord = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    (store.has_layer(&record.diff_id) && store.has_blob(&record.blob_digest)).then_some(record)
}

/// Records that the step with `key` made `layer`.
pub fn remember(store: &Store, key: &Digest, layer: &LayerRecord) -> strata_layers::error::Result<()> {
    let dir = store.layout().build_cache_dir();
    store.ensure_dir(&dir)?;
    let record = serde_json::to_vec(layer).unwrap_or_default();
    store.write_atomic(&dir.join(key.hex()), &record, 0o644)
}

/// The cached layers still stored, each once, with how many records name it.
pub fn layers(store: &Store) -> Vec<(LayerRecord, usize)> {
    let mut found: HashMap<Digest, (LayerRecord, usize)> = HashMap::new();
    let Ok(dir) = std::fs::read_dir(store.layout().build_cache_dir()) else { return Vec::new() };
    for entry in dir.flatten() {
        let Some(key) = entry.file_name().to_str().and_then(|n| Digest::from_hex(n).ok()) else { continue };
        if let Some(layer) = lookup(store, &key) {
            found.entry(layer.diff_id).or_insert((layer, 0)).1 += 1;
        }
    }
    found.into_values().collect()
}

/// Removes every record; returns how many there were.
pub fn clear(store: &Store) -> std::io::Result<usize> {
    let dir = store.layout().build_cache_dir();
    let mut n = 0;
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                std::fs::remove_file(e.path())?;
                n += 1;
            }
            Ok(n)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}
