//! Writing zstd:chunked layers, for `push --compression-format zstd:chunked`.
//!
//! The layer's tar stream is kept byte for byte, so its diff_id (and with
//! it the image config and id) stays what it was; only how the bytes are
//! cut into zstd frames changes. Each regular file's content starts a new
//! frame and is cut further at content-defined boundaries (FastCDC,
//! 16-256 KiB, about 64 KiB on average: containers/storage's rolling sum
//! averages 64 KiB too), one frame per chunk; tar headers, padding and the
//! end-of-archive blocks go into the frames between them. A chunk of zero
//! bytes only is marked `zeros`. Then come the table of contents, a
//! skippable frame of zstd-compressed JSON in the form [`super::parse_toc`]
//! and containers/storage read, and a 64-byte footer frame saying where the
//! TOC is. To a reader that knows nothing of this it is an ordinary
//! `tar+zstd` blob (skippable frames are skipped by every zstd decoder).
//!
//! Not written: the tar-split data newer containers/storage writers add
//! after the TOC. Their readers then take the layer whole, which is what
//! any reader can do.

use super::{CHECKSUM_KEYS, POSITION_KEYS, TOC_TYPE_JSON};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::ingest::read_pax;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::rc::Rc;

/// Chunk sizes given to FastCDC.
const CHUNK_MIN: usize = 16 << 10;
const CHUNK_AVG: usize = 64 << 10;
const CHUNK_MAX: usize = 256 << 10;
/// Header bytes gathered before they are written out as a frame of their
/// own (a layer of only directories would otherwise be one huge frame).
const HEADER_FRAME_MAX: usize = 1 << 20;
const SKIPPABLE_FRAME_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
/// The footer's last 8 bytes.
const FOOTER_MAGIC: &[u8; 8] = b"GNUlInUx";
const FOOTER_SIZE: usize = 64;

/// What a written zstd:chunked layer is.
#[derive(Debug, Clone)]
pub struct WrittenLayer {
    /// sha256 of the tar stream that was read (the layer's diff_id when it
    /// was read whole and unchanged).
    pub diff_id: Digest,
    /// The layer descriptor's annotations: the TOC's checksum and position.
    pub annotations: BTreeMap<String, String>,
}

/// Reads the tar stream `tar` to its end and writes it to `out` as a
/// zstd:chunked blob, compressed at `level`.
pub fn write_chunked(tar: impl Read, out: impl Write, level: i32) -> Result<WrittenLayer> {
    let recorded = Rc::new(RefCell::new(Recorded { bytes: Vec::new(), on: true }));
    let mut frames = Frames::new(out, level)?;
    let mut toc = Vec::new();
    let mut archive = tar::Archive::new(Recorder { inner: tar, hasher: Hasher::new(), recorded: Rc::clone(&recorded) });
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let Some(mut record) = toc_record(&mut entry)? else { continue };
        let size = entry.size();
        if record.kind == "reg" && size > 0 {
            let headers = std::mem::take(&mut recorded.borrow_mut().bytes);
            frames.frames(&headers)?;
            // The content goes into frames of its own, not through the record.
            recorded.borrow_mut().on = false;
            let content = write_content(&mut frames, &mut entry, size, &record.name);
            recorded.borrow_mut().on = true;
            content?.fill(&mut record, &mut toc);
        } else {
            toc.push(record);
        }
        if recorded.borrow().bytes.len() >= HEADER_FRAME_MAX {
            let headers = std::mem::take(&mut recorded.borrow_mut().bytes);
            frames.frames(&headers)?;
        }
    }
    // The end-of-archive blocks and any record padding after them.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(read_err)?;
    let tail = std::mem::take(&mut recorded.borrow_mut().bytes);
    frames.frames(&tail)?;
    let diff_id = rest.hasher.finish();

    let json = serde_json::to_vec(&Toc { version: 1, entries: toc })
        .map_err(|e| Error::InvalidImage(format!("writing the table of contents: {e}")))?;
    let compressed = frames.compress(&json)?;
    // Past the skippable frame's 8-byte header.
    let toc_offset = frames.written + 8;
    frames.skippable(&compressed)?;
    let mut footer = [0u8; FOOTER_SIZE];
    footer[0..8].copy_from_slice(&toc_offset.to_le_bytes());
    footer[8..16].copy_from_slice(&(compressed.len() as u64).to_le_bytes());
    footer[16..24].copy_from_slice(&(json.len() as u64).to_le_bytes());
    footer[24..32].copy_from_slice(&TOC_TYPE_JSON.to_le_bytes());
    // (24 bytes for tar-split data, which is not written, stay zero.)
    footer[56..64].copy_from_slice(FOOTER_MAGIC);
    frames.skippable(&footer)?;
    frames.out.flush().map_err(write_err)?;

    let annotations = BTreeMap::from([
        (CHECKSUM_KEYS[0].to_string(), Digest::of(&compressed).to_string()),
        (POSITION_KEYS[0].to_string(), format!("{toc_offset}:{}:{}:{TOC_TYPE_JSON}", compressed.len(), json.len())),
    ]);
    Ok(WrittenLayer { diff_id, annotations })
}

