//! Self-tests of the harness pieces (fixtures, real registry, fake registry,
//! listings, tar builder, unprivileged runs), independent of strata's own
//! commands, so that a failing e2e test can be trusted to be strata's fault.

use std::io::Read;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;
use strata_e2e::listing::{canonical_listing, find_line};
use strata_e2e::registry::{http_get, try_http_get};
use strata_e2e::tarball::TarBuilder;
use strata_e2e::*;

#[test]
fn fixtures_have_every_tag_and_zstd_layers() {
    let f = fixtures();
    let index = std::fs::read_to_string(f.oci.join("index.json")).unwrap();
    for tag in ["busybox", "full", "amd64", "arm64", "multi"] {
        assert!(index.contains(&format!("\"org.opencontainers.image.ref.name\":\"{tag}\"")), "tag {tag} missing");
    }
    let full = FakeImage::from_oci_layout(&f.oci, "full");
    assert_eq!(full.layer_digests.len(), 5, "full has busybox's layer plus four");
    let busybox = FakeImage::from_oci_layout(&f.oci, "busybox");
    assert_eq!(full.layer_digests[0], busybox.layer_digests[0], "full shares busybox's layer");
    let zstd = FakeImage::from_oci_layout(&f.zstd, "full");
    for d in &zstd.layer_digests {
        assert_eq!(&zstd.blobs[d][..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd layer {d}");
    }
}

#[test]
fn reference_listing_of_full_has_every_case() {
    let l = unpack_reference(&fixtures().oci, "full");
    let line = |p: &str| find_line(&l, p).unwrap_or_else(|| panic!("{p} missing from listing:\n{l}")).to_string();
    assert!(line("/data/perm/setuid").starts_with("/data/perm/setuid f 4755 0 0 2 "));
    assert!(line("/data/perm/sticky").starts_with("/data/perm/sticky d 1777 0 0 0 -"));
    assert!(line("/data/own/u12345").contains(" f 0644 12345 54321 "));
    assert!(line("/data/own/www").starts_with("/data/own/www d 0750 33 33 "));
    assert!(line("/data/chown-only").contains(" 4242 4343 "));
    assert!(line("/data/chmod-only").contains(" f 0600 "));
    assert_eq!(line("/data/chardev"), "/data/chardev c 0600 0 0 0 - 1,3");
    assert_eq!(line("/data/blockdev"), "/data/blockdev b 0600 0 0 0 - 7,0");
    assert_eq!(line("/data/fifo"), "/data/fifo p 0640 0 0 0 -");
    assert_eq!(line("/data/links/abs"), "/data/links/abs l 0777 0 0 0 /etc/passwd");
    assert_eq!(line("/data/links/rel"), "/data/links/rel l 0777 0 0 0 ../text");
    assert!(line("/data/xattr").ends_with(" user.x=79"));
    assert!(line("/data/xattr-pax").ends_with(&format!(" user.crafted={}", hex::encode("pax-value"))));
    assert!(line("/data/empty").ends_with(&format!(" 0 {}", sha256_hex(b""))));
    assert!(line("/data/big.bin").contains(" 52428800 "));
    assert!(line("/data/d2f").contains(" f "), "directory replaced by a file");
    assert!(line("/data/f2d").contains(" d "), "file replaced by a directory");
    assert!(line("/data/f2d/inner").contains(" f "));
    assert!(find_line(&l, "/data/d2f/child").is_none());
    assert!(find_line(&l, "/data/gone.txt").is_none(), "whiteout");
    assert!(find_line(&l, "/data/gonedir").is_none(), "whiteout of a directory");
    assert!(find_line(&l, "/data/gonedir/sub/x").is_none());
    assert!(find_line(&l, "/bin/ls").is_none(), "whiteout of a symlink");
    assert!(find_line(&l, "/data/opq/a").is_none() && find_line(&l, "/data/opq/b").is_none(), "opaque dir");
    assert!(find_line(&l, "/data/opq/new").is_some());
    assert!(!l.contains(".wh."), "no whiteout entry may show");
    let hl: Vec<String> = ["/data/hl/a", "/data/hl/b", "/data/hl/c"].iter().map(|p| line(p)).collect();
    assert!(hl.iter().all(|h| h.split(' ').nth(6) == hl[0].split(' ').nth(6)), "hardlinks share content");
    assert!(l.lines().any(|x| x.starts_with("/data/") && x.split(' ').next().unwrap().len() > 255), "long path");
    assert!(l.lines().any(|x| x.rsplit('/').next().unwrap().split(' ').next().unwrap().len() > 100), "long name");
    assert!(line("/etc/motd").contains(&sha256_hex(b"changed in layer 3\n")));
    let sorted = {
        let mut v: Vec<&str> = l.lines().collect();
        v.sort();
        v.join("\n") + "\n"
    };
    assert_eq!(l, sorted);
}

#[test]
fn canonical_listing_escapes_and_sorts() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("a b"), b"x").unwrap();
    std::fs::create_dir(t.path().join("a")).unwrap();
    std::fs::write(t.path().join("a/back\\slash"), b"").unwrap();
    std::os::unix::fs::symlink("t a", t.path().join("l")).unwrap();
    let l = canonical_listing(t.path());
    let lines: Vec<&str> = l.lines().collect();
    assert_eq!(lines.len(), 4, "{l}");
    assert!(lines[0].starts_with("/a d "), "{l}");
    assert!(lines[1].starts_with("/a/back\\x5cslash f "), "{l}");
    assert!(lines[2].starts_with("/a\\x20b f ") && lines[2].contains(&format!(" 1 {}", sha256_hex(b"x"))));
    assert!(lines[3].ends_with(" 0 t\\x20a"), "{l}");
}

