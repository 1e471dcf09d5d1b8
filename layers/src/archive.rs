//! Image archives: `save` writes stored images as one tar, `load` reads one
//! back into the store.
//!
//! The archive `save` writes is both an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/...`) and Docker's `manifest.json` over the
//! same blobs, as Docker 25 and later write it, so that Docker, Podman,
//! skopeo (`docker-archive:` and `oci-archive:`) and strata can all load it.
//! The blobs are the store's own (layers as they were pulled, usually
//! gzipped): digests and image IDs survive a save and load.
//!
//! `load` takes either form (Docker's older archives with `ID/layer.tar`
//! and symlinked duplicate layers too), plain or compressed. The archive is
//! first unpacked into a private staging directory of the store, entry by
//! entry, as files numbered in order (symlinks are noted, never created,
//! and must point inside the archive; a path that climbs out is refused),
//! then every image is checked like a pull: each blob against its digest,
//! each layer's uncompressed stream against the config's diff_id, before
//! anything is admitted. A failure leaves the store as it was.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingWriter, VerifyingReader};
use crate::error::{Error, IoContext, Result};
use crate::image::{ImageConfig, ImageRecord, LayerRecord};
use crate::ingest::{decompress, stage_layer};
use crate::manifest::{self as m, Descriptor, ImageIndex, ImageManifest, LayerCompression};
use crate::reference::Reference;
use crate::store::Store;

/// Docker's `manifest.json` entry.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

const IMAGE_NAME: &str = "io.containerd.image.name";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Configs and manifests larger than this are refused (they are JSON of a few KiB).
const MAX_JSON: u64 = 8 << 20;

/// Writes `images` (each with the names it is saved under) to `out`.
pub fn save(store: &Store, images: &[(ImageRecord, Vec<Reference>)], out: impl Write) -> Result<()> {
    let _lock = store.lock_shared()?;
    let mut tar = tar::Builder::new(out);
    let werr = |e: io::Error| Error::io("writing the archive", e);
    let mut written = std::collections::HashSet::new();
    let mut index = ImageIndex {
        schema_version: 2,
        media_type: Some(m::OCI_INDEX.into()),
        artifact_type: None,
        manifests: Vec::new(),
        subject: None,
        annotations: BTreeMap::new(),
    };
    let mut docker = Vec::new();
    append(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(werr)?;
    for (image, names) in images {
        let manifest_bytes = store.read_blob(&image.manifest_digest)?;
        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| Error::InvalidImage(format!("stored manifest {}: {e}", image.manifest_digest)))?;
        for d in manifest.layers.iter().map(|l| &l.digest).chain([&image.id, &image.manifest_digest]) {
            if written.insert(*d) {
                append_blob(store, &mut tar, d)?;
            }
        }
        let desc = |annotations: BTreeMap<String, String>| Descriptor {
            annotations,
            ..Descriptor::new(&image.manifest_media_type, image.manifest_digest, manifest_bytes.len() as u64)
        };
        if names.is_empty() {
            index.manifests.push(desc(BTreeMap::new()));
        }
        for n in names {
            let tag = n.tag_or_default().to_string();
            index.manifests.push(desc(BTreeMap::from([(IMAGE_NAME.into(), n.to_string()), (REF_NAME.into(), tag)])));
        }
        docker.push(DockerEntry {
            config: blob_path(&image.id),
            repo_tags: names.iter().map(Reference::familiar_string).collect(),
            layers: manifest.layers.iter().map(|l| blob_path(&l.digest)).collect(),
        });
    }
    let jerr = |e: serde_json::Error| Error::InvalidImage(format!("serialising the archive's index: {e}"));
    append(&mut tar, "index.json", &serde_json::to_vec(&index).map_err(jerr)?).map_err(werr)?;
    append(&mut tar, "manifest.json", &serde_json::to_vec(&docker).map_err(jerr)?).map_err(werr)?;
    tar.into_inner().and_then(|mut w| w.flush()).map_err(werr)
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

fn append<W: Write>(tar: &mut tar::Builder<W>, path: &str, data: &[u8]) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, data)
}

