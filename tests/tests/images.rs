//! Image management with Docker's semantics: `images` (columns, -q, -a,
//! --digests, --no-trunc, filters, --format), `tag`, `rmi`/`image rm`,
//! `image prune`, `system prune`, `inspect`, `history`, `system df`, `info`, and the exit
//! statuses of their failures.

use strata_e2e::*;

/// A registry with busybox as e2e/bb:1 and the amd64 image (busybox + one
/// layer) as e2e/plat:1, and a store that pulled both.
struct Setup {
    reg: Registry,
    s: Strata,
    bb: String,
    plat: String,
    bb_img: FakeImage,
    plat_img: FakeImage,
}

fn setup() -> Setup {
    let f = fixtures();
    let reg = Registry::start();
    let bb = reg.push_oci_layout(&f.oci, "busybox", "e2e/bb:1");
    let plat = reg.push_oci_layout(&f.oci, "amd64", "e2e/plat:1");
    let s = Strata::new();
    s.pull(&bb);
    s.pull(&plat);
    Setup {
        reg,
        s,
        bb,
        plat,
        bb_img: FakeImage::from_oci_layout(&f.oci, "busybox"),
        plat_img: FakeImage::from_oci_layout(&f.oci, "amd64"),
    }
}

/// (repository, tag) of a full reference `HOST/NAME:TAG`.
fn split_ref(r: &str) -> (&str, &str) {
    r.rsplit_once(':').unwrap()
}

fn row_for<'a>(rows: &'a [Vec<String>], reference: &str) -> &'a Vec<String> {
    let (repo, tag) = split_ref(reference);
    rows.iter().find(|r| r[0] == repo && r[1] == tag).unwrap_or_else(|| panic!("no row for {reference}: {rows:?}"))
}

#[test]
fn images_lists_columns_like_docker() {
    let t = setup();
    let rows = parse_table(&t.s.ok(&["images"]));
    assert_eq!(rows[0], ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let bb = row_for(&rows, &t.bb);
    assert_eq!(bb[2], short_id(&t.bb_img.config_digest));
    assert_eq!(bb.len(), 5, "{bb:?}");
    let size = &bb[4];
    assert!(size.ends_with("B") && size.chars().next().unwrap().is_ascii_digit(), "size column: {size}");
    let plat = row_for(&rows, &t.plat);
    assert_eq!(plat[2], short_id(&t.plat_img.config_digest));

    // -q: ids only; --no-trunc: full ids.
    let q = t.s.ok(&["images", "-q"]);
    let mut ids: Vec<&str> = q.lines().collect();
    ids.sort();
    let mut want = vec![short_id(&t.bb_img.config_digest), short_id(&t.plat_img.config_digest)];
    want.sort();
    assert_eq!(ids, want);
    let full = t.s.ok(&["images", "-q", "--no-trunc"]);
    assert!(full.lines().any(|l| l == t.bb_img.config_digest), "{full}");
    let rows = parse_table(&t.s.ok(&["images", "--no-trunc"]));
    assert_eq!(row_for(&rows, &t.bb)[2], t.bb_img.config_digest);

    // -a shows the same two (no intermediate images from pulls).
    assert_eq!(parse_table(&t.s.ok(&["images", "-a"])).len(), 3);
}

#[test]
fn images_digests_filters_and_formats() {
    let t = setup();
    let rows = parse_table(&t.s.ok(&["images", "--digests"]));
    assert_eq!(rows[0], ["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"]);
    assert_eq!(row_for(&rows, &t.bb)[2], t.reg.manifest_digest("e2e/bb", "1"));

    // Repository argument and reference filter.
    let (bb_repo, _) = split_ref(&t.bb);
    let rows = parse_table(&t.s.ok(&["images", bb_repo]));
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1][0], bb_repo);
    let rows = parse_table(&t.s.ok(&["images", &t.plat]));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1][0], split_ref(&t.plat).0);
    let q = t.s.ok(&["images", "-q", "-f", &format!("reference={}/e2e/pl*", t.reg.host())]);
    assert_eq!(q.trim(), short_id(&t.plat_img.config_digest));
    let q = t.s.ok(&["images", "-q", "-f", "dangling=true"]);
    assert!(q.trim().is_empty(), "no dangling images yet: {q}");

    // Go templates and JSON.
    let out = t.s.ok(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
    assert!(out.lines().any(|l| l == format!("{} {}", t.bb, short_id(&t.bb_img.config_digest))), "{out}");
    let out = t.s.ok(&["images", "--format", "json"]);
    let objs: Vec<serde_json::Value> =
        out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(objs.len(), 2);
    let (repo, tag) = split_ref(&t.bb);
    assert!(objs
        .iter()
        .any(|o| o["Repository"] == repo && o["Tag"] == tag && o["ID"] == short_id(&t.bb_img.config_digest)));
}

