//! [`TarGuard`]: a pass-through reader between the decompressed layer and the
//! `tar` crate that follows the tar framing itself and stops the stream at a
//! header the crate would act on without bound (see the module docs of
//! `ingest` for the limits and why).
//!
//! The framing mirrors the crate's exactly, so that both see the same headers:
//! 512-byte headers, sizes in octal or base-256 (read by the crate's own
//! `Header`), a PAX `size` record overriding the size of the next entry that
//! is not itself an extension header, GNU sparse extension blocks between a
//! sparse header and its data, data padded to 512 bytes, and the first
//! all-zero block ending the archive. A header the guard cannot follow
//! (bad checksum, unparseable size) is refused; the crate refuses it too.

use super::lossy;
use crate::error::Error;
use std::io::{self, Read};

/// Largest GNU long-name/long-link or PAX header accepted: Go's archive/tar
/// (Docker, containerd) refuses larger ones too.
pub(crate) const MAX_EXTENSION_HEADER: u64 = 1 << 20;
/// Zero bytes the holes of a layer's sparse files may add in any case...
pub(crate) const SPARSE_HOLES_FREE: u64 = 1 << 30;
/// ... and beyond that, as a multiple of the data those files store.
pub(crate) const SPARSE_HOLES_RATIO: u64 = 16;

const BLOCK: u64 = 512;

/// Why the guard stopped a layer; travels through the `tar` crate as the
/// payload of an `io::Error` and becomes an [`Error`] again in `read_err`.
#[derive(Debug, Clone)]
pub(crate) enum Refusal {
    /// A header strata will not act on: the entry's name and why.
    Hostile { path: Vec<u8>, reason: String },
    /// A header whose framing cannot be followed.
    Malformed(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Hostile { path, reason } => write!(f, "tar entry {:?} {reason}", lossy(path)),
            Refusal::Malformed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Refusal {}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Error {
        match r {
            Refusal::Hostile { path, reason } => Error::hostile(&path, reason),
            Refusal::Malformed(m) => Error::BadTar(m),
        }
    }
}

enum State {
    /// Collecting a header block.
    Header,
    /// Collecting a GNU sparse extension block; `data` bytes follow the last one.
    SparseExt { data: u64 },
    /// Passing `left` bytes of entry data and padding, the first `keep` of
    /// which are a PAX header's records.
    Data { left: u64, keep: u64 },
    /// Past the end-of-archive block: everything passes.
    End,
}

/// See the module docs.
pub(crate) struct TarGuard<R> {
    inner: R,
    state: State,
    /// The block being collected, and how much of it is there.
    block: tar::Header,
    filled: usize,
    /// Stream offset of the block being collected (for messages).
    offset: u64,
    /// Records of the PAX header being collected, then of the one that
    /// applies to the next entry.
    pax: Vec<u8>,
    pending_pax: Option<Vec<u8>>,
    /// Zero bytes the layer's sparse entries add so far, and the data they store.
    sparse_holes: u64,
    sparse_data: u64,
    refused: Option<Refusal>,
}

impl<R: Read> TarGuard<R> {
    pub(crate) fn new(inner: R) -> Self {
        TarGuard {
            inner,
            state: State::Header,
            block: tar::Header::new_old(),
            filled: 0,
            offset: 0,
            pax: Vec::new(),
            pending_pax: None,
            sparse_holes: 0,
            sparse_data: 0,
            refused: None,
        }
    }

    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    /// Follows the framing through `data`, the next bytes of the stream.
    fn scan(&mut self, mut data: &[u8]) -> Result<(), Refusal> {
        while !data.is_empty() {
            match &mut self.state {
                State::End => return Ok(()),
                State::Data { left, keep } => {
                    let n = (*left).min(data.len() as u64) as usize;
                    let k = (*keep).min(n as u64) as usize;
                    self.pax.extend_from_slice(&data[..k]);
                    *keep -= k as u64;
                    *left -= n as u64;
                    self.offset += n as u64;
                    data = &data[n..];
                    if *left == 0 {
                        self.state = State::Header;
                        self.data_done();
                    }
                }
                State::Header | State::SparseExt { .. } => {
                    let n = (BLOCK as usize - self.filled).min(data.len());
                    self.block.as_mut_bytes()[self.filled..self.filled + n].copy_from_slice(&data[..n]);
                    self.filled += n;
                    data = &data[n..];
                    if self.filled == BLOCK as usize {
                        self.filled = 0;
                        self.block_done()?;
                        self.offset += BLOCK;
                    }
                }
            }
        }
        Ok(())
    }

    /// Acts on a complete block in `self.block`.
    fn block_done(&mut self) -> Result<(), Refusal> {
        if let State::SparseExt { data } = self.state {
            let mut ext = tar::GnuExtSparseHeader::new();
            ext.as_mut_bytes().copy_from_slice(self.block.as_bytes());
            if !ext.is_extended() {
                self.state = data_state(data, 0)?;
            }
            return Ok(());
        }
        self.header_done()
    }

