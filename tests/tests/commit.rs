//! `strata commit` end to end: a container's changes become a new image
//! whose merged tree is exactly what the container saw (owners, modes,
//! xattrs, hard links, whiteouts, opaque directories, long paths,
//! metadata-only copy-ups whose content is still a lower object), with the
//! container's configuration plus `--change`, one more history entry and
//! the tag asked for — as root and as the unprivileged `strata-test`.
//! `export` of the same container holds its whole tree, and `import` of
//! that archive makes it an image again; hostile archives are refused.

use strata_e2e::listing::{assert_same_listing, canonical_listing};
use strata_e2e::store::StoreFingerprint;
use strata_e2e::*;

/// Changes of every kind the union filesystem records, on the `full` fixture.
const CHANGES: &str = r#"set -e
mkdir -p /new/sub
echo hello > /new/sub/f
ln /new/sub/f /new/hl
ln -s ../etc/passwd /new/ln
mkfifo /new/fifo
chown 1234:5678 /new/sub/f
chmod 4755 /new/sub/f
chmod 0640 /data/xattr
chown 77:88 /data/big.bin
echo more >> /data/text
rm /etc/motd
rm -rf /data/f2d
rm -rf /data/links
mkdir /data/links
echo only > /data/links/only
mv /data/own /data/own2
echo changed > /data/hl/b
rm /data/hl/c
d=/data/deep/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
echo deep > $d/a-new-file-whose-path-is-well-over-one-hundred-bytes-long-so-that-the-tar-needs-a-long-name
"#;

