//! Pushing a stored image to a registry: its layer blobs and config as the
//! store keeps them (so digests do not change), then its manifest under the
//! tag.
//!
//! Per blob, as Docker does: nothing is sent when the repository already
//! has it (a HEAD with push scope); a blob the image was pulled with from
//! another repository of the same registry is mounted from there (one
//! POST, no upload); anything else is uploaded in one monolithic PUT.
//! Layers go up in parallel (up to [`PARALLEL_UPLOADS`]), the config after
//! them, the manifest last, so that a registry never holds a manifest
//! whose blobs are missing. Non-distributable (foreign) layers are not
//! pushed, as Docker does not push them.
//!
//! Every blob is checked against its digest while it is read for upload:
//! a blob damaged in the store makes the push fail before the registry
//! would take it (the registry checks too). The push holds the store's
//! shared lock, so a prune cannot remove what it is sending.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::digest::{Digest, VerifyingReader};
use crate::error::{Error, Result};
use crate::image::ImageRecord;
use crate::manifest::{Descriptor, ImageManifest};
use crate::reference::Reference;
use crate::registry::RegistryClient;
use crate::store::Store;

/// Layers uploaded at once (Docker's default is 5; 2-core machines here).
pub const PARALLEL_UPLOADS: usize = 4;

/// What happened to one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobOutcome {
    Pushed,
    /// The repository had it already.
    Exists,
    /// Linked from this repository of the same registry.
    Mounted(String),
    /// A non-distributable layer, left to where its URLs point.
    SkippedForeign,
}

/// Told about each layer blob as it is done (from several threads).
pub trait PushProgress: Sync {
    fn blob_done(&self, digest: &Digest, outcome: &BlobOutcome);
}

/// A progress sink that ignores everything.
pub struct NoPushProgress;
impl PushProgress for NoPushProgress {
    fn blob_done(&self, _: &Digest, _: &BlobOutcome) {}
}

#[derive(Debug, Clone)]
pub struct PushOutcome {
    /// The manifest's digest, as the registry names it.
    pub digest: Digest,
    /// The manifest's size in bytes.
    pub size: u64,
}

/// Pushes `image` to `target` (a `name:tag`), and records `name@digest` as
/// one of the image's repo digests.
pub fn push(
    store: &Store,
    client: &RegistryClient,
    image: &ImageRecord,
    target: &Reference,
    progress: &dyn PushProgress,
) -> Result<PushOutcome> {
    let _lock = store.lock_shared()?;
    let manifest_bytes = store.read_blob(&image.manifest_digest)?;
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| Error::InvalidImage(format!("stored manifest {}: {e}", image.manifest_digest)))?;
    let sources = mount_sources(store, target)?;

    let layers: Vec<&Descriptor> = manifest.layers.iter().collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..layers.len().min(PARALLEL_UPLOADS) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(desc) = layers.get(i) else { break };
                if failed.load(Ordering::SeqCst) {
                    break;
                }
                match push_blob(store, client, target, desc, &sources) {
                    Ok(outcome) => progress.blob_done(&desc.digest, &outcome),
                    Err(e) => {
                        failed.store(true, Ordering::SeqCst);
                        first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    push_blob(store, client, target, &manifest.config, &sources)?;
    let media_type = manifest.media_type.clone().unwrap_or_else(|| image.manifest_media_type.clone());
    let digest = client.put_manifest(target, &manifest_bytes, &media_type)?;

    let repo_digest = target.with_digest(digest);
    store.update_records(|recs| {
        let Some(mut record) = recs.image(&image.id)? else { return Ok(()) };
        let name = repo_digest.to_string();
        if !record.repo_digests.contains(&name) {
            record.repo_digests.push(name);
            record.repo_digests.sort();
            recs.put_image(&record)?;
        }
        recs.set_reference(&repo_digest, &image.id)?;
        Ok(())
    })?;
    Ok(PushOutcome { digest, size: manifest_bytes.len() as u64 })
}

/// Per blob: the repositories of the target's registry (other than the
/// target's own) that a stored image holding it was pulled from or pushed
/// to, where the blob can be mounted from. A committed image's base layers
/// are found through the base image this way.
fn mount_sources(store: &Store, target: &Reference) -> Result<HashMap<Digest, Vec<String>>> {
    let mut out: HashMap<Digest, Vec<String>> = HashMap::new();
    for image in store.images()? {
        let repos: Vec<String> = image
            .repo_digests
            .iter()
            .filter_map(|r| r.parse::<Reference>().ok())
            .filter(|r| r.registry == target.registry && r.repository != target.repository)
            .map(|r| r.repository)
            .collect();
        for blob in image.layers.iter().map(|l| l.blob_digest).chain([image.id]) {
            let list = out.entry(blob).or_default();
            for r in &repos {
                if !list.contains(r) {
                    list.push(r.clone());
                }
            }
        }
    }
    Ok(out)
}

fn push_blob(
    store: &Store,
    client: &RegistryClient,
    target: &Reference,
    desc: &Descriptor,
    sources: &HashMap<Digest, Vec<String>>,
) -> Result<BlobOutcome> {
    if desc.is_foreign() {
        return Ok(BlobOutcome::SkippedForeign);
    }
    if client.blob_exists(target, &desc.digest)? {
        return Ok(BlobOutcome::Exists);
    }
    for from in sources.get(&desc.digest).into_iter().flatten() {
        if client.mount_blob(target, &desc.digest, from)? {
            return Ok(BlobOutcome::Mounted(from.clone()));
        }
    }
    let file = store.open_blob(&desc.digest)?;
    let size = file.metadata().map_err(|e| Error::io(format!("reading blob {}", desc.digest), e))?.len();
    if size != desc.size {
        return Err(Error::SizeMismatch {
            digest: desc.digest,
            expected: desc.size,
            actual: size,
            hint: "; the store is corrupt: remove the image and pull it again",
        });
    }
    let mut reader =
        VerifyingReader::new(file, size, desc.digest, ": the store is corrupt; remove the image and pull it again");
    client.put_blob(target, &desc.digest, size, &mut reader)?;
    Ok(BlobOutcome::Pushed)
}
