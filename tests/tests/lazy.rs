//! `pull --lazy` of zstd:chunked images end to end, against a real registry,
//! with images made by skopeo (`--dest-compress-format zstd:chunked`, the
//! `chunked` fixture: the `full` image with a table of contents per layer).
//!
//! - A lazy pull stores no layer blob and no file; the tree it serves equals
//!   that of a full pull of the same image; files read through a mount are
//!   fetched then, and only they; a running container's layers are
//!   completed behind it; every file reads with the same content.
//! - Data that does not match the table of contents is refused: the part
//!   of a file whose frames were altered is an I/O error, and the file is
//!   not stored; a table of contents that does not match the manifest's
//!   checksum, or names a path outside the layer, fails the pull and
//!   stores nothing.
//! - Without the registry, a file not fetched yet is an I/O error and the
//!   files fetched before still read; with it back, the file reads.
//! - A large file is read in parts: a read fetches only the chunks under
//!   it, kept for later mounts; without the registry the parts fetched
//!   still read and the others fail; read whole, the file is stored as an
//!   object.
//! - A full pull completes a lazy image (verified against the diff_ids);
//!   containers made before keep working; `rmi` removes the lazy forms.
//!   `push` of a lazy image fetches the rest first.
//! - An image strata pushes with `--compression-format zstd:chunked` (from
//!   gzip layers) pulls lazily, its large file in parts, with every file's
//!   content the original's; pulled whole it is the same image; a second
//!   push sends nothing; `--compression-format gzip` turns it back.
//!
//! All as root and as the unprivileged test user.

use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use strata_e2e::listing::{assert_same_listing, canonical_listing};
use strata_e2e::*;

const CHECKSUM: &str = "io.github.containers.zstd-chunked.manifest-checksum";
const OLD_CHECKSUM: &str = "io.containers.zstd-chunked.manifest-checksum";
const POSITION: &str = "io.github.containers.zstd-chunked.manifest-position";
const OLD_POSITION: &str = "io.containers.zstd-chunked.manifest-position";

/// Every regular file of the image with its sha256, sorted (the files the
/// runtime mounts over are left out).
const SUM_ALL: &str = "find / -xdev -type f | grep -v -e '^/proc/' -e '^/sys/' -e '^/dev/' \
    -e '^/etc/hosts$' -e '^/etc/hostname$' -e '^/etc/resolv.conf$' | sort | xargs sha256sum";

fn annotation<'v>(desc: &'v Value, keys: [&str; 2]) -> &'v str {
    keys.iter().find_map(|k| desc["annotations"][*k].as_str()).unwrap_or_else(|| panic!("no {keys:?} in {desc}"))
}

/// An OCI layout being edited: a copy of the fixture's `chunked` layout.
struct Layout {
    dir: tempfile::TempDir,
}