/// Streams a stored blob into the archive, checked against its digest on the way.
fn append_blob<W: Write>(store: &Store, tar: &mut tar::Builder<W>, d: &Digest) -> Result<()> {
    let file = store.open_blob(d)?;
    let size = file.metadata().ctx(|| format!("reading blob {d}"))?.len();
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    let mut reader = VerifyingReader::new(file, size, *d, ": the store is corrupt; remove the image and pull it again");
    tar.append_data(&mut h, blob_path(d), &mut reader).map_err(|e| Error::io(format!("saving blob {d}"), e))
}

/// One image `load` stored: its record and the names it got.
#[derive(Debug)]
pub struct Loaded {
    pub record: ImageRecord,
    pub names: Vec<Reference>,
}

/// The archive unpacked: archive path -> staged file.
struct Staged {
    dir: tempfile::TempDir,
    files: HashMap<String, PathBuf>,
    links: HashMap<String, String>,
}

impl Staged {
    fn open(&self, path: &str) -> Result<File> {
        let mut p = clean(path).ok_or_else(|| bad(format!("path {path:?} climbs out of the archive")))?;
        for _ in 0..16 {
            if let Some(f) = self.files.get(&p) {
                return File::open(f).ctx(|| format!("reading {path} of the archive"));
            }
            match self.links.get(&p) {
                Some(t) => p = t.clone(),
                None => break,
            }
        }
        Err(bad(format!("the archive has no file {path}")))
    }

    fn read_small(&self, path: &str) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.open(path)?.take(MAX_JSON + 1).read_to_end(&mut data).ctx(|| format!("reading {path}"))?;
        if data.len() as u64 > MAX_JSON {
            return Err(bad(format!("{path} is over {MAX_JSON} bytes")));
        }
        Ok(data)
    }

    fn has(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }
}

fn bad(message: String) -> Error {
    Error::InvalidImage(format!("not a valid image archive: {message}"))
}

