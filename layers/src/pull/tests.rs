//! End-to-end pulls from an in-process fake registry on 127.0.0.1:0.

use super::*;
use crate::layout::StoreLayout;
use crate::manifest::{DOCKER_LAYER_GZIP, OCI_CONFIG, OCI_INDEX, OCI_LAYER_TAR, OCI_LAYER_ZSTD, OCI_MANIFEST};
use crate::registry::RegistryConfig;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Path -> (content type, body); `/v2/` answers 200. Blobs can be overridden
/// (served bytes differ from their digest) to simulate a broken registry.
#[derive(Default)]
struct Content {
    routes: HashMap<String, (String, Vec<u8>)>,
}

struct FakeRegistry {
    addr: String,
    content: Arc<Mutex<Content>>,
}

impl FakeRegistry {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let content = Arc::new(Mutex::new(Content::default()));
        let c = content.clone();
        // The thread ends with the test process; each connection gets its own thread.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let c = c.clone();
                std::thread::spawn(move || serve(stream, &c));
            }
        });
        FakeRegistry { addr, content }
    }
    fn put(&self, path: String, content_type: &str, body: Vec<u8>) {
        self.content.lock().unwrap().routes.insert(path, (content_type.to_string(), body));
    }
}

fn serve(stream: TcpStream, content: &Mutex<Content>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
        }
        let found = if target == "/v2/" {
            Some(("application/json".to_string(), b"{}".to_vec()))
        } else {
            content.lock().unwrap().routes.get(&target).cloned()
        };
        let (status, ct, body) = match found {
            Some((ct, body)) => ("200 OK", ct, body),
            None => ("404 Not Found", "application/json".into(), br#"{"errors":[{"code":"BLOB_UNKNOWN"}]}"#.to_vec()),
        };
        let head = format!("HTTP/1.1 {status}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n", body.len());
        if stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(&body)).is_err() {
            return;
        }
    }
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": Digest::of(data).to_string(), "size": data.len()})
}

/// A published two-layer image (gzip + zstd) behind a multi-platform index.
struct Published {
    registry: FakeRegistry,
    reference: Reference,
    tars: Vec<Vec<u8>>,
    blobs: Vec<Vec<u8>>,
    config_digest: Digest,
    index_digest: Digest,
    manifest_digest: Digest,
}

fn publish(layer_types: &[&str]) -> Published {
    let registry = FakeRegistry::start();
    let repo = "test/app";
    let files: [&[(&str, &[u8])]; 3] = [
        &[("bin/sh", b"#!shell"), ("etc/os-release", b"ID=strata\n"), ("shared", b"same bytes")],
        &[("app/run", b"#!app"), ("app/copy", b"same bytes")],
        &[("extra", &[9u8; 70_000])],
    ];
    let mut tars = Vec::new();
    let mut blobs = Vec::new();
    let mut layer_descs = Vec::new();
    for (files, mt) in files.iter().zip(layer_types) {
        let tar = tar_of(files);
        let blob = match *mt {
            DOCKER_LAYER_GZIP => gzip(&tar),
            OCI_LAYER_ZSTD => zstd::encode_all(tar.as_slice(), 3).unwrap(),
            _ => tar.clone(),
        };
        registry.put(format!("/v2/{repo}/blobs/{}", Digest::of(&blob)), "application/octet-stream", blob.clone());
        layer_descs.push(descriptor(mt, &blob));
        tars.push(tar);
        blobs.push(blob);
    }
    let diff_ids: Vec<String> = tars.iter().map(|t| Digest::of(t).to_string()).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": Platform::host().architecture, "os": "linux", "created": "2025-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_digest = Digest::of(&config);
    registry.put(format!("/v2/{repo}/blobs/{config_digest}"), "application/octet-stream", config.clone());
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, &config), "layers": layer_descs,
    }))
    .unwrap();
    let manifest_digest = Digest::of(&manifest);
    registry.put(format!("/v2/{repo}/manifests/{manifest_digest}"), OCI_MANIFEST, manifest.clone());
    let host = Platform::host();
    let mut entry = descriptor(OCI_MANIFEST, &manifest);
    entry["platform"] = serde_json::json!({"os": "linux", "architecture": host.architecture});
    let other = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": Digest::of(b"elsewhere").to_string(), "size": 9,
        "platform": {"os": "linux", "architecture": "s390x"}});
    let index = serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [other, entry]}),
    )
    .unwrap();
    let index_digest = Digest::of(&index);
    registry.put(format!("/v2/{repo}/manifests/latest"), OCI_INDEX, index.clone());
    registry.put(format!("/v2/{repo}/manifests/{index_digest}"), OCI_INDEX, index);
    let reference = format!("{}/{repo}:latest", registry.addr).parse().unwrap();
    Published { registry, reference, tars, blobs, config_digest, index_digest, manifest_digest }
}

