//! A new image made of a stored image plus one more layer: what
//! `strata commit` (and a build step) stores.
//!
//! The layer arrives as an uncompressed tar stream. One pass over it both
//! ingests it (objects and index, as a pulled layer is, with the same
//! checks) and compresses it with gzip into a blob, so that the image can
//! be pushed and saved like any pulled one. Then the config (the caller's,
//! with the new diff_id appended), an OCI manifest naming the base's layer
//! blobs and the new one, and the image record are stored. Nothing is
//! visible before the layer and its blob are in place: the record is
//! written last, under the store's shared lock like a pull, so that a
//! prune cannot take the new objects away in between.
//!
//! The manifest is OCI's even for a base served as Docker schema 2 (as
//! `podman commit` does by default): the base's layer blobs keep their
//! bytes and digests, only their media types take the OCI names.

use std::io::{self, Read, Write};

use flate2::write::GzEncoder;

use crate::error::{Error, IoContext, Result};
use crate::image::{ImageConfig, ImageRecord, LayerRecord};
use crate::ingest::stage_layer;
use crate::manifest::{self as m, Descriptor, ImageManifest};
use crate::reference::Reference;
use crate::store::Store;

/// Stores `base` plus the layer `tar` as a new image with `config` (whose
/// `rootfs.diff_ids` this completes with the new layer's), tagged as `tag`
/// when given. Returns the new image's record.
pub fn commit_layer(
    store: &Store,
    base: &ImageRecord,
    tar: impl Read,
    config: ImageConfig,
    tag: Option<&Reference>,
) -> Result<ImageRecord> {
    let _lock = store.lock_shared()?;
    let layer = add_layer(store, tar)?;
    let mut layers = base.layers.clone();
    layers.push(layer);
    store_image(store, layers, config, tag)
}

/// Ingests the uncompressed layer `tar` and stores it gzipped as a blob;
/// returns its record (for [`store_image`]). The caller holds the store's
/// shared lock until an image names the layer.
pub fn add_layer(store: &Store, tar: impl Read) -> Result<LayerRecord> {
    let mut tee = Tee { inner: tar, gzip: GzEncoder::new(store.temp_blob()?, flate2::Compression::default()) };
    let staged = stage_layer(store, &mut tee, None)?;
    // The parser may stop at the tar's end-of-archive blocks: the blob takes the rest too.
    io::copy(&mut tee, &mut io::sink()).ctx(|| "reading the new layer".to_string())?;
    let blob = tee.gzip.finish().ctx(|| "compressing the new layer".to_string())?;
    let (blob_digest, blob_size) = blob.digest();
    let diff_id = staged.diff_id();
    let unpacked_size = staged.unpacked_size();
    staged.commit()?;
    store.put_blob_from_temp(blob, &blob_digest)?;
    Ok(LayerRecord {
        diff_id,
        blob_digest,
        blob_media_type: m::OCI_LAYER_GZIP.to_string(),
        blob_size,
        unpacked_size,
        lazy_toc: None,
    })
}

/// Stores an image made of stored `layers` (bottom first) and `config`
/// (its `rootfs.diff_ids` set from the layers), with an OCI manifest, and
/// tags it as `tag` when given.
pub fn store_image(
    store: &Store,
    layers: Vec<LayerRecord>,
    config: ImageConfig,
    tag: Option<&Reference>,
) -> Result<ImageRecord> {
    Ok(store_image_telling(store, layers, config, tag)?.0)
}

/// [`store_image`], also telling whether the image is new to the store
/// (false when an image with the same config was there already).
pub fn store_image_telling(
    store: &Store,
    layers: Vec<LayerRecord>,
    mut config: ImageConfig,
    tag: Option<&Reference>,
) -> Result<(ImageRecord, bool)> {
    config.rootfs.diff_ids = layers.iter().map(|l| l.diff_id).collect();
    let config_bytes = config.to_bytes();
    store_image_as(store, layers, &config_bytes, None, tag.into_iter().cloned().collect())
}

/// Stores an image whose config (and, when given, manifest and its media
/// type) are these exact bytes, so that its ID and digests stay what they
/// were elsewhere (`load`); without a manifest an OCI one is written. The
/// config's diff_ids must be the layers'. Names it `names`.
pub fn store_image_as(
    store: &Store,
    mut layers: Vec<LayerRecord>,
    config_bytes: &[u8],
    manifest: Option<(&[u8], &str)>,
    names: Vec<Reference>,
) -> Result<(ImageRecord, bool)> {
    let config = ImageConfig::from_bytes(config_bytes)?;
    if config.rootfs.diff_ids != layers.iter().map(|l| l.diff_id).collect::<Vec<_>>() {
        return Err(Error::InvalidImage("the config's rootfs.diff_ids do not match the image's layers".into()));
    }
    let id = store.put_blob(config_bytes)?;
    let (manifest_bytes, manifest_media_type) = match manifest {
        Some((bytes, media_type)) => (bytes.to_vec(), media_type.to_string()),
        None => {
            for l in &mut layers {
                l.blob_media_type = oci_layer_type(&l.blob_media_type).to_string();
            }
            let manifest = ImageManifest {
                schema_version: 2,
                media_type: Some(m::OCI_MANIFEST.to_string()),
                artifact_type: None,
                config: Descriptor::new(m::OCI_CONFIG, id, config_bytes.len() as u64),
                layers: layers
                    .iter()
                    .map(|l| Descriptor::new(&l.blob_media_type, l.blob_digest, l.blob_size))
                    .collect(),
                subject: None,
                annotations: Default::default(),
            };
            let bytes = serde_json::to_vec(&manifest)
                .map_err(|e| Error::InvalidImage(format!("serialising the manifest: {e}")))?;
            (bytes, m::OCI_MANIFEST.to_string())
        }
    };
    let manifest_digest = store.put_blob(&manifest_bytes)?;

    let record = ImageRecord {
        id,
        manifest_digest,
        manifest_media_type,
        index_digest: None,
        size: layers.iter().map(|l| l.unpacked_size).sum(),
        layers,
        repo_digests: Vec::new(),
        created: config.created.clone(),
        os: config.os.clone(),
        architecture: config.architecture.clone(),
        variant: config.variant.clone(),
    };
    let is_new = store.update_records(|recs| {
        // An image stored again (the same config) keeps the names it had.
        let old = recs.image(&record.id)?;
        let is_new = old.is_none();
        if let Some(old) = old {
            let mut merged = record.clone();
            merged.repo_digests = old.repo_digests;
            recs.put_image(&merged)?;
        } else {
            recs.put_image(&record)?;
        }
        for name in &names {
            recs.set_reference(name, &record.id)?;
        }
        Ok(is_new)
    })?;
    Ok((record, is_new))
}

/// The OCI name of a layer media type (Docker's names mapped, OCI's kept).
fn oci_layer_type(media_type: &str) -> &str {
    match media_type {
        m::DOCKER_LAYER_GZIP => m::OCI_LAYER_GZIP,
        m::DOCKER_LAYER_TAR => m::OCI_LAYER_TAR,
        m::DOCKER_LAYER_ZSTD => m::OCI_LAYER_ZSTD,
        m::DOCKER_LAYER_FOREIGN_GZIP => m::OCI_LAYER_NONDIST_GZIP,
        other => other,
    }
}

/// Reads `inner`, writing what it reads into the gzip stream too.
struct Tee<R, W: Write> {
    inner: R,
    gzip: GzEncoder<W>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.gzip.write_all(&buf[..n])?;
        Ok(n)
    }
}
