//! Layer ingestion against tar streams built in memory.

use super::guard::MAX_EXTENSION_HEADER;
use super::*;
use crate::layout::StoreLayout;
use tar::{EntryType, Header};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreLayout::new(dir.path().join("root"))).unwrap();
    (dir, store)
}

/// A tar stream under construction.
struct Tar {
    b: tar::Builder<Vec<u8>>,
}

fn header(kind: EntryType, mode: u32) -> Header {
    let mut h = Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    h
}

/// One PAX record: "LEN key=value\n", LEN counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

impl Tar {
    fn new() -> Self {
        Tar { b: tar::Builder::new(Vec::new()) }
    }
    fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = header(EntryType::Directory, mode);
        self.b.append_data(&mut h, path, io::empty()).unwrap();
        self
    }
    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        let mut h = header(EntryType::Regular, mode);
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }
    fn link(&mut self, kind: EntryType, path: &str, target: &str) -> &mut Self {
        let mut h = header(kind, 0o777);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }
    fn device(&mut self, kind: EntryType, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = header(kind, 0o660);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, io::empty()).unwrap();
        self
    }
    /// A PAX extended header for the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_size(data.len() as u64);
        h.set_path("PaxHeaders/x").unwrap();
        h.set_cksum();
        self.b.append(&h, data.as_slice()).unwrap();
        self
    }
    /// An entry whose name field holds `raw` verbatim (no validation), for hostile names.
    fn raw(&mut self, kind: EntryType, raw: &[u8], link: &[u8], data: &[u8]) -> &mut Self {
        let mut h = header(kind, 0o644);
        h.as_old_mut().name[..raw.len()].copy_from_slice(raw);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }
    fn bytes(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

fn find<'a>(idx: &'a LayerIndex, path: &str) -> &'a Entry {
    idx.entries.iter().rev().find(|e| e.path == path.as_bytes()).unwrap_or_else(|| {
        panic!("no entry {path:?} in {:?}", idx.entries.iter().map(|e| lossy(&e.path)).collect::<Vec<_>>())
    })
}

fn object(store: &Store, e: &Entry) -> Vec<u8> {
    let EntryKind::File { digest, .. } = &e.kind else { panic!("{:?} is not a file", e.kind) };
    std::fs::read(store.object_path(digest)).unwrap()
}

fn count_files(dir: &Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

use std::path::PathBuf;

#[test]
fn every_entry_type() {
    let (_d, store) = store();
    let big: Vec<u8> = (0..(SMALL_FILE as usize * 3 + 17)).map(|i| (i * 7 % 251) as u8).collect();
    let tar = Tar::new()
        .dir("./", 0o755)
        .dir("./bin/", 0o755)
        .file("./bin/su", 0o4755, b"#!setuid")
        .file("bin/sgid", 0o2711, b"g")
        .dir("tmp", 0o1777)
        .link(EntryType::Symlink, "bin/sh", "/bin/busybox")
        .link(EntryType::Link, "bin/su2", "bin/su")
        .link(EntryType::Link, "bin/su3", "./bin/su2")
        .device(EntryType::Char, "dev/null", 1, 3)
        .device(EntryType::Block, "dev/sda", 8, 0)
        .file("big", 0o600, &big)
        .file("empty", 0o644, b"")
        .bytes();
    let mut fifo = header(EntryType::Fifo, 0o600);
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut fifo, "fifo", io::empty()).unwrap();
    // Splice the fifo entry before the first archive's end marker.
    let fifo_bytes = b.into_inner().unwrap();
    let end = tar.len() - 1024;
    let mut all = tar[..end].to_vec();
    all.extend_from_slice(&fifo_bytes);

    let expected = Digest::of(&all);
    let idx = ingest_layer(&store, all.as_slice(), &expected).unwrap();
    assert!(store.has_layer(&expected));
    assert_eq!(store.layer_index(&expected).unwrap(), idx);

    let root = find(&idx, "");
    assert_eq!((root.kind.clone(), root.mode), (EntryKind::Dir, 0o755));
    let su = find(&idx, "bin/su");
    assert_eq!(su.mode, 0o4755);
    assert_eq!((su.uid, su.gid, su.mtime, su.mtime_nsec), (1000, 1001, 1_700_000_000, 0));
    assert_eq!(object(&store, su), b"#!setuid");
    assert_eq!(find(&idx, "bin/sgid").mode, 0o2711);
    assert_eq!(find(&idx, "tmp").mode, 0o1777);
    assert_eq!(find(&idx, "bin/sh").kind, EntryKind::Symlink { target: b"/bin/busybox".to_vec() });
    assert_eq!(find(&idx, "bin/su2").kind, EntryKind::Hardlink { target: b"bin/su".to_vec() });
    // A link to a link names the link (resolved in order, it is the same file).
    assert_eq!(find(&idx, "bin/su3").kind, EntryKind::Hardlink { target: b"bin/su2".to_vec() });
    assert_eq!(find(&idx, "dev/null").kind, EntryKind::CharDevice { major: 1, minor: 3 });
    assert_eq!(find(&idx, "dev/sda").kind, EntryKind::BlockDevice { major: 8, minor: 0 });
    assert_eq!(find(&idx, "fifo").kind, EntryKind::Fifo);
    assert_eq!(object(&store, find(&idx, "big")), big);
    assert_eq!(object(&store, find(&idx, "empty")), b"");

    // Objects are read-only files; the staging area is gone.
    let meta = std::fs::metadata(store.object_path(&Digest::of(&big))).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o444);
    assert_eq!(count_files(&store.layout().tmp_dir()), 0);
    assert_eq!(count_files(&store.layout().objects_dir()), 4); // su, sgid, big, empty
}

