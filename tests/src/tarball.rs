//! Handcrafted tar streams, written header by header so that the tests can
//! produce entries every well-behaved tar library refuses to write: `..`
//! components, absolute paths, hardlinks out of the tree or to entries not
//! yet seen, files below a symlink.
//!
//! Only the plain ustar format is written: names up to 100 bytes (plus a
//! 155-byte prefix), which is all the hostile cases need.

use std::io::Write;

/// Tar entry types used here.
pub mod kind {
    pub const FILE: u8 = b'0';
    pub const HARDLINK: u8 = b'1';
    pub const SYMLINK: u8 = b'2';
    pub const CHAR: u8 = b'3';
    pub const BLOCK: u8 = b'4';
    pub const DIR: u8 = b'5';
    pub const FIFO: u8 = b'6';
}

/// Builds an uncompressed tar stream in memory.
#[derive(Default)]
pub struct TarBuilder {
    buf: Vec<u8>,
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder::default()
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.entry(path, kind::FILE, mode, "", data)
    }
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.entry(path, kind::DIR, mode, "", &[])
    }
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, kind::SYMLINK, 0o777, target, &[])
    }
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, kind::HARDLINK, 0o644, target, &[])
    }

    /// Appends one entry exactly as given (no path cleaning), owned by 0:0.
    pub fn entry(&mut self, path: &str, typeflag: u8, mode: u32, link: &str, data: &[u8]) -> &mut Self {
        let mut h = [0u8; 512];
        let (prefix, name) = split_name(path);
        put(&mut h[0..100], name.as_bytes());
        put_octal(&mut h[100..108], mode as u64);
        put_octal(&mut h[108..116], 0);
        put_octal(&mut h[116..124], 0);
        put_octal(&mut h[124..136], data.len() as u64);
        put_octal(&mut h[136..148], 1_700_000_000);
        h[156] = typeflag;
        assert!(link.len() <= 100, "link target too long for ustar: {link}");
        put(&mut h[157..257], link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        put(&mut h[265..297], b"root");
        put(&mut h[297..329], b"root");
        put(&mut h[345..500], prefix.as_bytes());
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        put(&mut h[148..156], format!("{sum:06o}\0 ").as_bytes());
        self.buf.extend_from_slice(&h);
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    /// The finished archive (with the two zero end blocks).
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

fn split_name(path: &str) -> (&str, &str) {
    if path.len() <= 100 {
        return ("", path);
    }
    // ustar: prefix (<= 155) + '/' + name (<= 100)
    for (i, c) in path.char_indices() {
        if c == '/' && i <= 155 && path.len() - i - 1 <= 100 {
            return (&path[..i], &path[i + 1..]);
        }
    }
    panic!("path cannot be written as ustar: {path}");
}

fn put(field: &mut [u8], v: &[u8]) {
    assert!(v.len() <= field.len(), "tar field overflow");
    field[..v.len()].copy_from_slice(v);
}

fn put_octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}\0", v, width = field.len() - 1);
    put(field, s.as_bytes());
}

/// gzip-compresses `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap_or_else(|e| panic!("gzip: {e}"));
    e.finish().unwrap_or_else(|e| panic!("gzip: {e}"))
}
