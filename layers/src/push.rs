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
//! With [`PushOptions::compression`], layers not already in that format are
//! recompressed first (`recompress`): the tar stream stays the same, so
//! the config and image id do too; the manifest pushed names the new blobs
//! (and becomes an OCI one when a Docker manifest gets zstd layers, which
//! Docker's format has no type for). Recompressed blobs are kept in the
//! store with a record under `conversions/`, so a push again sends the
//! same blobs without compressing anything; `gc` drops both.
//!
//! Every blob is checked against its digest while it is read for upload:
//! a blob damaged in the store makes the push fail before the registry
//! would take it (the registry checks too). The push holds the store's
//! shared lock, so a prune cannot remove what it is sending.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::chunked::TocLocation;
use crate::digest::{Digest, HashingReader, VerifyingReader};
use crate::error::{Error, IoContext, Result};
use crate::image::ImageRecord;
use crate::manifest::{self, Descriptor, ImageManifest, LayerCompression};
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

/// A layer format a push can convert layers to (`--compression-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    /// zstd with a table of contents, for lazy pulls (see `chunked`).
    ZstdChunked,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "zstd:chunked" => Ok(Compression::ZstdChunked),
            other => Err(format!("unknown compression format {other:?}: use gzip, zstd or zstd:chunked")),
        }
    }
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::ZstdChunked => "zstd:chunked",
        }
    }

    /// The level used when none is given: gzip's usual 6, zstd's usual 3.
    pub fn default_level(self) -> i32 {
        match self {
            Compression::Gzip => 6,
            Compression::Zstd | Compression::ZstdChunked => 3,
        }
    }

    /// Checks a `--compression-level` for this format.
    pub fn check_level(self, level: i32) -> std::result::Result<(), String> {
        let range = match self {
            Compression::Gzip => 0..=9,
            Compression::Zstd | Compression::ZstdChunked => 1..=22,
        };
        if range.contains(&level) {
            Ok(())
        } else {
            Err(format!("compression level {level} is out of range for {}: {range:?}", self.name()))
        }
    }

    /// True when the layer `desc` is already in this format (a foreign
    /// layer counts as being in any: it is never pushed).
    fn holds(self, desc: &Descriptor) -> bool {
        if desc.is_foreign() {
            return true;
        }
        let chunked = TocLocation::of(desc).ok().flatten().is_some();
        match (self, LayerCompression::from_media_type(&desc.media_type)) {
            (Compression::Gzip, Ok(LayerCompression::Gzip)) => true,
            (Compression::Zstd, Ok(LayerCompression::Zstd)) => !chunked,
            (Compression::ZstdChunked, Ok(LayerCompression::Zstd)) => chunked,
            _ => false,
        }
    }
}

