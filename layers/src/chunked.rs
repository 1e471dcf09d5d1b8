//! Lazily pulled layers (zstd:chunked).
//!
//! A zstd:chunked layer is an ordinary `tar+zstd` blob in which every file's
//! content starts a new zstd frame, followed by a table of contents (TOC):
//! one JSON record per tar entry with its attributes, its content digest and
//! the byte range of its frames in the blob. The TOC's place and sha256 are
//! annotations of the layer's descriptor, so the manifest's digest vouches
//! for them. Podman, Buildah and skopeo write such layers
//! (`--compression-format zstd:chunked`), and any registry serves them: to a
//! client that does not know the format they are plain `tar+zstd`.
//!
//! Pulling one lazily fetches only the TOC (one Range request), checks it
//! against the annotation and turns it into a [`LayerIndex`] with the same
//! [`EntryRules`] as a tar. Such a layer is stored apart from verified
//! layers, under `lazy/TOCHEX/` (the index and a [`LazyLayer`] saying where
//! each file's frames are): its diff_id is only the config's claim until the
//! whole blob has been read, and another image's layer of the same diff_id
//! must never be served from it. A missing file is fetched by
//! [`fetch_object`] on first open: its frames by Range, decompressed, its
//! size and sha256 checked against the TOC, then stored as an ordinary
//! object. A later full pull of the image reads the whole blob, checks the
//! diff_id and makes the layer an ordinary one; [`LazyLayer`] files stay for
//! the containers created before that. A running container does that in
//! the background ([`crate::pull::complete_lazy_layers`]).

use crate::digest::{Digest, Hasher};
use crate::entry_rules::{EntryRules, Naming};
use crate::error::{Error, IoContext, Result};
use crate::index::{Entry, EntryKind, LayerIndex};
use crate::manifest::Descriptor;
use crate::reference::Reference;
use crate::registry::RegistryClient;
use crate::store::{Store, CONTENT_MODE};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};

/// The TOC's sha256 (of its compressed bytes). containers/storage has
/// written both spellings.
const CHECKSUM_KEYS: [&str; 2] =
    ["io.github.containers.zstd-chunked.manifest-checksum", "io.containers.zstd-chunked.manifest-checksum"];
/// `OFFSET:LENGTH:UNCOMPRESSED_LENGTH:TYPE` of the TOC in the blob.
const POSITION_KEYS: [&str; 2] =
    ["io.github.containers.zstd-chunked.manifest-position", "io.containers.zstd-chunked.manifest-position"];
/// The only TOC type there is: zstd-compressed JSON.
const TOC_TYPE_JSON: u64 = 1;
/// Largest TOC accepted, compressed and not (a layer of a million files
/// has a TOC of about 300 MiB; real images are far below).
const MAX_TOC: u64 = 512 << 20;
/// Bytes asked for per Range request when fetching a file's frames.
const RANGE_PIECE: u64 = 8 << 20;

/// Where a zstd:chunked layer's TOC is, from its descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocLocation {
    pub offset: u64,
    pub length: u64,
    pub uncompressed_length: u64,
    /// sha256 of the `length` bytes at `offset`.
    pub digest: Digest,
}

impl TocLocation {
    /// The TOC named by `desc`'s annotations; None for a layer that is not
    /// zstd:chunked. Malformed annotations are an error: the image claims
    /// a TOC it does not describe.
    pub fn of(desc: &Descriptor) -> Result<Option<TocLocation>> {
        let get = |keys: [&str; 2]| keys.iter().find_map(|k| desc.annotations.get(*k));
        let (Some(checksum), Some(position)) = (get(CHECKSUM_KEYS), get(POSITION_KEYS)) else {
            return Ok(None);
        };
        let bad = |what: String| {
            Error::InvalidImage(format!("layer {}: {what}; pull it without --lazy to read it whole", desc.digest))
        };
        let digest: Digest =
            checksum.parse().map_err(|_| bad(format!("the TOC checksum annotation {checksum:?} is not a digest")))?;
        let fields: Vec<u64> =
            position.split(':').map(|f| f.parse::<u64>()).collect::<Result<_, _>>().map_err(|_| {
                bad(format!("the TOC position annotation {position:?} is not OFFSET:LENGTH:UNCOMPRESSED:TYPE"))
            })?;
        let [offset, length, uncompressed_length, kind] = fields[..] else {
            return Err(bad(format!(
                "the TOC position annotation {position:?} is not OFFSET:LENGTH:UNCOMPRESSED:TYPE"
            )));
        };
        if kind != TOC_TYPE_JSON {
            return Err(bad(format!("the TOC has type {kind}, of which strata knows only {TOC_TYPE_JSON} (JSON)")));
        }
        if length == 0 || length > MAX_TOC || uncompressed_length > MAX_TOC {
            return Err(bad(format!("the TOC is {length} bytes ({uncompressed_length} uncompressed), over the limit")));
        }
        if offset.checked_add(length).is_none_or(|end| end > desc.size) {
            return Err(bad(format!("the TOC ({offset}+{length}) lies beyond the blob's {} bytes", desc.size)));
        }
        Ok(Some(TocLocation { offset, length, uncompressed_length, digest }))
    }
}