/// The runner's mount points, which are not the container's changes.
fn without_runtime_paths(listing: &str) -> String {
    listing
        .lines()
        .filter(|l| {
            let path = l.split(' ').next().unwrap_or_default();
            let runtime = ["/dev", "/proc", "/sys"];
            !runtime.iter().any(|r| path == *r || path.starts_with(&format!("{r}/")))
                && !["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"].contains(&path)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

struct Env {
    _reg: Registry,
    s: Strata,
    full: String,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.s.remove_all_containers();
    }
}

fn setup(unprivileged: bool) -> Env {
    let (reg, s, full) = store_with_fixture("full", unprivileged);
    Env { _reg: reg, s, full }
}

/// Commits the changes of [`CHANGES`] and checks the new image; returns its tree.
fn commit_every_kind_of_change(e: &Env, who: &str) -> String {
    let s = &e.s;
    s.ok(&["run", "--name", "changer", &e.full, "sh", "-c", CHANGES]);
    let out = s.ok(&["commit", "-a", "A. Author <a@example.com>", "-m", "all the changes", "changer", "committed:v1"]);
    let id = out.trim();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{who}: commit prints the image id: {out:?}");
    let meta = s.ok(&["image", "inspect", "-f", "{{.Comment}}|{{.Author}}", "committed:v1"]);
    assert_eq!(meta.trim(), "all the changes|A. Author <a@example.com>", "{who}: the message is the image's comment");

    let tree = s.tree("committed:v1");
    let line = |p: &str| listing::find_line(&tree, p).map(str::to_string);
    let base = s.tree(&e.full);
    let base_line = |p: &str| listing::find_line(&base, p).map(str::to_string);
    let fields = |p: &str| line(p).unwrap_or_else(|| panic!("{who}: {p} missing from\n{tree}"));
    assert!(fields("/new/sub/f").starts_with("/new/sub/f f 4755 1234 5678 6 "), "{who}: {}", fields("/new/sub/f"));
    assert!(fields("/new/hl").starts_with("/new/hl f 4755 1234 5678 6 "), "{who}: {}", fields("/new/hl"));
    assert_eq!(fields("/new/ln"), "/new/ln l 0777 0 0 0 ../etc/passwd", "{who}");
    assert_eq!(fields("/new/fifo"), "/new/fifo p 0644 0 0 0 -", "{who}");
    assert_eq!(
        fields("/data/xattr"),
        base_line("/data/xattr").unwrap().replace(" 0644 ", " 0640 "),
        "{who}: xattr kept"
    );
    assert_eq!(
        fields("/data/big.bin"),
        base_line("/data/big.bin").unwrap().replace(" 0 0 52428800", " 77 88 52428800"),
        "{who}: a chown of a lower file keeps its content"
    );
    for gone in ["/etc/motd", "/data/f2d", "/data/f2d/inner", "/data/links/abs", "/data/own/u1000", "/data/hl/c"] {
        assert_eq!(line(gone), None, "{who}: {gone} was deleted");
    }
    assert!(fields("/data/links/only").starts_with("/data/links/only f 0644 0 0 5 "), "{who}");
    assert!(fields("/data/own2/u1000").starts_with("/data/own2/u1000 f 0644 1000 1000 6 "), "{who}");
    assert!(fields("/data/hl/b").contains(" 8 "), "{who}: {}", fields("/data/hl/b"));
    assert!(tree.contains("-so-that-the-tar-needs-a-long-name f 0644 0 0 5 "), "{who}: long path");

    // Exactly what the container saw (its mount, as root).
    if !s.is_unprivileged() {
        let mnt = s.base().join("ctr-mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        s.ok(&["mount", "changer", mnt.to_str().unwrap()]);
        let seen = without_runtime_paths(&canonical_listing(&mnt));
        s.ok(&["umount", mnt.to_str().unwrap()]);
        assert_same_listing(&seen, &tree, &format!("{who}: the committed image against the container's view"));
    }

    // Configuration, history, names.
    let cfg = s.ok(&["image", "inspect", "-f", "{{.Author}}|{{json .Config.Cmd}}", "committed:v1"]);
    assert_eq!(
        cfg.trim(),
        format!("A. Author <a@example.com>|[\"sh\",\"-c\",{}]", serde_json::to_string(CHANGES).unwrap()),
        "{who}"
    );
    let history = s.ok(&["history", "--no-trunc", "--format", "{{.Comment}}|{{.CreatedBy}}", "committed:v1"]);
    let top = history.lines().next().unwrap_or_default();
    assert!(top.starts_with("all the changes|sh -c set -e"), "{who}: {history}");
    let steps = |r: &str| s.ok(&["history", "-q", r]).lines().count();
    assert_eq!(steps("committed:v1"), steps(&e.full) + 1, "{who}: {history}");
    let layers =
        |r: &str| s.ok(&["image", "inspect", "-f", "{{len .RootFS.Layers}}", r]).trim().parse::<usize>().unwrap();
    assert_eq!(layers("committed:v1"), layers(&e.full) + 1, "{who}");

    // A container of the new image runs and sees the changes.
    let out = s.ok(&[
        "run",
        "--rm",
        "committed:v1",
        "sh",
        "-c",
        "cat /new/hl /data/links/only; ls /etc/motd 2>&1; stat -c %u:%g /data/big.bin",
    ]);
    assert_eq!(
        out.lines().take(3).collect::<Vec<_>>(),
        ["hello", "only", "ls: /etc/motd: No such file or directory"],
        "{who}"
    );
    assert_eq!(out.lines().nth(3), Some("77:88"), "{who}: {out}");
    tree
}

#[test]
fn a_commit_holds_exactly_what_the_container_saw() {
    let root = commit_every_kind_of_change(&setup(false), "as root");
    let user = commit_every_kind_of_change(&setup(true), "as strata-test");
    assert_same_listing(&root, &user, "the image committed by strata-test against root's");
}

#[test]
fn commit_takes_the_containers_configuration_and_changes() {
    let e = setup(false);
    let s = &e.s;
    s.ok(&["run", "--name", "cfg", "-e", "FOO=bar", "-w", "/data", "--label", "who=me", &e.full, "true"]);
    s.ok(&[
        "commit",
        "--change",
        r#"CMD ["cat", "/etc/passwd"]"#,
        "-c",
        "ENV BAR=$FOO-2 BAZ=\"two words\"",
        "-c",
        "EXPOSE 8080",
        "-c",
        "LABEL version=2",
        "-c",
        "WORKDIR sub",
        "-c",
        "USER 1000",
        "cfg",
        "cfg:1",
    ]);
    let got = s.ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.Cmd}}|{{json .Config.Env}}|{{json .Config.ExposedPorts}}|{{json .Config.Labels}}|{{.Config.WorkingDir}}|{{.Config.User}}",
        "cfg:1",
    ]);
    let fields: Vec<&str> = got.trim().split('|').collect();
    assert_eq!(fields[0], r#"["cat","/etc/passwd"]"#);
    assert!(fields[1].contains(r#""FOO=bar","BAR=bar-2","BAZ=two words""#), "{got}");
    assert_eq!(fields[2], r#"{"8080/tcp":{}}"#);
    assert!(fields[3].contains(r#""version":"2""#) && fields[3].contains(r#""who":"me""#), "{got}");
    assert_eq!(fields[4], "/data/sub");
    assert_eq!(fields[5], "1000");

    // Without a name the image is untagged; an unchanged container still adds a layer, as Docker's does.
    let before = s.ok(&["images", "-q"]).lines().count();
    let id = s.ok(&["commit", "cfg"]).trim().to_string();
    let images = s.ok(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
    assert!(images.contains(&format!("<none>:<none> {}", &id[7..19])), "{images}");
    assert_eq!(s.ok(&["images", "-q"]).lines().count(), before + 1);
}

#[test]
fn a_bad_commit_says_why_and_stores_nothing() {
    let e = setup(false);
    let s = &e.s;
    s.ok(&["run", "--name", "cx", &e.full, "sh", "-c", "echo x > /x"]);
    let before = StoreFingerprint::of(&s.root().join("blobs"));
    let cases: &[(&[&str], &str)] = &[
        (&["commit", "-c", "FOO bar", "cx"], "unknown instruction: FOO"),
        (&["commit", "-c", "RUN make", "cx"], "RUN is not a valid change command"),
        (&["commit", "-c", "ENV A", "cx"], "ENV must have two arguments"),
        (&["commit", "-c", "EXPOSE 99999", "cx"], "invalid containerPort: 99999"),
        (&["commit", "cx", "Bad:Name"], "invalid reference format"),
        (&["commit", "no-such-container"], "No such container: no-such-container"),
    ];
    for (args, message) in cases {
        let (code, err) = s.fails(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: expected {message:?} in: {err}");
    }
    before.assert_unchanged(&StoreFingerprint::of(&s.root().join("blobs")), "refused commits");
}

#[test]
fn a_running_container_is_committed_and_keeps_running() {
    let e = setup(false);
    let s = &e.s;
    s.ok(&["run", "-d", "--name", "live", &e.full, "sh", "-c", "echo ready > /ready; exec sleep 1000"]);
    wait_until("the container wrote /ready", std::time::Duration::from_secs(30), || {
        s.run(&["exec", "live", "cat", "/ready"]).status.success()
    });
    s.ok(&["commit", "live", "live:1"]);
    assert_eq!(s.ok(&["container", "inspect", "-f", "{{.State.Status}}", "live"]).trim(), "running");
    assert_eq!(s.ok(&["exec", "live", "echo", "still here"]).trim(), "still here");
    assert_eq!(s.ok(&["run", "--rm", "live:1", "cat", "/ready"]).trim(), "ready");
}

/// Exports the container of [`CHANGES`], imports the archive; returns the imported tree.
fn export_and_import(e: &Env, who: &str) -> String {
    let s = &e.s;
    s.ok(&["run", "--name", "exported", &e.full, "sh", "-c", CHANGES]);
    let archive = s.base().join("exported.tar");
    if s.is_unprivileged() {
        // The user writes its own archive, as it would in its home.
        let dir = s.base().join("out");
        std::fs::create_dir_all(&dir).unwrap();
        run_tool(std::process::Command::new("chown").arg(TEST_USER).arg(&dir));
        let archive = dir.join("exported.tar");
        s.ok(&["export", "-o", archive.to_str().unwrap(), "exported"]);
        std::fs::rename(&archive, s.base().join("exported.tar")).unwrap();
    } else {
        s.ok(&["export", "-o", archive.to_str().unwrap(), "exported"]);
    }
    let listed = run_tool(std::process::Command::new("tar").arg("-tvf").arg(&archive));
    assert!(
        listed.lines().any(|l| l.starts_with("hrwsr-xr-x 1234/5678") && l.ends_with("new/sub/f link to new/hl")),
        "{who}: {listed}"
    );
    let imported = s.ok(&[
        "import",
        "-m",
        "from an export",
        "-c",
        "CMD [\"cat\", \"/new/hl\"]",
        archive.to_str().unwrap(),
        "imported:1",
    ]);
    assert!(imported.trim().starts_with("sha256:"), "{who}: {imported}");
    assert_eq!(s.ok(&["run", "--rm", "imported:1"]), "hello\n", "{who}");
    let history = s.ok(&["history", "--format", "{{.Comment}}", "imported:1"]);
    assert_eq!(history, "from an export\n", "{who}: one layer, the message as its comment");
    let tree = s.tree("imported:1");
    if !s.is_unprivileged() {
        let mnt = s.base().join("exp-mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        s.ok(&["mount", "exported", mnt.to_str().unwrap()]);
        let seen = canonical_listing(&mnt);
        s.ok(&["umount", mnt.to_str().unwrap()]);
        assert_same_listing(&seen, &tree, &format!("{who}: the exported tree against the container's view"));
    }
    tree
}

#[test]
fn export_holds_the_containers_whole_tree_and_import_makes_it_an_image() {
    let root = export_and_import(&setup(false), "as root");
    let user = export_and_import(&setup(true), "as strata-test");
    assert_same_listing(&root, &user, "strata-test's export against root's");
}

#[test]
fn import_refuses_a_hostile_archive_and_keeps_the_store() {
    let e = setup(false);
    let s = &e.s;
    let before = StoreFingerprint::of(&s.root());
    let cases = [
        ("dotdot", tarball::TarBuilder::new().file("../../etc/passwd", 0o644, b"x").finish()),
        ("link-out", tarball::TarBuilder::new().hardlink("passwd", "/etc/passwd").finish()),
        ("through-symlink", tarball::TarBuilder::new().symlink("etc", "/etc").file("etc/passwd", 0o644, b"x").finish()),
    ];
    for (name, tar) in cases {
        let path = s.base().join(format!("{name}.tar"));
        std::fs::write(&path, tar).unwrap();
        let (code, err) = s.fails(&["import", path.to_str().unwrap(), "hostile:1"]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains("importing"), "{name}: {err}");
    }
    let (code, err) = s.fails(&["export", "no-such-container"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("No such container: no-such-container"), "{err}");
    before.assert_unchanged(&StoreFingerprint::of(&s.root()), "refused imports");
}
