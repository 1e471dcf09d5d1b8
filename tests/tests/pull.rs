//! `strata pull` end to end: every fixture variant against a real registry,
//! checked file by file against `umoci unpack`; rootless pulls; concurrent and
//! interrupted pulls; every refusal (bad blobs, error statuses, hangs, bad
//! manifests, hostile layers) leaving the store byte-identical; mirrors,
//! authentication, shared layers and "up to date".

use std::time::Duration;
use strata_e2e::tarball::TarBuilder;
use strata_e2e::*;

/// Asserts Docker's pull summary: the digest line, the status line and the
/// full reference as the last line.
#[track_caller]
fn assert_pulled(out: &str, reference: &str, digest: &str, status: &str) {
    assert!(out.contains(&format!("Digest: {digest}")), "no `Digest: {digest}` in:\n{out}");
    assert!(
        out.contains(&format!("Status: {status} for {reference}")),
        "no `Status: {status} for {reference}` in:\n{out}"
    );
    assert_eq!(out.lines().rfind(|l| !l.trim().is_empty()), Some(reference), "last line of:\n{out}");
}

const DOWNLOADED: &str = "Downloaded newer image";
const UP_TO_DATE: &str = "Image is up to date";

/// Pulls `reference` as root and as the unprivileged user into fresh stores;
/// both must report `digest` and give exactly `expected` (umoci's listing).
fn pull_both_ways(reference: &str, digest: &str, expected: &str, what: &str) {
    for s in [Strata::new(), Strata::new_unprivileged()] {
        let who = if s.is_unprivileged() { "as strata-test" } else { "as root" };
        let out = s.pull(reference);
        assert_pulled(&out, reference, digest, DOWNLOADED);
        assert_same_listing(expected, &s.tree(reference), &format!("{what}, {who}"));
    }
}

#[test]
fn pull_oci_gzip_image_matches_umoci() {
    let f = fixtures();
    let reg = Registry::start();
    let r = reg.push_oci_layout(&f.oci, "full", "e2e/full:1");
    pull_both_ways(&r, &reg.manifest_digest("e2e/full", "1"), &unpack_reference(&f.oci, "full"), "oci gzip");
}

#[test]
fn pull_docker_schema2_image_matches_umoci() {
    let f = fixtures();
    let reg = Registry::start();
    let r = reg.push_docker_v2s2(&f.oci, "full", "e2e/full:v2s2");
    let digest = reg.manifest_digest("e2e/full", "v2s2");
    pull_both_ways(&r, &digest, &unpack_reference(&f.oci, "full"), "docker schema2");
}

#[test]
fn pull_zstd_image_matches_umoci() {
    let f = fixtures();
    let reg = Registry::start();
    let r = reg.push_zstd(&f.zstd, "full", "e2e/full:zstd");
    // umoci cannot read zstd; the gzip image has the same uncompressed layers.
    pull_both_ways(&r, &reg.manifest_digest("e2e/full", "zstd"), &unpack_reference(&f.oci, "full"), "zstd");
}

#[test]
fn pull_busybox_matches_umoci() {
    let f = fixtures();
    let reg = Registry::start();
    let r = reg.push_oci_layout(&f.oci, "busybox", "library/busybox:1");
    pull_both_ways(&r, &reg.manifest_digest("library/busybox", "1"), &unpack_reference(&f.oci, "busybox"), "busybox");
}

#[test]
fn pull_index_picks_the_platform() {
    let f = fixtures();
    let reg = Registry::start();
    let r = reg.push_index(&f.oci, "multi", "e2e/multi:1");
    let index_digest = reg.manifest_digest("e2e/multi", "1");
    let s = Strata::new();
    let out = s.pull(&r);
    assert_pulled(&out, &r, &index_digest, DOWNLOADED);
    assert_same_listing(&unpack_reference(&f.oci, "amd64"), &s.tree(&r), "default platform (linux/amd64)");

    let out = s.ok(&["pull", "--platform", "linux/arm64", &r]);
    assert_pulled(&out, &r, &index_digest, DOWNLOADED);
    assert_same_listing(&unpack_reference(&f.oci, "arm64"), &s.tree(&r), "linux/arm64");
    let inspect: serde_json::Value = serde_json::from_str(&s.ok(&["inspect", &r])).expect("inspect prints JSON");
    assert_eq!(inspect[0]["Architecture"], "arm64");
    assert_eq!(inspect[0]["Os"], "linux");

    let u = Strata::new_unprivileged();
    u.ok(&["pull", "--platform", "linux/arm64", &r]);
    assert_same_listing(&unpack_reference(&f.oci, "arm64"), &u.tree(&r), "linux/arm64 as strata-test");

    let (_, err) = s.fails(&["pull", "--platform", "linux/s390x", &r]);
    assert_mentions(&err, &["s390x", "platform"], "pull of a platform the index lacks");
}