/// The frames of one file's content in the blob: `offset..end`, which
/// decompress to `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub end: u64,
    pub size: u64,
    /// The file's chunks, when its writer cut it into several (each its own
    /// frames with its own digest): what lets a large file be read before
    /// all of it is here ([`PartialFile`]). Empty: one piece.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<Chunk>,
}

/// One chunk of a file: `size` bytes at `at` in the file, from the frames
/// at `offset..end` in the blob, whose sha256 is `digest`. A `zeros` chunk
/// is a run of zero bytes (its frames need not be fetched).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub at: u64,
    pub size: u64,
    pub offset: u64,
    pub end: u64,
    pub digest: Digest,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zeros: bool,
}

/// What a lazily pulled layer needs besides its index: where its blob is
/// and where each file's content is in it (`lazy/TOCHEX/source.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LazyLayer {
    pub toc: Digest,
    /// The image config's diff_id for the layer: only a claim until
    /// [`crate::pull::complete_lazy_layers`] has read the whole blob.
    pub diff_id: Digest,
    pub blob_digest: Digest,
    pub blob_media_type: String,
    pub blob_size: u64,
    /// The repository the blob is fetched from (`registry/name`, no tag).
    pub repository: String,
    /// Object digest -> its frames (one per distinct content).
    pub extents: BTreeMap<Digest, Extent>,
}

impl LazyLayer {
    /// True when `digest` is content of this layer that [`fetch_object`]
    /// can bring: a file's frames, or the empty file (which has none).
    pub fn covers(&self, digest: &Digest) -> bool {
        self.extents.contains_key(digest) || *digest == Digest::of(b"")
    }

    /// The repository as a reference, for the registry client.
    pub fn source(&self) -> Result<Reference> {
        Reference::parse_bare(&self.repository)
            .map_err(|e| Error::InvalidImage(format!("lazy layer {}: bad repository: {e}", self.toc)))
    }
}

/// One record of the TOC (only the fields strata uses).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TocEntry {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    #[serde(default)]
    link_name: String,
    #[serde(default)]
    mode: u32,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
    #[serde(default)]
    modtime: Option<String>,
    #[serde(default)]
    dev_major: u32,
    #[serde(default)]
    dev_minor: u32,
    #[serde(default)]
    xattrs: BTreeMap<String, String>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    end_offset: u64,
    #[serde(default)]
    chunk_size: u64,
    #[serde(default)]
    chunk_offset: u64,
    #[serde(default)]
    chunk_digest: Option<String>,
    #[serde(default)]
    chunk_type: String,
}

#[derive(Deserialize)]
struct Toc {
    version: u32,
    entries: Vec<TocEntry>,
}

/// Checks the compressed TOC against `loc` and turns it into the layer's
/// index and file extents. `blob_size` bounds every extent.
pub fn parse_toc(
    compressed: &[u8],
    loc: &TocLocation,
    blob_size: u64,
) -> Result<(LayerIndex, BTreeMap<Digest, Extent>)> {
    let actual = Digest::of(compressed);
    Error::check_digest(
        "table of contents",
        loc.digest,
        actual,
        "; the layer's table of contents is not the one its manifest names",
    )?;
    let mut json = Vec::new();
    zstd::stream::read::Decoder::new(compressed)
        .and_then(|d| d.take(loc.uncompressed_length + 1).read_to_end(&mut json))
        .map_err(|e| Error::InvalidImage(format!("the table of contents {} does not decompress: {e}", loc.digest)))?;
    if json.len() as u64 != loc.uncompressed_length {
        return Err(Error::InvalidImage(format!(
            "the table of contents {} is {} bytes uncompressed, not the {} its annotation says",
            loc.digest,
            json.len(),
            loc.uncompressed_length
        )));
    }
    let toc: Toc = serde_json::from_slice(&json)
        .map_err(|e| Error::InvalidImage(format!("the table of contents {} is not valid: {e}", loc.digest)))?;
    if toc.version != 1 {
        return Err(Error::InvalidImage(format!(
            "the table of contents {} has version {}, of which strata knows only 1",
            loc.digest, toc.version
        )));
    }
    toc_to_index(toc.entries, loc.offset.min(blob_size))
}

