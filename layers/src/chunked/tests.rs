use super::*;
use serde_json::json;

fn location(toc: &[u8], offset: u64, uncompressed: u64) -> TocLocation {
    TocLocation { offset, length: toc.len() as u64, uncompressed_length: uncompressed, digest: Digest::of(toc) }
}

/// A compressed TOC of `entries` and where it is (after 1,000 bytes of "files").
fn toc_of(entries: serde_json::Value) -> (Vec<u8>, TocLocation) {
    let json = serde_json::to_vec(&json!({ "version": 1, "entries": entries })).unwrap();
    let compressed = zstd::encode_all(&json[..], 3).unwrap();
    let loc = location(&compressed, 1000, json.len() as u64);
    (compressed, loc)
}

#[test]
fn annotations_locate_the_toc() {
    let mut desc = Descriptor::new("application/vnd.oci.image.layer.v1.tar+zstd", Digest::of(b"blob"), 5000);
    assert_eq!(TocLocation::of(&desc).unwrap(), None, "a plain zstd layer");
    let digest = Digest::of(b"toc");
    desc.annotations.insert(CHECKSUM_KEYS[1].into(), digest.to_string());
    desc.annotations.insert(POSITION_KEYS[1].into(), "4000:900:3000:1".into());
    let loc = TocLocation::of(&desc).unwrap().unwrap();
    assert_eq!(loc, TocLocation { offset: 4000, length: 900, uncompressed_length: 3000, digest });
    for bad in ["4000:900:3000", "4000:2000:3000:1", "4000:900:3000:2", "a:b:c:d", "0:0:0:1"] {
        desc.annotations.insert(POSITION_KEYS[1].into(), bad.into());
        let err = TocLocation::of(&desc).unwrap_err().to_string();
        assert!(err.contains("without --lazy"), "{bad}: {err}");
    }
}

#[test]
fn a_toc_becomes_the_index_a_tar_would_give() {
    let file = Digest::of(b"hello\n");
    let (toc, loc) = toc_of(json!([
        { "type": "dir", "name": "./", "mode": 493, "modtime": "2024-01-02T03:04:05.123456789Z" },
        { "type": "dir", "name": "etc/", "mode": 493, "uid": 7, "gid": 8 },
        { "type": "reg", "name": "etc/motd", "mode": 420, "size": 6, "digest": file.to_string(),
          "offset": 10, "endOffset": 40, "xattrs": { "user.a": "Yg==" } },
        { "type": "hardlink", "name": "etc/motd2", "linkName": "etc/motd" },
        { "type": "reg", "name": "etc/empty", "mode": 384 },
        { "type": "reg", "name": "etc/.wh.gone", "size": 0 },
        { "type": "reg", "name": "opq/.wh..wh..opq" },
        { "type": "symlink", "name": "lib", "linkName": "usr/lib" },
        { "type": "char", "name": "null", "devMajor": 1, "devMinor": 3 },
        { "type": "chunk", "name": "etc/motd", "offset": 20, "chunkOffset": 3 }
    ]));
    let (index, extents) = parse_toc(&toc, &loc, 2000).unwrap();
    let kinds: Vec<(&[u8], &EntryKind)> = index.entries.iter().map(|e| (&e.path[..], &e.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (&b""[..], &EntryKind::Dir),
            (b"etc", &EntryKind::Dir),
            (b"etc/motd", &EntryKind::File { size: 6, digest: file }),
            (b"etc/motd2", &EntryKind::Hardlink { target: b"etc/motd".to_vec() }),
            (b"etc/empty", &EntryKind::File { size: 0, digest: Digest::of(b"") }),
            (b"etc/gone", &EntryKind::Whiteout),
            (b"opq", &EntryKind::Opaque),
            (b"lib", &EntryKind::Symlink { target: b"usr/lib".to_vec() }),
            (b"null", &EntryKind::CharDevice { major: 1, minor: 3 }),
        ]
    );
    assert_eq!((index.entries[0].mtime, index.entries[0].mtime_nsec), (1704164645, 123456789));
    assert_eq!((index.entries[1].uid, index.entries[1].gid, index.entries[1].mode), (7, 8, 0o755));
    assert_eq!(index.entries[2].xattrs, vec![(b"user.a".to_vec(), b"b".to_vec())]);
    let chunks = vec![];
    assert_eq!(extents.into_iter().collect::<Vec<_>>(), vec![(file, Extent { offset: 10, end: 40, size: 6, chunks })]);
}

