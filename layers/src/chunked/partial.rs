//! Reading a lazily pulled file before all of it is here.
//!
//! zstd:chunked writers cut a large file into chunks (content-defined,
//! about 64 KiB each), each compressed as frames of its own and listed in
//! the TOC with its own sha256. So a read of a few bytes of a large file
//! needs only the chunks under it. A [`PartialFile`] is a sparse file of
//! the file's full size, `lazy/TOC/parts/DIGEST`, into which
//! [`PartialFile::fill`] writes the chunks a read needs (fetched by Range,
//! decompressed, checked against their digests) before the read is
//! answered from it. A range is read only after `fill` returned Ok for it,
//! so what is not there yet is never served.
//!
//! The parts file outlives the process: the next container or mount of the
//! image starts from what the last one fetched. Nothing records which
//! chunks it holds: a process takes a chunk as there once it has checked
//! the bytes at its place against the chunk's digest (a hole is skipped
//! unread), so a crash in the middle of a write, or two processes
//! fetching the same chunk, cannot make it serve wrong bytes. Chunks are
//! checked in memory before they are written, so the file never holds
//! bytes that did not match. Once every chunk is there, the whole is
//! checked against the file's digest and copied into the store as an
//! ordinary object (a copy: another process may still write into the parts
//! file, the same bytes, but an object is never written after it is
//! admitted), and the parts file is removed.
//!
//! Reads in sequence fetch ahead of themselves, in a window that doubles
//! up to [`READ_AHEAD_MAX`] (as the kernel's readahead does), so that
//! reading a large file whole costs a few requests, not one per chunk.
//! A random read fetches only the chunks under it.
//!
//! Measured (`benches/lazy.sh`, registry on loopback, an image holding one
//! 100 MiB file of random bytes): pull, mount and a read of 4 KiB in its
//! middle 0.054 s; the same reading the whole file through the lazy mount
//! (at least what fetching it whole on first open costs) 0.76 s; a full
//! pull and the 4 KiB read 0.45 s. Tracking "the reader is in sequence" by
//! where its last fetch ended instead of by the chunk before it reset the
//! fetch-ahead after every window it had fetched: the whole read took twice
//! as long.

use super::{unwrap_registry_error, Chunk, Extent, LazyLayer, RangeReader};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, IoContext, Result};
use crate::registry::RegistryClient;
use crate::store::Store;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Files smaller than this are fetched whole on first open: a few
/// requests of fetch-ahead would bring most of them anyway.
pub const PARTIAL_MIN_SIZE: u64 = 4 << 20;
/// Largest chunk read in parts (a chunk is checked in memory before it is
/// written); a file with a larger one is fetched whole.
pub const MAX_CHUNK: u64 = 16 << 20;
/// The first fetch-ahead of a sequential reader, and the largest.
const READ_AHEAD_MIN: u64 = 256 << 10;
const READ_AHEAD_MAX: u64 = 8 << 20;
/// Bytes copied per step when the file becomes an object.
const PIECE: usize = 256 << 10;

/// A file of a lazy layer being fetched chunk by chunk (see the module
/// documentation). Shared by every open of the file in one process.
pub struct PartialFile {
    digest: Digest,
    size: u64,
    chunks: Vec<Chunk>,
    path: PathBuf,
    file: File,
    /// Chunks this process has seen to be in `file`.
    present: Vec<AtomicBool>,
    missing: AtomicUsize,
    /// Held while fetching (one fetch per file at a time), with the
    /// fetch-ahead window.
    fetching: Mutex<ReadAhead>,
}

#[derive(Default)]
struct ReadAhead {
    window: u64,
}

