//! Store tests: records, tags, name resolution, rmi and gc, on real files.

use super::*;
use crate::image::{ImageRecord, LayerRecord};
use crate::ingest::ingest_layer;
use crate::reference::Reference;
use std::collections::BTreeSet;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreLayout::new(dir.path().join("root"))).unwrap();
    (dir, store)
}

fn r(s: &str) -> Reference {
    s.parse().unwrap()
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Stores an image made of `layers` (each a list of files), with a config
/// that differs by `salt`, and returns its record (not tagged).
fn image(store: &Store, salt: &str, layers: &[&[(&str, &[u8])]]) -> ImageRecord {
    let mut recs = Vec::new();
    for files in layers {
        let tar = tar_of(files);
        let diff_id = Digest::of(&tar);
        let idx = ingest_layer(store, tar.as_slice(), &diff_id).unwrap();
        let blob = store.put_blob(&tar).unwrap();
        let unpacked =
            idx.entries.iter().map(|e| if let crate::EntryKind::File { size, .. } = e.kind { size } else { 0 }).sum();
        recs.push(LayerRecord {
            diff_id,
            blob_digest: blob,
            blob_media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            blob_size: tar.len() as u64,
            unpacked_size: unpacked,
            lazy_toc: None,
        });
    }
    let diff_ids: Vec<String> = recs.iter().map(|l| format!("\"{}\"", l.diff_id)).collect();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","created":"2024-01-0{}T00:00:00Z","config":{{"Env":["SALT={salt}"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        salt.len() % 9 + 1,
        diff_ids.join(",")
    );
    let id = store.put_blob(config.as_bytes()).unwrap();
    let manifest = store.put_blob(format!("{{\"manifest\":\"{salt}\"}}").as_bytes()).unwrap();
    let rec = ImageRecord {
        id,
        manifest_digest: manifest,
        manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        index_digest: None,
        size: recs.iter().map(|l| l.unpacked_size).sum(),
        layers: recs,
        repo_digests: vec![],
        created: None,
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    };
    store.put_image(&rec).unwrap();
    rec
}

fn lines(v: &[Removed]) -> Vec<String> {
    v.iter().map(|l| l.to_string()).collect()
}

fn files_under(dir: &std::path::Path) -> BTreeSet<std::path::PathBuf> {
    let mut out = BTreeSet::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.insert(p);
        }
    }
    out
}

#[test]
fn open_creates_private_layout() {
    let (_d, store) = store();
    for d in [store.layout.blobs_dir(), store.layout.objects_dir(), store.layout.layers_dir(), store.layout.tmp_dir()] {
        let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    let root_mode = fs::metadata(store.layout.root()).unwrap().permissions().mode() & 0o077;
    assert_eq!(root_mode & 0o066, 0, "root must not be readable or writable by others");
    // Opening again is fine.
    Store::open(store.layout.clone()).unwrap();
}

#[test]
fn atomic_writes_leave_no_temp_files() {
    let (_d, store) = store();
    let p = store.layout.root().join("rec.json");
    store.write_atomic(&p, b"one", 0o600).unwrap();
    store.write_atomic(&p, b"two", 0o600).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"two");
    assert!(files_under(&store.layout.tmp_dir()).is_empty());
}

#[test]
fn blobs_are_verified() {
    let (_d, store) = store();
    let d = store.put_blob(b"hello").unwrap();
    assert!(store.has_blob(&d));
    assert_eq!(store.read_blob(&d).unwrap(), b"hello");
    let mode = fs::metadata(store.blob_path(&d)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444);
    // Wrong content under a digest is refused, both ways in.
    let other = Digest::of(b"other");
    let err = store.put_blob_verified(b"hello", &other).unwrap_err().to_string();
    assert!(err.contains("digest mismatch"), "{err}");
    let mut t = store.temp_blob().unwrap();
    t.write_all(b"hello").unwrap();
    assert!(store.put_blob_from_temp(t, &other).is_err());
    assert!(!store.has_blob(&other));
    // A corrupted stored blob is detected on read.
    let p = store.blob_path(&d);
    fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
    fs::write(&p, b"tampered").unwrap();
    assert!(store.read_blob(&d).unwrap_err().to_string().contains("digest mismatch"));
}