/// The TOC record of a tar entry, without content fields; None for what
/// the TOC does not list (global PAX headers).
fn toc_record<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Option<TocRecord>> {
    use tar::EntryType as T;
    let etype = entry.header().entry_type();
    let raw_path = entry.path_bytes().into_owned();
    let kind = match etype {
        T::Regular | T::Continuous => "reg",
        T::Link => "hardlink",
        T::Symlink => "symlink",
        T::Directory => "dir",
        T::Char => "char",
        T::Block => "block",
        T::Fifo => "fifo",
        t if t.is_pax_global_extensions() => return Ok(None),
        // A GNU sparse file's stored bytes are not its content: the TOC
        // could not point at them.
        other => {
            return Err(Error::BadTar(format!(
                "entry {:?} has type {other:?}, which a zstd:chunked layer cannot hold; push the image without \
                 --compression-format zstd:chunked",
                String::from_utf8_lossy(&raw_path)
            )))
        }
    };
    let utf8 = |bytes: Vec<u8>, what: &str| {
        String::from_utf8(bytes).map_err(|e| {
            Error::BadTar(format!(
                "entry {:?} has a {what} that is not UTF-8, which a zstd:chunked table of contents (JSON) cannot \
                 hold; push the image without --compression-format zstd:chunked",
                String::from_utf8_lossy(e.as_bytes())
            ))
        })
    };
    let link_name = match etype {
        T::Link | T::Symlink => {
            utf8(entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default(), "link target")?
        }
        _ => String::new(),
    };
    let pax = read_pax(entry, &raw_path)?;
    let header = entry.header();
    let bad = |what: &str| Error::BadTar(format!("entry {:?}: bad {what}", String::from_utf8_lossy(&raw_path)));
    // An empty numeric field reads as 0, as in ingest and Go's archive/tar.
    let (mtime, nanos) = match pax.mtime {
        Some(t) => t,
        None => (header.mtime().map(|t| i64::try_from(t).unwrap_or(i64::MAX)).unwrap_or(0), 0),
    };
    let modtime = chrono::DateTime::from_timestamp(mtime, nanos)
        .ok_or_else(|| bad("mtime"))?
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    let dev = |pax: Option<u32>, field: io::Result<Option<u32>>| pax.unwrap_or(field.ok().flatten().unwrap_or(0));
    let (dev_major, dev_minor) = match etype {
        T::Char | T::Block => (dev(pax.devmajor, header.device_major()), dev(pax.devminor, header.device_minor())),
        _ => (0, 0),
    };
    let mut xattrs = BTreeMap::new();
    for (name, value) in pax.xattrs {
        use base64::Engine as _;
        xattrs.insert(utf8(name, "xattr name")?, base64::engine::general_purpose::STANDARD.encode(value));
    }
    Ok(Some(TocRecord {
        kind,
        name: utf8(raw_path.clone(), "name")?,
        link_name,
        mode: header.mode().unwrap_or(0) & 0o7777,
        size: if kind == "reg" { entry.size() } else { 0 },
        uid: header.uid().unwrap_or(0),
        gid: header.gid().unwrap_or(0),
        modtime: Some(modtime),
        dev_major,
        dev_minor,
        xattrs,
        ..TocRecord::default()
    }))
}