#[test]
fn real_registry_serves_pushed_images() {
    let f = fixtures();
    let reg = Registry::start();
    let r = reg.push_oci_layout(&f.oci, "busybox", "e2e/busybox:1");
    assert_eq!(r, format!("127.0.0.1:{}/e2e/busybox:1", reg.port()));
    let local = FakeImage::from_oci_layout(&f.oci, "busybox");
    assert_eq!(reg.manifest_digest("e2e/busybox", "1"), local.manifest_digest(), "pushed unchanged");
    reg.push_docker_v2s2(&f.oci, "busybox", "e2e/busybox:v2s2");
    let m = reg.manifest("e2e/busybox", "v2s2");
    assert!(String::from_utf8_lossy(&m.body).contains("application/vnd.docker.distribution.manifest.v2+json"));
    reg.push_zstd(&f.zstd, "full", "e2e/full:zstd");
    reg.push_index(&f.oci, "multi", "e2e/multi:1");
    let idx = reg.manifest("e2e/multi", "1");
    let v: serde_json::Value = serde_json::from_slice(&idx.body).unwrap();
    let archs: Vec<&str> =
        v["manifests"].as_array().unwrap().iter().map(|m| m["platform"]["architecture"].as_str().unwrap()).collect();
    assert_eq!(archs, ["amd64", "arm64"]);
}

#[test]
fn auth_registry_requires_credentials() {
    let f = fixtures();
    let reg = Registry::start_with_auth("alice", "s3cret");
    reg.push_oci_layout(&f.oci, "busybox", "private/busybox:1");
    let anon = http_get(reg.port(), "/v2/private/busybox/manifests/1", &[], None, 0);
    assert_eq!(anon.status, 401);
    assert!(anon.header("www-authenticate").unwrap_or_default().starts_with("Basic"));
    let _ = reg.manifest("private/busybox", "1"); // with credentials
    let wrong = http_get(reg.port(), "/v2/", &[], Some("Basic YWxpY2U6d3Jvbmc="), 0);
    assert_eq!(wrong.status, 401);
}