impl Layout {
    fn copy_of_fixture() -> Layout {
        let dir = tempfile::tempdir().unwrap();
        run_tool(
            std::process::Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", fixtures().chunked.display()))
                .arg(dir.path()),
        );
        Layout { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn blob_path(&self, digest: &str) -> PathBuf {
        self.path().join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
    }
    fn json(&self, digest: &str) -> Value {
        serde_json::from_slice(&fs::read(self.blob_path(digest)).unwrap()).unwrap()
    }
    fn put(&self, data: &[u8]) -> (String, usize) {
        let digest = format!("sha256:{}", sha256_hex(data));
        fs::write(self.blob_path(&digest), data).unwrap();
        (digest, data.len())
    }
    fn index(&self) -> Value {
        serde_json::from_slice(&fs::read(self.path().join("index.json")).unwrap()).unwrap()
    }
    fn manifest(&self) -> Value {
        self.json(self.index()["manifests"][0]["digest"].as_str().unwrap())
    }
    /// Layer `i`'s descriptor and blob.
    fn layer(&self, i: usize) -> (Value, Vec<u8>) {
        let desc = self.manifest()["layers"][i].clone();
        let blob = fs::read(self.blob_path(desc["digest"].as_str().unwrap())).unwrap();
        (desc, blob)
    }
    /// Replaces layer `i` with `blob` described by `desc` (digest and size
    /// are set here), rewriting the manifest and index.json.
    fn replace_layer(&self, i: usize, mut desc: Value, blob: &[u8]) {
        let (digest, size) = self.put(blob);
        desc["digest"] = digest.into();
        desc["size"] = size.into();
        let mut manifest = self.manifest();
        manifest["layers"][i] = desc;
        let (mdigest, msize) = self.put(&serde_json::to_vec(&manifest).unwrap());
        let mut index = self.index();
        index["manifests"][0]["digest"] = mdigest.into();
        index["manifests"][0]["size"] = msize.into();
        fs::write(self.path().join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }
}

/// The table of contents of a zstd:chunked layer: (offset, entries).
fn toc(desc: &Value, blob: &[u8]) -> (usize, Vec<Value>) {
    let pos: Vec<usize> = annotation(desc, [POSITION, OLD_POSITION]).split(':').map(|f| f.parse().unwrap()).collect();
    let json = zstd::decode_all(&blob[pos[0]..pos[0] + pos[1]]).unwrap();
    let v: Value = serde_json::from_slice(&json).unwrap();
    (pos[0], v["entries"].as_array().unwrap().clone())
}

/// `desc` and `blob` with the table of contents' entries replaced by what
/// `edit` makes of them (written after the files, annotations updated).
fn with_toc(desc: &Value, blob: &[u8], edit: impl FnOnce(&mut Vec<Value>)) -> (Value, Vec<u8>) {
    let (offset, mut entries) = toc(desc, blob);
    edit(&mut entries);
    let json = serde_json::to_vec(&serde_json::json!({ "version": 1, "entries": entries })).unwrap();
    let compressed = zstd::encode_all(&json[..], 3).unwrap();
    let mut out = blob[..offset].to_vec();
    out.extend_from_slice(&compressed);
    let mut desc = desc.clone();
    let ann = desc["annotations"].as_object_mut().unwrap();
    ann.retain(|k, _| k != OLD_CHECKSUM && k != OLD_POSITION);
    ann.insert(CHECKSUM.into(), format!("sha256:{}", sha256_hex(&compressed)).into());
    ann.insert(POSITION.into(), format!("{offset}:{}:{}:1", compressed.len(), json.len()).into());
    (desc, out)
}

fn store_files(dir: &Path) -> usize {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    store_files(&e.path())
                } else {
                    1
                }
            })
            .sum(),
        Err(_) => 0,
    }
}

fn instance(unprivileged: bool) -> Strata {
    if unprivileged {
        Strata::new_unprivileged()
    } else {
        Strata::new()
    }
}

fn who(unprivileged: bool) -> &'static str {
    if unprivileged {
        "as strata-test"
    } else {
        "as root"
    }
}