#[test]
fn tag_adds_names_to_the_same_image() {
    let t = setup();
    t.s.ok(&["tag", &t.bb, "mybox"]);
    t.s.ok(&["tag", &t.bb, "example.com/team/mybox:v2"]);
    let rows = parse_table(&t.s.ok(&["images"]));
    let id = short_id(&t.bb_img.config_digest);
    assert_eq!(row_for(&rows, "mybox:latest")[2], id);
    assert_eq!(row_for(&rows, "example.com/team/mybox:v2")[2], id);
    // Retagging moves the name.
    t.s.ok(&["tag", &t.plat, "mybox"]);
    let rows = parse_table(&t.s.ok(&["images"]));
    assert_eq!(row_for(&rows, "mybox:latest")[2], short_id(&t.plat_img.config_digest));
    // By id too.
    t.s.ok(&["tag", &id, "byid:1"]);
    assert_eq!(row_for(&parse_table(&t.s.ok(&["images"])), "byid:1")[2], id);

    let (code, err) = t.s.fails(&["tag", "no-such-image:1", "x"]);
    assert_eq!(code, 1, "{err}");
    assert_mentions(&err, &["no such image"], "tag of a missing image");
    // "UPPER/case" would be valid (Docker reads UPPER as a registry host);
    // an uppercase repository component is not.
    let (code, err) = t.s.fails(&["tag", &t.bb, "lower/Upper"]);
    assert_eq!(code, 1, "{err}");
    assert_mentions(&err, &["invalid reference", "must be lowercase", "invalid"], "invalid tag");
}

#[test]
fn rmi_by_name_id_and_digest() {
    let t = setup();
    let bb_id = t.bb_img.config_digest.clone();
    t.s.ok(&["tag", &t.bb, "extra:1"]);

    // A name of an image with another name only untags.
    let out = t.s.ok(&["rmi", "extra:1"]);
    assert!(out.contains("Untagged: extra:1"), "{out}");
    assert!(!out.contains("Deleted:"), "{out}");

    // A short id of an image with several names needs -f.
    t.s.ok(&["tag", &t.bb, "extra:2"]);
    let (code, err) = t.s.fails(&["rmi", &short_id(&bb_id)]);
    assert_eq!(code, 1, "{err}");
    assert_mentions(&err, &["must be forced", "multiple repositories", "conflict"], "rmi of a multiply-tagged id");
    let out = t.s.ok(&["rmi", "-f", &short_id(&bb_id)]);
    assert!(out.contains("Untagged: extra:2") && out.contains(&format!("Untagged: {}", t.bb)), "{out}");
    assert!(out.contains(&format!("Deleted: {bb_id}")), "{out}");
    assert!(!t.s.ok(&["images", "-q", "--no-trunc"]).contains(&bb_id));

    // The long id.
    let plat_id = t.plat_img.config_digest.clone();
    t.s.ok(&["image", "rm", &plat_id]);
    assert!(t.s.ok(&["images", "-q"]).trim().is_empty());

    // By digest reference (an image pulled by digest has no tag).
    let digest_ref = format!("{}@{}", split_ref(&t.bb).0, t.reg.manifest_digest("e2e/bb", "1"));
    t.s.pull(&digest_ref);
    let rows = parse_table(&t.s.ok(&["images"]));
    assert!(rows.iter().any(|r| r[0] == split_ref(&t.bb).0 && r[1] == "<none>"), "{rows:?}");
    let out = t.s.ok(&["rmi", &digest_ref]);
    assert!(out.contains(&format!("Untagged: {digest_ref}")) && out.contains(&format!("Deleted: {bb_id}")), "{out}");
    assert!(t.s.ok(&["images", "-q"]).trim().is_empty());

    let (code, err) = t.s.fails(&["rmi", "no-such-image"]);
    assert_eq!(code, 1, "{err}");
    assert_mentions(&err, &["no such image"], "rmi of a missing image");
}

#[test]
fn rmi_keeps_layers_other_images_use() {
    let t = setup();
    // bb and plat share busybox's layer: removing bb must leave plat whole.
    let before = t.s.tree(&t.plat);
    t.s.ok(&["rmi", &t.bb]);
    assert_same_listing(&before, &t.s.tree(&t.plat), "plat after rmi of bb");
    assert_same_listing(&unpack_reference(&fixtures().oci, "amd64"), &before, "plat");
}

