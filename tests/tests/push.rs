//! `strata push` end to end, against a real registry: a committed image
//! goes up with its base layers mounted from the repository they came from,
//! comes back identical through another store, unpacks with `umoci` to the
//! same tree, and a second push sends nothing. Refusals: an unknown tag, a
//! registry that wants a login, and a blob damaged in the store (nothing
//! reaches the registry's tag).

use strata_e2e::listing::{assert_same_listing, unpack_reference};
use strata_e2e::registry::http_get;
use strata_e2e::*;

/// Changes whose layer needs whiteouts, an opaque directory, PAX xattrs,
/// foreign owners and a long name, for `umoci` to read back.
const CHANGES: &str = r#"set -e
rm /etc/motd
rm -rf /data/links && mkdir /data/links && echo only > /data/links/only
chmod 0640 /data/xattr
chown 1234:5678 /data/text
mkdir -p /new && echo pushed > /new/file
d=/data/deep/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
echo deep > $d/a-new-file-whose-path-is-well-over-one-hundred-bytes-long-so-that-the-tar-needs-a-long-name
"#;

fn committed(reg: &Registry, s: &Strata, full: &str, name: &str) -> String {
    s.ok(&["run", "--name", "pusher", full, "sh", "-c", CHANGES]);
    let target = reg.reference(name);
    s.ok(&["commit", "pusher", &target]);
    target
}

#[test]
fn a_pushed_image_comes_back_identical() {
    let f = fixtures();
    for unprivileged in [false, true] {
        let who = if unprivileged { "as strata-test" } else { "as root" };
        let reg = Registry::start();
        let full = reg.push_oci_layout(&f.oci, "full", "e2e/full:1");
        let s = if unprivileged { Strata::new_unprivileged() } else { Strata::new() };
        s.pull(&full);
        let target = committed(&reg, &s, &full, "e2e/pushed:1");

        let out = s.ok(&["push", &target]);
        assert!(
            out.starts_with(&format!("The push refers to repository [{}]\n", reg.reference("e2e/pushed"))),
            "{who}: {out}"
        );
        let layers =
            s.ok(&["image", "inspect", "-f", "{{len .RootFS.Layers}}", &target]).trim().parse::<usize>().unwrap();
        assert_eq!(
            out.matches(": Mounted from e2e/full\n").count(),
            layers - 1,
            "{who}: base layers are mounted: {out}"
        );
        assert_eq!(out.matches(": Pushed\n").count(), 1, "{who}: the new layer is uploaded: {out}");
        let digest = reg.manifest_digest("e2e/pushed", "1");
        assert!(
            out.ends_with(&format!("1: digest: {digest} size: {}\n", reg.manifest("e2e/pushed", "1").body.len())),
            "{who}: {out}"
        );
        let digests = s.ok(&["image", "inspect", "-f", "{{json .RepoDigests}}", &target]);
        assert!(digests.contains(&format!("{}@{digest}", reg.reference("e2e/pushed"))), "{who}: {digests}");

        let again = s.ok(&["push", &target]);
        assert_eq!(again.matches(": Layer already exists\n").count(), layers, "{who}: {again}");

        // Another store pulls what was pushed: the same tree.
        let other = Strata::new();
        other.pull(&target);
        assert_same_listing(&s.tree(&target), &other.tree(&target), &format!("{who}: pulled back"));

        // And the reference tools read it the same: skopeo copies it, umoci unpacks it.
        let layout = tempfile::tempdir().unwrap();
        run_tool(std::process::Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{target}"),
            &format!("oci:{}:pushed", layout.path().display()),
        ]));
        assert_same_listing(
            &unpack_reference(layout.path(), "pushed"),
            &s.tree(&target),
            &format!("{who}: umoci unpack"),
        );
    }
}

#[test]
fn refused_pushes_say_why() {
    let f = fixtures();
    let reg = Registry::start_with_auth("alice", "s3cret");
    let open = Registry::start();
    let full = open.push_oci_layout(&f.oci, "full", "e2e/full:1");
    let s = Strata::new();
    s.pull(&full);

    let missing = reg.reference("e2e/none:1");
    let (code, err) = s.fails(&["push", &missing]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("An image does not exist locally with the tag: {missing}")), "{err}");

    let target = committed(&reg, &s, &full, "e2e/secret:1");
    let (code, err) = s.fails(&["push", &target]);
    assert_eq!(code, 1, "{err}");
    assert_mentions(&err, &["unauthorized", "authentication", "401", "denied", "login"], "push without login");
    s.ok(&["login", &reg.host(), "-u", "alice", "-p", "s3cret"]);
    s.ok(&["push", &target]);

    // A layer blob damaged in the store: the push stops before the manifest.
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s.root().join("images").join(format!(
            "{}.json",
            s.ok(&["image", "inspect", "-f", "{{.Id}}", &target]).trim().trim_start_matches("sha256:")
        )))
        .unwrap(),
    )
    .unwrap();
    let blob = record["layers"].as_array().unwrap().last().unwrap()["blob_digest"].as_str().unwrap().to_string();
    let path = s.root().join("blobs/sha256").join(blob.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&path, perms).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    // (To a registry that lacks the blob: one that has it would not ask for it.)
    let elsewhere = Registry::start();
    let far = elsewhere.reference("e2e/broken:1");
    s.ok(&["tag", &target, &far]);
    let (code, err) = s.fails(&["push", &far]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the store is corrupt"), "{err}");
    let r = http_get(elsewhere.port(), "/v2/e2e/broken/manifests/1", &[], None, 1 << 20);
    assert_eq!(r.status, 404, "no manifest reached the registry");
}

#[test]
fn push_all_tags_and_the_default_tag() {
    let f = fixtures();
    let reg = Registry::start();
    let bb = reg.push_oci_layout(&f.oci, "busybox", "e2e/src:1");
    let s = Strata::new();
    s.pull(&bb);
    let repo = reg.reference("e2e/many");
    for tag in ["a", "b", "latest"] {
        s.ok(&["tag", &bb, &format!("{repo}:{tag}")]);
    }
    // NAME alone is NAME:latest, and says so, as Docker does.
    let out = s.ok(&["push", &repo]);
    assert!(out.starts_with("Using default tag: latest\n"), "{out}");
    assert!(out.contains("latest: digest: sha256:"), "{out}");
    // -a pushes every tag of the repository.
    let out = s.ok(&["push", "-a", &repo]);
    for tag in ["a", "b", "latest"] {
        assert!(out.contains(&format!("{tag}: digest: sha256:")), "{tag} in {out}");
    }
    let tags = http_get(reg.port(), "/v2/e2e/many/tags/list", &[], None, 1 << 20);
    let tags: serde_json::Value = serde_json::from_slice(&tags.body).unwrap();
    let mut tags: Vec<&str> = tags["tags"].as_array().unwrap().iter().filter_map(|t| t.as_str()).collect();
    tags.sort();
    assert_eq!(tags, ["a", "b", "latest"]);
    let (code, err) = s.fails(&["push", "-a", &format!("{repo}:a")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("tag can't be used with --all-tags/-a"), "{err}");
}