#[test]
fn unprivileged_store_belongs_to_the_user() {
    let f = fixtures();
    let reg = Registry::start();
    let r = reg.push_oci_layout(&f.oci, "full", "e2e/full:rootless");
    let u = Strata::new_unprivileged();
    u.pull(&r);
    // Everything in the store belongs to the user (so it can manage and
    // remove it without root), whatever owners the image records.
    use std::os::unix::fs::MetadataExt;
    let uid = nix::unistd::User::from_name(TEST_USER).unwrap().unwrap().uid.as_raw();
    let mut stack = vec![u.root()];
    let mut seen = 0;
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(m.uid(), uid, "{} is not owned by {TEST_USER}", p.display());
        seen += 1;
        if m.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(seen > 10, "the store holds the image");
    u.ok(&["rmi", &r]);
}

#[test]
fn concurrent_pulls_of_one_image_both_succeed() {
    let f = fixtures();
    let reg = Registry::start();
    let r = reg.push_oci_layout(&f.oci, "full", "e2e/full:conc");
    let s = Strata::new();
    let a = s.spawn(&["pull", &r]);
    let b = s.spawn(&["pull", &r]);
    let timeout = Duration::from_secs(300);
    let oa = strata_e2e::strata::wait_output(a, timeout, "first concurrent pull");
    let ob = strata_e2e::strata::wait_output(b, timeout, "second concurrent pull");
    for o in [&oa, &ob] {
        assert!(o.status.success(), "concurrent pull failed:\n{}", strata_e2e::strata::show_output(o));
    }
    assert_same_listing(&unpack_reference(&f.oci, "full"), &s.tree(&r), "after concurrent pulls");
    let ids = s.ok(&["images", "-q"]);
    assert_eq!(ids.lines().count(), 1, "one image, listed once:\n{ids}");
}

#[test]
fn killed_pull_leaves_a_usable_store() {
    let f = fixtures();
    let fake = FakeRegistry::start();
    fake.serve("e2e/full:1", FakeImage::from_oci_layout(&f.oci, "full"));
    let r = fake.reference("e2e/full:1");
    let s = Strata::new();
    fake.set_fault(Some(Fault::StallBlobs));
    let mut child = s.spawn(&["pull", &r]);
    fake.wait_for_stall(Duration::from_secs(120));
    child.kill().expect("SIGKILL the pull");
    let _ = child.wait();
    fake.set_fault(None);
    // The store must still answer, and the interrupted pull must not count as an image.
    let ids = s.ok(&["images", "-q"]);
    assert!(ids.trim().is_empty(), "a killed pull must not leave an image:\n{ids}");
    let out = s.pull(&r);
    assert_pulled(&out, &r, &FakeImage::from_oci_layout(&f.oci, "full").manifest_digest(), DOWNLOADED);
    assert_same_listing(&unpack_reference(&f.oci, "full"), &s.tree(&r), "pull after a killed pull");
    assert_eq!(s.ok(&["images", "-q"]).lines().count(), 1);
}

/// A small valid image for the refusal tests (one layer, three files).
fn small_image() -> FakeImage {
    let tar = TarBuilder::new().dir("etc", 0o755).file("etc/hello", 0o644, b"hello\n").file("x", 0o600, b"x").finish();
    FakeImage::from_layers(&[tar])
}

/// Pulls a good image first (so the store exists and has content), then
/// expects `pull` of `e2e/bad:1` under `fault` to fail with a message
/// mentioning one of `needles`, and the store to be byte-identical afterwards.
fn assert_refused(fake: &FakeRegistry, s: &Strata, fault: Option<Fault>, needles: &[&str], what: &str) -> String {
    fake.serve("e2e/good:1", FakeImage::from_oci_layout(&fixtures().oci, "busybox"));
    fake.set_fault(None);
    s.pull(&fake.reference("e2e/good:1"));
    let before = StoreFingerprint::of(&s.root());
    assert!(!before.is_empty(), "store is populated before the refusal");
    fake.set_fault(fault);
    let (code, err) = s.fails(&["pull", &fake.reference("e2e/bad:1")]);
    assert_eq!(code, 1, "{what}: strata must exit with Docker's status 1, not die by a signal\n{err}");
    assert!(err.contains("Error"), "{what}: Docker-style `Error: ...` message expected, got:\n{err}");
    assert_mentions(&err, needles, what);
    before.assert_unchanged(&StoreFingerprint::of(&s.root()), what);
    // ... and the store still works.
    fake.set_fault(None);
    s.ok(&["images"]);
    err
}