#[test]
fn prune_removes_dangling_then_everything() {
    let f = fixtures();
    let t = setup();
    // Moving e2e/bb:1 to another image leaves the old one dangling.
    t.reg.push_oci_layout(&f.oci, "full", "e2e/bb:1");
    t.s.pull(&t.bb);
    let old = short_id(&t.bb_img.config_digest);
    let rows = parse_table(&t.s.ok(&["images"]));
    assert!(rows.iter().any(|r| r[1] == "<none>" && r[2] == old), "old image should show as <none>: {rows:?}");
    assert_eq!(t.s.ok(&["images", "-q", "-f", "dangling=true"]).trim(), old);

    let out = t.s.ok(&["image", "prune", "-f"]);
    assert!(out.contains("Deleted Images:") && out.contains(&format!("deleted: {}", t.bb_img.config_digest)), "{out}");
    assert!(out.contains("Total reclaimed space:"), "{out}");
    let ids = t.s.ok(&["images", "-q"]);
    assert!(!ids.contains(&old) && ids.lines().count() == 2, "{ids}");

    let out = t.s.ok(&["image", "prune", "-f"]);
    assert!(out.contains("Total reclaimed space: 0B"), "nothing left to prune: {out}");
    t.s.ok(&["image", "prune", "-a", "-f"]);
    assert!(t.s.ok(&["images", "-q"]).trim().is_empty());
    // The store no longer holds the layers either.
    let layers = t.s.root().join("layers");
    let left = std::fs::read_dir(&layers).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "layers left after prune -a");
}

#[test]
fn image_prune_filters_by_age_and_label() {
    let t = setup();
    let s = &t.s;
    for (tag, label) in [("kept:1", "keep=yes"), ("other:1", "other=1")] {
        let ctx = s.base().join(tag.replace(':', "-"));
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), format!("FROM {}\nLABEL {label}\n", t.bb)).unwrap();
        s.ok(&["build", "-q", "-t", tag, ctx.to_str().unwrap()]);
    }
    let count = || s.ok(&["images", "-q"]).lines().count();
    assert_eq!(count(), 4);
    // Nothing is older than 2000.
    let out = s.ok(&["image", "prune", "-a", "-f", "--filter", "until=2000-01-01T00:00:00Z"]);
    assert!(out.contains("Total reclaimed space: 0B") && count() == 4, "{out}");
    // Only the image with the label...
    s.ok(&["image", "prune", "-a", "-f", "--filter", "label=other=1"]);
    assert!(s.ok(&["images", "-q", "other:1"]).is_empty() && count() == 3);
    // ...or all but those with it.
    s.ok(&["image", "prune", "-a", "-f", "--filter", "label!=keep=yes"]);
    let left = s.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert_eq!(left, "kept:1\n");
    // Everything is older than a moment ago (times are in whole seconds).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    s.ok(&["image", "prune", "-a", "-f", "--filter", "until=1s"]);
    assert_eq!(count(), 0);
    let (_, err) = s.fails(&["image", "prune", "-f", "--filter", "dangling=true"]);
    assert!(err.contains("image prune takes until=, label= and label!="), "{err}");
}

#[test]
fn system_prune_removes_stopped_containers_dangling_images_and_volumes() {
    let f = fixtures();
    let t = setup();
    let s = &t.s;
    s.ok(&["run", "--name", "stopped", "-v", "/anon", &t.bb, "true"]);
    s.ok(&["run", "-d", "--name", "running", &t.plat, "sleep", "600"]);
    t.reg.push_oci_layout(&f.oci, "full", "e2e/bb:1");
    s.pull(&t.bb); // the old e2e/bb:1 is dangling now, but `stopped` uses it

    let (code, err) = s.fails(&["system", "prune", "--filter", "until=1h"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid filter 'until=1h'"), "{err}");
    let out = s.ok(&["system", "prune"]); // no answer on stdin: nothing is removed
    assert!(
        out.starts_with(
            "WARNING! This will remove:\n  - all stopped containers\n  - all networks not used by at least one container\n  - all dangling images\n"
        ),
        "{out}"
    );
    assert_eq!(s.ok(&["ps", "-aq"]).lines().count(), 2);

    s.ok(&["network", "create", "unused"]);
    let out = s.ok(&["system", "prune", "-f"]);
    assert!(out.contains("Deleted Networks:\nunused\n"), "an unused network goes too: {out}");
    let stopped = s.ok(&["images", "-q"]);
    assert!(out.starts_with("Deleted Containers:\n"), "{out}");
    assert!(out.contains(&format!("deleted: {}", t.bb_img.config_digest)), "the dangling image goes with it: {out}");
    assert!(out.contains("Total reclaimed space: "), "{out}");
    assert_eq!(s.ok(&["ps", "-a", "--format", "{{.Names}}"]), "running\n");
    assert_eq!(stopped.lines().count(), 2, "the tagged images stay: {stopped}");
    assert_eq!(s.ok(&["volume", "ls", "-q"]).lines().count(), 1, "volumes stay without --volumes");

    let out = s.ok(&["system", "prune", "-a", "-f", "--volumes"]);
    assert!(out.contains("Deleted Volumes:\n"), "{out}");
    assert_eq!(s.ok(&["volume", "ls", "-q"]), "");
    assert_eq!(
        s.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]).trim(),
        t.plat,
        "only the running one's image"
    );
    s.ok(&["rm", "-f", "running"]);
}