fn client() -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        connect_timeout: std::time::Duration::from_secs(10),
        read_timeout: std::time::Duration::from_secs(10),
        ..Default::default()
    })
}

fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreLayout::new(dir.path().join("root"))).unwrap();
    (dir, store)
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl PullProgress for Recorder {
    fn resolved(&self, _r: &Reference, d: &Digest) {
        self.0.lock().unwrap().push(format!("resolved {}", d.short()));
    }
    fn layer_started(&self, d: &Digest, size: u64) {
        self.0.lock().unwrap().push(format!("start {} {size}", d.short()));
    }
    fn layer_already_exists(&self, d: &Digest) {
        self.0.lock().unwrap().push(format!("exists {}", d.short()));
    }
    fn layer_done(&self, d: &Digest) {
        self.0.lock().unwrap().push(format!("done {}", d.short()));
    }
}

impl Recorder {
    fn count(&self, prefix: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|l| l.starts_with(prefix)).count()
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

const TYPES: [&str; 3] = [DOCKER_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_LAYER_TAR];

#[test]
fn pulls_a_multi_layer_image_through_an_index() {
    let p = publish(&TYPES);
    let (_d, store) = new_store();
    let progress = Recorder::default();
    let out = pull(&store, &client(), &p.reference, None, &progress).unwrap();

    assert!(out.updated);
    assert_eq!(out.digest, p.index_digest);
    assert_eq!(out.status_line(), format!("Status: Downloaded newer image for {}/test/app:latest", p.registry.addr));
    let rec = &out.record;
    assert_eq!(rec.id, p.config_digest);
    assert_eq!(rec.manifest_digest, p.manifest_digest);
    assert_eq!(rec.index_digest, Some(p.index_digest));
    assert_eq!(rec.repo_digests, vec![format!("{}/test/app@{}", p.registry.addr, p.index_digest)]);
    assert_eq!(rec.layers.len(), 3);
    assert_eq!(rec.layers[0].unpacked_size, 7 + 10 + 10);
    assert_eq!(rec.size, 27 + 5 + 10 + 70_000);
    assert_eq!(progress.count("start"), 3);
    assert_eq!(progress.count("done"), 3);

    // Everything is in the store and verifiable.
    for (i, l) in rec.layers.iter().enumerate() {
        assert_eq!(l.diff_id, Digest::of(&p.tars[i]));
        assert_eq!(store.read_blob(&l.blob_digest).unwrap(), p.blobs[i]);
        for e in store.layer_index(&l.diff_id).unwrap().entries {
            if let EntryKind::File { digest, .. } = e.kind {
                assert_eq!(Digest::of(&std::fs::read(store.object_path(&digest)).unwrap()), digest);
            }
        }
    }
    store.read_blob(&p.manifest_digest).unwrap();
    store.read_blob(&p.index_digest).unwrap();
    assert_eq!(rec.config(&store).unwrap().container_config().cmd, Some(vec!["/bin/sh".to_string()]));
    assert_eq!(store.image(&rec.id).unwrap().as_ref(), Some(rec));
    let by_tag = store.resolve_image(&format!("{}/test/app", p.registry.addr)).unwrap();
    let by_digest = store.resolve_image(&format!("{}/test/app@{}", p.registry.addr, p.index_digest)).unwrap();
    assert_eq!((by_tag.id, by_digest.id), (rec.id, rec.id));
    assert!(walk(&store.layout().tmp_dir()).is_empty());

    // Again: nothing to download, up to date.
    let again = Recorder::default();
    let out = pull(&store, &client(), &p.reference, None, &again).unwrap();
    assert!(!out.updated);
    assert!(out.status_line().starts_with("Status: Image is up to date for "));
    assert_eq!(again.count("exists"), 3);
    assert_eq!(again.count("start"), 0);
}

#[test]
fn concurrent_pulls_of_the_same_image_both_succeed() {
    let p = publish(&TYPES);
    let (_d, store) = new_store();
    let c = client();
    let ids: Vec<Digest> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2).map(|_| s.spawn(|| pull(&store, &c, &p.reference, None, &NoProgress))).collect();
        hs.into_iter().map(|h| h.join().unwrap().unwrap().record.id).collect()
    });
    assert_eq!(ids, vec![p.config_digest, p.config_digest]);
    assert_eq!(store.images().unwrap().len(), 1);
    assert!(walk(&store.layout().tmp_dir()).is_empty());
}