#[test]
fn pax_and_gnu_extensions() {
    let (_d, store) = store();
    let long150 = format!("{}/{}", "d".repeat(80), "f".repeat(69));
    let long300 = format!("{}/{}/{}", "a".repeat(100), "b".repeat(100), "c".repeat(98));
    assert!(long150.len() > 100 && long300.len() > 255);
    let mut t = Tar::new();
    // GNU long name ('L') through the tar crate's own builder.
    let mut gnu = Header::new_gnu();
    gnu.set_entry_type(EntryType::Regular);
    gnu.set_mode(0o644);
    gnu.set_size(3);
    t.b.append_data(&mut gnu, &long150, &b"gnu"[..]).unwrap();
    // PAX path, uid/gid beyond the octal field's 2^21, sub-second mtime, xattrs.
    t.pax(&[
        ("path", long300.as_bytes()),
        ("uid", b"3000000"),
        ("gid", b"4000000"),
        ("mtime", b"1700000000.123456789"),
        ("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02\x00\x20\x00\x00"),
        ("SCHILY.xattr.user.note", b"hello"),
    ]);
    t.raw(EntryType::Regular, b"placeholder-name", b"", b"pax");
    // PAX linkpath for a long symlink target, negative fractional mtime.
    let target = "t".repeat(200);
    t.pax(&[("linkpath", target.as_bytes()), ("mtime", b"-1.25")]);
    t.raw(EntryType::Symlink, b"link", b"short", b"");
    let data = t.bytes();
    let idx = ingest_layer(&store, data.as_slice(), &Digest::of(&data)).unwrap();

    assert_eq!(object(&store, find(&idx, &long150)), b"gnu");
    let e = find(&idx, &long300);
    assert_eq!(object(&store, e), b"pax");
    assert_eq!((e.uid, e.gid), (3_000_000, 4_000_000));
    assert_eq!((e.mtime, e.mtime_nsec), (1_700_000_000, 123_456_789));
    assert_eq!(
        e.xattrs,
        vec![
            (b"security.capability".to_vec(), b"\x01\x00\x00\x02\x00\x20\x00\x00".to_vec()),
            (b"user.note".to_vec(), b"hello".to_vec()),
        ]
    );
    let l = find(&idx, "link");
    assert_eq!(l.kind, EntryKind::Symlink { target: target.into_bytes() });
    assert_eq!((l.mtime, l.mtime_nsec), (-2, 750_000_000));
}

