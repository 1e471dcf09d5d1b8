//! `strata save` and `strata load` end to end: images saved by one store
//! load into another with the same IDs and trees (through a file, and
//! through a pipe, gzipped), skopeo reads the archive as Docker's and
//! umoci unpacks what it copied from it to the same tree, archives skopeo
//! writes (Docker's and OCI's) load, and a damaged or hostile archive is
//! refused with the store left as it was — as root and as `strata-test`.

use std::process::{Command, Stdio};

use strata_e2e::listing::{assert_same_listing, unpack_reference};
use strata_e2e::store::StoreFingerprint;
use strata_e2e::*;

fn skopeo(args: &[&str]) {
    let policy = paths::crate_dir().join("fixtures/policy.json");
    run_tool(Command::new("skopeo").arg("--policy").arg(policy).args(args));
}

fn new_store(unprivileged: bool) -> Strata {
    if unprivileged {
        Strata::new_unprivileged()
    } else {
        Strata::new()
    }
}

/// A directory the store's user may write an archive into.
fn out_dir(s: &Strata) -> std::path::PathBuf {
    let d = s.base().join("archives");
    std::fs::create_dir_all(&d).unwrap();
    if s.is_unprivileged() {
        run_tool(Command::new("chown").arg(TEST_USER).arg(&d));
    }
    d
}

#[test]
fn saved_images_load_back_identical_and_other_tools_read_them() {
    let f = fixtures();
    let reg = Registry::start();
    let bb = reg.push_oci_layout(&f.oci, "busybox", "e2e/bb:1");
    let full = reg.push_docker_v2s2(&f.oci, "full", "e2e/full:1");
    for unprivileged in [false, true] {
        let who = if unprivileged { "as strata-test" } else { "as root" };
        let s = new_store(unprivileged);
        s.pull(&bb);
        s.pull(&full);
        let id = |s: &Strata, r: &str| s.ok(&["image", "inspect", "-f", "{{.Id}}", r]).trim().to_string();
        let archive = out_dir(&s).join("images.tar");
        s.ok(&["save", "-o", archive.to_str().unwrap(), &bb, &full]);

        let other = new_store(unprivileged);
        let out = other.ok(&["load", "-i", archive.to_str().unwrap()]);
        assert_eq!(out, format!("Loaded image: {bb}\nLoaded image: {full}\n"), "{who}");
        for r in [&bb, &full] {
            assert_eq!(id(&other, r), id(&s, r), "{who}: {r} keeps its ID");
            assert_same_listing(&s.tree(r), &other.tree(r), &format!("{who}: {r} loaded"));
        }
        assert_eq!(other.ok(&["run", "--rm", &bb, "echo", "loaded"]), "loaded\n", "{who}");

        // Through pipes, gzipped on the way.
        let saved = s.command(&["save", &bb]).stdout(Stdio::piped()).output().unwrap();
        assert!(saved.status.success(), "{who}: {}", strata_e2e::strata::show_output(&saved));
        let third = new_store(unprivileged);
        let mut load = third.command(&["load", "-q"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(load.stdin.take().unwrap(), flate2::Compression::fast());
            gz.write_all(&saved.stdout).unwrap();
            gz.finish().unwrap();
        }
        let loaded = load.wait_with_output().unwrap();
        assert!(
            loaded.status.success() && loaded.stdout.is_empty(),
            "{who}: {}",
            strata_e2e::strata::show_output(&loaded)
        );
        assert_eq!(id(&third, &bb), id(&s, &bb), "{who}");

        // skopeo reads the archive as Docker's; umoci unpacks what it copied.
        let layout = tempfile::tempdir().unwrap();
        let familiar = full.clone();
        skopeo(&[
            "copy",
            "-q",
            &format!("docker-archive:{}:{familiar}", archive.display()),
            &format!("oci:{}:x", layout.path().display()),
        ]);
        assert_same_listing(&unpack_reference(layout.path(), "x"), &s.tree(&full), &format!("{who}: skopeo + umoci"));
    }
}

#[test]
fn archives_that_skopeo_writes_load() {
    let f = fixtures();
    let s = Strata::new();
    let dir = tempfile::tempdir().unwrap();
    let da = dir.path().join("docker.tar");
    let oa = dir.path().join("oci.tar");
    skopeo(&[
        "copy",
        "-q",
        &format!("oci:{}:busybox", f.oci.display()),
        &format!("docker-archive:{}:e2e/from-docker:1", da.display()),
    ]);
    skopeo(&[
        "copy",
        "-q",
        &format!("oci:{}:full", f.oci.display()),
        &format!("oci-archive:{}:example.test/from-oci:2", oa.display()),
    ]);
    assert_eq!(s.ok(&["load", "-i", da.to_str().unwrap()]), "Loaded image: e2e/from-docker:1\n");
    assert_eq!(s.ok(&["load", "-i", oa.to_str().unwrap()]), "Loaded image: example.test/from-oci:2\n");
    assert_eq!(s.ok(&["run", "--rm", "e2e/from-docker:1", "echo", "ok"]), "ok\n");
    assert_same_listing(&unpack_reference(&f.oci, "full"), &s.tree("example.test/from-oci:2"), "the OCI archive");
}

#[test]
fn a_damaged_or_hostile_archive_is_refused_and_the_store_kept() {
    let f = fixtures();
    let reg = Registry::start();
    let bb = reg.push_oci_layout(&f.oci, "busybox", "e2e/bb:1");
    let s = Strata::new();
    s.pull(&bb);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.tar");
    s.ok(&["save", "-o", good.to_str().unwrap(), &bb]);

    // One byte of the layer blob changed.
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    run_tool(Command::new("tar").arg("-xf").arg(&good).arg("-C").arg(&unpacked));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("manifest.json")).unwrap()).unwrap();
    let layer = unpacked.join(manifest[0]["Layers"][0].as_str().unwrap());
    let mut bytes = std::fs::read(&layer).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&layer, bytes).unwrap();
    let damaged = dir.path().join("damaged.tar");
    run_tool(Command::new("tar").arg("-cf").arg(&damaged).arg("-C").arg(&unpacked).arg("."));

    let hostile = dir.path().join("hostile.tar");
    std::fs::write(&hostile, tarball::TarBuilder::new().file("../../escape", 0o644, b"x").finish()).unwrap();
    let empty = dir.path().join("empty.tar");
    std::fs::write(&empty, tarball::TarBuilder::new().file("hello", 0o644, b"x").finish()).unwrap();

    let other = Strata::new();
    other.ok(&["images"]);
    let before = StoreFingerprint::of(&other.root());
    for (archive, message) in
        [(&damaged, "corrupt"), (&hostile, "climbs out of the archive"), (&empty, "holds no image")]
    {
        let (code, err) = other.fails(&["load", "-i", archive.to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(message), "{}: expected {message:?} in: {err}", archive.display());
    }
    before.assert_unchanged(&StoreFingerprint::of(&other.root()), "refused loads");
}