/// Serves `bad` as `e2e/bad:1` with `fault`, and checks the refusal (as root).
fn refused_with(fault: Option<Fault>, bad: FakeImage, needles: &[&str], what: &str) -> String {
    refused_in(&Strata::new(), fault, bad, needles, what)
}

fn refused_in(s: &Strata, fault: Option<Fault>, bad: FakeImage, needles: &[&str], what: &str) -> String {
    let fake = FakeRegistry::start();
    fake.serve("e2e/bad:1", bad);
    assert_refused(&fake, s, fault, needles, what)
}

#[test]
fn refuses_a_blob_with_the_wrong_digest() {
    let img = small_image();
    let err = refused_with(Some(Fault::WrongDigestBlob), img.clone(), &["digest"], "wrong digest");
    assert!(
        err.contains(&short_id(&img.layer_digests[0])) || err.contains(&img.layer_digests[0]),
        "names the blob:\n{err}"
    );
}

#[test]
fn refuses_a_truncated_blob() {
    refused_with(
        Some(Fault::TruncatedBlob),
        small_image(),
        &["truncated", "eof", "short", "incomplete", "closed", "size", "digest", "length"],
        "truncated blob",
    );
}

#[test]
fn refuses_a_missing_manifest() {
    let err = refused_with(Some(Fault::ManifestNotFound), small_image(), &["not found", "manifest unknown"], "404");
    assert!(err.contains("e2e/bad"), "names the image:\n{err}");
}

#[test]
fn refuses_when_unauthorized() {
    refused_with(
        Some(Fault::Unauthorized),
        small_image(),
        &["unauthorized", "authentication", "401", "denied", "login"],
        "401",
    );
}

#[test]
fn refuses_on_server_error() {
    refused_with(Some(Fault::ServerError), small_image(), &["500", "server error", "internal"], "500");
}

#[test]
fn gives_up_on_a_hanging_registry() {
    let fake = FakeRegistry::start();
    fake.serve("e2e/bad:1", small_image());
    let mut s = Strata::new();
    s.set_env("STRATA_REGISTRY_TIMEOUT", "2");
    assert_refused(&fake, &s, Some(Fault::Hang), &["timed out", "timeout", "time out"], "hanging registry");
}

#[test]
fn refuses_a_manifest_that_is_not_json() {
    refused_with(Some(Fault::NonJsonManifest), small_image(), &["json", "parse", "invalid", "manifest"], "non-JSON");
}

#[test]
fn refuses_an_unknown_manifest_media_type() {
    refused_with(
        Some(Fault::UnknownManifestMediaType),
        small_image(),
        &["application/vnd.example.unknown.manifest.v1+json"],
        "unknown manifest media type",
    );
}

#[test]
fn refuses_an_unknown_layer_media_type() {
    let tar = TarBuilder::new().file("x", 0o644, b"x").finish();
    let img = FakeImage::from_layers_with_media_type(&[tar], "application/vnd.example.weird.layer.v1+tar");
    refused_with(None, img, &["application/vnd.example.weird.layer.v1+tar"], "unknown layer media type");
}

/// A unique path under /tmp that hostile layers aim at; must never appear.
fn escape_target() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::Builder::new().prefix("strata-e2e-escape-").tempdir().unwrap();
    let target = d.path().join("pwned");
    (d, target)
}

const HOSTILE_WORDS: &[&str] = &["path", "link", "escape", "unsafe", "outside", "invalid", "..", "hostile", "refus"];

fn hostile(tar: Vec<u8>, what: &str, target: &std::path::Path) {
    refused_with(None, FakeImage::from_layers(&[tar]), HOSTILE_WORDS, what);
    assert!(!target.exists(), "{what}: wrote outside the store: {}", target.display());
}