#[test]
fn whiteouts_and_opaque_dirs() {
    let (_d, store) = store();
    let data = Tar::new()
        .dir("etc", 0o755)
        .file("etc/.wh.passwd", 0o644, b"")
        .file(".wh.tmp", 0o644, b"")
        .file("var/.wh..wh..opq", 0o644, b"")
        .file(".wh..wh..opq", 0o644, b"")
        .file("etc/.wh..wh.plnk", 0o644, b"ignored")
        .bytes();
    let idx = ingest_layer(&store, data.as_slice(), &Digest::of(&data)).unwrap();
    let kinds: Vec<(String, EntryKind)> = idx.entries.iter().map(|e| (lossy(&e.path), e.kind.clone())).collect();
    assert_eq!(
        kinds,
        vec![
            ("etc".into(), EntryKind::Dir),
            ("etc/passwd".into(), EntryKind::Whiteout),
            ("tmp".into(), EntryKind::Whiteout),
            ("var".into(), EntryKind::Opaque),
            ("".into(), EntryKind::Opaque),
        ]
    );
    // Whiteout markers are not content.
    assert_eq!(count_files(&store.layout().objects_dir()), 0);
}

#[test]
fn identical_content_is_stored_once_and_reused() {
    let (_d, store) = store();
    let a = Tar::new().file("a", 0o644, b"same").file("b", 0o644, b"same").file("c", 0o644, b"other").bytes();
    ingest_layer(&store, a.as_slice(), &Digest::of(&a)).unwrap();
    assert_eq!(count_files(&store.layout().objects_dir()), 2);
    let b = Tar::new().file("x/y", 0o600, b"same").file("z", 0o644, b"new").bytes();
    let staged = stage_layer(&store, b.as_slice(), Some(&Digest::of(&b))).unwrap();
    assert_eq!(staged.new_objects(), 1, "an object already in the store is not written again");
    staged.commit().unwrap();
    assert_eq!(count_files(&store.layout().objects_dir()), 3);
    // Ingesting the same layer again is harmless.
    ingest_layer(&store, a.as_slice(), &Digest::of(&a)).unwrap();
    assert_eq!(count_files(&store.layout().objects_dir()), 3);
}

/// Ingests `data` into a store that already holds one layer and checks the
/// refusal message and that nothing in objects/, layers/ or tmp/ changed.
fn assert_refused(data: &[u8], expected_diff: Option<Digest>, needle: &str) {
    let (_d, store) = store();
    let base = Tar::new().file("base", 0o644, b"base content").bytes();
    ingest_layer(&store, base.as_slice(), &Digest::of(&base)).unwrap();
    let objects_before = walk(&store.layout().objects_dir());
    let layers_before = walk(&store.layout().layers_dir());

    let expected = expected_diff.unwrap_or_else(|| Digest::of(data));
    let err = ingest_layer(&store, data, &expected).expect_err("hostile layer accepted");
    let msg = err.to_string();
    assert!(msg.contains(needle), "error {msg:?} does not contain {needle:?}");
    assert_eq!(walk(&store.layout().objects_dir()), objects_before, "objects/ changed");
    assert_eq!(walk(&store.layout().layers_dir()), layers_before, "layers/ changed");
    assert_eq!(count_files(&store.layout().tmp_dir()), 0, "staging left behind");
    assert!(!store.has_layer(&expected));
}

#[test]
fn refuses_dotdot() {
    let t =
        Tar::new().file("ok", 0o644, b"fine data").raw(EntryType::Regular, b"a/../../etc/passwd", b"", b"x").bytes();
    assert_refused(&t, None, "'..'");
    let t = Tar::new().raw(EntryType::Regular, b"..", b"", b"").bytes();
    assert_refused(&t, None, "'..'");
}

#[test]
fn refuses_absolute_paths() {
    let t = Tar::new()
        .file("ok", 0o644, b"staged first")
        .raw(EntryType::Regular, b"/etc/passwd", b"", b"root::0:0")
        .bytes();
    assert_refused(&t, None, "absolute path");
    // Through PAX too.
    let mut t = Tar::new();
    t.pax(&[("path", b"/etc/shadow")]).raw(EntryType::Regular, b"innocent", b"", b"");
    assert_refused(&t.bytes(), None, "absolute path");
}

#[test]
fn refuses_nul_bytes() {
    let mut t = Tar::new();
    t.pax(&[("path", b"a\0b")]).raw(EntryType::Regular, b"x", b"", b"");
    assert_refused(&t.bytes(), None, "NUL");
}