impl PartialFile {
    /// The parts file of `digest` of `layer` (made if missing), when that
    /// file is large and chunked; None: fetch it whole.
    pub fn open(store: &Store, layer: &LazyLayer, digest: &Digest) -> Result<Option<PartialFile>> {
        let Some(Extent { size, chunks, .. }) = layer.extents.get(digest) else { return Ok(None) };
        if chunks.is_empty() || *size < PARTIAL_MIN_SIZE || chunks.iter().any(|c| c.size > MAX_CHUNK) {
            return Ok(None);
        }
        let dir = store.layout().lazy_parts_dir(&layer.toc);
        store.ensure_dir(&dir)?;
        let path = dir.join(digest.hex());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .at(&path)?;
        if file.metadata().at(&path)?.len() != *size {
            file.set_len(*size).at(&path)?;
        }
        Ok(Some(PartialFile {
            digest: *digest,
            size: *size,
            chunks: chunks.clone(),
            path,
            file,
            present: chunks.iter().map(|_| AtomicBool::new(false)).collect(),
            missing: AtomicUsize::new(chunks.len()),
            fetching: Mutex::new(ReadAhead::default()),
        }))
    }

    /// A descriptor to read the file through; only ranges [`Self::fill`]
    /// returned Ok for hold its content.
    pub fn reader(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// True once every chunk is here.
    pub fn is_complete(&self) -> bool {
        self.missing.load(Ordering::Acquire) == 0
    }

    /// True when `offset..offset + len` (clipped to the file) is known to
    /// be readable without fetching anything.
    pub fn has(&self, offset: u64, len: u64) -> bool {
        let end = offset.saturating_add(len).min(self.size);
        offset >= end || self.is_complete() || self.all_present(self.chunk_at(offset), self.chunk_at(end - 1))
    }

    /// Makes `offset..offset + len` (clipped to the file) readable: fetches
    /// the chunks under it that are missing, and in a sequential read some
    /// ahead. Fails if a chunk under the range cannot be fetched or does
    /// not match its digest; nothing of such a chunk is ever served.
    pub fn fill(&self, store: &Store, client: &RegistryClient, layer: &LazyLayer, offset: u64, len: u64) -> Result<()> {
        if self.has(offset, len) {
            return Ok(());
        }
        let end = offset.saturating_add(len).min(self.size);
        let (first, last) = (self.chunk_at(offset), self.chunk_at(end - 1));
        let mut ahead = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        // A reader that comes from the bytes just before (or the start)
        // reads in sequence: fetch ahead of it, more each time.
        let in_sequence = first == 0 || self.present[first - 1].load(Ordering::Acquire);
        ahead.window = if in_sequence { (ahead.window * 2).clamp(READ_AHEAD_MIN, READ_AHEAD_MAX) } else { 0 };
        let fetch_last = self.chunk_at(end.saturating_add(ahead.window).min(self.size) - 1);
        // What earlier fetches (of this process or another) left in place.
        for i in first..=fetch_last {
            if !self.present[i].load(Ordering::Acquire) && self.already_there(i) {
                self.mark_present(i, store);
            }
        }
        let mut failure = None;
        let mut i = first;
        while i <= fetch_last {
            if self.present[i].load(Ordering::Acquire) {
                i += 1;
                continue;
            }
            // A run of missing chunks whose frames are contiguous: one request.
            let mut j = i;
            while j < fetch_last
                && !self.present[j + 1].load(Ordering::Acquire)
                && self.chunks[j + 1].offset == self.chunks[j].end
            {
                j += 1;
            }
            if let Err(e) = self.fetch_run(store, client, layer, i, j) {
                failure.get_or_insert(e);
            }
            i = j + 1;
        }
        drop(ahead);
        match failure {
            // What failed may lie ahead of the range only.
            Some(e) if !self.all_present(first, last) => Err(e),
            _ => Ok(()),
        }
    }

    /// The index of the chunk holding byte `at`.
    fn chunk_at(&self, at: u64) -> usize {
        self.chunks.partition_point(|c| c.at <= at).saturating_sub(1)
    }

    fn all_present(&self, first: usize, last: usize) -> bool {
        self.present[first..=last].iter().all(|p| p.load(Ordering::Acquire))
    }

    /// Whether chunk `i`'s bytes are in the parts file already: a zeros
    /// chunk always is (the file reads zeros where nothing was written)
    /// if its digest says zeros; any other only if it was written. Either
    /// way the bytes are checked against the digest.
    fn already_there(&self, i: usize) -> bool {
        let c = &self.chunks[i];
        if !c.zeros {
            match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(c.at)) {
                Ok(data) if data < c.at + c.size => {}
                _ => return false, // a hole all through: never written
            }
        }
        let mut buf = vec![0u8; c.size as usize];
        self.file.read_exact_at(&mut buf, c.at).is_ok() && Digest::of(&buf) == c.digest
    }