#[test]
fn a_lazy_pull_serves_the_same_image_and_fetches_files_when_read() {
    let f = fixtures();
    let reg = Registry::start();
    let image = reg.push_oci_layout(&f.chunked, "full", "e2e/chunked:1");
    // The truth: the same image pulled whole.
    let whole = Strata::new();
    whole.pull(&image);
    let whole_objects = store_files(&whole.root().join("objects"));

    for unprivileged in [false, true] {
        let who = who(unprivileged);
        let s = instance(unprivileged);
        let out = s.ok(&["pull", "--lazy", &image]);
        assert_eq!(out.matches(": Lazy (files fetched on first use)\n").count(), 5, "{who}: {out}");
        assert_eq!(store_files(&s.root().join("objects")), 0, "{who}: no file is fetched by the pull");
        assert_eq!(store_files(&s.root().join("blobs")), 2, "{who}: only the manifest and config are stored");
        assert_same_listing(&whole.tree(&image), &s.tree(&image), &format!("{who}: the lazy image's tree"));

        // Files read through a mount: those are fetched, nothing else.
        if !unprivileged {
            let dir = s.base().join("peek");
            fs::create_dir_all(&dir).unwrap();
            s.ok(&[Path::new("mount"), Path::new(&image), &dir]);
            let text = fs::read_to_string(dir.join("data/text")).unwrap();
            let linked = fs::read_to_string(dir.join("data/hl/b")).unwrap();
            let big = sha256_hex(&fs::read(dir.join("data/big.bin")).unwrap());
            s.ok(&[Path::new("umount"), &dir]);
            assert_eq!((text.as_str(), linked.as_str()), ("some text\n", "linked content\n"));
            let whole_big = whole.ok(&["run", "--rm", &image, "sha256sum", "/data/big.bin"]);
            assert!(whole_big.starts_with(&big), "{who}: big.bin is {big}, not {whole_big}");
            assert_eq!(store_files(&s.root().join("objects")), 3, "{who}: the three files read are fetched");
        }

        // A running container's lazy layers are completed behind it, though
        // it reads only busybox: whole blobs, verified against the diff_ids.
        s.ok(&["run", "-d", "--name", "idle", &image, "sleep", "600"]);
        wait_until("the background completion", std::time::Duration::from_secs(120), || {
            store_files(&s.root().join("layers")) == 5
        });
        assert_eq!(store_files(&s.root().join("objects")), whole_objects, "{who}: every file is stored");
        s.ok(&["rm", "-f", "idle"]);

        // Every file read in a container: the same content as the whole image's.
        let sums = |s: &Strata| s.ok(&["run", "--rm", &image, "sh", "-c", SUM_ALL]);
        let summed = sums(&s);
        assert!(summed.lines().count() > 20, "{who}: {summed}");
        assert_eq!(summed, sums(&whole), "{who}: the content of every file");
        if !unprivileged {
            // And through `strata mount`, whose listing has owners, modes and xattrs.
            let listing = |s: &Strata| {
                let dir = s.base().join("mnt");
                fs::create_dir_all(&dir).unwrap();
                let dir = dir.canonicalize().unwrap();
                s.ok(&[Path::new("mount"), Path::new(&image), &dir]);
                let listing = canonical_listing(&dir);
                s.ok(&[Path::new("umount"), &dir]);
                listing
            };
            assert_same_listing(&listing(&whole), &listing(&s), &format!("{who}: the mounted lazy image"));
        }
    }
}