#[test]
fn refuses_bad_hardlinks() {
    let t = Tar::new().file("f", 0o644, b"x").raw(EntryType::Link, b"l", b"/etc/shadow", b"").bytes();
    assert_refused(&t, None, "outside the layer");
    let t = Tar::new().raw(EntryType::Link, b"l", b"../../etc/shadow", b"").bytes();
    assert_refused(&t, None, "outside the layer");
    let t = Tar::new().raw(EntryType::Link, b"l", b"later", b"").file("later", 0o644, b"x").bytes();
    assert_refused(&t, None, "not an earlier file");
    let t = Tar::new().dir("d", 0o755).raw(EntryType::Link, b"l", b"d", b"").bytes();
    assert_refused(&t, None, "not an earlier file");
    let t = Tar::new().file("a", 0o644, b"x").raw(EntryType::Link, b"a", b"a", b"").bytes();
    assert_refused(&t, None, "hardlink to itself");
}

/// What the union filesystem and `MergedTree` make of one layer.
fn merged(idx: &LayerIndex) -> crate::merge::MergedTree {
    crate::merge::MergedTree::from_layers([idx]).unwrap()
}

fn content_of(t: &crate::merge::MergedTree, path: &str) -> EntryKind {
    t.entries[path.as_bytes()].kind.clone()
}

#[test]
fn a_link_to_a_link_keeps_the_file_it_was_linked_to() {
    let (_d, store) = store();
    let (x, y) = (b"first a".as_slice(), b"appended a".as_slice());
    // What `tar --append` of a changed `a` and a new link `c` gives.
    let t = Tar::new()
        .file("a", 0o644, x)
        .link(EntryType::Link, "b", "a")
        .file("a", 0o644, y)
        .link(EntryType::Link, "c", "b")
        .bytes();
    let idx = ingest_layer(&store, t.as_slice(), &Digest::of(&t)).unwrap();
    let tree = merged(&idx);
    let file = |data: &[u8]| EntryKind::File { size: data.len() as u64, digest: Digest::of(data) };
    assert_eq!(content_of(&tree, "a"), file(y));
    assert_eq!(content_of(&tree, "b"), file(x));
    assert_eq!(content_of(&tree, "c"), file(x), "c is b's file, not the later a");
    assert_eq!(find(&idx, "c").kind, EntryKind::Hardlink { target: b"b".to_vec() });

    // `a` relinked to its own link: still the same file, not a link to itself.
    let t = Tar::new().file("a", 0o644, x).link(EntryType::Link, "b", "a").link(EntryType::Link, "a", "b").bytes();
    let idx = ingest_layer(&store, t.as_slice(), &Digest::of(&t)).unwrap();
    let tree = merged(&idx);
    assert_eq!(content_of(&tree, "a"), file(x));
    assert_eq!(content_of(&tree, "b"), file(x));
}

#[test]
fn refuses_paths_through_symlinks_of_the_same_layer() {
    let t = Tar::new().link(EntryType::Symlink, "a", "/etc").file("a/passwd", 0o644, b"pwned").bytes();
    assert_refused(&t, None, "through the symlink \"a\"");
    let t = Tar::new().link(EntryType::Symlink, "x/a", "../..").dir("x/a/b", 0o755).bytes();
    assert_refused(&t, None, "through the symlink \"x/a\"");
    let t = Tar::new().link(EntryType::Symlink, "a", "/etc").file("a/.wh.passwd", 0o644, b"").bytes();
    assert_refused(&t, None, "through the symlink");
    // A hard link to a symlink is a symlink too, and so is a link to that link.
    let t = Tar::new()
        .link(EntryType::Symlink, "s", "/etc")
        .link(EntryType::Link, "l", "s")
        .file("l/passwd", 0o644, b"pwned")
        .bytes();
    assert_refused(&t, None, "through the symlink \"l\"");
    let t = Tar::new()
        .link(EntryType::Symlink, "s", "/etc")
        .link(EntryType::Link, "l", "s")
        .file("s", 0o644, b"s is a file now, l still a symlink")
        .link(EntryType::Link, "m", "l")
        .dir("m/sub", 0o755)
        .bytes();
    assert_refused(&t, None, "through the symlink \"m\"");
    // A symlink replaced by a directory no longer redirects.
    let (_d, store) = store();
    let ok = Tar::new().link(EntryType::Symlink, "a", "/etc").dir("a", 0o755).file("a/f", 0o644, b"ok").bytes();
    ingest_layer(&store, ok.as_slice(), &Digest::of(&ok)).unwrap();
}