#[test]
fn inspect_shows_docker_fields() {
    let t = setup();
    let out = t.s.ok(&["inspect", &t.bb]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect prints a JSON array");
    let img = &v[0];
    assert_eq!(img["Id"], t.bb_img.config_digest);
    assert_eq!(img["RepoTags"], serde_json::json!([t.bb]));
    let digest = t.reg.manifest_digest("e2e/bb", "1");
    assert_eq!(img["RepoDigests"], serde_json::json!([format!("{}@{digest}", split_ref(&t.bb).0)]));
    assert_eq!(img["Config"]["Cmd"], serde_json::json!(["sh"]));
    assert!(img["Config"]["Env"].as_array().unwrap().iter().any(|e| e.as_str().unwrap().starts_with("PATH=")));
    assert_eq!(img["Architecture"], "amd64");
    assert_eq!(img["Os"], "linux");
    assert_eq!(img["RootFS"]["Type"], "layers");
    let cfg: serde_json::Value = serde_json::from_slice(&t.bb_img.blobs[&t.bb_img.config_digest]).unwrap();
    assert_eq!(img["RootFS"]["Layers"], cfg["rootfs"]["diff_ids"]);
    assert!(img["Size"].as_u64().unwrap() > 1_000_000, "busybox is over 1 MB: {}", img["Size"]);

    // Same by id, with `image inspect`, and with --format.
    let by_id: serde_json::Value =
        serde_json::from_str(&t.s.ok(&["image", "inspect", &short_id(&t.bb_img.config_digest)])).unwrap();
    assert_eq!(by_id[0]["Id"], img["Id"]);
    assert_eq!(t.s.ok(&["inspect", "--format", "{{.Id}}", &t.bb]).trim(), t.bb_img.config_digest);
    assert_eq!(t.s.ok(&["inspect", "--format", "{{json .Config.Cmd}}", &t.bb]).trim(), r#"["sh"]"#);
    // Several at once.
    let two: serde_json::Value = serde_json::from_str(&t.s.ok(&["inspect", &t.bb, &t.plat])).unwrap();
    assert_eq!(two.as_array().unwrap().len(), 2);

    let (code, err) = t.s.fails(&["inspect", "no-such-image"]);
    assert_eq!(code, 1, "{err}");
    assert_mentions(&err, &["no such object", "no such image"], "inspect of a missing image");
}

#[test]
fn history_lists_the_config_history() {
    let t = setup();
    let cfg: serde_json::Value = serde_json::from_slice(&t.plat_img.blobs[&t.plat_img.config_digest]).unwrap();
    let hist = cfg["history"].as_array().unwrap();
    let rows = parse_table(&t.s.ok(&["history", &t.plat]));
    assert_eq!(rows[0], ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]);
    assert_eq!(rows.len() - 1, hist.len(), "one row per history entry: {rows:?}");
    assert_eq!(rows[1][0], short_id(&t.plat_img.config_digest), "newest first, with the image id");
    assert!(rows[2..].iter().all(|r| r[0] == "<missing>"), "{rows:?}");
    // Newest first: the last history entry is the first row.
    let newest_by = hist.last().unwrap()["created_by"].as_str().unwrap_or("");
    let rows_nt = parse_table(&t.s.ok(&["history", "--no-trunc", &t.plat]));
    assert_eq!(rows_nt[1][0], t.plat_img.config_digest);
    assert!(
        rows_nt[1].iter().any(|c| c == newest_by),
        "--no-trunc shows the full CREATED BY {newest_by:?}: {rows_nt:?}"
    );
    let q = t.s.ok(&["history", "-q", &t.plat]);
    assert_eq!(q.lines().next(), Some(short_id(&t.plat_img.config_digest).as_str()));
}

#[test]
fn system_df_and_info_count_images() {
    let t = setup();
    let rows = parse_table(&t.s.ok(&["system", "df"]));
    assert_eq!(rows[0], ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]);
    let images = rows.iter().find(|r| r[0] == "Images").unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(images[1], "2");
    assert!(rows.iter().any(|r| r[0] == "Containers"), "{rows:?}");
    assert!(rows.iter().any(|r| r[0] == "Local Volumes"), "{rows:?}");

    let info = t.s.ok(&["info"]);
    assert!(info.lines().any(|l| l.trim() == "Images: 2"), "{info}");
    assert!(info.contains(&t.s.root().display().to_string()), "info names the store root:\n{info}");
}