/// The hostile layers of the tests above, aimed at `dir/pwned`.
fn hostile_layers(dir: &std::path::Path) -> Vec<(&'static str, Vec<u8>)> {
    let up = format!("../../../../../../../../../..{}", dir.join("pwned").display());
    vec![
        ("`..` path", TarBuilder::new().file("ok", 0o644, b"ok").file(&up, 0o644, b"pwned").finish()),
        ("hardlink out of the tree", TarBuilder::new().hardlink("link", &up).finish()),
        (
            "hardlink to a later entry",
            TarBuilder::new().hardlink("early", "later").file("later", 0o644, b"content").finish(),
        ),
        (
            "file below a symlink",
            TarBuilder::new().symlink("a", &dir.display().to_string()).file("a/pwned", 0o644, b"pwned").finish(),
        ),
    ]
}

#[test]
fn hostile_layers_are_refused_rootless_too() {
    let (d, target) = escape_target();
    // The test user must be able to write there, or a missed check would go unnoticed.
    nix::unistd::chown(d.path(), Some(nix::unistd::User::from_name(TEST_USER).unwrap().unwrap().uid), None).unwrap();
    let u = Strata::new_unprivileged();
    for (what, tar) in hostile_layers(d.path()) {
        refused_in(&u, None, FakeImage::from_layers(&[tar]), HOSTILE_WORDS, &format!("{what} as strata-test"));
        assert!(!target.exists(), "{what}: strata-test wrote outside the store");
    }
}

#[test]
fn refuses_a_layer_with_dotdot_paths() {
    let (_d, target) = escape_target();
    let rel = format!("../../../../../../../../../..{}", target.display());
    let tar = TarBuilder::new().file("ok", 0o644, b"ok").file(&rel, 0o644, b"pwned").finish();
    hostile(tar, "`..` path", &target);
}

#[test]
fn absolute_paths_stay_inside_the_image() {
    // Docker strips the leading `/` of absolute member names; refusing is
    // also acceptable. Either way nothing may land on the host.
    let (_d, target) = escape_target();
    let abs = target.display().to_string();
    let tar = TarBuilder::new().file(&abs, 0o644, b"pwned").finish();
    let fake = FakeRegistry::start();
    fake.serve("e2e/abs:1", FakeImage::from_layers(&[tar]));
    let s = Strata::new();
    let out = s.run(&["pull", &fake.reference("e2e/abs:1")]);
    assert!(!target.exists(), "absolute path written on the host: {}", target.display());
    if out.status.success() {
        let tree = s.tree(&fake.reference("e2e/abs:1"));
        assert!(
            listing::find_line(&tree, &abs).is_some(),
            "accepted absolute path must show inside the image:\n{tree}"
        );
    } else {
        assert!(out.status.code().is_some_and(|c| c > 0));
    }
}

#[test]
fn refuses_a_hardlink_out_of_the_tree() {
    let (_d, target) = escape_target();
    let rel = format!("../../../../../../../../../..{}", target.display());
    let tar = TarBuilder::new().hardlink("link", &rel).finish();
    hostile(tar, "hardlink out of the tree", &target);
}

#[test]
fn refuses_a_hardlink_to_an_entry_not_yet_seen() {
    let (_d, target) = escape_target();
    let tar = TarBuilder::new().hardlink("early", "later").file("later", 0o644, b"content").finish();
    hostile(tar, "hardlink to a later entry", &target);
}

#[test]
fn refuses_a_file_below_a_symlink() {
    let (d, target) = escape_target();
    let tar = TarBuilder::new().symlink("a", &d.path().display().to_string()).file("a/pwned", 0o644, b"pwned").finish();
    hostile(tar, "file below a symlink", &target);
}