    /// Fetches chunks `first..=last` (contiguous frames) with Range requests
    /// and writes each into place once it matches its digest.
    fn fetch_run(
        &self,
        store: &Store,
        client: &RegistryClient,
        layer: &LazyLayer,
        first: usize,
        last: usize,
    ) -> Result<()> {
        let source = layer.source()?;
        let frames = RangeReader {
            client,
            source: &source,
            blob: &layer.blob_digest,
            pos: self.chunks[first].offset,
            end: self.chunks[last].end,
            buf: Vec::new(),
            at: 0,
        };
        let what = || format!("fetching part of {} of lazy layer {}", self.digest, layer.toc);
        let mut decoder = zstd::stream::read::Decoder::new(frames).ctx(what)?;
        for i in first..=last {
            let c = &self.chunks[i];
            let mut data = vec![0u8; c.size as usize];
            decoder.read_exact(&mut data).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => Error::InvalidImage(format!(
                    "lazy layer {}: the frames of a chunk of {} hold less than its {} bytes",
                    layer.toc, self.digest, c.size
                )),
                _ => unwrap_registry_error(e, what),
            })?;
            let actual = Digest::of(&data);
            Error::check_digest(
                "lazily fetched chunk",
                c.digest,
                actual,
                "; the layer's data does not match its table of contents",
            )?;
            self.file.write_all_at(&data, c.at).ctx(what)?;
            self.mark_present(i, store);
        }
        Ok(())
    }

    /// Counts chunk `i` in; the last one makes the file an object.
    fn mark_present(&self, i: usize, store: &Store) {
        if self.present[i].swap(true, Ordering::AcqRel) {
            return;
        }
        if self.missing.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Err(e) = self.admit(store) {
                // It still reads from the parts file.
                eprintln!("strata: storing {} after fetching it in parts: {e}", self.digest);
            }
        }
    }

    /// Checks the whole file against its digest, copies it into the store
    /// as an object and removes the parts file.
    fn admit(&self, store: &Store) -> Result<()> {
        let what = || format!("storing {}", self.digest);
        let mut copy = if store.has_object(&self.digest) { None } else { Some(store.temp_file(".object-")?) };
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; PIECE];
        let mut at = 0u64;
        while at < self.size {
            let n = (self.size - at).min(PIECE as u64) as usize;
            self.file.read_exact_at(&mut buf[..n], at).ctx(what)?;
            hasher.update(&buf[..n]);
            if let Some(copy) = &mut copy {
                copy.as_file().write_all_at(&buf[..n], at).ctx(what)?;
            }
            at += n as u64;
        }
        let actual = hasher.finish();
        Error::check_digest(
            "file fetched in parts",
            self.digest,
            actual,
            "; its chunks match the table of contents but the whole does not",
        )?;
        if let Some(copy) = copy {
            store.put_object_from_temp(copy, &self.digest)?;
        }
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(what(), e)),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Debug for PartialFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let missing = self.missing.load(Ordering::Relaxed);
        write!(f, "PartialFile({}, {missing} of {} chunks missing)", self.digest, self.chunks.len())
    }
}