fn toc_to_index(entries: Vec<TocEntry>, content_end: u64) -> Result<(LayerIndex, BTreeMap<Digest, Extent>)> {
    let mut rules = EntryRules::default();
    let mut extents = BTreeMap::new();
    // The chunks of the latest file whose extent this TOC set first.
    let mut chunking: Option<(Digest, Vec<Chunk>)> = None;
    for e in entries {
        if e.kind == "chunk" {
            if let Some((_, chunks)) = &mut chunking {
                chunks.push(Chunk::of(&e, e.chunk_offset));
            }
            continue;
        }
        if let Some((digest, chunks)) = chunking.take() {
            attach_chunks(&mut extents, digest, chunks);
        }
        let raw = e.name.as_bytes();
        let bad = |what: String| Error::BadTar(format!("TOC entry {:?}: {what}", e.name));
        let (path, kind) = match rules.name(raw)? {
            Naming::Skip => continue,
            Naming::Marker(path, kind) => (path, kind),
            Naming::Plain(path) => {
                let kind = match e.kind.as_str() {
                    "reg" => {
                        let digest = match (&e.digest, e.size) {
                            (Some(d), _) => d.parse::<Digest>().map_err(|_| bad(format!("bad digest {d:?}")))?,
                            (None, 0) => Digest::of(b""),
                            (None, _) => return Err(bad("a non-empty file without a digest".into())),
                        };
                        if e.size > 0 {
                            if e.offset >= e.end_offset || e.end_offset > content_end {
                                return Err(bad(format!(
                                    "content at {}..{} is not inside the layer's data (0..{content_end})",
                                    e.offset, e.end_offset
                                )));
                            }
                            if let std::collections::btree_map::Entry::Vacant(v) = extents.entry(digest) {
                                v.insert(Extent {
                                    offset: e.offset,
                                    end: e.end_offset,
                                    size: e.size,
                                    chunks: Vec::new(),
                                });
                                if e.chunk_digest.is_some() {
                                    chunking = Some((digest, vec![Chunk::of(&e, 0)]));
                                }
                            }
                        }
                        EntryKind::File { size: e.size, digest }
                    }
                    "dir" => EntryKind::Dir,
                    "symlink" => EntryRules::symlink(raw, e.link_name.as_bytes().to_vec())?,
                    "hardlink" => rules.hardlink(raw, e.link_name.as_bytes())?,
                    "char" => EntryKind::CharDevice { major: e.dev_major, minor: e.dev_minor },
                    "block" => EntryKind::BlockDevice { major: e.dev_major, minor: e.dev_minor },
                    "fifo" => EntryKind::Fifo,
                    other => return Err(bad(format!("unsupported type {other:?}"))),
                };
                (path, kind)
            }
        };
        let (mtime, mtime_nsec) = match &e.modtime {
            Some(t) => parse_time(t).ok_or_else(|| bad(format!("bad modtime {t:?}")))?,
            None => (0, 0),
        };
        let mut xattrs = Vec::with_capacity(e.xattrs.len());
        for (name, value) in &e.xattrs {
            use base64::Engine as _;
            let value = base64::engine::general_purpose::STANDARD
                .decode(value)
                .map_err(|_| bad(format!("xattr {name:?} is not base64")))?;
            xattrs.push((name.as_bytes().to_vec(), value));
        }
        let entry = Entry { path, kind, mode: e.mode & 0o7777, uid: e.uid, gid: e.gid, mtime, mtime_nsec, xattrs };
        rules.push(raw, entry)?;
    }
    if let Some((digest, chunks)) = chunking.take() {
        attach_chunks(&mut extents, digest, chunks);
    }
    Ok((LayerIndex::new(rules.entries), extents))
}

