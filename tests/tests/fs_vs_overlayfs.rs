//! Differential test of strata's writable mounts against the kernel's
//! overlayfs on the fixture images (tests/fixtures). Every fixture image with
//! more than one layer is pulled into a fresh store by the real binary and
//! mounted with `strata mount --rw --upper`; the same image's layer tars,
//! taken from the fixture's OCI layout and extracted with GNU tar (whiteouts
//! and opaque markers converted to overlayfs form, without strata), are
//! mounted by overlayfs. One script of operations runs on both; every
//! operation's result, the resulting trees (also after `strata umount` and
//! mounting the upper directory again) and the `docker diff` change lists
//! must agree.
//!
//! Each image is tested twice: as root, and rootless — `strata-test` pulls
//! into its own store, and both mounts are made in a user namespace where
//! that user is root (as rootless containers run): overlayfs with
//! `userxattr`, strata by the binary with mount(2) in the namespace. What
//! unprivileged overlayfs cannot do is left out there (see [`ROOT_ONLY`]).
//!
//! The helpers (lower directories, tree descriptions, operations, change
//! lists, user namespaces) are shared with strata-fs's own differential test,
//! see `strata_fs::testing`. Needs root (overlayfs, GNU tar keeping owners
//! and devices); skipped otherwise.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_e2e::*;
use strata_fs::testing::changes::{assert_same_changes, lower_view, overlay_changes, strata_changes};
use strata_fs::testing::ops::*;
use strata_fs::testing::overlay::{extract_oci_layer, shift_ids, OverlayMount, XattrNs};
use strata_fs::testing::tree::{assert_same_tree, describe};
use strata_fs::testing::userns;

/// An image of a fixture layout.
struct Image {
    layout: PathBuf,
    tag: String,
    zstd: bool,
    /// Layer blob digests, bottom first.
    layers: Vec<String>,
    /// The config's diff_ids, bottom first.
    diff_ids: Vec<String>,
}

fn json(path: &Path) -> serde_json::Value {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&data).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

/// The images (not indexes) of a layout, by tag.
fn images_of(layout: &Path, zstd: bool) -> Vec<Image> {
    let index = json(&layout.join("index.json"));
    let mut out = Vec::new();
    for m in index["manifests"].as_array().cloned().unwrap_or_default() {
        if m["mediaType"] != "application/vnd.oci.image.manifest.v1+json" {
            // The index `multi` lists the images tagged amd64 and arm64.
            continue;
        }
        let tag = m["annotations"]["org.opencontainers.image.ref.name"].as_str().unwrap_or_default().to_string();
        let manifest = json(&blob(layout, m["digest"].as_str().unwrap_or_default()));
        let layers: Vec<String> = manifest["layers"]
            .as_array()
            .unwrap_or_else(|| panic!("manifest of {tag} has no layers"))
            .iter()
            .map(|l| l["digest"].as_str().unwrap_or_default().to_string())
            .collect();
        let config = json(&blob(layout, manifest["config"]["digest"].as_str().unwrap_or_default()));
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .unwrap_or_else(|| panic!("config of {tag} has no diff_ids"))
            .iter()
            .map(|d| d.as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(layers.len(), diff_ids.len(), "{tag}: layers and diff_ids");
        out.push(Image { layout: layout.to_path_buf(), tag, zstd, layers, diff_ids });
    }
    out
}

/// Every fixture image with more than one layer, named `TAG` (gzip layout)
/// or `zstd-TAG`.
fn multi_layer_images() -> Vec<(String, Image)> {
    let f = fixtures();
    let mut all = Vec::new();
    for (layout, zstd) in [(&f.oci, false), (&f.zstd, true)] {
        for img in images_of(layout, zstd) {
            if img.layers.len() > 1 {
                let name = if zstd { format!("zstd-{}", img.tag) } else { img.tag.clone() };
                all.push((name, img));
            }
        }
    }
    all
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Runs strata commands: the harness's [`Strata`] as root, or the binary
/// with a given store inside the user namespace (where no `Strata` may be
/// made: it would remove its directory when dropped).
trait Cli {
    fn strata(&self, args: &[OsString]);
}

impl Cli for Strata {
    fn strata(&self, args: &[OsString]) {
        self.ok(args);
    }
}

/// The strata binary with store `root` and home `home`.
struct InNamespace {
    bin: PathBuf,
    root: PathBuf,
    home: PathBuf,
}

impl Cli for InNamespace {
    fn strata(&self, args: &[OsString]) {
        let child = std::process::Command::new(&self.bin)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("STRATA_ROOT", &self.root)
            .env("XDG_RUNTIME_DIR", self.home.parent().unwrap_or(&self.home).join("run"))
            .current_dir(&self.home)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        let what = strata_e2e::strata::describe(args);
        let out = strata_e2e::strata::wait_output(child, std::time::Duration::from_secs(300), &what);
        if !out.status.success() {
            panic!("`{what}` failed:\n{}", strata_e2e::strata::show_output(&out));
        }
    }
}

/// Unmounts with `strata umount` when dropped.
struct StrataMount<'a> {
    cli: &'a dyn Cli,
    dir: PathBuf,
}

impl<'a> StrataMount<'a> {
    /// `strata mount --rw --upper UPPER IMAGE DIR`.
    fn new(cli: &'a dyn Cli, image: &str, upper: &Path, dir: &Path) -> StrataMount<'a> {
        cli.strata(&["mount".into(), "--rw".into(), "--upper".into(), upper.into(), image.into(), dir.into()]);
        StrataMount { cli, dir: dir.to_path_buf() }
    }

    fn unmount(self) {
        self.cli.strata(&["umount".into(), self.dir.clone().into()]);
        std::mem::forget(self);
    }
}

impl Drop for StrataMount<'_> {
    fn drop(&mut self) {
        let dir = self.dir.clone();
        let _ =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.cli.strata(&["umount".into(), dir.into()])));
    }
}