#[test]
fn refuses_diff_id_mismatch() {
    let t = Tar::new().file("f", 0o644, b"content").bytes();
    assert_refused(&t, Some(Digest::of(b"something else")), "diff_id mismatch");
}

#[test]
fn refuses_truncated_streams() {
    let t = Tar::new().file("f", 0o644, &[7u8; 5000]).bytes();
    assert_refused(&t[..1536], Some(Digest::of(&t)), "unexpected EOF");
}

/// A GNU sparse entry: `blocks` of data at their offsets in a file of
/// `logical` bytes, with as many extension blocks as the map needs.
fn sparse_entry(path: &str, logical: u64, blocks: &[(u64, &[u8])]) -> Vec<u8> {
    let stored: usize = blocks.iter().map(|(_, d)| d.len()).sum();
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_path(path).unwrap();
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_size(stored as u64);
    // A file ending in a hole ends its map with an empty block there.
    let last_end = blocks.last().map_or(0, |&(off, d)| off + d.len() as u64);
    let mut map =
        blocks.iter().map(|&(off, d)| (off, d.len() as u64)).chain((last_end < logical).then_some((logical, 0)));
    let gnu = h.as_gnu_mut().unwrap();
    gnu.set_real_size(logical);
    for slot in gnu.sparse.iter_mut() {
        if let Some((off, len)) = map.next() {
            slot.set_offset(off);
            slot.set_length(len);
        }
    }
    let rest: Vec<(u64, u64)> = map.collect();
    gnu.set_is_extended(!rest.is_empty());
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    let chunks: Vec<&[(u64, u64)]> = rest.chunks(21).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut ext = tar::GnuExtSparseHeader::new();
        for (slot, &(off, len)) in ext.sparse_mut().iter_mut().zip(chunk.iter()) {
            slot.set_offset(off);
            slot.set_length(len);
        }
        ext.set_is_extended(i + 1 < chunks.len());
        out.extend_from_slice(ext.as_bytes());
    }
    for (_, d) in blocks {
        out.extend_from_slice(d);
    }
    out.resize(out.len().next_multiple_of(512), 0);
    out
}

/// A header of type `kind` claiming `size` bytes, and none of them.
fn bare_header(kind: EntryType, name: &str, size: u64) -> Vec<u8> {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_path(name).unwrap();
    h.set_size(size);
    h.set_cksum();
    h.as_bytes().to_vec()
}

#[test]
fn small_sparse_files_are_expanded() {
    let (_d, store) = store();
    // Five data blocks: four in the header's map, one in an extension block.
    let blocks: Vec<(u64, Vec<u8>)> = (0..5u64).map(|i| (i * 600 * 1024, vec![b'a' + i as u8; 512])).collect();
    let refs: Vec<(u64, &[u8])> = blocks.iter().map(|(o, d)| (*o, d.as_slice())).collect();
    let logical = 3 << 20;
    let mut t = Tar::new();
    t.b.get_mut().extend(sparse_entry("sparse", logical, &refs));
    t.file("after", 0o644, b"next entry");
    let data = t.bytes();
    let idx = ingest_layer(&store, data.as_slice(), &Digest::of(&data)).unwrap();
    let mut want = vec![0u8; logical as usize];
    for (off, d) in &blocks {
        want[*off as usize..*off as usize + d.len()].copy_from_slice(d);
    }
    assert!(object(&store, find(&idx, "sparse")) == want, "sparse file content");
    assert_eq!(object(&store, find(&idx, "after")), b"next entry");
}

#[test]
fn refuses_sparse_files_that_expand_too_far() {
    // 100 entries of 512 bytes at the end of 8 GiB files: a 100 KB tar that
    // would otherwise be written and hashed as 800 GiB of zeros.
    let mut t = Tar::new();
    for i in 0..100u64 {
        let end = (8 << 30) - i * 4096;
        t.b.get_mut().extend(sparse_entry(&format!("f{i}"), end, &[(end - 512, &[b'x'; 512])]));
    }
    let data = t.bytes();
    assert!(data.len() < 110_000);
    assert_refused(&data, None, "tar entry \"f0\" is a sparse file of 8589934592 bytes storing 512");

    // The allowance is for the whole layer: two sparse files of 600 MiB of
    // holes each are refused at the second.
    let mut t = Tar::new();
    for name in ["a", "b"] {
        t.b.get_mut().extend(sparse_entry(name, 600 << 20, &[(0, &[b'x'; 512])]));
    }
    assert_refused(&t.bytes(), None, "tar entry \"b\" is a sparse file");
}