/// How to push.
#[derive(Debug, Clone, Copy, Default)]
pub struct PushOptions {
    /// Recompress layers not in this format.
    pub compression: Option<Compression>,
    /// The compression level (the format's default when None).
    pub level: Option<i32>,
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
    options: PushOptions,
) -> Result<PushOutcome> {
    let _lock = store.lock_shared()?;
    let stored_bytes = store.read_blob(&image.manifest_digest)?;
    let mut manifest: ImageManifest = serde_json::from_slice(&stored_bytes)
        .map_err(|e| Error::InvalidImage(format!("stored manifest {}: {e}", image.manifest_digest)))?;
    let sources = mount_sources(store, target)?;

    let layers: Vec<&Descriptor> = manifest.layers.iter().collect();
    let pushed: Vec<Mutex<Option<Descriptor>>> = layers.iter().map(|_| Mutex::new(None)).collect();
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
                let sent = layer_to_send(store, image, desc, options).and_then(|desc| {
                    let outcome = push_blob(store, client, target, &desc, &sources)?;
                    Ok((desc, outcome))
                });
                match sent {
                    Ok((desc, outcome)) => {
                        progress.blob_done(&desc.digest, &outcome);
                        *pushed[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(desc);
                    }
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
    let sent: Vec<Descriptor> =
        pushed.into_iter().filter_map(|d| d.into_inner().unwrap_or_else(|p| p.into_inner())).collect();
    let mut media_type = manifest.media_type.clone().unwrap_or_else(|| image.manifest_media_type.clone());
    // The stored manifest as it is, unless a layer was recompressed.
    let manifest_bytes = if sent == manifest.layers {
        stored_bytes
    } else {
        manifest.layers = sent;
        if media_type == manifest::DOCKER_MANIFEST
            && manifest
                .layers
                .iter()
                .any(|l| LayerCompression::from_media_type(&l.media_type).ok() == Some(LayerCompression::Zstd))
        {
            to_oci(&mut manifest);
            media_type = manifest::OCI_MANIFEST.to_string();
        }
        serde_json::to_vec(&manifest).map_err(|e| Error::InvalidImage(format!("writing the manifest: {e}")))?
    };
    push_blob(store, client, target, &manifest.config, &sources)?;
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

/// The layer `desc` as it is to be sent: itself, or recompressed into the
/// format `options` asks for.
fn layer_to_send(store: &Store, image: &ImageRecord, desc: &Descriptor, options: PushOptions) -> Result<Descriptor> {
    let Some(format) = options.compression.filter(|c| !c.holds(desc)) else { return Ok(desc.clone()) };
    let diff_id =
        image.layers.iter().find(|l| l.blob_digest == desc.digest).map(|l| l.diff_id).ok_or_else(|| {
            Error::InvalidImage(format!("layer {} of image {} has no diff_id", desc.digest, image.id))
        })?;
    recompress(store, desc, diff_id, format, options.level.unwrap_or(format.default_level()))
}

/// The stored layer blob `desc`, whose tar stream has sha256 `diff_id`,
/// as a blob in `format`: from an earlier conversion, or made now and
/// stored. A gzip layer of a Docker manifest keeps Docker's media type.
fn recompress(
    store: &Store,
    desc: &Descriptor,
    diff_id: Digest,
    format: Compression,
    level: i32,
) -> Result<Descriptor> {
    let record_dir = store.layout().conversions_dir().join(format!("{}-{level}", format.name().replace(':', "-")));
    let record_path = record_dir.join(format!("{}.json", desc.digest.hex()));
    if let Ok(bytes) = std::fs::read(&record_path) {
        if let Ok(done) = serde_json::from_slice::<Descriptor>(&bytes) {
            if store.has_blob(&done.digest) {
                return Ok(done);
            }
        }
    }
    let file = store.open_blob(&desc.digest)?;
    let hint = "; the store is corrupt: remove the image and pull it again";
    let compressed = VerifyingReader::new(file, desc.size, desc.digest, hint);
    let compression = LayerCompression::from_media_type(&desc.media_type)
        .map_err(|e| Error::InvalidImage(format!("layer {}: {e}", desc.digest)))?;
    let tar = crate::ingest::decompress(compressed, compression);
    let mut blob = store.temp_blob()?;
    let what = || format!("recompressing layer {} as {}", desc.digest, format.name());
    let mut annotations = std::collections::BTreeMap::new();
    let read = match format {
        Compression::ZstdChunked => {
            let written = crate::chunked::write_chunked(tar, &mut blob, level)?;
            annotations = written.annotations;
            written.diff_id
        }
        Compression::Zstd => {
            let mut tar = HashingReader::new(tar);
            let mut encoder = zstd::stream::write::Encoder::new(&mut blob, level).ctx(what)?;
            std::io::copy(&mut tar, &mut encoder).ctx(what)?;
            encoder.finish().ctx(what)?;
            tar.finish().0
        }
        Compression::Gzip => {
            let mut tar = HashingReader::new(tar);
            let mut encoder = flate2::write::GzEncoder::new(&mut blob, flate2::Compression::new(level as u32));
            std::io::copy(&mut tar, &mut encoder).ctx(what)?;
            encoder.finish().ctx(what)?;
            tar.finish().0
        }
    };
    Error::check_digest("layer", diff_id, read, "; the store is corrupt: remove the image and pull it again")?;
    let (digest, size) = blob.digest();
    store.put_blob_from_temp(blob, &digest)?;
    let docker = desc.media_type.starts_with("application/vnd.docker.");
    let media_type = match (format, docker) {
        (Compression::Gzip, true) => manifest::DOCKER_LAYER_GZIP,
        (Compression::Gzip, false) => manifest::OCI_LAYER_GZIP,
        (Compression::Zstd | Compression::ZstdChunked, _) => manifest::OCI_LAYER_ZSTD,
    };
    let mut done = Descriptor::new(media_type, digest, size);
    done.annotations = annotations;
    store.ensure_dir(&record_dir)?;
    let json = serde_json::to_vec(&done).map_err(|e| Error::InvalidImage(format!("writing a record: {e}")))?;
    store.write_atomic(&record_path, &json, 0o644)?;
    Ok(done)
}

/// Turns a Docker manifest into an OCI one, media types and all (the
/// config's JSON is the same in both).
fn to_oci(m: &mut ImageManifest) {
    m.media_type = Some(manifest::OCI_MANIFEST.to_string());
    m.config.media_type = manifest::OCI_CONFIG.to_string();
    for l in &mut m.layers {
        let oci = match l.media_type.as_str() {
            manifest::DOCKER_LAYER_GZIP => manifest::OCI_LAYER_GZIP,
            manifest::DOCKER_LAYER_TAR => manifest::OCI_LAYER_TAR,
            manifest::DOCKER_LAYER_ZSTD => manifest::OCI_LAYER_ZSTD,
            manifest::DOCKER_LAYER_FOREIGN_GZIP => manifest::OCI_LAYER_NONDIST_GZIP,
            _ => continue,
        };
        l.media_type = oci.to_string();
    }
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