/// Pulls with layer 1's served bytes replaced; checks the error and that
/// the store gained nothing but what it had.
fn assert_pull_refused(served: impl FnOnce(&[u8]) -> Vec<u8>, needles: &[&str]) {
    let p = publish(&[DOCKER_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_TAR]);
    let blob_path = format!("/v2/test/app/blobs/{}", Digest::of(&p.blobs[1]));
    p.registry.put(blob_path, "application/octet-stream", served(&p.blobs[1]));
    let (_d, store) = new_store();
    let before: Vec<PathBuf> =
        ["objects", "layers", "blobs", "images"].iter().flat_map(|d| walk(&store.layout().root().join(d))).collect();
    let err = pull(&store, &client(), &p.reference, None, &NoProgress).unwrap_err().to_string();
    for n in needles {
        assert!(err.contains(n), "error {err:?} lacks {n:?}");
    }
    let after: Vec<PathBuf> =
        ["objects", "layers", "blobs", "images"].iter().flat_map(|d| walk(&store.layout().root().join(d))).collect();
    assert_eq!(before, after, "a refused pull changed the store");
    assert!(walk(&store.layout().tmp_dir()).is_empty(), "staging left behind");
    assert!(store.references().unwrap().is_empty());
}

#[test]
fn refuses_a_corrupt_blob() {
    // Same size, valid tar, different content: the blob digest is wrong.
    assert_pull_refused(
        |orig| {
            let mut t = tar_of(&[("app/run", b"#!evi"), ("app/copy", b"same bytes")]);
            t.resize(orig.len(), 0);
            t
        },
        &["digest mismatch: expected sha256:", "the registry served corrupt data"],
    );
}

#[test]
fn refuses_a_truncated_blob() {
    assert_pull_refused(|orig| orig[..orig.len() / 2].to_vec(), &["unexpected EOF"]);
}

#[test]
fn refuses_an_oversized_blob() {
    assert_pull_refused(
        |orig| {
            let mut v = orig.to_vec();
            v.extend_from_slice(&[0u8; 4096]);
            v
        },
        &["larger than the"],
    );
}

#[test]
fn reports_a_missing_platform() {
    let p = publish(&TYPES);
    let (_d, store) = new_store();
    let err = pull(&store, &client(), &p.reference, Some("linux/riscv64".parse().unwrap()), &NoProgress).unwrap_err();
    assert!(err.to_string().contains("riscv64"), "{err}");
}

#[test]
fn a_killed_pull_leaves_a_usable_store() {
    let p = publish(&TYPES);
    let (_d, store) = new_store();
    // What a pull killed at various points leaves behind: staging debris,
    // a partial temp blob, an object renamed into place before the index,
    // a layer directory created just before its index was written.
    let l = store.layout();
    std::fs::create_dir_all(l.tmp_dir().join("layer-killed")).unwrap();
    std::fs::write(l.tmp_dir().join("layer-killed").join("big-0"), b"partial").unwrap();
    std::fs::write(l.tmp_dir().join(".blob-killed"), &p.blobs[0][..10]).unwrap();
    let obj = store.object_path(&Digest::of(b"#!shell"));
    std::fs::create_dir_all(obj.parent().unwrap()).unwrap();
    std::fs::write(&obj, b"#!shell").unwrap();
    std::fs::create_dir_all(l.layer_dir(&Digest::of(&p.tars[0]))).unwrap();
    assert!(store.images().unwrap().is_empty());
    assert!(store.resolve_image("anything").is_err());

    let out = pull(&store, &client(), &p.reference, None, &NoProgress).unwrap();
    assert!(out.updated);
    assert_eq!(store.layer_index(&Digest::of(&p.tars[0])).unwrap().entries.len(), 3);
    let lock = store.lock_exclusive().unwrap();
    store.gc(&lock).unwrap();
    assert!(walk(&l.tmp_dir()).is_empty());
    assert!(store.has_object(&Digest::of(b"#!shell")));
    assert_eq!(store.resolve_image(&p.config_digest.hex()[..12]).unwrap().id, p.config_digest);
}