#[test]
fn tags_and_resolution() {
    let (_d, store) = store();
    let a = image(&store, "a", &[&[("f", b"1")]]);
    let b = image(&store, "bb", &[&[("g", b"2")]]);
    store.tag(&a.id, &r("busybox")).unwrap();
    store.tag(&a.id, &r("localhost:5000/x/y:v1")).unwrap();
    let digest_ref = r("busybox").with_digest(a.manifest_digest);
    store.update_records(|recs| recs.set_reference(&digest_ref, &a.id)).unwrap();

    let id_of = |s: &str| store.resolve_image(s).map(|rec| rec.id);
    for name in [
        "busybox",
        "busybox:latest",
        "library/busybox",
        "docker.io/library/busybox:latest",
        "localhost:5000/x/y:v1",
        &format!("busybox@{}", a.manifest_digest),
        &a.id.to_string(),
        &a.id.hex(),
        &a.id.hex()[..12],
        &format!("sha256:{}", &a.id.hex()[..8]),
    ] {
        assert_eq!(id_of(name).unwrap(), a.id, "{name}");
    }
    assert_eq!(id_of(&b.id.hex()[..4]).unwrap_or(a.id), if a.id.hex()[..4] == b.id.hex()[..4] { a.id } else { b.id });

    for missing in
        ["busybox:1.36", "alpine", "localhost:5000/x/y", "0000", &Digest::of(b"nope").to_string(), "Bad Name"]
    {
        let err = id_of(missing).unwrap_err().to_string();
        assert_eq!(err, format!("No such image: {missing}"));
    }
    // Too short to be an ID prefix.
    assert!(id_of(&a.id.hex()[..3]).is_err());

    let mut refs: Vec<String> = store.tags_of(&a.id).unwrap().iter().map(|r| r.familiar_string()).collect();
    refs.sort();
    assert_eq!(
        refs,
        vec!["busybox:latest".to_string(), format!("busybox@{}", a.manifest_digest), "localhost:5000/x/y:v1".into()]
    );
    assert!(store.tags_of(&b.id).unwrap().is_empty());

    // Moving a tag leaves the old image dangling.
    store.tag(&b.id, &r("busybox")).unwrap();
    assert_eq!(id_of("busybox").unwrap(), b.id);
    assert_eq!(store.untag(&r("busybox")).unwrap(), Some(b.id));
    assert!(id_of("busybox").is_err());
    // Tagging a missing image and tagging with a digest are refused.
    assert!(store.tag(&Digest::of(b"none"), &r("x")).is_err());
    assert!(store.tag(&a.id, &digest_ref).is_err());
}

#[test]
fn ambiguous_prefix() {
    let (_d, store) = store();
    // Find two images whose IDs share 4 hex digits.
    let mut seen = std::collections::HashMap::new();
    for i in 0.. {
        let rec = image(&store, &format!("salt-{i}"), &[]);
        if let Some(other) = seen.insert(rec.id.hex()[..4].to_string(), rec.id) {
            let prefix = &rec.id.hex()[..4];
            let err = store.resolve_image(prefix).unwrap_err().to_string();
            assert_eq!(err, format!("multiple IDs found with provided prefix: {prefix}"));
            // A longer, unique prefix still resolves.
            let n = (0..64).find(|&n| rec.id.hex()[..n] != other.hex()[..n]).unwrap();
            assert_eq!(store.resolve_image(&rec.id.hex()[..n]).unwrap().id, rec.id);
            return;
        }
        assert!(i < 2000);
    }
}

#[test]
fn rmi_by_reference_and_by_id() {
    let (_d, store) = store();
    let a = image(&store, "a", &[&[("f", b"1")]]);
    store.tag(&a.id, &r("busybox")).unwrap();
    store.tag(&a.id, &r("busybox:1")).unwrap();
    store.tag(&a.id, &r("other")).unwrap();
    let digest_ref = r("busybox").with_digest(a.manifest_digest);
    store.update_records(|recs| recs.set_reference(&digest_ref, &a.id)).unwrap();
    let lock = store.lock_exclusive().unwrap();

    // By ID with references in two repositories: refused without force.
    let err = store.remove_image(&lock, &a.id.hex()[..12], false).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
            a.id.short()
        )
    );
    // By reference: untag only while others remain.
    assert_eq!(lines(&store.remove_image(&lock, "busybox", false).unwrap()), vec!["Untagged: busybox:latest"]);
    assert_eq!(lines(&store.remove_image(&lock, "other:latest", false).unwrap()), vec!["Untagged: other:latest"]);
    // The last tag of the repository takes its digest references with it, then the image goes.
    let out = lines(&store.remove_image(&lock, "busybox:1", false).unwrap());
    assert_eq!(
        out,
        vec![
            "Untagged: busybox:1".to_string(),
            format!("Untagged: busybox@{}", a.manifest_digest),
            format!("Deleted: {}", a.id),
            format!("Deleted: {}", a.layers[0].diff_id),
        ]
    );
    assert!(store.image(&a.id).unwrap().is_none());
    assert!(store.references().unwrap().is_empty());
    let err = store.remove_image(&lock, "busybox", false).unwrap_err().to_string();
    assert_eq!(err, "No such image: busybox");

    // By ID with force: everything untagged, image deleted.
    let b = image(&store, "b", &[&[("g", b"2")]]);
    store.tag(&b.id, &r("x")).unwrap();
    store.tag(&b.id, &r("y")).unwrap();
    let out = lines(&store.remove_image(&lock, &b.id.to_string(), true).unwrap());
    assert_eq!(out[..2], ["Untagged: x:latest".to_string(), "Untagged: y:latest".to_string()]);
    assert_eq!(out[2], format!("Deleted: {}", b.id));
    // A single-repository image goes by ID without force.
    let c = image(&store, "c", &[&[("h", b"3")]]);
    store.tag(&c.id, &r("z:1")).unwrap();
    let out = lines(&store.remove_image(&lock, &c.id.hex()[..6], false).unwrap());
    assert_eq!(out[..2], ["Untagged: z:1".to_string(), format!("Deleted: {}", c.id)]);
}