#[test]
fn fake_registry_serves_and_misbehaves() {
    let f = fixtures();
    let fake = FakeRegistry::start();
    let img = FakeImage::from_oci_layout(&f.oci, "busybox");
    fake.serve("lib/bb:1", img.clone());
    let p = fake.port();
    let layer = &img.layer_digests[0];
    let blob_path = format!("/v2/lib/bb/blobs/{layer}");
    let m = http_get(p, "/v2/lib/bb/manifests/1", &[], None, usize::MAX);
    assert_eq!(m.status, 200);
    assert_eq!(m.body, img.manifest);
    assert_eq!(m.header("docker-content-digest"), Some(img.manifest_digest().as_str()));
    let by_digest = http_get(p, &format!("/v2/lib/bb/manifests/{}", img.manifest_digest()), &[], None, usize::MAX);
    assert_eq!(by_digest.body, img.manifest);
    let b = http_get(p, &blob_path, &[], None, usize::MAX);
    assert_eq!(format!("sha256:{}", sha256_hex(&b.body)), *layer);
    assert_eq!(fake.count("GET", &blob_path), 1);

    fake.set_fault(Some(Fault::WrongDigestBlob));
    let b = http_get(p, &blob_path, &[], None, usize::MAX);
    assert_eq!(b.body.len(), img.blobs[layer].len());
    assert_ne!(format!("sha256:{}", sha256_hex(&b.body)), *layer);

    fake.set_fault(Some(Fault::TruncatedBlob));
    let b = http_get(p, &blob_path, &[], None, usize::MAX);
    assert_eq!(b.body.len(), img.blobs[layer].len() / 2);

    for (fault, status) in
        [(Fault::ManifestNotFound, 404), (Fault::NotFound, 404), (Fault::Unauthorized, 401), (Fault::ServerError, 500)]
    {
        fake.set_fault(Some(fault));
        assert_eq!(http_get(p, "/v2/lib/bb/manifests/1", &[], None, 0).status, status, "{fault:?}");
    }
    fake.set_fault(Some(Fault::NonJsonManifest));
    let m = http_get(p, "/v2/lib/bb/manifests/1", &[], None, usize::MAX);
    assert!(serde_json::from_slice::<serde_json::Value>(&m.body).is_err());
    fake.set_fault(Some(Fault::UnknownManifestMediaType));
    let m = http_get(p, "/v2/lib/bb/manifests/1", &[], None, usize::MAX);
    assert!(m.header("content-type").unwrap().contains("unknown"));

    // Hang: the request is recorded, no byte comes back.
    fake.set_fault(Some(Fault::Hang));
    let seen = fake.requests().len();
    let mut s = TcpStream::connect(("127.0.0.1", p)).unwrap();
    std::io::Write::write_all(&mut s, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    wait_until("the hanging request to be recorded", Duration::from_secs(10), || fake.requests().len() > seen);
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 1];
    assert!(s.read(&mut buf).is_err(), "a hanging registry must not answer");

    // Stall: half the blob, then the rest once the fault is cleared.
    fake.set_fault(Some(Fault::StallBlobs));
    let bp = blob_path.clone();
    let t = std::thread::spawn(move || try_http_get(p, &bp, &[], None, usize::MAX));
    fake.wait_for_stall(Duration::from_secs(30));
    fake.set_fault(None);
    let b = t.join().unwrap().expect("stalled transfer completes");
    assert_eq!(format!("sha256:{}", sha256_hex(&b.body)), *layer);
}

#[test]
fn tar_builder_writes_what_it_is_told() {
    let tar = TarBuilder::new()
        .dir("a", 0o755)
        .file("../../tmp/escape", 0o644, b"x")
        .file("/etc/abs", 0o600, b"y")
        .symlink("l", "/etc")
        .hardlink("h", "../../outside")
        .file(&format!("{}/{}", "d".repeat(60), "n".repeat(90)), 0o644, b"z")
        .finish();
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("x.tar");
    std::fs::write(&path, &tar).unwrap();
    let list = run_tool(Command::new("tar").arg("-tvf").arg(&path));
    for want in
        ["../../tmp/escape", "/etc/abs", "l -> /etc", "h link to", &format!("{}/{}", "d".repeat(60), "n".repeat(90))]
    {
        assert!(list.contains(want), "{want} not in:\n{list}");
    }
    assert!(tar.windows(13).any(|w| w == b"../../outside"), "link target kept verbatim");
    // The hostile image builds and its diff_id is the tar's digest.
    let img = FakeImage::from_layers(std::slice::from_ref(&tar));
    let cfg: serde_json::Value = serde_json::from_slice(&img.blobs[&img.config_digest]).unwrap();
    assert_eq!(cfg["rootfs"]["diff_ids"][0], format!("sha256:{}", sha256_hex(&tar)));
}

#[test]
fn store_fingerprint_sees_changes_but_not_locks() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("blobs/sha256")).unwrap();
    std::fs::write(t.path().join("blobs/sha256/aa"), b"1").unwrap();
    let before = StoreFingerprint::of(t.path());
    std::fs::write(t.path().join("lock"), b"").unwrap();
    std::fs::create_dir_all(t.path().join("tmp/x")).unwrap();
    before.assert_unchanged(&StoreFingerprint::of(t.path()), "locks and tmp");
    std::fs::write(t.path().join("blobs/sha256/aa"), b"2").unwrap();
    assert_ne!(before, StoreFingerprint::of(t.path()));
}

#[test]
fn strata_runs_as_root_and_as_the_test_user() {
    let s = Strata::new();
    let v = s.ok(&["--version"]);
    assert!(v.starts_with("strata"), "{v}");
    let u = Strata::new_unprivileged();
    use std::os::unix::fs::PermissionsExt;
    assert!(u.bin().starts_with(std::env::temp_dir()));
    assert_eq!(std::fs::metadata(u.bin()).unwrap().permissions().mode() & 0o777, 0o755);
    let v2 = u.ok(&["--version"]);
    assert_eq!(v, v2);
    // The unprivileged instance really runs as strata-test: its home is its own.
    use std::os::unix::fs::MetadataExt;
    let uid = nix::unistd::User::from_name(TEST_USER).unwrap().unwrap().uid.as_raw();
    assert_eq!(std::fs::metadata(u.home()).unwrap().uid(), uid);
}