/// Operations over the fixtures' paths: the busybox layer every image has
/// (bin/, etc/, home/, root/, tmp/, usr/bin/, var/), then the data/ tree of
/// `full` (on the other images those operations fail with ENOENT on both
/// sides). See tests/fixtures/make-fixtures.sh for what each layer holds.
fn script() -> Script {
    // The fixture's name of 180 bytes.
    let long = "n".repeat(180);
    vec![
        // --- the busybox layer ---
        ("append lower file", Box::new(|m: &Path| append(m, "etc/passwd", b"user:x:1000:1000::/home/user:/bin/sh\n"))),
        ("overwrite lower file", Box::new(|m: &Path| write(m, "etc/group", b"root:x:0:\nstaff:x:50:\n"))),
        ("truncate lower file", Box::new(|m: &Path| truncate(m, "bin/busybox", 4096))),
        ("chmod lower file", Box::new(|m: &Path| chmod(m, "bin/busybox", 0o700))),
        ("chown lower dir", Box::new(|m: &Path| chown(m, "usr", 10, 20))),
        ("chmod lower dir", Box::new(|m: &Path| chmod(m, "var", 0o750))),
        ("utimes lower dir", Box::new(|m: &Path| utimes(m, "usr/bin", 1_234_567_890, 7, true))),
        ("utimes lower symlink", Box::new(|m: &Path| utimes(m, "bin/sh", 1_111_111_111, 0, false))),
        ("chown lower symlink", Box::new(|m: &Path| chown(m, "bin/echo", 7, 8))),
        ("unlink lower symlink", Box::new(|m: &Path| unlink(m, "bin/cat"))),
        ("rmdir lower empty dir", Box::new(|m: &Path| rmdir(m, "home"))),
        ("rmdir lower private dir", Box::new(|m: &Path| rmdir(m, "root"))),
        ("rmdir non-empty lower dir", Box::new(|m: &Path| rmdir(m, "etc"))),
        ("recreate deleted dir", Box::new(|m: &Path| mkdir(m, "home"))),
        ("list recreated dir", Box::new(|m: &Path| list(m, "home"))),
        ("rename lower file", Box::new(|m: &Path| rename(m, "etc/group", "etc/group.old"))),
        ("rename into recreated dir", Box::new(|m: &Path| rename(m, "etc/group.old", "home/group"))),
        ("rename lower dir with content", Box::new(|m: &Path| mv(m, "usr", "usr.moved"))),
        ("hardlink lower file", Box::new(|m: &Path| link(m, "etc/passwd", "etc/passwd.link"))),
        ("write through the new link", Box::new(|m: &Path| append(m, "etc/passwd.link", b"through link\n"))),
        ("read the other name", Box::new(|m: &Path| read(m, "etc/passwd"))),
        ("stat hardlinked", Box::new(|m: &Path| stat(m, "etc/passwd"))),
        ("setxattr lower dir", Box::new(|m: &Path| setxattr(m, "tmp", "user.dir", b"1"))),
        ("removexattr missing", Box::new(|m: &Path| removexattr(m, "tmp", "user.none"))),
        ("create in sticky lower dir", Box::new(|m: &Path| write(m, "tmp/new", b"new\n"))),
        ("unlink for whiteout", Box::new(|m: &Path| unlink(m, "bin/true"))),
        ("rename over whiteout", Box::new(|m: &Path| rename(m, "tmp/new", "bin/true"))),
        ("overwrite platform file", Box::new(|m: &Path| write(m, "etc/platform", b"changed\n"))),
        // --- data/ of `full` ---
        ("O_TRUNC lower", Box::new(|m: &Path| open_trunc(m, "data/text"))),
        ("O_EXCL existing", Box::new(|m: &Path| create_excl(m, "data/text"))),
        ("truncate big lower file", Box::new(|m: &Path| truncate(m, "data/big.bin", 1_000_000))),
        ("append to long name", Box::new(move |m: &Path| append(m, &format!("data/{long}"), b"more\n"))),
        ("chmod lower file", Box::new(|m: &Path| chmod(m, "data/chmod-only", 0o640))),
        ("chmod setgid", Box::new(|m: &Path| chmod(m, "data/perm/setgid", 0o2711))),
        ("chown lower file", Box::new(|m: &Path| chown(m, "data/own/u12345", 1, 2))),
        ("chown lower dir", Box::new(|m: &Path| chown(m, "data/own/www", 0, 0))),
        ("chmod lower dir", Box::new(|m: &Path| chmod(m, "data/links", 0o700))),
        ("utimes lower file", Box::new(|m: &Path| utimes(m, "data/empty", 1_000_000_000, 5, true))),
        ("chown lower device", Box::new(|m: &Path| chown(m, "data/chardev", 5, 5))),
        ("chmod whited-out", Box::new(|m: &Path| chmod(m, "data/gone.txt", 0o600))),
        ("unlink lower file", Box::new(|m: &Path| unlink(m, "data/chown-only"))),
        ("unlink lower fifo", Box::new(|m: &Path| unlink(m, "data/fifo"))),
        ("unlink below opaque dir", Box::new(|m: &Path| unlink(m, "data/opq/a"))),
        ("rmdir below opaque dir", Box::new(|m: &Path| rmdir(m, "data/opq/b"))),
        ("list opaque dir", Box::new(|m: &Path| list(m, "data/opq"))),
        ("unlink in opaque dir", Box::new(|m: &Path| unlink(m, "data/opq/new"))),
        ("rmdir opaque dir hiding a lower dir", Box::new(|m: &Path| rmdir(m, "data/opq"))),
        ("recreate opaque dir", Box::new(|m: &Path| mkdir(m, "data/opq"))),
        ("list recreated opaque dir", Box::new(|m: &Path| list(m, "data/opq"))),
        ("rmdir lower empty dir", Box::new(|m: &Path| rmdir(m, "data/perm/sticky"))),
        ("rmdir non-empty lower dir", Box::new(|m: &Path| rmdir(m, "data/perm"))),
        ("rm -rf lower dir", Box::new(|m: &Path| rm_rf(m, "data/deep"))),
        ("mkdir over lower whiteout", Box::new(|m: &Path| mkdir(m, "data/gonedir"))),
        ("list it", Box::new(|m: &Path| list(m, "data/gonedir"))),
        ("rename over lower whiteout", Box::new(|m: &Path| rename(m, "data/xattr", "data/gone.txt"))),
        ("xattr of renamed", Box::new(|m: &Path| read_xattr(m, "data/gone.txt", "user.x"))),
        ("rename file over lower file", Box::new(|m: &Path| rename(m, "data/empty", "data/chmod-only"))),
        ("write through a lower hard link", Box::new(|m: &Path| append(m, "data/hl/a", b"more\n"))),
        ("read another name of it", Box::new(|m: &Path| read(m, "data/hl/b"))),
        ("stat another name of it", Box::new(|m: &Path| stat(m, "data/hl/c"))),
        ("rename lower dir with hard links", Box::new(|m: &Path| mv(m, "data/hl", "data/hl.moved"))),
        ("rename lower dir with symlinks", Box::new(|m: &Path| mv(m, "data/links", "data/links.moved"))),
        ("rename dir that replaced a file", Box::new(|m: &Path| mv(m, "data/f2d", "data/f2d.moved"))),
        ("unlink file that replaced a dir", Box::new(|m: &Path| unlink(m, "data/d2f"))),
        ("mkdir where the dir was", Box::new(|m: &Path| mkdir(m, "data/d2f"))),
        ("list that dir", Box::new(|m: &Path| list(m, "data/d2f"))),
        ("hardlink lower file", Box::new(|m: &Path| link(m, "data/own/u1000", "data/u1000.link"))),
        ("write through the new link", Box::new(|m: &Path| append(m, "data/u1000.link", b"through link\n"))),
        ("read the lower name", Box::new(|m: &Path| read(m, "data/own/u1000"))),
        ("rm -rf lower dir for recreate", Box::new(|m: &Path| rm_rf(m, "data/own"))),
        ("recreate it", Box::new(|m: &Path| mkdir(m, "data/own"))),
        ("file in recreated", Box::new(|m: &Path| write(m, "data/own/u1000", b"new\n"))),
        ("list recreated", Box::new(|m: &Path| list(m, "data/own"))),
        ("setxattr lower file", Box::new(|m: &Path| setxattr(m, "data/text", "user.new", b"v"))),
        ("removexattr lower (PAX)", Box::new(|m: &Path| removexattr(m, "data/xattr-pax", "user.crafted"))),
        ("removexattr missing", Box::new(|m: &Path| removexattr(m, "data/text", "user.none"))),
        ("mkfifo in lower dir", Box::new(|m: &Path| mkfifo(m, "data/perm/fifo", 0o600))),
        ("symlink in lower dir", Box::new(|m: &Path| symlink(m, "../text", "data/perm/link"))),
        (
            "exchange lower files",
            Box::new(|m: &Path| rename_flags(m, "data/perm/readonly", "data/perm/nothing", RenameFlags::EXCHANGE)),
        ),
        (
            "noreplace over lower file",
            Box::new(|m: &Path| rename_flags(m, "data/text", "data/perm/readonly", RenameFlags::NOREPLACE)),
        ),
    ]
}