/// A file's content as written: where its frames are, its digest, its chunks.
struct Content {
    digest: Digest,
    offset: u64,
    end: u64,
    chunks: Vec<TocRecord>,
}

impl Content {
    /// Completes the file's `record` and appends it, and its chunk records
    /// when there is more than one chunk, to `toc`.
    fn fill(self, record: &mut TocRecord, toc: &mut Vec<TocRecord>) {
        record.digest = Some(self.digest.to_string());
        record.offset = self.offset;
        record.end_offset = self.end;
        let mut chunks = self.chunks.into_iter();
        match (chunks.next(), chunks.len()) {
            (Some(first), 1..) => {
                record.chunk_size = first.chunk_size;
                record.chunk_digest = first.chunk_digest;
                record.chunk_type = first.chunk_type;
                toc.push(std::mem::take(record));
                toc.extend(chunks);
            }
            _ => toc.push(std::mem::take(record)),
        }
    }
}

/// Writes `size` bytes of `entry`'s content as frames, one per chunk.
fn write_content<W: Write, R: Read>(frames: &mut Frames<W>, entry: R, size: u64, name: &str) -> Result<Content> {
    let offset = frames.written;
    let mut whole = Hasher::new();
    let mut chunks = Vec::new();
    let mut got = 0u64;
    for chunk in fastcdc::v2020::StreamCDC::new(entry, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) {
        let chunk = chunk.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => read_err(e),
            other => read_err(io::Error::other(other.to_string())),
        })?;
        whole.update(&chunk.data);
        let at = frames.written;
        frames.frame(&chunk.data)?;
        got += chunk.length as u64;
        chunks.push(TocRecord {
            kind: "chunk",
            name: name.to_string(),
            offset: at,
            chunk_offset: chunk.offset,
            chunk_size: chunk.length as u64,
            chunk_digest: Some(Digest::of(&chunk.data).to_string()),
            chunk_type: if chunk.data.iter().all(|&b| b == 0) { "zeros" } else { "" },
            ..TocRecord::default()
        });
    }
    if got != size {
        return Err(read_err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("unexpected EOF in {name:?} after {got} of {size} bytes"),
        )));
    }
    Ok(Content { digest: whole.finish(), offset, end: frames.written, chunks })
}