#[test]
fn hostile_or_damaged_tocs_are_refused() {
    let d = Digest::of(b"x").to_string();
    let cases = [
        (json!([{ "type": "reg", "name": "../x", "size": 1, "digest": d, "offset": 0, "endOffset": 5 }]), "'..'"),
        (json!([{ "type": "reg", "name": "/etc/x" }]), "absolute"),
        (
            json!([{ "type": "symlink", "name": "l", "linkName": "/etc" }, { "type": "reg", "name": "l/passwd" }]),
            "goes through the symlink",
        ),
        (json!([{ "type": "hardlink", "name": "a", "linkName": "../../etc/shadow" }]), "outside the layer"),
        (json!([{ "type": "reg", "name": "a", "size": 1, "digest": d, "offset": 0, "endOffset": 1500 }]), "inside"),
        (json!([{ "type": "reg", "name": "a", "size": 1 }]), "without a digest"),
        (json!([{ "type": "socket", "name": "a" }]), "unsupported type"),
    ];
    for (entries, want) in cases {
        let (toc, loc) = toc_of(entries.clone());
        let err = parse_toc(&toc, &loc, 2000).unwrap_err().to_string();
        assert!(err.contains(want), "{entries}: {err}");
    }
    let (toc, mut loc) = toc_of(json!([]));
    loc.digest = Digest::of(b"other");
    assert!(parse_toc(&toc, &loc, 2000).unwrap_err().to_string().contains("not the one its manifest names"));
    let (toc, mut loc) = toc_of(json!([]));
    loc.uncompressed_length += 1;
    assert!(parse_toc(&toc, &loc, 2000).unwrap_err().to_string().contains("uncompressed"));
}

/// A TOC of one 300-byte file cut into chunks of 100 bytes at blob offsets
/// 10, 40 and 70 (ending at 100); `edit` changes its chunk records first.
fn chunked_toc(edit: impl FnOnce(&mut Vec<serde_json::Value>)) -> Vec<Chunk> {
    let file = Digest::of(&[7u8; 300]);
    let chunk = Digest::of(&[7u8; 100]).to_string();
    let mut entries = vec![
        json!({ "type": "reg", "name": "big", "size": 300, "digest": file.to_string(), "offset": 10,
                "endOffset": 100, "chunkSize": 100, "chunkDigest": chunk }),
        json!({ "type": "chunk", "name": "big", "offset": 40, "chunkOffset": 100, "chunkSize": 100,
                "chunkDigest": chunk }),
        json!({ "type": "chunk", "name": "big", "offset": 70, "chunkOffset": 200, "chunkSize": 100,
                "chunkDigest": chunk, "chunkType": "zeros" }),
        // The same content again: its chunks are the first file's.
        json!({ "type": "reg", "name": "again", "size": 300, "digest": file.to_string(), "offset": 500,
                "endOffset": 600 }),
    ];
    edit(&mut entries);
    let (toc, loc) = toc_of(serde_json::Value::Array(entries));
    let (_, extents) = parse_toc(&toc, &loc, 2000).unwrap();
    extents[&file].chunks.clone()
}

#[test]
fn a_large_files_chunks_are_kept_when_they_describe_it_exactly() {
    let chunks = chunked_toc(|_| {});
    let d = Digest::of(&[7u8; 100]);
    let chunk = |at, offset, end, zeros| Chunk { at, size: 100, offset, end, digest: d, zeros };
    assert_eq!(chunks, vec![chunk(0, 10, 40, false), chunk(100, 40, 70, false), chunk(200, 70, 100, true)]);

    // Tables that do not describe the file are dropped: it is fetched whole.
    type Edit = fn(&mut Vec<serde_json::Value>);
    let cases: [(&str, Edit); 6] = [
        ("a gap", |e| e[1]["chunkOffset"] = 120.into()),
        ("an overlap", |e| e[2]["chunkOffset"] = 150.into()),
        ("short of the size", |e| e[2]["chunkSize"] = 50.into()),
        ("frames out of order", |e| e[1]["offset"] = 80.into()),
        ("frames outside the file's", |e| e[1]["offset"] = 5.into()),
        ("an empty data chunk", |e| e[2]["offset"] = 40.into()),
    ];
    for (what, edit) in cases {
        assert_eq!(chunked_toc(edit), vec![], "{what}");
    }
    // One chunk is no table.
    assert_eq!(
        chunked_toc(|e| {
            e.drain(1..3);
            e[0]["chunkSize"] = 300.into();
        }),
        vec![]
    );
}