/// Operations the run in a user namespace leaves out, because unprivileged
/// overlayfs cannot do what strata does there by design:
/// - it cannot copy a device node up (mknod needs real root, so the chown
///   fails with EPERM); strata keeps the device as a stand-in file with the
///   device number in an xattr (README: devices as `user.strata.*` xattrs);
/// - it has no inode index (decoding file handles needs real root: the
///   kernel logs "falling back to index=off"), so a copy-up breaks the hard
///   links of a lower file: writing through one name leaves the other names
///   as they were; strata keeps the link.
const ROOT_ONLY: &[&str] =
    &["chown lower device", "write through a lower hard link", "read another name of it", "stat another name of it"];

/// Where the script runs: the lower directories, the store, the image.
struct Setup<'a> {
    name: &'a str,
    cli: &'a dyn Cli,
    image: &'a str,
    store: &'a Path,
    diff_ids: &'a [String],
    /// Lower directories (bottom first) and room for the mounts.
    base: &'a Path,
    layers: usize,
    ns: XattrNs,
    /// Modification times before this are the layers' own (or set by the
    /// script), so compared.
    start: i64,
}

/// Pulls `img` into `s`'s store; returns the reference.
fn pull(reg: &Registry, s: &Strata, name: &str, img: &Image) -> String {
    let dest = format!("e2e/overlay-{name}:1");
    let image = if img.zstd {
        reg.push_zstd(&img.layout, &img.tag, &dest)
    } else {
        reg.push_oci_layout(&img.layout, &img.tag, &dest)
    };
    s.pull(&image);
    image
}