#[test]
fn unprivileged_user_manages_images_too() {
    let f = fixtures();
    let reg = Registry::start();
    let bb = reg.push_oci_layout(&f.oci, "busybox", "e2e/bb:1");
    let u = Strata::new_unprivileged();
    u.pull(&bb);
    u.ok(&["tag", &bb, "mine:1"]);
    let rows = parse_table(&u.ok(&["images"]));
    assert_eq!(rows.len(), 3);
    let out = u.ok(&["rmi", "mine:1", &bb]);
    assert!(out.contains("Deleted:"), "{out}");
    assert!(u.ok(&["images", "-q"]).trim().is_empty());
}

#[test]
fn image_commands_exit_1_on_errors_like_docker() {
    // The Docker CLI exits 1 when an image command fails; 125 is for
    // run/create/start and for usage errors.
    let s = Strata::new();
    let fake = FakeRegistry::start();
    let nosuch = fake.reference("e2e/nosuch:1");
    for (args, needles) in [
        (vec!["pull", &nosuch], &["not found", "manifest unknown"][..]),
        (vec!["image", "pull", "Busybox"], &["invalid reference format"]),
        (vec!["pull", "--platform", "bogus", "busybox"], &["bogus"]),
        (vec!["tag", "busybox", "Bad"], &["invalid reference format"]),
        (vec!["images", "-f", "before=nosuch"], &["no such image"]),
        (vec!["images", "-f", "bogus=1"], &["invalid filter"]),
        (vec!["rmi", "nosuch"], &["no such image"]),
        (vec!["history", "nosuch"], &["no such image"]),
        (vec!["image", "inspect", "nosuch"], &["no such image"]),
        (vec!["login"], &["non tty"]),
        (vec!["login", "--password-stdin", &fake.host()], &["--username"]),
    ] {
        let (code, err) = s.fails(&args);
        assert_eq!(code, 1, "strata {}: {err}", args.join(" "));
        assert!(err.starts_with("Error"), "strata {}: {err}", args.join(" "));
        assert_mentions(&err, needles, &args.join(" "));
    }
    // Usage errors and `run` keep 125.
    for args in [&["pull"][..], &["images", "--no-such-flag"], &["run", "Busybox"]] {
        let (code, err) = s.fails(args);
        assert_eq!(code, 125, "strata {}: {err}", args.join(" "));
    }
}

#[test]
fn errors_name_their_cause_once() {
    // A store the user may not enter: the message says which and why, and
    // says the cause once (the CLI prints an error's causes after it, so an
    // error that also wrote its cause into its own text said it twice).
    let u = Strata::new_unprivileged();
    let closed = tempfile::tempdir().expect("temp dir"); // 0700, root's
    let root = closed.path().join("store");
    let root = root.to_str().expect("utf-8 temp path");
    for args in [&["--root", root, "images"][..], &["--root", root, "run", "--rm", "busybox", "true"]] {
        let (_, err) = u.fails(args);
        assert_mentions(&err, &[root], &args.join(" "));
        assert_eq!(err.matches("Permission denied").count(), 1, "strata {}: {err}", args.join(" "));
    }
}

#[test]
fn version_reports_client_and_server() {
    let s = Strata::new();
    let out = s.ok(&["version"]);
    assert!(out.starts_with("Client:\n Version:"), "{out}");
    assert!(out.contains("\nServer: strata\n Engine:\n"), "{out}");
    let v = s.ok(&["version", "--format", "{{.Server.Version}} {{.Client.Os}}"]);
    assert_eq!(v, format!("{} linux\n", s.ok(&["--version"]).trim().rsplit(' ').next().unwrap()));
}