#[test]
fn gc_keeps_what_remaining_images_share() {
    let (_d, store) = store();
    let base: &[(&str, &[u8])] = &[("bin/sh", b"shell"), ("etc/os-release", b"strata")];
    let a = image(&store, "a", &[base, &[("app-a", b"only in a"), ("shared-file", b"shared content")]]);
    let b = image(&store, "b", &[base, &[("app-b", b"only in b"), ("copy", b"shared content")]]);
    store.tag(&a.id, &r("a")).unwrap();
    store.tag(&b.id, &r("b")).unwrap();
    // Debris of a killed pull.
    fs::write(store.layout.tmp_dir().join(".blob-killed"), b"partial").unwrap();
    let orphan_object = store.layout.object_path(&Digest::of(b"orphan"));
    fs::create_dir_all(orphan_object.parent().unwrap()).unwrap();
    fs::write(&orphan_object, b"orphan").unwrap();

    let lock = store.lock_exclusive().unwrap();
    let out = lines(&store.remove_image(&lock, "a", false).unwrap());
    // The shared base layer (chain id = its diff_id) is not reported deleted.
    let chains = crate::image::chain_ids(&a.diff_ids());
    assert_eq!(
        out,
        vec!["Untagged: a:latest".to_string(), format!("Deleted: {}", a.id), format!("Deleted: {}", chains[1])]
    );
    let stats = store.gc(&lock).unwrap();
    assert_eq!(stats.layers, 1);
    assert_eq!(stats.objects, 2, "only-in-a and the orphan");
    assert!(stats.blobs >= 3, "config, manifest, layer blob of a");

    // b is intact: every object its layers name is present, blobs readable.
    for l in &b.layers {
        for e in store.layer_index(&l.diff_id).unwrap().entries {
            if let crate::EntryKind::File { digest, .. } = e.kind {
                assert!(store.has_object(&digest), "{} lost its object", String::from_utf8_lossy(&e.path));
            }
        }
        store.read_blob(&l.blob_digest).unwrap();
    }
    assert!(!store.has_object(&Digest::of(b"only in a")));
    assert!(store.has_object(&Digest::of(b"shared content")));
    assert!(!orphan_object.exists());
    assert!(!store.has_layer(&a.layers[1].diff_id));
    assert!(store.has_layer(&a.layers[0].diff_id));
    assert_eq!(b.config(&store).unwrap().rootfs.diff_ids, b.diff_ids());
    assert!(files_under(&store.layout.tmp_dir()).is_empty());

    let du = store.disk_usage().unwrap();
    assert_eq!((du.images, du.layers), (1, 2));
    assert!(du.objects_bytes > 0 && du.blobs_bytes > 0 && du.indexes_bytes > 0);

    // Removing the last image and collecting leaves empty areas.
    store.remove_image(&lock, "b", false).unwrap();
    store.gc(&lock).unwrap();
    assert!(files_under(&store.layout.objects_dir()).is_empty());
    assert!(files_under(&store.layout.blobs_dir()).is_empty());
    assert!(files_under(&store.layout.layers_dir()).is_empty());
}

#[test]
fn locks_exclude_each_other() {
    let (_d, store) = store();
    let shared = store.lock_shared().unwrap();
    let shared2 = store.lock_shared().unwrap();
    assert!(store.try_lock_exclusive().unwrap().is_none());
    assert!(!store.try_clean_tmp().unwrap());
    drop((shared, shared2));
    let ex = store.try_lock_exclusive().unwrap();
    assert!(ex.is_some());
    drop(ex);
    assert!(store.try_clean_tmp().unwrap());
}

/// A record being written (under the records lock only) keeps its
/// temporary file through a clean of `tmp/`; debris goes.
#[test]
fn cleaning_tmp_spares_record_writes_in_progress() {
    let (_d, store) = store();
    let writing = store.temp_file(RECORD_WRITE_PREFIX).unwrap();
    let debris = store.temp_file(".stage-").unwrap().into_temp_path().keep().unwrap();
    let old = store.temp_file(RECORD_WRITE_PREFIX).unwrap().into_temp_path().keep().unwrap();
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    File::options().write(true).open(&old).unwrap().set_modified(long_ago).unwrap();
    assert!(store.try_clean_tmp().unwrap());
    assert!(writing.path().exists(), "a record write in progress lost its file");
    assert!(!debris.exists());
    assert!(!old.exists(), "an old record write's debris stayed");
    writing.persist(store.layout.root().join("written")).unwrap();
}

#[test]
fn corrupt_records_are_reported() {
    let (_d, store) = store();
    fs::write(store.layout.tags_path(), b"{not json").unwrap();
    let err = store.resolve_image("busybox").unwrap_err().to_string();
    assert!(err.contains("corrupt store record") && err.contains("tags.json"), "{err}");
}