/// The lower directories of `img` for overlayfs below `base`, from its
/// layer tars as GNU tar extracts them, converted.
fn lower_dirs(img: &Image, base: &Path, ns: XattrNs) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = (0..img.layers.len()).map(|i| base.join(format!("l{i}"))).collect();
    for (i, (digest, dir)) in img.layers.iter().zip(&dirs).enumerate() {
        extract_oci_layer(&blob(&img.layout, digest), dir, &dirs[..i], ns);
    }
    dirs
}

/// Both mounts, the script, the comparisons.
fn compare(t: &Setup) {
    let (name, base) = (t.name, t.base);
    let dirs: Vec<PathBuf> = (0..t.layers).map(|i| base.join(format!("l{i}"))).collect();
    for d in ["ov_upper", "ov_work", "ov", "st"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    let (ov, st, ov_upper, st_upper) = (base.join("ov"), base.join("st"), base.join("ov_upper"), base.join("st_upper"));
    // With the inode index: `full` has lower hard links, and the script writes
    // through one of them (see `OverlayMount::mount`).
    let _ov = OverlayMount::mount(&dirs, &ov_upper, &base.join("ov_work"), &ov, t.ns, true);
    let m = StrataMount::new(t.cli, t.image, &st_upper, &st);

    let tree = |root: &Path| describe(root, t.start);
    assert_same_tree(&format!("{name}: the untouched views"), ("overlayfs", &tree(&ov)), ("strata", &tree(&st)));
    let mut script = script();
    if t.ns == XattrNs::User {
        script.retain(|(op, _)| !ROOT_ONLY.contains(op));
    }
    let mismatches = run_script(&script, &ov, &st);
    assert!(mismatches.is_empty(), "{name}: operation results differ:\n{}", mismatches.join("\n"));
    let after = tree(&st);
    assert_same_tree(&format!("{name}: after the script"), ("overlayfs", &tree(&ov)), ("strata", &after));

    m.unmount();
    let m = StrataMount::new(t.cli, t.image, &st_upper, &st);
    assert_same_tree(&format!("{name}: strata's upper remounted"), ("before", &after), ("after", &tree(&st)));
    m.unmount();

    // The change lists: strata's over the layer indexes it stored, overlayfs's
    // upper directory over the extracted layers.
    let layout = strata_layers::layout::StoreLayout::new(t.store);
    let store = strata_layers::store::Store::open(layout.clone()).unwrap();
    let lowers: Vec<strata_fs::Lower> = t
        .diff_ids
        .iter()
        .map(|d| strata_fs::Lower::new(Arc::new(store.layer_index(&d.parse().unwrap()).unwrap()), layout.objects_dir()))
        .collect();
    let theirs = overlay_changes(&lower_view(&dirs), &ov_upper);
    assert_same_changes(&format!("{name}: docker diff"), &theirs, &strata_changes(&lowers, &st_upper));
    eprintln!("{name}: same as overlayfs ({} changes)", theirs.len());
}

/// As root: pull, mount and compare with the real binary and root's overlayfs.
fn as_root(reg: &Registry, name: &str, img: &Image) {
    let s = Strata::new();
    let image = pull(reg, &s, name, img);
    let base = s.base().join("overlay");
    lower_dirs(img, &base, XattrNs::Trusted);
    compare(&Setup {
        name,
        cli: &s,
        image: &image,
        store: &s.root(),
        diff_ids: &img.diff_ids,
        base: &base,
        layers: img.layers.len(),
        ns: XattrNs::Trusted,
        start: now_secs(),
    });
}

/// Set for the run in the user namespace: what it needs, one per line
/// (image, store, home, strata binary, start time, diff_ids...).
const INNER: &str = "STRATA_E2E_OVERLAY_INNER";

/// Rootless: `strata-test` pulls into its own store; root extracts the
/// lower directories with the user namespace's ids; then this test runs
/// again as that user, root of a user namespace of its own (as rootless
/// containers run), and mounts and compares there: overlayfs with
/// `userxattr`, strata with mount(2) in the namespace.
fn rootless(reg: &Registry, name: &str, img: &Image, test: &str) {
    let (uids, gids) = userns::probe_maps(TEST_USER)
        .unwrap_or_else(|e| panic!("no user namespace with subordinate ids for {TEST_USER} (scripts/setup.sh): {e}"));
    let s = Strata::new_unprivileged();
    let image = pull(reg, &s, name, img);
    let base = s.base().join("overlay");
    for d in lower_dirs(img, &base, XattrNs::User) {
        shift_ids(&d, &uids, &gids);
    }
    // The namespace's root (the user) owns the rest.
    std::os::unix::fs::chown(&base, Some(uids.outside(0)), Some(gids.outside(0))).unwrap();
    let mut lines = vec![
        name.to_string(),
        image.clone(),
        s.root().display().to_string(),
        s.home().display().to_string(),
        s.bin().display().to_string(),
        now_secs().to_string(),
    ];
    lines.extend(img.diff_ids.iter().cloned());
    let env = lines.join("\n");
    let out = userns::rerun_test(TEST_USER, test, s.base(), &[(INNER, OsStr::new(&env))], 900);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- run in the user namespace: stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(out.status.success(), "{name}: the run in the user namespace failed ({})", out.status);
    assert!(stdout.contains("compared in the user namespace"), "{name}: the run in the user namespace did not run");
}

/// The run inside the user namespace (see [`rootless`]).
fn inner(env: &OsStr) {
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap();
    assert!(is_root() && !map.contains("4294967295"), "not root of a user namespace: {map}");
    let text = env.to_string_lossy();
    let lines: Vec<&str> = text.lines().collect();
    let [name, image, store, home, bin, start, diff_ids @ ..] = &lines[..] else { panic!("bad {INNER}: {text}") };
    let cli = InNamespace { bin: bin.into(), root: store.into(), home: home.into() };
    let diff_ids: Vec<String> = diff_ids.iter().map(|d| d.to_string()).collect();
    let base = Path::new(store).parent().unwrap().join("overlay");
    compare(&Setup {
        name,
        cli: &cli,
        image,
        store: Path::new(store),
        diff_ids: &diff_ids,
        base: &base,
        layers: diff_ids.len(),
        ns: XattrNs::User,
        start: start.parse().unwrap(),
    });
    println!("compared in the user namespace");
}

/// The images this test covers: each has its own test below, so that a new
/// multi-layer fixture fails here until it gets one.
const COVERED: &[&str] = &["full", "amd64", "arm64", "zstd-full"];

#[test]
fn every_multi_layer_fixture_is_covered() {
    if !is_root() {
        eprintln!("skipped: needs root (fixtures are built as root)");
        return;
    }
    let mut names: Vec<String> = multi_layer_images().into_iter().map(|(n, _)| n).collect();
    names.sort();
    let mut covered: Vec<String> = COVERED.iter().map(|s| s.to_string()).collect();
    covered.sort();
    assert_eq!(names, covered, "fixture images with more than one layer vs those tested against overlayfs");
}

/// One image, as root or rootless; `test` is the calling test's name (the
/// rootless run executes it again).
fn run(name: &str, rootless_run: Option<&str>) {
    if let Some(env) = std::env::var_os(INNER) {
        inner(&env);
        return;
    }
    if !is_root() {
        eprintln!("skipped: needs root (overlayfs, GNU tar keeping owners and devices)");
        return;
    }
    let (_, img) = multi_layer_images()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no fixture image {name} with more than one layer"));
    let reg = Registry::start();
    if rootless_run.is_some() && userns::user_ids(TEST_USER).is_none() {
        eprintln!("skipped: needs the {TEST_USER} user (scripts/setup.sh)");
        return;
    }
    match rootless_run {
        None => as_root(&reg, name, &img),
        Some(test) => rootless(&reg, name, &img, test),
    }
}

#[test]
fn full_behaves_like_kernel_overlayfs() {
    run("full", None);
}

#[test]
fn full_with_zstd_layers_behaves_like_kernel_overlayfs() {
    run("zstd-full", None);
}

#[test]
fn amd64_behaves_like_kernel_overlayfs() {
    run("amd64", None);
}

#[test]
fn arm64_behaves_like_kernel_overlayfs() {
    run("arm64", None);
}

#[test]
fn full_behaves_like_kernel_overlayfs_rootless() {
    run("full", Some("full_behaves_like_kernel_overlayfs_rootless"));
}

#[test]
fn full_with_zstd_layers_behaves_like_kernel_overlayfs_rootless() {
    run("zstd-full", Some("full_with_zstd_layers_behaves_like_kernel_overlayfs_rootless"));
}

#[test]
fn amd64_behaves_like_kernel_overlayfs_rootless() {
    run("amd64", Some("amd64_behaves_like_kernel_overlayfs_rootless"));
}

#[test]
fn arm64_behaves_like_kernel_overlayfs_rootless() {
    run("arm64", Some("arm64_behaves_like_kernel_overlayfs_rootless"));
}