#[test]
fn refuses_oversized_extension_headers() {
    // The headers claim their size and the stream ends there: a refusal must
    // come from the header, before any of the body is read.
    for (kind, what) in [
        (EntryType::GNULongName, "GNU long-name header"),
        (EntryType::GNULongLink, "GNU long-link header"),
        (EntryType::XHeader, "PAX extended header"),
        (EntryType::XGlobalHeader, "PAX global header"),
    ] {
        // 20 GB takes the base-256 size encoding, 1 MiB + 1 the octal one.
        for size in [20_000_000_000, MAX_EXTENSION_HEADER + 1] {
            let mut data = bare_header(kind, "././@LongLink", size);
            data.extend_from_slice(&[0u8; 4096]);
            assert_refused(&data, None, &format!("is a {what} of {size} bytes; headers over 1048576 bytes"));
        }
    }
}

#[test]
fn extension_headers_up_to_the_limit_are_read() {
    let (_d, store) = store();
    let mut t = Tar::new();
    // A global header of exactly 1 MiB (ignored), then a PAX header of exactly 1 MiB.
    let mut g = bare_header(EntryType::XGlobalHeader, "pax_global_header", MAX_EXTENSION_HEADER);
    g.resize(512 + MAX_EXTENSION_HEADER as usize, b'\n');
    t.b.get_mut().extend(g);
    let mut note = vec![b'n'; MAX_EXTENSION_HEADER as usize - 100];
    while pax_record("SCHILY.xattr.user.note", &note).len() < MAX_EXTENSION_HEADER as usize {
        note.push(b'n');
    }
    assert_eq!(pax_record("SCHILY.xattr.user.note", &note).len(), MAX_EXTENSION_HEADER as usize);
    t.pax(&[("SCHILY.xattr.user.note", &note)]);
    t.file("f", 0o644, b"content");
    let data = t.bytes();
    let idx = ingest_layer(&store, data.as_slice(), &Digest::of(&data)).unwrap();
    assert_eq!(find(&idx, "f").xattrs, vec![(b"user.note".to_vec(), note)]);
}

#[test]
fn a_pax_size_moves_the_next_header_for_the_guard_too() {
    // A body that looks like a hostile header is data when a PAX `size`
    // record says so (Go writes sizes over 8 GiB that way, the ustar field 0) ...
    let mut fake = bare_header(EntryType::XHeader, "fake", 20_000_000_000);
    fake.resize(1024, b'z');
    let mut t = Tar::new();
    t.pax(&[("size", b"1024")]);
    t.raw(EntryType::Regular, b"data", b"", b"");
    t.b.get_mut().extend_from_slice(&fake);
    t.file("after", 0o644, b"after");
    let data = t.bytes();
    let (_d, store) = store();
    let idx = ingest_layer(&store, data.as_slice(), &Digest::of(&data)).unwrap();
    assert_eq!(object(&store, find(&idx, "data")), fake);
    assert_eq!(object(&store, find(&idx, "after")), b"after");

    // ... and a header when the record says the entry is empty.
    let mut t = Tar::new();
    t.pax(&[("size", b"0")]);
    t.raw(EntryType::Regular, b"data", b"", &fake);
    assert_refused(&t.bytes(), None, "tar entry \"fake\" is a PAX extended header of 20000000000 bytes");
}

#[test]
fn diff_id_covers_the_trailer() {
    // GNU tar pads archives to 10 KiB records: the padding is part of the diff_id.
    let mut t = Tar::new().file("f", 0o644, b"x").bytes();
    t.resize(10240, 0);
    let (_d, store) = store();
    let staged = stage_layer(&store, t.as_slice(), None).unwrap();
    assert_eq!(staged.diff_id(), Digest::of(&t));
    assert_eq!(staged.tar_size(), 10240);
}