impl Chunk {
    /// A chunk as its TOC record has it; `end` is set by [`attach_chunks`].
    fn of(e: &TocEntry, at: u64) -> Chunk {
        Chunk {
            at,
            size: e.chunk_size,
            offset: e.offset,
            end: 0,
            // Unparsable: a digest nothing matches, so the chunk never reads.
            digest: e.chunk_digest.as_deref().and_then(|d| d.parse().ok()).unwrap_or(Digest::of(b"unparsable")),
            zeros: e.chunk_type == "zeros",
        }
    }
}

/// Gives `digest`'s extent its chunks when they describe it exactly: in
/// order, covering the file's bytes without gap or overlap, their frames
/// inside the file's. A chunk table that does not (no writer makes one)
/// is dropped: the file is then fetched whole and checked by its own
/// digest, which the chunk digests never replace.
fn attach_chunks(extents: &mut BTreeMap<Digest, Extent>, digest: Digest, mut chunks: Vec<Chunk>) {
    let Some(extent) = extents.get_mut(&digest) else { return };
    if chunks.len() < 2 {
        return;
    }
    for i in 0..chunks.len() {
        chunks[i].end = chunks.get(i + 1).map_or(extent.end, |next| next.offset);
    }
    let mut at = 0u64;
    let mut offset = extent.offset;
    for c in &chunks {
        let fits = c.at == at
            && c.size > 0
            && c.offset >= offset
            && c.offset <= c.end
            && c.end <= extent.end
            && (c.zeros || c.offset < c.end);
        if !fits {
            return;
        }
        at += c.size;
        offset = c.offset;
    }
    if at == extent.size && chunks[0].offset == extent.offset {
        extent.chunks = chunks;
    }
}

/// RFC 3339 (Go's `time.Time` in JSON) to seconds and nanoseconds.
fn parse_time(t: &str) -> Option<(i64, u32)> {
    let t = chrono::DateTime::parse_from_rfc3339(t).ok()?;
    Some((t.timestamp(), t.timestamp_subsec_nanos()))
}

/// Fetches a lazy layer's TOC from the registry and reads it.
pub fn fetch_toc(
    client: &RegistryClient,
    source: &Reference,
    desc: &Descriptor,
    loc: &TocLocation,
) -> Result<(LayerIndex, BTreeMap<Digest, Extent>)> {
    let bytes = client.get_blob_range(source, &desc.digest, loc.offset, loc.length)?;
    if bytes.len() as u64 != loc.length {
        return Err(Error::InvalidImage(format!(
            "layer {}: the registry returned {} of the table of contents' {} bytes",
            desc.digest,
            bytes.len(),
            loc.length
        )));
    }
    parse_toc(&bytes, loc, desc.size)
}

/// A layer as a mount needs it: the index, and for a lazy layer where to
/// fetch what is missing.
pub struct OpenedLayer {
    pub index: LayerIndex,
    pub lazy: Option<LazyLayer>,
}

impl Store {
    /// The layer a container or mount recorded by its
    /// [`crate::image::LayerRecord::mount_key`]: a diff_id, or
    /// `lazy:sha256:TOC` for a lazily pulled one.
    pub fn open_layer(&self, key: &str) -> Result<OpenedLayer> {
        let bad = || Error::InvalidImage(format!("{key:?} names no layer"));
        match key.strip_prefix(crate::image::LAZY_KEY_PREFIX) {
            Some(toc) => {
                let toc: Digest = toc.parse().map_err(|_| bad())?;
                let (index, layer) = self.lazy_layer(&toc)?.ok_or_else(|| {
                    Error::InvalidImage(format!(
                        "the lazily pulled layer {toc} is gone from the store; pull the image again"
                    ))
                })?;
                Ok(OpenedLayer { index, lazy: Some(layer) })
            }
            None => {
                let diff_id: Digest = key.parse().map_err(|_| bad())?;
                Ok(OpenedLayer { index: self.layer_index(&diff_id)?, lazy: None })
            }
        }
    }