    fn header_done(&mut self) -> Result<(), Refusal> {
        let h = &self.block;
        let bytes = h.as_bytes();
        if bytes.iter().all(|&b| b == 0) {
            self.state = State::End;
            return Ok(());
        }
        let at = self.offset;
        let malformed = |e: io::Error| Refusal::Malformed(format!("tar header at byte {at}: {e}"));
        // The crate's checksum rule, so that a header it reads is one this guard read.
        let sum = bytes[..148].iter().chain(&bytes[156..]).fold(0u32, |a, &b| a + b as u32) + 8 * 32;
        if h.cksum().map_err(malformed)? != sum {
            return Err(Refusal::Malformed(format!("tar header at byte {at}: checksum mismatch")));
        }

        let t = h.entry_type();
        let recognized = h.as_gnu().is_some() || h.as_ustar().is_some();
        let extension = match t.as_byte() {
            b'L' => Some("a GNU long-name header"),
            b'K' => Some("a GNU long-link header"),
            b'x' => Some("a PAX extended header"),
            b'g' => Some("a PAX global header"),
            _ => None,
        };
        let mut size = h.entry_size().map_err(malformed)?;
        if let Some(what) = extension {
            if size > MAX_EXTENSION_HEADER {
                return Err(Refusal::Hostile {
                    path: h.path_bytes().into_owned(),
                    reason: format!(
                        "is {what} of {size} bytes; headers over {MAX_EXTENSION_HEADER} bytes are refused \
                         (a hostile or corrupt layer)"
                    ),
                });
            }
        } else if let Some(pax_size) = self.pending_pax.as_deref().and_then(pax_size) {
            size = pax_size;
        }
        // The crate keeps a PAX header for the next entry it returns, past GNU
        // long-name/long-link headers; any other header is such an entry.
        let carried_over = recognized && matches!(t.as_byte(), b'L' | b'K' | b'x');
        if !carried_over {
            self.pending_pax = None;
        }
        let keep = if recognized && t.is_pax_local_extensions() { size } else { 0 };
        self.pax.clear();

        if t.is_gnu_sparse() {
            let gnu = h.as_gnu().ok_or_else(|| {
                Refusal::Malformed(format!("tar header at byte {at}: sparse entry without a GNU header"))
            })?;
            let logical = gnu.real_size().map_err(malformed)?;
            self.sparse_holes = self.sparse_holes.saturating_add(logical.saturating_sub(size));
            self.sparse_data = self.sparse_data.saturating_add(size);
            if self.sparse_holes > SPARSE_HOLES_FREE
                && self.sparse_holes > self.sparse_data.saturating_mul(SPARSE_HOLES_RATIO)
            {
                return Err(Refusal::Hostile {
                    path: h.path_bytes().into_owned(),
                    reason: format!(
                        "is a sparse file of {logical} bytes storing {size}: the holes of the layer's sparse \
                         files would add {} bytes of zeros, over strata's limit (the larger of \
                         {SPARSE_HOLES_FREE} bytes and {SPARSE_HOLES_RATIO} times the data they store)",
                        self.sparse_holes
                    ),
                });
            }
            if gnu.is_extended() {
                self.state = State::SparseExt { data: size };
                return Ok(());
            }
        }
        self.state = data_state(size, keep)?;
        Ok(())
    }

    /// The end of an entry's data: a PAX header collected applies from now on.
    fn data_done(&mut self) {
        if !self.pax.is_empty() {
            self.pending_pax = Some(std::mem::take(&mut self.pax));
        }
    }
}

/// The state for `size` bytes of entry data (padded to whole blocks).
fn data_state(size: u64, keep: u64) -> Result<State, Refusal> {
    if size == 0 {
        return Ok(State::Header);
    }
    let left = size
        .checked_next_multiple_of(BLOCK)
        .ok_or_else(|| Refusal::Malformed(format!("tar entry size {size} overflows")))?;
    Ok(State::Data { left, keep })
}

/// The `size` record of PAX header records, read as the `tar` crate reads it
/// (the first `size` key wins; anything unparseable means none).
fn pax_size(records: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(records) {
        let ext = ext.ok()?;
        if ext.key() != Ok("size") {
            continue;
        }
        return ext.value().ok()?.parse().ok();
    }
    None
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(r) = &self.refused {
            return Err(io::Error::new(io::ErrorKind::InvalidData, r.clone()));
        }
        let n = self.inner.read(buf)?;
        if let Err(r) = self.scan(&buf[..n]) {
            self.refused = Some(r.clone());
            return Err(io::Error::new(io::ErrorKind::InvalidData, r));
        }
        Ok(n)
    }
}