/// The TOC as written (the fields [`super::TocEntry`] reads, with Go's
/// `omitempty`).
#[derive(Serialize)]
struct Toc {
    version: u32,
    entries: Vec<TocRecord>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct TocRecord {
    #[serde(rename = "type")]
    kind: &'static str,
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    link_name: String,
    #[serde(skip_serializing_if = "is_zero")]
    mode: u32,
    #[serde(skip_serializing_if = "is_zero")]
    size: u64,
    #[serde(skip_serializing_if = "is_zero")]
    uid: u64,
    #[serde(skip_serializing_if = "is_zero")]
    gid: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    modtime: Option<String>,
    #[serde(skip_serializing_if = "is_zero")]
    dev_major: u32,
    #[serde(skip_serializing_if = "is_zero")]
    dev_minor: u32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    xattrs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
    #[serde(skip_serializing_if = "is_zero")]
    end_offset: u64,
    #[serde(skip_serializing_if = "is_zero")]
    chunk_size: u64,
    #[serde(skip_serializing_if = "is_zero")]
    chunk_offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    chunk_digest: Option<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    chunk_type: &'static str,
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The output blob: zstd frames and skippable frames, counted.
struct Frames<W> {
    out: W,
    written: u64,
    compressor: zstd::bulk::Compressor<'static>,
}

impl<W: Write> Frames<W> {
    fn new(out: W, level: i32) -> Result<Self> {
        let compressor = zstd::bulk::Compressor::new(level).map_err(write_err)?;
        Ok(Frames { out, written: 0, compressor })
    }

    fn compress(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        self.compressor.compress(data).map_err(write_err)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(write_err)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// `data` as one zstd frame.
    fn frame(&mut self, data: &[u8]) -> Result<()> {
        let compressed = self.compress(data)?;
        self.write(&compressed)
    }

    /// `data` as frames of at most [`HEADER_FRAME_MAX`] bytes; nothing for none.
    fn frames(&mut self, data: &[u8]) -> Result<()> {
        data.chunks(HEADER_FRAME_MAX).try_for_each(|piece| self.frame(piece))
    }

    fn skippable(&mut self, data: &[u8]) -> Result<()> {
        let len = u32::try_from(data.len())
            .map_err(|_| Error::InvalidImage("the table of contents is over 4 GiB".to_string()))?;
        self.write(&SKIPPABLE_FRAME_MAGIC)?;
        self.write(&len.to_le_bytes())?;
        self.write(data)
    }
}

/// What the tar reader has read and not yet been written: the bytes of
/// headers and padding (`on`), not those of file content (read as chunks).
struct Recorded {
    bytes: Vec<u8>,
    on: bool,
}

/// The tar stream as the `tar` crate reads it, hashed and recorded. The
/// crate reads exactly what it parses (no read-ahead), so what is recorded
/// between two entries is exactly the stream's bytes between them.
struct Recorder<R> {
    inner: R,
    hasher: Hasher,
    recorded: Rc<RefCell<Recorded>>,
}

impl<R: Read> Read for Recorder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        let mut recorded = self.recorded.borrow_mut();
        if recorded.on {
            recorded.bytes.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

fn read_err(e: io::Error) -> Error {
    Error::io("reading the layer to write it as zstd:chunked", e)
}

fn write_err(e: io::Error) -> Error {
    Error::io("writing a zstd:chunked layer", e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunked::{parse_toc, TocLocation};
    use crate::index::EntryKind;
    use crate::manifest::{Descriptor, OCI_LAYER_ZSTD};

    fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        dir.set_mtime(1_700_000_000);
        b.append_data(&mut dir, "d/", io::empty()).unwrap();
        // An xattr and a sub-second mtime, in a PAX header for the first file.
        b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v\x00w"[..]), ("mtime", &b"1700000001.25"[..])]).unwrap();
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o640);
            h.set_uid(1234);
            h.set_gid(99);
            h.set_mtime(1_700_000_001);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        b.append_link(&mut l, "d/link", "../elsewhere").unwrap();
        b.into_inner().unwrap()
    }

    /// Pseudo-random bytes (xorshift), incompressible enough to chunk.
    fn noise(n: usize, mut seed: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    fn written(tar: &[u8]) -> (Vec<u8>, WrittenLayer) {
        let mut blob = Vec::new();
        let w = write_chunked(tar, &mut blob, 3).unwrap();
        (blob, w)
    }

    #[test]
    fn the_tar_stream_is_kept_byte_for_byte() {
        let big = noise(3 << 20, 7);
        let tar = tar_of(&[("d/a", b"hello".to_vec()), ("d/empty", Vec::new()), ("d/big", big)]);
        let (blob, w) = written(&tar);
        assert_eq!(w.diff_id, Digest::of(&tar));
        let mut back = Vec::new();
        zstd::stream::read::Decoder::new(&blob[..]).unwrap().read_to_end(&mut back).unwrap();
        assert!(back == tar, "decompressed blob differs from the tar");
    }

    #[test]
    fn the_table_of_contents_reads_back_with_chunks() {
        let big = noise(3 << 20, 11);
        let mut holes = noise(200 << 10, 3);
        holes.extend(vec![0u8; 1 << 20]);
        let tar = tar_of(&[("d/a", b"hello".to_vec()), ("d/big", big.clone()), ("d/holes", holes.clone())]);
        let (blob, w) = written(&tar);
        let mut desc = Descriptor::new(OCI_LAYER_ZSTD, Digest::of(&blob), blob.len() as u64);
        desc.annotations = w.annotations.clone();
        let loc = TocLocation::of(&desc).unwrap().expect("annotations name the TOC");
        let toc = &blob[loc.offset as usize..(loc.offset + loc.length) as usize];
        let (index, extents) = parse_toc(toc, &loc, blob.len() as u64).unwrap();
        let find = |p: &str| index.entries.iter().find(|e| e.path == p.as_bytes()).unwrap_or_else(|| panic!("{p}"));
        assert_eq!(
            (find("d/a").uid, find("d/a").gid, find("d/a").mode, find("d/a").mtime),
            (1234, 99, 0o640, 1_700_000_001)
        );
        assert_eq!(find("d/a").mtime_nsec, 250_000_000);
        assert_eq!(find("d/a").xattrs, vec![(b"user.k".to_vec(), b"v\x00w".to_vec())]);
        assert!(matches!(find("d/link").kind, EntryKind::Symlink { .. }));
        for (path, data) in [("d/a", b"hello".to_vec()), ("d/big", big), ("d/holes", holes)] {
            let EntryKind::File { digest, size } = find(path).kind else { panic!("{path} is no file") };
            assert_eq!((digest, size), (Digest::of(&data), data.len() as u64));
            let extent = &extents[&digest];
            // The file's frames alone decompress to its content ...
            let mut content = Vec::new();
            zstd::stream::read::Decoder::new(&blob[extent.offset as usize..extent.end as usize])
                .unwrap()
                .read_to_end(&mut content)
                .unwrap();
            assert!(content == data, "{path}: frames hold other bytes");
            // ... and so does each chunk's.
            for c in &extent.chunks {
                let mut piece = Vec::new();
                zstd::stream::read::Decoder::new(&blob[c.offset as usize..c.end as usize])
                    .unwrap()
                    .read_to_end(&mut piece)
                    .unwrap();
                assert_eq!(Digest::of(&piece), c.digest, "{path}: chunk at {}", c.at);
                assert_eq!(&piece[..], &data[c.at as usize..(c.at + c.size) as usize]);
                assert_eq!(c.zeros, piece.iter().all(|&b| b == 0));
            }
        }
        let EntryKind::File { digest, .. } = find("d/big").kind else { unreachable!() };
        assert!(extents[&digest].chunks.len() > 10, "a 3 MiB file is cut into chunks");
        let EntryKind::File { digest, .. } = find("d/holes").kind else { unreachable!() };
        assert!(extents[&digest].chunks.iter().any(|c| c.zeros), "runs of zeros are marked");
    }

    #[test]
    fn a_truncated_stream_is_an_error() {
        let tar = tar_of(&[("d/big", noise(1 << 20, 5))]);
        let cut = &tar[..600 << 10];
        assert!(write_chunked(cut, &mut Vec::new(), 3).is_err());
    }

    #[test]
    fn names_that_json_cannot_hold_are_refused() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.as_gnu_mut().unwrap().name[..3].copy_from_slice(b"a\xffb");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let e = write_chunked(&tar[..], &mut Vec::new(), 3).unwrap_err().to_string();
        assert!(e.contains("not UTF-8") && e.contains("without --compression-format"), "{e}");
    }
}