    /// A lazily pulled layer's index and source, if stored.
    pub fn lazy_layer(&self, toc: &Digest) -> Result<Option<(LayerIndex, LazyLayer)>> {
        let dir = self.layout().lazy_layer_dir(toc);
        let source = dir.join("source.json");
        let bytes = match std::fs::read(&source) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading {}", source.display()), e)),
        };
        let layer: LazyLayer = serde_json::from_slice(&bytes)
            .map_err(|e| Error::InvalidImage(format!("{} is damaged: {e}", source.display())))?;
        let index = LayerIndex::read_from_file(&dir.join("index"))
            .map_err(|e| Error::InvalidImage(format!("lazy layer {toc}: {e}")))?;
        Ok(Some((index, layer)))
    }

    /// Stores a lazily pulled layer: the index first, then the source
    /// (whose presence says the layer is complete).
    pub fn put_lazy_layer(&self, index: &LayerIndex, layer: &LazyLayer) -> Result<()> {
        let dir = self.layout().lazy_layer_dir(&layer.toc);
        self.ensure_dir(&self.layout().lazy_dir())?;
        self.ensure_dir(&dir)?;
        self.write_atomic(&dir.join("index"), &index.to_bytes(), CONTENT_MODE)?;
        let json = serde_json::to_vec(layer).map_err(|e| Error::io("encoding a lazy layer", e.into()))?;
        self.write_atomic(&dir.join("source.json"), &json, CONTENT_MODE)
    }
}

/// Fetches the content `digest` of a lazy layer into the store's objects:
/// its frames by Range requests, decompressed, checked against the size and
/// digest of the TOC. Nothing is stored unless it matches.
pub fn fetch_object(store: &Store, client: &RegistryClient, layer: &LazyLayer, digest: &Digest) -> Result<()> {
    if store.has_object(digest) {
        return Ok(());
    }
    if *digest == Digest::of(b"") {
        return store.put_object_from_temp(store.temp_file(".object-")?, digest);
    }
    let extent = layer.extents.get(digest).ok_or_else(|| {
        Error::InvalidImage(format!("lazy layer {}: no content {digest} in its table of contents", layer.toc))
    })?;
    let source = layer.source()?;
    let frames = RangeReader {
        client,
        source: &source,
        blob: &layer.blob_digest,
        pos: extent.offset,
        end: extent.end,
        buf: Vec::new(),
        at: 0,
    };
    let mut tmp = store.temp_file(".object-")?;
    let mut hasher = Hasher::new();
    let what = || format!("fetching {digest} of lazy layer {}", layer.toc);
    let mut decoder = zstd::stream::read::Decoder::new(frames).ctx(what)?;
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0u64;
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(unwrap_registry_error(e, what)),
        };
        got += n as u64;
        if got > extent.size {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n]).ctx(what)?;
    }
    let actual = hasher.finish();
    if got != extent.size || actual != *digest {
        return Err(Error::DigestMismatch {
            what: "lazily fetched file",
            expected: *digest,
            actual,
            hint: "; the layer's data does not match its table of contents",
        });
    }
    store.put_object_from_temp(tmp, digest)
}

/// The registry's error inside an `io::Error` from [`RangeReader`], or the
/// I/O error itself.
fn unwrap_registry_error(e: io::Error, what: impl Fn() -> String) -> Error {
    match e.into_inner() {
        Some(inner) => match inner.downcast::<crate::registry::RegistryError>() {
            Ok(r) => Error::Registry(*r),
            Err(other) => Error::io(what(), io::Error::other(other)),
        },
        None => Error::io(what(), io::Error::other("read failed")),
    }
}

/// Reads `pos..end` of a blob in pieces of [`RANGE_PIECE`] bytes, so that a
/// large file is neither held whole in memory nor fetched with one request
/// a slow link could not finish.
struct RangeReader<'a> {
    client: &'a RegistryClient,
    source: &'a Reference,
    blob: &'a Digest,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    at: usize,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at == self.buf.len() {
            if self.pos >= self.end {
                return Ok(0);
            }
            let len = (self.end - self.pos).min(RANGE_PIECE);
            self.buf = self.client.get_blob_range(self.source, self.blob, self.pos, len).map_err(io::Error::other)?;
            if self.buf.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the blob ended before the file's data"));
            }
            self.pos += self.buf.len() as u64;
            self.at = 0;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

mod partial;
pub use partial::{PartialFile, PARTIAL_MIN_SIZE};
mod write;
pub use write::{write_chunked, WrittenLayer};

#[cfg(test)]
mod tests;