/// `a/./b/../c` -> `a/c`; `None` when it climbs out or is absolute.
fn clean(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Reads the archive `input` (plain, gzip or zstd) into the store.
pub fn load(store: &Store, input: impl Read + Send + 'static) -> Result<Vec<Loaded>> {
    let _lock = store.lock_shared()?;
    let staged = unpack(store, input)?;
    let images = if staged.has("manifest.json") {
        docker_images(&staged)?
    } else if staged.has("index.json") {
        oci_images(&staged)?
    } else {
        return Err(bad("it holds no image: neither Docker's manifest.json nor an OCI index.json".into()));
    };
    if images.is_empty() {
        return Err(bad("it holds no image (neither manifest.json nor index.json lists one)".into()));
    }
    // Check everything before admitting anything; a layer several images
    // share is checked once.
    let mut checked = Vec::new();
    let mut seen: HashMap<Digest, LayerRecord> = HashMap::new();
    for img in images {
        let config = ImageConfig::from_bytes(&img.config)?;
        if img.layers.len() != config.rootfs.diff_ids.len() {
            return Err(bad(format!(
                "image {} lists {} layers, its config {}",
                img.id,
                img.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (layer, diff_id) in img.layers.iter().zip(&config.rootfs.diff_ids) {
            match seen.get(diff_id) {
                Some(record) => layers.push((None, None, record.clone())),
                None => {
                    let l = check_layer(store, &staged, layer, diff_id)?;
                    seen.insert(*diff_id, l.2.clone());
                    layers.push(l);
                }
            }
        }
        checked.push((img, layers));
    }
    let mut out = Vec::new();
    for (img, layers) in checked {
        let mut records = Vec::new();
        for (staged_layer, blob, record) in layers {
            if let Some(s) = staged_layer {
                s.commit()?;
            }
            if let Some(b) = blob {
                store.put_blob_from_temp(b, &record.blob_digest)?;
            }
            records.push(record);
        }
        let manifest = img.manifest.as_ref().map(|(b, t)| (b.as_slice(), t.as_str()));
        let (record, _) = crate::commit::store_image_as(store, records, &img.config, manifest, img.names.clone())?;
        out.push(Loaded { record, names: img.names });
    }
    Ok(out)
}

/// One image found in the archive, not yet checked.
struct Found {
    id: Digest,
    config: Vec<u8>,
    /// Archive path of each layer, with its blob digest and media type when a manifest declares them.
    layers: Vec<(String, Option<Descriptor>)>,
    manifest: Option<(Vec<u8>, String)>,
    names: Vec<Reference>,
}

fn unpack(store: &Store, input: impl Read + Send + 'static) -> Result<Staged> {
    let mut input = BufReader::new(input);
    let head = io::BufRead::fill_buf(&mut input).ctx(|| "reading the archive".to_string())?.to_vec();
    let reader = decompress(input, LayerCompression::sniff(&head));
    let dir = store.temp_dir("load-")?;
    let mut staged = Staged { dir, files: HashMap::new(), links: HashMap::new() };
    let mut ar = tar::Archive::new(reader);
    let rerr = |e: io::Error| Error::io("reading the archive", e);
    for (n, entry) in ar.entries().map_err(rerr)?.enumerate() {
        let mut entry = entry.map_err(rerr)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = clean(&raw).ok_or_else(|| bad(format!("entry {raw:?} climbs out of the archive")))?;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {}
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let file = staged.dir.path().join(n.to_string());
                let mut out = File::create_new(&file).ctx(|| "staging the archive".to_string())?;
                io::copy(&mut entry, &mut out).map_err(rerr)?;
                staged.files.insert(path, file);
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target =
                    entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default();
                let joined = if entry.header().entry_type() == tar::EntryType::Symlink {
                    let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                    format!("{parent}/{target}")
                } else {
                    target.clone()
                };
                let resolved = clean(&joined)
                    .ok_or_else(|| bad(format!("link {raw:?} -> {target:?} points out of the archive")))?;
                staged.links.insert(path, resolved);
            }
            other => return Err(bad(format!("entry {raw:?} is a {other:?}, not a file"))),
        }
    }
    Ok(staged)
}

fn parse_names(list: &[String]) -> Vec<Reference> {
    list.iter()
        .filter_map(|n| n.parse::<Reference>().ok())
        .map(|r| {
            if r.tag.is_none() && r.digest.is_none() {
                r.with_tag(crate::reference::DEFAULT_TAG).unwrap_or(r)
            } else {
                r
            }
        })
        .collect()
}

/// Docker's `manifest.json` (with the OCI manifests beside it when the
/// archive is also an OCI layout, whose bytes are kept then).
fn docker_images(staged: &Staged) -> Result<Vec<Found>> {
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(&staged.read_small("manifest.json")?).map_err(|e| bad(format!("manifest.json: {e}")))?;
    let oci: Vec<(Vec<u8>, ImageManifest, String)> = if staged.has("index.json") {
        oci_manifests(staged)?.into_iter().map(|(b, m, t, _)| (b, m, t)).collect()
    } else {
        Vec::new()
    };
    let mut out = Vec::new();
    for e in entries {
        let config = staged.read_small(&e.config)?;
        let id = Digest::of(&config);
        let manifest = oci.iter().find(|(_, m, _)| m.config.digest == id && m.layers.len() == e.layers.len());
        let layers = match manifest {
            Some((_, m, _)) => e.layers.iter().cloned().zip(m.layers.iter().cloned().map(Some)).collect(),
            None => e.layers.iter().map(|l| (l.clone(), None)).collect(),
        };
        out.push(Found {
            id,
            config,
            layers,
            manifest: manifest.map(|(b, _, t)| (b.clone(), t.clone())),
            names: parse_names(&e.repo_tags),
        });
    }
    Ok(out)
}

/// A manifest `index.json` lists: its bytes, parsed, its media type and the names it is listed under.
type ListedManifest = (Vec<u8>, ImageManifest, String, Vec<Reference>);

/// The image manifests `index.json` lists (an index in it: this machine's
/// platform), with their bytes, media type and names.
fn oci_manifests(staged: &Staged) -> Result<Vec<ListedManifest>> {
    let index: ImageIndex =
        serde_json::from_slice(&staged.read_small("index.json")?).map_err(|e| bad(format!("index.json: {e}")))?;
    let mut out = Vec::new();
    for d in index.manifests {
        let mut bytes = blob_bytes(staged, &d)?;
        let mut media_type = d.media_type.clone();
        if matches!(d.media_type.as_str(), m::OCI_INDEX | m::DOCKER_MANIFEST_LIST) {
            let inner: ImageIndex =
                serde_json::from_slice(&bytes).map_err(|e| bad(format!("index {}: {e}", d.digest)))?;
            // Another platform's image only: left out, as a pull would pick none of it.
            let Ok(pick) = m::select_platform(&inner, &m::Platform::host()) else { continue };
            bytes = blob_bytes(staged, pick)?;
            media_type = pick.media_type.clone();
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest {}: {e}", d.digest)))?;
        let names = match (d.annotations.get(IMAGE_NAME), d.annotations.get(REF_NAME)) {
            (Some(full), _) => parse_names(std::slice::from_ref(full)),
            (None, Some(r)) => {
                parse_names(std::slice::from_ref(r)).into_iter().filter(|_| r.contains([':', '/'])).collect()
            }
            _ => Vec::new(),
        };
        out.push((bytes, manifest, media_type, names));
    }
    Ok(out)
}

fn oci_images(staged: &Staged) -> Result<Vec<Found>> {
    let mut out: Vec<Found> = Vec::new();
    for (bytes, manifest, media_type, names) in oci_manifests(staged)? {
        if let Some(same) = out.iter_mut().find(|f| f.manifest.as_ref().is_some_and(|(b, _)| *b == bytes)) {
            same.names.extend(names);
            continue;
        }
        let config = blob_bytes(staged, &manifest.config)?;
        out.push(Found {
            id: manifest.config.digest,
            config,
            layers: manifest.layers.iter().map(|l| (blob_path(&l.digest), Some(l.clone()))).collect(),
            manifest: Some((bytes, media_type)),
            names,
        });
    }
    Ok(out)
}

/// A small blob of the layout, checked against its descriptor.
fn blob_bytes(staged: &Staged, d: &Descriptor) -> Result<Vec<u8>> {
    let data = staged.read_small(&blob_path(&d.digest))?;
    let actual = Digest::of(&data);
    Error::check_digest("archive blob", d.digest, actual, "; the archive is corrupt")?;
    Ok(data)
}

type CheckedLayer<'s> = (Option<crate::ingest::StagedLayer<'s>>, Option<crate::store::TempBlob>, LayerRecord);

/// A layer of the archive as a blob of the store, its digest (when
/// declared) and its diff_id checked; staged, not yet admitted.
fn check_layer<'s>(
    store: &'s Store,
    staged: &Staged,
    (path, declared): &(String, Option<Descriptor>),
    diff_id: &Digest,
) -> Result<CheckedLayer<'s>> {
    let mut blob = store.temp_blob()?;
    io::copy(&mut staged.open(path)?, &mut blob).ctx(|| format!("reading layer {path}"))?;
    let (digest, size) = blob.digest();
    if let Some(d) = declared {
        Error::check_digest("archive layer", d.digest, digest, "; the archive is corrupt")?;
    }
    let mut head = [0u8; 4];
    let n = blob.reopen().and_then(|mut f| f.read(&mut head)).ctx(|| format!("reading layer {path}"))?;
    let compression = LayerCompression::sniff(&head[..n]);
    let media_type =
        declared.as_ref().map_or_else(|| compression.oci_media_type().to_string(), |d| d.media_type.clone());
    let reopened = blob.reopen().ctx(|| format!("reading layer {path}"))?;
    let (staged_layer, unpacked_size) = if store.has_layer(diff_id) {
        // Stored already: the stream is still checked against the diff_id.
        let mut h = HashingWriter::default();
        io::copy(&mut decompress(reopened, compression), &mut h).ctx(|| format!("reading layer {path}"))?;
        let actual = h.finish();
        Error::check_digest("archive layer", *diff_id, actual, "; the archive is corrupt")?;
        let size = store
            .layer_index(diff_id)?
            .entries
            .iter()
            .map(|e| if let crate::EntryKind::File { size, .. } = e.kind { size } else { 0 })
            .sum();
        (None, size)
    } else {
        let s = stage_layer(store, decompress(reopened, compression), Some(diff_id))?;
        let size = s.unpacked_size();
        (Some(s), size)
    };
    let record = LayerRecord {
        diff_id: *diff_id,
        blob_digest: digest,
        blob_media_type: media_type,
        blob_size: size,
        unpacked_size,
        lazy_toc: None,
    };
    let blob = (!store.has_blob(&digest)).then_some(blob);
    Ok((staged_layer, blob, record))
}