#[test]
fn lazy_data_that_does_not_match_its_table_of_contents_is_refused() {
    // Layer 4 holds data/big.bin (50 MiB): one byte in the middle of its
    // frames is changed, the table of contents is not.
    let altered = Layout::copy_of_fixture();
    let (desc, mut blob) = altered.layer(3);
    let (_, entries) = toc(&desc, &blob);
    let big = entries.iter().find(|e| e["name"] == "data/big.bin" && e["type"] == "reg").expect("big.bin in layer 4");
    let (start, end) = (big["offset"].as_u64().unwrap() as usize, big["endOffset"].as_u64().unwrap() as usize);
    let at = start + (end - start) / 2;
    blob[at] ^= 0x55;
    altered.replace_layer(3, desc, &blob);
    let reg = Registry::start();
    let image = reg.push_oci_layout(altered.path(), "full", "e2e/altered:1");

    for unprivileged in [false, true] {
        let who = who(unprivileged);
        let s = instance(unprivileged);
        s.ok(&["pull", "--lazy", &image]);
        // (big.bin is read in parts: its head is not altered and reads.)
        let script = "cat /data/text; dd if=/data/big.bin bs=4096 count=1 2>/dev/null | wc -c; \
                      cat /data/big.bin >/dev/null";
        let out = s.run(&["run", "--rm", &image, "sh", "-c", script]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{who}: reading the altered file fails");
        assert_eq!(stdout.split_whitespace().collect::<Vec<_>>(), ["some", "text", "4096"], "{who}: the rest reads");
        assert_mentions(&stderr, &["Input/output error", "I/O error"], who);
        let digest = big["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let object = s.root().join("objects").join(&digest[..2]).join(&digest[2..]);
        assert!(!object.exists(), "{who}: nothing is stored for the altered file");
        // A full pull finds the damage too (the frame's checksum, before the diff_id).
        let (_, err) = s.fails(&["pull", &image]);
        assert_mentions(&err, &["checksum", "diff_id"], &format!("{who}: a full pull of the altered image"));
    }

    // A table of contents that the manifest's checksum does not vouch for.
    let forged = Layout::copy_of_fixture();
    let (desc, blob) = forged.layer(4);
    let (mut forged_desc, forged_blob) = with_toc(&desc, &blob, |_| {});
    let ann = forged_desc["annotations"].as_object_mut().unwrap();
    ann.insert(CHECKSUM.into(), format!("sha256:{}", sha256_hex(b"another table")).into());
    forged.replace_layer(4, forged_desc, &forged_blob);
    // A table of contents with a path outside the layer, properly checksummed.
    let hostile = Layout::copy_of_fixture();
    let (desc, blob) = hostile.layer(4);
    let (hostile_desc, hostile_blob) = with_toc(&desc, &blob, |entries| {
        let mut escape = entries.iter().find(|e| e["type"] == "reg").unwrap().clone();
        escape["name"] = "../../etc/strata-escape".into();
        entries.push(escape);
    });
    hostile.replace_layer(4, hostile_desc, &hostile_blob);

    let reg = Registry::start();
    let forged_image = reg.push_oci_layout(forged.path(), "full", "e2e/forged:1");
    let hostile_image = reg.push_oci_layout(hostile.path(), "full", "e2e/hostile:1");
    for unprivileged in [false, true] {
        let who = who(unprivileged);
        let s = instance(unprivileged);
        let (_, err) = s.fails(&["pull", "--lazy", &forged_image]);
        assert_mentions(&err, &["is not the one its manifest names"], &format!("{who}: forged table of contents"));
        let (_, err) = s.fails(&["pull", "--lazy", &hostile_image]);
        assert_mentions(&err, &["\"../../etc/strata-escape\" has a '..' component"], &format!("{who}: hostile TOC"));
        assert_eq!(s.ok(&["images", "-q"]), "", "{who}: nothing stored");
        assert_eq!(store_files(&s.root().join("lazy")), 0, "{who}: no lazy layer stored");
        assert!(!Path::new("/etc/strata-escape").exists());
    }
}

#[test]
fn a_full_pull_completes_a_lazy_image_and_earlier_containers_keep_working() {
    let f = fixtures();
    let reg = Registry::start();
    let image = reg.push_oci_layout(&f.chunked, "full", "e2e/chunked:1");
    for unprivileged in [false, true] {
        let who = who(unprivileged);
        let s = instance(unprivileged);
        s.ok(&["pull", "--lazy", &image]);
        s.ok(&["create", "--name", "early", &image, "cat", "/data/text"]);
        let before = s.tree(&image);

        let out = s.ok(&["pull", &image]);
        assert_eq!(out.matches(": Pull complete\n").count(), 5, "{who}: the layers are fetched whole: {out}");
        assert_eq!(store_files(&s.root().join("layers")), 5, "{who}: five verified layers");
        assert_same_listing(&before, &s.tree(&image), &format!("{who}: the completed image"));
        assert_eq!(s.ok(&["start", "-a", "early"]), "some text\n", "{who}: the earlier container");
        assert_eq!(s.ok(&["run", "--rm", &image, "cat", "/data/hl/a"]), "linked content\n", "{who}");
        // gc keeps the lazy forms while the image lists them...
        s.ok(&["image", "prune", "-a", "-f"]);
        assert_eq!(store_files(&s.root().join("lazy")), 10, "{who}: lazy layers kept for `early`");
        // ...and removes them with it.
        s.ok(&["rm", "early"]);
        s.ok(&["rmi", &image]);
        assert_eq!(store_files(&s.root().join("lazy")), 0, "{who}: lazy layers removed with the image");
    }

    // `push` of a lazy image sends all of it.
    let s = Strata::new();
    s.ok(&["pull", "--lazy", &image]);
    let target = reg.reference("e2e/again:1");
    s.ok(&["tag", &image, &target]);
    let out = s.run(&["push", &target]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &["Fetching the rest of lazily pulled image"], "push");
    let other = Strata::new();
    other.pull(&target);
    assert_same_listing(&s.tree(&image), &other.tree(&target), "pushed after a lazy pull");
}

#[test]
fn without_the_registry_only_files_not_fetched_yet_fail() {
    let f = fixtures();
    let mut reg = Registry::start();
    let image = reg.push_oci_layout(&f.chunked, "full", "e2e/chunked:1");
    let users = [instance(false), instance(true)];
    for s in &users {
        s.ok(&["pull", "--lazy", &image]);
        assert_eq!(s.ok(&["run", "--rm", &image, "cat", "/data/hl/a"]), "linked content\n");
    }
    reg.pause();
    for (s, unprivileged) in users.iter().zip([false, true]) {
        let who = who(unprivileged);
        assert_eq!(s.ok(&["run", "--rm", &image, "cat", "/data/hl/a"]), "linked content\n", "{who}: fetched before");
        let out = s.run(&["run", "--rm", &image, "cat", "/data/text"]);
        assert!(!out.status.success(), "{who}: a file not fetched yet cannot be read");
        assert_mentions(&String::from_utf8_lossy(&out.stderr), &["Input/output error", "I/O error"], who);
    }
    reg.resume();
    for (s, unprivileged) in users.iter().zip([false, true]) {
        let who = who(unprivileged);
        assert_eq!(s.ok(&["run", "--rm", &image, "cat", "/data/text"]), "some text\n", "{who}: registry back");
    }
}

#[test]
fn a_container_fetches_from_a_registry_that_needs_a_login() {
    let f = fixtures();
    let reg = Registry::start_with_auth("lazy", "secret-pass");
    let image = reg.push_oci_layout(&f.chunked, "full", "e2e/private:1");
    for unprivileged in [false, true] {
        let who = who(unprivileged);
        let s = instance(unprivileged);
        s.ok(&["login", "-u", "lazy", "-p", "secret-pass", &reg.host()]);
        s.ok(&["pull", "--lazy", &image]);
        // The supervisor fetches with the caller's credentials, though its
        // environment is cut down.
        assert_eq!(s.ok(&["run", "--rm", &image, "cat", "/data/text"]), "some text\n", "{who}");
        s.ok(&["logout", &reg.host()]);
        let out = s.run(&["run", "--rm", &image, "cat", "/data/opq/new"]);
        assert!(!out.status.success(), "{who}: without the login the file cannot be fetched");
    }
}

#[test]
fn export_of_a_lazy_container_fetches_the_image_whole_first() {
    let f = fixtures();
    let reg = Registry::start();
    let image = reg.push_oci_layout(&f.chunked, "full", "e2e/chunked:1");
    let listing = |s: &Strata| {
        s.ok(&["create", "--name", "exported", &image, "true"]);
        let out = s.run(&["export", "exported"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut child = std::process::Command::new("tar")
            .args(["-tvf", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
        let listed = child.wait_with_output().unwrap();
        (String::from_utf8_lossy(&listed.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let whole = Strata::new();
    whole.pull(&image);
    let lazy = Strata::new();
    lazy.ok(&["pull", "--lazy", &image]);
    let (expected, _) = listing(&whole);
    let (got, said) = listing(&lazy);
    assert_eq!(got, expected, "the same archive");
    assert!(said.contains("Fetching the rest of lazily pulled image"), "{said}");
    assert_eq!(store_files(&lazy.root().join("layers")), 5, "completed: five verified layers");
}

/// Runs `dd` of `count` 4 KiB blocks at block `skip` of `file` (as the test
/// user when `unprivileged`); the bytes, or None when dd failed.
fn dd(file: &Path, skip: u64, count: u64, unprivileged: bool) -> Option<Vec<u8>> {
    let args = [format!("if={}", file.display()), "bs=4096".into(), format!("skip={skip}"), format!("count={count}")];
    let mut cmd = if unprivileged { as_test_user("dd") } else { std::process::Command::new("dd") };
    let out = cmd.args(args).output().unwrap();
    out.status.success().then_some(out.stdout)
}

/// The parts files of files being fetched in parts, with the bytes they hold.
fn parts_files(root: &Path) -> Vec<(PathBuf, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut found = vec![];
    for layer in fs::read_dir(root.join("lazy")).into_iter().flatten() {
        for part in fs::read_dir(layer.unwrap().path().join("parts")).into_iter().flatten() {
            let p = part.unwrap().path();
            let bytes = fs::metadata(&p).unwrap().blocks() * 512;
            found.push((p, bytes));
        }
    }
    found
}

#[test]
fn a_large_file_is_fetched_in_the_parts_that_are_read() {
    let f = fixtures();
    let mut reg = Registry::start();
    let image = reg.push_oci_layout(&f.chunked, "full", "e2e/parts:1");
    // The truth: data/big.bin (50 MiB, in about 900 chunks) of a full pull.
    let whole = Strata::new();
    whole.pull(&image);
    let truth = {
        let dir = whole.base().join("truth");
        fs::create_dir_all(&dir).unwrap();
        whole.ok(&[Path::new("mount"), Path::new(&image), &dir]);
        let bytes = fs::read(dir.join("data/big.bin")).unwrap();
        whole.ok(&[Path::new("umount"), &dir]);
        bytes
    };
    let block = |n: u64| &truth[n as usize * 4096..(n as usize + 1) * 4096];
    let big_digest = sha256_hex(&truth);
    let object = |s: &Strata| s.root().join("objects").join(&big_digest[..2]).join(&big_digest[2..]);

    for unprivileged in [false, true] {
        let who = who(unprivileged);
        let s = instance(unprivileged);
        s.ok(&["pull", "--lazy", &image]);
        let dir = s.base().join("parts");
        assert!(mkdir_as(unprivileged).arg(&dir).status().unwrap().success());
        let mount = || s.ok(&[Path::new("mount"), Path::new(&image), &dir]);
        let umount = || s.ok(&[Path::new("umount"), &dir]);
        let big = dir.join("data/big.bin");

        // 4 KiB at 30 MiB: the chunks under it come, not the file.
        mount();
        assert_eq!(dd(&big, 7680, 1, unprivileged).as_deref(), Some(block(7680)), "{who}: 4 KiB at 30 MiB");
        let parts = parts_files(&s.root());
        assert_eq!(parts.len(), 1, "{who}: one file is being fetched in parts: {parts:?}");
        assert!(parts[0].1 < 2 << 20, "{who}: only a few chunks are fetched: {parts:?}");
        assert!(!object(&s).exists(), "{who}: the file is not stored while parts are missing");
        umount();

        // Without the registry, in a new mount: what was fetched reads, the rest fails.
        reg.pause();
        mount();
        assert_eq!(dd(&big, 7681, 1, unprivileged).as_deref(), Some(block(7681)), "{who}: a part fetched before");
        assert_eq!(dd(&big, 256, 1, unprivileged), None, "{who}: a part not fetched is an I/O error");
        reg.resume();
        assert_eq!(dd(&big, 256, 1, unprivileged).as_deref(), Some(block(256)), "{who}: with the registry back");

        // Read whole: the same bytes, and the file becomes an object.
        let all = dd(&big, 0, 12800, unprivileged).unwrap_or_default();
        assert!(all == truth, "{who}: big.bin read whole through the mount differs");
        assert!(object(&s).exists(), "{who}: the file is stored once all of it is here");
        assert_eq!(parts_files(&s.root()), vec![], "{who}: the parts file is removed");
        umount();

        // A new mount reads it from the store, the registry gone.
        reg.pause();
        mount();
        let again = dd(&big, 0, 12800, unprivileged).unwrap_or_default();
        umount();
        reg.resume();
        assert!(again == truth, "{who}: big.bin read from the store differs");

        // A parts file whose file a full pull has stored since goes at the next gc.
        let s2 = instance(unprivileged);
        s2.ok(&["pull", "--lazy", &image]);
        s2.ok(&[Path::new("mount"), Path::new(&image), &dir]);
        assert_eq!(dd(&big, 7680, 1, unprivileged).as_deref(), Some(block(7680)), "{who}: 4 KiB at 30 MiB");
        s2.ok(&[Path::new("umount"), &dir]);
        assert_eq!(parts_files(&s2.root()).len(), 1, "{who}: a parts file");
        s2.ok(&["pull", &image]);
        s2.ok(&["image", "prune", "-f"]);
        assert_eq!(parts_files(&s2.root()), vec![], "{who}: the parts file is gone after the gc");
        assert!(object(&s2).exists(), "{who}: the file is in the store");
    }
}

fn mkdir_as(unprivileged: bool) -> std::process::Command {
    let mut cmd = if unprivileged { as_test_user("mkdir") } else { std::process::Command::new("mkdir") };
    cmd.arg("-p");
    cmd
}

/// The layers of `reference`'s manifest in `reg`: (media type, digest, annotations).
fn registry_layers(reg: &Registry, repo: &str, tag: &str) -> Vec<(String, String, Value)> {
    let manifest: Value = serde_json::from_slice(&reg.manifest(repo, tag).body).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["mediaType"].as_str().unwrap().to_string(),
                l["digest"].as_str().unwrap().to_string(),
                l["annotations"].clone(),
            )
        })
        .collect()
}

#[test]
fn an_image_strata_pushes_as_zstd_chunked_pulls_lazily() {
    let f = fixtures();
    let reg = Registry::start();
    // The gzip fixture, which has data/big.bin (50 MiB) for chunks.
    let full = reg.push_oci_layout(&f.oci, "full", "e2e/full:1");
    for unprivileged in [false, true] {
        let who = who(unprivileged);
        let s = instance(unprivileged);
        s.pull(&full);
        let id = s.ok(&["image", "inspect", "-f", "{{.Id}}", &full]);
        let repo = format!("e2e/chunky-{unprivileged}");
        let target = reg.reference(&format!("{repo}:1"));
        s.ok(&["tag", &full, &target]);

        let out = s.ok(&["push", "--compression-format", "zstd:chunked", &target]);
        assert_eq!(out.matches(": Pushed\n").count(), 5, "{who}: every layer is recompressed and sent: {out}");
        let layers = registry_layers(&reg, &repo, "1");
        for (media_type, _, annotations) in &layers {
            assert_eq!(media_type, "application/vnd.oci.image.layer.v1.tar+zstd", "{who}");
            assert!(annotations.get(CHECKSUM).is_some() && annotations.get(POSITION).is_some(), "{who}: {annotations}");
        }
        // The same image: the config is untouched.
        let config: Value = serde_json::from_slice(&reg.manifest(&repo, "1").body).unwrap();
        assert_eq!(config["config"]["digest"].as_str().unwrap(), id.trim(), "{who}");

        // Again: nothing is compressed or sent, the same manifest.
        let digest = reg.manifest_digest(&repo, "1");
        let again = s.ok(&["push", "--compression-format", "zstd:chunked", &target]);
        assert_eq!(again.matches(": Layer already exists\n").count(), 5, "{who}: {again}");
        assert!(again.contains(&format!("digest: {digest}")), "{who}: {again}");
        let digests = s.ok(&["image", "inspect", "-f", "{{json .RepoDigests}}", &target]);
        assert!(digests.contains(&format!("{}@{digest}", reg.reference(&repo))), "{who}: {digests}");

        // Another store pulls it lazily: no file comes with the pull, and the
        // tree and every file's content are the original's.
        let lazy = instance(unprivileged);
        let pulled = lazy.ok(&["pull", "--lazy", &target]);
        assert_eq!(pulled.matches(": Lazy (files fetched on first use)\n").count(), 5, "{who}: {pulled}");
        assert_eq!(store_files(&lazy.root().join("objects")), 0, "{who}: no file is fetched by the pull");
        assert_same_listing(&s.tree(&full), &lazy.tree(&target), &format!("{who}: the lazy image's tree"));

        // The 50 MiB file is in chunks: 4 KiB of it fetches only a few.
        let dir = lazy.base().join("peek");
        assert!(mkdir_as(unprivileged).arg(&dir).status().unwrap().success());
        lazy.ok(&[Path::new("mount"), Path::new(&target), &dir]);
        let block = dd(&dir.join("data/big.bin"), 7680, 1, unprivileged).expect("4 KiB at 30 MiB");
        lazy.ok(&[Path::new("umount"), &dir]);
        let parts = parts_files(&lazy.root());
        assert_eq!(parts.len(), 1, "{who}: big.bin is fetched in parts: {parts:?}");
        assert!(parts[0].1 < 2 << 20, "{who}: only a few chunks are fetched: {parts:?}");
        let cut = "dd if=/data/big.bin bs=4096 skip=7680 count=1 2>/dev/null | sha256sum";
        let truth = s.ok(&["run", "--rm", &full, "sh", "-c", cut]);
        assert!(truth.starts_with(&sha256_hex(&block)), "{who}: the 4 KiB at 30 MiB differ");

        let sums = |s: &Strata, image: &str| s.ok(&["run", "--rm", image, "sh", "-c", SUM_ALL]);
        let summed = sums(&lazy, &target);
        assert!(summed.lines().count() > 20, "{who}: {summed}");
        assert_eq!(summed, sums(&s, &full), "{who}: the content of every file");

        // A full pull reads the blobs whole and checks them against the
        // original diff_ids: the same image id.
        let whole = instance(unprivileged);
        whole.pull(&target);
        assert_eq!(whole.ok(&["image", "inspect", "-f", "{{.Id}}", &target]), id, "{who}: pulled whole");

        // And back to gzip, from the image pulled whole.
        let gz = reg.reference(&format!("{repo}-gz:1"));
        whole.ok(&["tag", &target, &gz]);
        whole.ok(&["push", "--compression-format", "gzip", "--compression-level", "1", &gz]);
        for (media_type, _, annotations) in registry_layers(&reg, &format!("{repo}-gz"), "1") {
            assert_eq!(media_type, "application/vnd.oci.image.layer.v1.tar+gzip", "{who}");
            assert!(annotations.get(CHECKSUM).is_none(), "{who}: no TOC annotation on a gzip layer");
        }
        let back = instance(unprivileged);
        back.pull(&gz);
        assert_eq!(back.ok(&["image", "inspect", "-f", "{{.Id}}", &gz]), id, "{who}: pulled back from gzip");
    }

    let s = Strata::new();
    s.pull(&full);
    let (code, err) = s.fails(&["push", "--compression-format", "lz4", &full]);
    assert_eq!(code, 125, "{err}");
    assert_mentions(&err, &["lz4", "gzip, zstd or zstd:chunked"], "an unknown format");
    let (code, err) = s.fails(&["push", "--compression-format", "zstd", "--compression-level", "30", &full]);
    assert_eq!(code, 125, "{err}");
    assert_mentions(&err, &["level 30", "1..=22"], "a level out of range");
}