/// Overwrites fields of the tar header `h` (offset, bytes) and fixes its checksum.
fn patch_header(h: &mut [u8], fields: &[(usize, &[u8])]) {
    for (at, v) in fields {
        h[*at..*at + v.len()].copy_from_slice(v);
    }
    h[148..156].fill(b' ');
    let sum: u32 = h[..512].iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

#[test]
fn refuses_layers_that_expand_without_bound() {
    // A PAX header claiming 4 GiB (which the tar library would read into
    // memory), followed by no such thing.
    let mut pax = TarBuilder::new().entry("PaxHeaders/x", b'x', 0o644, "", &[]).finish();
    patch_header(&mut pax, &[(124, b"40000000000\0")]);
    refused_with(None, FakeImage::from_layers(&[pax]), &["PAX extended header of 4294967296 bytes"], "huge PAX header");

    // A GNU sparse file of 4 GiB storing 512 bytes (its holes would be written as zeros).
    let mut sparse = TarBuilder::new().entry("sparse", b'S', 0o644, "", &[b'x'; 512]).finish();
    patch_header(
        &mut sparse,
        &[
            (257, b"ustar  \0"),
            (386, b"37777777000\0"), // the data block's offset: 4 GiB - 512
            (398, b"00000001000\0"), // and length
            (483, b"40000000000\0"), // the file's size
        ],
    );
    refused_with(None, FakeImage::from_layers(&[sparse]), &["sparse file of 4294967296 bytes"], "sparse bomb");
}

#[test]
fn mirror_is_used_first() {
    let f = fixtures();
    // The "primary" is a fake that would serve the image too; the mirror is a
    // real registry with the same image. Every blob must come from the mirror.
    let mirror = Registry::start();
    mirror.push_oci_layout(&f.oci, "busybox", "e2e/bb:1");
    let primary = FakeRegistry::start();
    primary.serve("e2e/bb:1", FakeImage::from_oci_layout(&f.oci, "busybox"));
    let s = Strata::new();
    s.set_registries_config(&format!(r#"{{"mirrors": {{"{}": ["http://{}"]}}}}"#, primary.host(), mirror.host()));
    let r = primary.reference("e2e/bb:1");
    s.pull(&r);
    assert_eq!(primary.count("GET", "/blobs/"), 0, "blobs came from the primary: {:#?}", primary.requests());
    assert_same_listing(&unpack_reference(&f.oci, "busybox"), &s.tree(&r), "pulled through a mirror");
}

#[test]
fn mirror_without_the_image_falls_back() {
    let f = fixtures();
    let primary = Registry::start();
    let r = primary.push_oci_layout(&f.oci, "busybox", "e2e/bb:1");
    let mirror = FakeRegistry::start();
    mirror.set_fault(Some(Fault::NotFound));
    let s = Strata::new();
    s.set_registries_config(&format!(r#"{{"mirrors": {{"{}": ["http://{}"]}}}}"#, primary.host(), mirror.host()));
    let out = s.pull(&r);
    assert_pulled(&out, &r, &primary.manifest_digest("e2e/bb", "1"), DOWNLOADED);
    assert!(mirror.count("GET", "/manifests/") + mirror.count("HEAD", "/manifests/") > 0, "mirror was not tried");
}

#[test]
fn docker_registry_mirrors_key_serves_docker_hub_names() {
    let f = fixtures();
    let mirror = Registry::start();
    mirror.push_oci_layout(&f.oci, "busybox", "library/busybox:latest");
    let s = Strata::new();
    s.set_registries_config(&format!(r#"{{"registry-mirrors": ["http://{}"]}}"#, mirror.host()));
    let out = s.pull("busybox");
    assert!(out.contains("Status: Downloaded newer image for busybox:latest"), "{out}");
    assert_eq!(out.lines().rfind(|l| !l.trim().is_empty()), Some("docker.io/library/busybox:latest"));
    let rows = parse_table(&s.ok(&["images"]));
    assert!(rows.iter().any(|r| r[0] == "busybox" && r[1] == "latest"), "{rows:?}");
    assert_same_listing(&unpack_reference(&f.oci, "busybox"), &s.tree("busybox"), "docker hub name via mirror");
}

#[test]
fn login_lets_pulls_through_and_logout_stops_them() {
    let f = fixtures();
    let reg = Registry::start_with_auth("alice", "s3cret");
    let r = reg.push_oci_layout(&f.oci, "busybox", "private/bb:1");
    let r2 = reg.push_oci_layout(&f.oci, "amd64", "private/bb:2");
    let s = Strata::new();
    s.ok(&["images"]);
    let before = StoreFingerprint::of(&s.root());
    let (_, err) = s.fails(&["pull", &r]);
    assert_mentions(&err, &["unauthorized", "authentication", "401", "denied", "login"], "pull without login");
    before.assert_unchanged(&StoreFingerprint::of(&s.root()), "refused pull without login");

    let (_, err) = s.fails(&["login", &reg.host(), "-u", "alice", "-p", "wrong"]);
    assert_mentions(&err, &["unauthorized", "denied", "incorrect", "401", "invalid"], "login with a wrong password");

    let out = s.ok(&["login", &reg.host(), "-u", "alice", "-p", "s3cret"]);
    assert!(out.contains("Login Succeeded"), "{out}");
    let cfg = std::fs::read_to_string(s.docker_config_dir().join("config.json")).expect("login writes config.json");
    let cfg: serde_json::Value = serde_json::from_str(&cfg).expect("config.json is JSON");
    assert!(cfg["auths"].get(reg.host()).is_some(), "{cfg}");
    let out = s.pull(&r);
    assert_pulled(&out, &r, &reg.manifest_digest("private/bb", "1"), DOWNLOADED);

    let out = s.ok(&["logout", &reg.host()]);
    assert!(out.contains(&format!("Removing login credentials for {}", reg.host())), "{out}");
    s.fails(&["pull", &r2]);
}

#[test]
fn shared_layer_is_fetched_once() {
    let f = fixtures();
    let fake = FakeRegistry::start();
    let bb = FakeImage::from_oci_layout(&f.oci, "busybox");
    fake.serve("e2e/bb:1", bb.clone());
    fake.serve("e2e/full:1", FakeImage::from_oci_layout(&f.oci, "full"));
    let s = Strata::new();
    s.pull(&fake.reference("e2e/bb:1"));
    let out = s.pull(&fake.reference("e2e/full:1"));
    let base = &bb.layer_digests[0];
    assert!(out.contains(&format!("{}: Already exists", short_id(base))), "shared layer not reported:\n{out}");
    assert_eq!(fake.count("GET", &format!("/blobs/{base}")), 1, "shared layer fetched twice");
    assert_same_listing(&unpack_reference(&f.oci, "full"), &s.tree(&fake.reference("e2e/full:1")), "full");
}

#[test]
fn second_pull_is_up_to_date() {
    let f = fixtures();
    let reg = Registry::start();
    let r = reg.push_oci_layout(&f.oci, "busybox", "e2e/bb:1");
    let digest = reg.manifest_digest("e2e/bb", "1");
    let s = Strata::new();
    assert_pulled(&s.pull(&r), &r, &digest, DOWNLOADED);
    assert_pulled(&s.pull(&r), &r, &digest, UP_TO_DATE);
}

#[test]
fn pull_by_digest() {
    let f = fixtures();
    let reg = Registry::start();
    reg.push_oci_layout(&f.oci, "busybox", "e2e/bb:1");
    let digest = reg.manifest_digest("e2e/bb", "1");
    let r = format!("{}/e2e/bb@{digest}", reg.host());
    let s = Strata::new();
    let out = s.pull(&r);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    assert_eq!(out.lines().rfind(|l| !l.trim().is_empty()), Some(r.as_str()));
    assert_same_listing(&unpack_reference(&f.oci, "busybox"), &s.tree(&r), "pulled by digest");
    // A digest that does not match what the registry serves is refused.
    let wrong = format!("{}/e2e/bb@sha256:{}", reg.host(), "0".repeat(64));
    s.fails(&["pull", &wrong]);
}

#[test]
fn pull_of_a_missing_tag_fails_cleanly() {
    let f = fixtures();
    let reg = Registry::start();
    reg.push_oci_layout(&f.oci, "busybox", "e2e/bb:1");
    let s = Strata::new();
    let (code, err) = s.fails(&["pull", &reg.reference("e2e/bb:nope")]);
    assert_eq!(code, 1, "{err}");
    assert_mentions(&err, &["not found", "manifest unknown"], "missing tag");
}

#[test]
fn run_platform_pulls_the_platform_asked_for() {
    let f = fixtures();
    let reg = Registry::start();
    let r = reg.push_index(&f.oci, "multi", "e2e/multi:1");
    let s = Strata::new();
    // (The fixture's arm64 image holds the host's busybox: it runs here.)
    assert_eq!(s.ok(&["run", "--rm", "--platform", "linux/arm64", &r, "cat", "/etc/platform"]), "linux/arm64\n");
    let (_, err) = s.fails(&["run", "--rm", "--pull", "never", "--platform", "linux/amd64", &r, "true"]);
    assert_mentions(&err, &["does not match the specified platform: wanted linux/amd64, actual: linux/arm64"], "never");
    assert_eq!(s.ok(&["run", "--rm", "--platform", "linux/amd64", &r, "cat", "/etc/platform"]), "linux/amd64\n");
}

#[test]
fn manifest_inspect_shows_what_the_registry_serves() {
    let f = fixtures();
    let reg = Registry::start();
    let single = reg.push_oci_layout(&f.oci, "busybox", "e2e/bb:1");
    let multi = reg.push_index(&f.oci, "multi", "e2e/multi:1");
    for s in [Strata::new(), Strata::new_unprivileged()] {
        let who = if s.is_unprivileged() { "as strata-test" } else { "as root" };
        // The document itself, in its own key order, three spaces deep.
        let served = reg.manifest("e2e/bb", "1");
        let doc: serde_json::Value = serde_json::from_slice(&served.body).unwrap();
        let shown = s.ok(&["manifest", "inspect", &single]);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&shown).unwrap(), doc, "{who}");
        assert!(shown.starts_with("{\n   \""), "{who}: {shown}");
        let index = s.ok(&["manifest", "inspect", &multi]);
        let index: serde_json::Value = serde_json::from_str(&index).unwrap();
        assert!(index["manifests"].as_array().is_some_and(|m| m.len() >= 2), "{who}: {index}");
        // --verbose: Docker's wrapper, per platform for a list.
        let verbose: serde_json::Value = serde_json::from_str(&s.ok(&["manifest", "inspect", "-v", &multi])).unwrap();
        let entries = verbose.as_array().expect("one entry per platform");
        assert_eq!(entries.len(), index["manifests"].as_array().unwrap().len(), "{who}");
        for (e, m) in entries.iter().zip(index["manifests"].as_array().unwrap()) {
            assert_eq!(e["Descriptor"]["digest"], m["digest"], "{who}");
            assert_eq!(e["Descriptor"]["platform"], m["platform"], "{who}");
            assert!(e["OCIManifest"]["layers"].is_array() || e["SchemaV2Manifest"]["layers"].is_array(), "{who}: {e}");
        }
        let (code, err) = s.fails(&["manifest", "inspect", &reg.reference("e2e/nosuch:1")]);
        assert_eq!(code, 1, "{who}");
        assert_mentions(&err, &["no such manifest"], who);
        assert_eq!(s.ok(&["images", "-q"]), "", "{who}: nothing is pulled");
    }
}

#[test]
fn all_tags_of_a_repository() {
    let f = fixtures();
    let reg = Registry::start();
    for (layout_tag, tag) in [("busybox", "a"), ("full", "b"), ("busybox", "c"), ("busybox", "latest")] {
        reg.push_oci_layout(&f.oci, layout_tag, &format!("e2e/many:{tag}"));
    }
    let name = reg.reference("e2e/many");
    for s in [Strata::new(), Strata::new_unprivileged()] {
        let who = if s.is_unprivileged() { "as strata-test" } else { "as root" };
        // A name alone is NAME:latest, and says so as Docker does.
        let out = s.ok(&["pull", &name]);
        assert!(out.starts_with("Using default tag: latest\n"), "{who}: {out}");
        assert_pulled(&out, &format!("{name}:latest"), &reg.manifest_digest("e2e/many", "latest"), DOWNLOADED);

        let out = s.ok(&["pull", "--all-tags", &name]);
        for tag in ["a", "b", "c", "latest"] {
            assert!(out.contains(&format!("{tag}: Pulling from e2e/many\n")), "{who}: {tag} in {out}");
            assert!(out.contains(&format!("\n{name}:{tag}\n")), "{who}: {tag} in {out}");
        }
        let mut listed: Vec<String> =
            s.ok(&["images", "--format", "{{.Tag}}", &name]).lines().map(String::from).collect();
        listed.sort();
        assert_eq!(listed, ["a", "b", "c", "latest"], "{who}");
        let full = s.ok(&["image", "inspect", "-f", "{{.Id}}", &format!("{name}:b")]);
        assert_ne!(
            full,
            s.ok(&["image", "inspect", "-f", "{{.Id}}", &format!("{name}:a")]),
            "{who}: b is the other image"
        );

        let (code, err) = s.fails(&["pull", "-a", &format!("{name}:a")]);
        assert_eq!(code, 1, "{who}: {err}");
        assert!(err.contains("tag can't be used with --all-tags/-a"), "{who}: {err}");
        let (code, err) = s.fails(&["pull", "-a", &reg.reference("e2e/none")]);
        assert_eq!(code, 1, "{who}: {err}");
        assert_mentions(&err, &["e2e/none", "not found"], "all tags of a repository that does not exist");
    }
}

#[test]
fn search_lists_a_registrys_catalog_and_a_repositorys_tags() {
    let f = fixtures();
    // Pages of two: seven repositories take four pages.
    let reg = Registry::start_with_catalog_pages(2);
    for repo in ["e2e/alpha:1", "e2e/alpha:2", "e2e/alphabet:1", "abc/e2e/beta:1", "e2e/beta:1", "e2e/gamma:1"] {
        reg.push_oci_layout(&f.oci, "busybox", repo);
    }
    reg.push_oci_layout(&f.oci, "busybox", "other/alpha:1");
    let host = reg.host();
    let names = |out: &str| parse_table(out).into_iter().skip(1).map(|r| r[0].clone()).collect::<Vec<_>>();
    let full = |repos: &[&str]| repos.iter().map(|r| format!("{host}/{r}")).collect::<Vec<_>>();
    for s in [Strata::new(), Strata::new_unprivileged()] {
        let who = if s.is_unprivileged() { "as strata-test" } else { "as root" };
        // Podman's columns for a registry's catalog; names contain the term.
        let out = s.ok(&["search", &format!("{host}/alpha")]);
        assert!(
            out.starts_with("NAME ") && out.lines().next().is_some_and(|l| l.trim_end().ends_with("DESCRIPTION")),
            "{who}: {out}"
        );
        assert_eq!(names(&out), full(&["e2e/alpha", "e2e/alphabet", "other/alpha"]), "{who}: {out}");
        // An exact match comes first.
        let out = s.ok(&["search", &format!("{host}/e2e/beta")]);
        assert_eq!(names(&out), full(&["e2e/beta", "abc/e2e/beta"]), "{who}: {out}");
        // REGISTRY/ is the whole catalog, every page of it, up to --limit.
        let out = s.ok(&["search", &format!("{host}/"), "--limit", "100"]);
        assert_eq!(
            names(&out),
            full(&["abc/e2e/beta", "e2e/alpha", "e2e/alphabet", "e2e/beta", "e2e/gamma", "other/alpha"]),
            "{who}: {out}"
        );
        let out = s.ok(&["search", &format!("{host}/"), "--limit", "3"]);
        assert_eq!(names(&out), full(&["abc/e2e/beta", "e2e/alpha", "e2e/alphabet"]), "{who}: {out}");
        let out = s.ok(&["search", "--format", "{{.Index}}|{{.Name}}|{{.StarCount}}", &format!("{host}/gamma")]);
        assert_eq!(out, format!("{host}|{host}/e2e/gamma|0\n"), "{who}");
        let out = s.ok(&["search", "--filter", "is-official=true", &format!("{host}/alpha")]);
        assert_eq!(names(&out), Vec::<String>::new(), "{who}: a catalog has no official images: {out}");
        let out = s.ok(&["search", &format!("{host}/nothing-like-it")]);
        assert_eq!(names(&out), Vec::<String>::new(), "{who}: {out}");

        // Podman's --list-tags.
        let out = s.ok(&["search", "--list-tags", &format!("{host}/e2e/alpha")]);
        let mut rows = parse_table(&out);
        assert_eq!(rows.remove(0), ["NAME", "TAG"], "{who}: {out}");
        rows.sort();
        assert_eq!(
            rows,
            [[format!("{host}/e2e/alpha"), "1".into()], [format!("{host}/e2e/alpha"), "2".into()]],
            "{who}"
        );

        let (code, err) = s.fails(&["search", "--list-tags", &format!("{host}/e2e/alpha:1")]);
        assert_eq!(code, 1, "{who}: {err}");
        assert_mentions(&err, &["--list-tags", "tag or digest"], "--list-tags of a tagged name");
        let (code, err) = s.fails(&["search", "--filter", "color=red", &format!("{host}/alpha")]);
        assert_eq!(code, 1, "{who}: {err}");
        assert!(err.contains("invalid filter 'color'"), "{who}: {err}");
        let (code, err) = s.fails(&["search", "127.0.0.1:1/alpha"]);
        assert_eq!(code, 1, "{who}: {err}");
        assert_mentions(
            &err,
            &["couldn't search registry \"127.0.0.1:1\"", "connect"],
            "search of a registry not there",
        );
    }

    // A registry behind authentication shows its catalog only after a login.
    let private = Registry::start_with_auth("alice", "s3cret");
    private.push_oci_layout(&f.oci, "busybox", "private/bb:1");
    let s = Strata::new_unprivileged();
    let term = format!("{}/bb", private.host());
    let (code, err) = s.fails(&["search", &term]);
    assert_eq!(code, 1, "{err}");
    assert_mentions(&err, &["couldn't search registry", "strata login"], "search before login");
    s.ok(&["login", &private.host(), "-u", "alice", "-p", "s3cret"]);
    let out = s.ok(&["search", &term]);
    assert_eq!(names(&out), [format!("{}/private/bb", private.host())], "{out}");
}