#[test]
fn normalises_paths() {
    for (raw, want) in [("./a/b/", "a/b"), ("a//b/./c", "a/b/c"), (".", ""), ("./", ""), ("a/.", "a")] {
        assert_eq!(normalize(raw.as_bytes()).unwrap(), want.as_bytes(), "{raw}");
    }
    for bad in ["/a", "a/../b", "..", "a/..", "a\0"] {
        assert!(normalize(bad.as_bytes()).is_err(), "{bad}");
    }
}

#[test]
fn pax_times() {
    assert_eq!(parse_pax_time(b"5"), Some((5, 0)));
    assert_eq!(parse_pax_time(b"5.5"), Some((5, 500_000_000)));
    assert_eq!(parse_pax_time(b"5.1234567891"), Some((5, 123_456_789)));
    assert_eq!(parse_pax_time(b"-5"), Some((-5, 0)));
    assert_eq!(parse_pax_time(b"-0.25"), Some((-1, 750_000_000)));
    for bad in [&b""[..], b".5", b"x", b"1.x", b"1e5"] {
        assert_eq!(parse_pax_time(bad), None, "{:?}", lossy(bad));
    }
}

#[test]
fn decompresses_gzip_and_zstd_with_trailing_data_hashed() {
    let tar = Tar::new().file("f", 0o644, &vec![42u8; 300_000]).bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar[..1000]).unwrap();
    let mut gz_all = gz.finish().unwrap();
    // A second gzip member: MultiGzDecoder must read it.
    let mut gz2 = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz2.write_all(&tar[1000..]).unwrap();
    gz_all.extend(gz2.finish().unwrap());
    let zst = zstd::encode_all(tar.as_slice(), 3).unwrap();

    for (blob, c) in
        [(gz_all, LayerCompression::Gzip), (zst, LayerCompression::Zstd), (tar.clone(), LayerCompression::None)]
    {
        let mut out = Vec::new();
        decompress(io::Cursor::new(blob.clone()), c).read_to_end(&mut out).unwrap();
        assert_eq!(out, tar, "{c:?}");

        // pump hands the source back fully read.
        let (w, mut r) = channel();
        let h = std::thread::spawn(move || pump(HashingReader::new(io::Cursor::new(blob)), c, w));
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        let (_, n) = h.join().unwrap().unwrap().finish();
        assert_eq!(out.len(), tar.len());
        assert!(n > 0);
    }
    // Corrupt input surfaces as a read error.
    let mut out = Vec::new();
    let err = decompress(io::Cursor::new(b"\x1f\x8bnot gzip at all".to_vec()), LayerCompression::Gzip)
        .read_to_end(&mut out)
        .unwrap_err();
    assert!(!err.to_string().is_empty());
}

/// User + system CPU time of this process.
fn cpu() -> std::time::Duration {
    // SAFETY: getrusage fills the struct it is given; a zeroed rusage is valid.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| std::time::Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    t(u.ru_utime) + t(u.ru_stime)
}

/// Throughput on a layer of many small files plus one large one, objects
/// written by the writer thread vs inline (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn bench_small_files() {
    let mut t = Tar::new();
    let n = 20_000;
    for i in 0..n {
        let body = format!("file {i} {}", "x".repeat(i % 4096));
        t.file(&format!("d{}/f{i}", i % 100), 0o644, body.as_bytes());
    }
    let big: Vec<u8> = (0..64u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    t.file("big", 0o644, &big);
    let data = t.bytes();
    let diff_id = Digest::of(&data);
    for round in 0..3 {
        for threaded in [true, false] {
            let (_d, store) = store();
            let start = std::time::Instant::now();
            let cpu0 = cpu();
            let staged = stage_layer_with(&store, data.as_slice(), Some(&diff_id), threaded).unwrap();
            let stage = start.elapsed();
            staged.commit().unwrap();
            let first = start.elapsed();
            eprintln!("  staging {stage:?}, commit {:?}, cpu {:?}", first - stage, cpu() - cpu0);
            let start = std::time::Instant::now();
            stage_layer_with(&store, data.as_slice(), Some(&diff_id), threaded).unwrap().commit().unwrap();
            let again = start.elapsed();
            eprintln!(
                "round {round} threaded={threaded}: {n} files, {} MiB: new {first:?} ({:.0} MB/s), objects present {again:?}",
                data.len() >> 20,
                data.len() as f64 / first.as_secs_f64() / 1e6
            );
        }
    }
}
