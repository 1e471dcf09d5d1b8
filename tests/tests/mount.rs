//! `strata mount` / `strata umount` end to end, as root and as the
//! unprivileged test user: the merged tree against `umoci unpack`, single
//! layers with their whiteouts, `--upto`, writable mounts (throwaway and
//! given upper directories), the mount list, error messages, and recovery
//! from a server killed with SIGKILL.
//!
//! The fixture image `full` has five layers (see tests/fixtures): 1 is the
//! busybox layer, 3 deletes data/gone.txt, data/gonedir and bin/ls, 5 makes
//! data/opq opaque.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use strata_e2e::listing::{escape, find_line};
use strata_e2e::*;

/// A store that pulled the `full` fixture, and its reference.
struct Setup {
    _reg: Registry,
    s: Strata,
    image: String,
}

fn setup(s: Strata) -> Setup {
    let f = fixtures();
    let reg = Registry::start();
    let image = reg.push_oci_layout(&f.oci, "full", "e2e/full:1");
    s.pull(&image);
    Setup { _reg: reg, s, image }
}

/// A directory under the instance's base, owned by the user strata runs as.
fn new_dir(s: &Strata, name: &str) -> PathBuf {
    let d = s.base().join(name);
    fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
    let base = fs::metadata(s.base()).unwrap_or_else(|e| panic!("stat {}: {e}", s.base().display()));
    nix::unistd::chown(&d, Some(base.uid().into()), Some(base.gid().into()))
        .unwrap_or_else(|e| panic!("chown {}: {e}", d.display()));
    // strata prints and records canonical mount points.
    d.canonicalize().unwrap_or_else(|e| panic!("canonicalize {}: {e}", d.display()))
}

/// Unmounts its directory with `strata umount` when dropped, so a failing
/// test leaves no mount and no server behind (the harness also detaches
/// anything left below the instance's base).
struct Mounted<'a> {
    s: &'a Strata,
    dir: PathBuf,
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = self.s.run(&[Path::new("umount"), &self.dir]);
    }
}

/// `strata mount ARGS... DIR`; asserts it prints DIR and returns the guard.
fn mount<'a>(s: &'a Strata, args: &[&str], dir: &Path) -> Mounted<'a> {
    let mut all: Vec<String> = vec!["mount".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.push(dir.display().to_string());
    let out = s.ok(&all);
    let guard = Mounted { s, dir: dir.to_path_buf() };
    assert_eq!(out.trim_end(), dir.display().to_string(), "`strata mount` prints the mount point");
    guard
}

fn is_mounted(dir: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = escape_mountinfo(dir);
    info.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

fn escape_mountinfo(p: &Path) -> String {
    let mut s = String::new();
    for c in p.display().to_string().chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => s.push_str(&format!("\\{:03o}", c as u32)),
            c => s.push(c),
        }
    }
    s
}

/// The live mounts as `strata mount --format json` reports them.
fn mounts(s: &Strata) -> Vec<serde_json::Value> {
    s.ok(&["mount", "--format", "json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// Runs `cmd ARGS` as the test user (for looking into a rootless mount,
/// which only its owner can enter); returns stdout, panics on failure.
fn as_user(prog: &str, args: &[&str]) -> String {
    run_tool(as_test_user(prog).args(args))
}

/// The reference listing reduced to what `find -printf` shows to an ordinary
/// user: `PATH TYPE MODE UID GID[ SIZE]` (size for regular files), without
/// the contents of directories that others may not list (such as /root).
fn reduce(listing: &str) -> String {
    let closed: Vec<String> = listing
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f[1] == "d" && u32::from_str_radix(f[2], 8).map_or(true, |m| m & 0o005 != 0o005))
        .map(|f| format!("{}/", f[0]))
        .collect();
    let mut out: Vec<String> = listing
        .lines()
        .filter(|l| !closed.iter().any(|c| l.starts_with(c.as_str())))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let mut s = format!("{} {} {} {} {}", f[0], f[1], f[2], f[3], f[4]);
            if f[1] == "f" {
                s.push_str(&format!(" {}", f[5]));
            }
            s
        })
        .collect();
    out.sort();
    out.join("\n") + "\n"
}

/// The reduced listing of `dir`, walked by `find` as the test user (it
/// reports the directories it may not enter and goes on).
fn reduced_listing_as_user(dir: &Path) -> String {
    let out = as_test_user("find")
        .arg(dir)
        .args(["-mindepth", "1", "-printf", "%P\\0%y\\0%m\\0%U\\0%G\\0%s\\0"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run find: {e}"));
    let raw = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = raw.split('\0').collect();
    let mut out: Vec<String> = fields
        .chunks_exact(6)
        .map(|f| {
            let mode = u32::from_str_radix(f[2], 8).unwrap_or_else(|e| panic!("mode {:?}: {e}", f[2]));
            let mut s = format!("{} {} {mode:04o} {} {}", escape(format!("/{}", f[0]).as_bytes()), f[1], f[3], f[4]);
            if f[1] == "f" {
                s.push_str(&format!(" {}", f[5]));
            }
            s
        })
        .collect();
    out.sort();
    out.join("\n") + "\n"
}

#[test]
fn mount_shows_the_image_as_umoci_unpacks_it() {
    let t = setup(Strata::new());
    let dir = new_dir(&t.s, "m");
    let m = mount(&t.s, &[&t.image], &dir);
    let expected = unpack_reference(&fixtures().oci, "full");
    assert_same_listing(&expected, &canonical_listing(&dir), "strata mount of full vs umoci unpack");
    // Read-only.
    let err = fs::write(dir.join("data/new"), b"x").expect_err("writing into a read-only mount");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    drop(m);
    assert!(!is_mounted(&dir), "{} still mounted after umount", dir.display());
    assert!(mounts(&t.s).is_empty());
}

/// A mount made by root is open to other users, as a kernel overlay mount
/// is: the modes and owners from the image decide what they may see.
#[test]
fn root_mount_is_open_to_other_users_by_mode() {
    let t = setup(Strata::new());
    let dir = tempfile::Builder::new()
        .prefix("m-")
        .tempdir_in(strata_e2e::paths::world_readable_dir("strata-e2e-mounts"))
        .unwrap_or_else(|e| panic!("cannot create a mount point: {e}"));
    fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = dir.path().canonicalize().unwrap();
    let _m = mount(&t.s, &[&t.image], &dir);
    let expected = reduce(&unpack_reference(&fixtures().oci, "full"));
    assert_same_listing(&expected, &reduced_listing_as_user(&dir), "root's mount of full as seen by another user");
}

#[test]
fn mount_layer_shows_one_layer_with_its_whiteouts() {
    let t = setup(Strata::new());
    let l1 = new_dir(&t.s, "l1");
    let l3 = new_dir(&t.s, "l3");
    let l5 = new_dir(&t.s, "l5");
    let _m1 = mount(&t.s, &["--layer", "1", &t.image], &l1);
    let _m3 = mount(&t.s, &["--layer", "3", &t.image], &l3);
    let _m5 = mount(&t.s, &["--layer", "5", &t.image], &l5);

    // Layer 1 is the busybox layer, exactly.
    let bb = unpack_reference(&fixtures().oci, "busybox");
    assert_same_listing(&bb, &canonical_listing(&l1), "--layer 1 vs the busybox image");

    // Layer 3 deletes these: each is a 0/0 character device with mode 0000.
    for gone in ["data/gone.txt", "data/gonedir", "bin/ls"] {
        let m = fs::symlink_metadata(l3.join(gone)).unwrap_or_else(|e| panic!("{gone} in --layer 3: {e}"));
        assert!(m.file_type().is_char_device(), "{gone}: {:?}", m.file_type());
        assert_eq!(m.rdev(), 0, "{gone}: device number");
        assert_eq!(m.mode() & 0o7777, 0, "{gone}: mode");
    }
    // What the layer adds or changes is there; what it leaves alone is not.
    assert_eq!(fs::read_to_string(l3.join("etc/motd")).unwrap(), "changed in layer 3\n");
    assert_eq!(fs::read_to_string(l3.join("data/d2f")).unwrap(), "directory became a file\n");
    assert!(fs::symlink_metadata(l3.join("data/text")).is_err(), "data/text is not in layer 3");
    assert!(fs::symlink_metadata(l3.join("bin/busybox")).is_err(), "bin/busybox is not in layer 3");

    // Layer 5 makes data/opq opaque: the xattr overlayfs uses, and only its own file.
    let xattr = xattr_of(&l5.join("data/opq"), "trusted.overlay.opaque");
    assert_eq!(xattr.as_deref(), Some(&b"y"[..]), "trusted.overlay.opaque on data/opq");
    let names: Vec<String> = fs::read_dir(l5.join("data/opq"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["new"]);
    assert_eq!(xattr_of(&l5.join("data"), "trusted.overlay.opaque"), None, "data itself is not opaque");

    // The list names the view.
    let modes: Vec<String> = mounts(&t.s).iter().map(|m| m["Mode"].as_str().unwrap().to_string()).collect();
    assert_eq!(modes, ["ro,layer=1", "ro,layer=3", "ro,layer=5"]);

    // Out of range, and numbering from 1.
    let d = new_dir(&t.s, "bad");
    let (code, err) = t.s.fails(&["mount", "--layer", "6", &t.image, &d.display().to_string()]);
    assert_eq!(code, 125);
    assert!(err.contains("image has 5 layers"), "{err}");
    let (code, err) = t.s.fails(&["mount", "--upto", "0", &t.image, &d.display().to_string()]);
    assert_eq!(code, 125);
    assert_mentions(&err, &["from 1"], "--upto 0");
    assert!(!is_mounted(&d));
}

fn xattr_of(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the length passed.
    let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return None;
    }
    buf.truncate(len as usize);
    Some(buf)
}

#[test]
fn mount_upto_shows_the_image_after_layer_n() {
    let t = setup(Strata::new());
    let u1 = new_dir(&t.s, "u1");
    let u2 = new_dir(&t.s, "u2");
    let _m1 = mount(&t.s, &["--upto", "1", &t.image], &u1);
    let _m2 = mount(&t.s, &["--upto", "2", &t.image], &u2);
    let bb = unpack_reference(&fixtures().oci, "busybox");
    assert_same_listing(&bb, &canonical_listing(&u1), "--upto 1 vs the busybox image");
    // After layer 2: what layer 3 deletes or changes is still as layer 2 left it.
    assert_eq!(fs::read_to_string(u2.join("data/gone.txt")).unwrap(), "to be whited out\n");
    assert_eq!(fs::read_to_string(u2.join("etc/motd")).unwrap(), "hello from layer 2\n");
    assert!(u2.join("bin/ls").exists());
    assert!(u2.join("data/d2f/child/c").exists());
    assert!(!u2.join("data/big.bin").exists(), "layer 4 is not part of --upto 2");
    assert_eq!(fs::read_dir(u2.join("data/opq")).unwrap().count(), 2, "data/opq before layer 5 made it opaque");
}

#[test]
fn mount_list_umount_and_error_messages() {
    let t = setup(Strata::new());
    let (a, b) = (new_dir(&t.s, "a"), new_dir(&t.s, "b"));
    let _ma = mount(&t.s, &[&t.image], &a);
    let _mb = mount(&t.s, &["--rw", &t.image], &b);

    let rows = parse_table(&t.s.ok(&["mount"]));
    assert_eq!(rows[0], ["CONTAINER/IMAGE", "MOUNTPOINT", "MODE"]);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[1], [t.image.clone(), a.display().to_string(), "ro".to_string()]);
    assert_eq!(rows[2], [t.image.clone(), b.display().to_string(), "rw".to_string()]);
    let q = t.s.ok(&["mount", "-q"]);
    assert_eq!(q, format!("{}\n{}\n", a.display(), b.display()));

    // Mounting on a strata mount again is refused.
    let (code, err) = t.s.fails(&["mount", &t.image, &a.display().to_string()]);
    assert_eq!(code, 125);
    assert_mentions(&err, &["already a strata mount"], "second mount on the same directory");

    // `unmount` is an alias; the list follows.
    let out = t.s.ok(&[Path::new("unmount"), &a]);
    assert_eq!(out.trim_end(), a.display().to_string());
    assert!(!is_mounted(&a));
    let rows = parse_table(&t.s.ok(&["mount"]));
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1][1], b.display().to_string());

    // Errors, with Docker's wording where Docker has one.
    let (code, err) = t.s.fails(&["mount", "e2e/nothing:here", &a.display().to_string()]);
    assert_eq!(code, 125);
    assert!(err.contains("Error: No such image: e2e/nothing:here"), "{err}");
    let missing = t.s.base().join("missing");
    let (code, err) = t.s.fails(&[Path::new("mount"), Path::new(&t.image), &missing]);
    assert_eq!(code, 125);
    assert!(err.contains(&format!("mount point {} does not exist", missing.display())), "{err}");
    let (code, err) = t.s.fails(&[Path::new("umount"), &a]);
    assert_eq!(code, 125);
    assert!(err.contains("is not a strata mount") && !err.contains("another --root"), "{err}");
    // Another store has no record of this store's mounts, and says whose it is.
    let other = Strata::new();
    let (code, err) = other.fails(&[Path::new("umount"), &b]);
    assert_eq!(code, 125);
    assert_mentions(&err, &["is not a strata mount of this store", "another --root"], "umount through another store");
    assert!(is_mounted(&b));
    // One upper directory serves one mount at a time, whatever store asks.
    other.pull(&t.image);
    let shared = new_dir(&t.s, "shared-upper").display().to_string();
    let (c1, c2) = (new_dir(&t.s, "c1"), new_dir(&other, "c2"));
    let first = mount(&t.s, &["--upper", &shared, &t.image], &c1);
    let (code, err) =
        other.fails(&[Path::new("mount"), Path::new("--upper"), Path::new(&shared), Path::new(&t.image), &c2]);
    assert_eq!(code, 125);
    assert_mentions(&err, &["upper directory", "is in use by another mount"], "a second mount of an upper directory");
    assert!(!is_mounted(&c2));
    assert_eq!(other.ok(&["mount", "-q"]), "", "the refused mount left a record");
    drop(first);
    drop(mount(&other, &["--upper", &shared, &t.image], &c2));
    // Some other filesystem there.
    let c = t.s.base().join("tmpfs");
    fs::create_dir(&c).unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "e2e-tmpfs"]).arg(&c).status().unwrap();
    assert!(st.success());
    let (code, err) = t.s.fails(&[Path::new("umount"), &c]);
    let st = Command::new("umount").arg(&c).status().unwrap();
    assert!(st.success());
    assert_eq!(code, 125);
    assert!(err.contains("is not a strata mount (a tmpfs mount is there)"), "{err}");
    // A mount point that would cover the store (its own objects included,
    // which the server reads) or the upper directory is refused.
    let store = t.s.root().canonicalize().unwrap();
    for (dir, relation) in
        [(store.join("objects"), "is inside"), (store.clone(), "is"), (t.s.base().to_path_buf(), "holds")]
    {
        let (code, err) = t.s.fails(&[Path::new("mount"), Path::new(&t.image), &dir]);
        assert_eq!(code, 125);
        assert_mentions(&err, &[&format!("{relation} strata's store"), "outside"], "mount point over the store");
    }
    let upper = t.s.base().join("upper-here");
    fs::create_dir_all(upper.join("sub")).unwrap();
    let (code, err) =
        t.s.fails(&[Path::new("mount"), Path::new("--upper"), &upper, Path::new(&t.image), &upper.join("sub")]);
    assert_eq!(code, 125);
    assert_mentions(&err, &["is inside the upper directory"], "mount point inside the upper directory");
    // A missing --upper inside the mount point: refused before it is made.
    let holder = t.s.base().join("holder");
    fs::create_dir_all(&holder).unwrap();
    let (code, err) =
        t.s.fails(&[Path::new("mount"), Path::new("--upper"), &holder.join("up"), Path::new(&t.image), &holder]);
    assert_eq!(code, 125);
    assert_mentions(&err, &["holds the upper directory"], "mount point around the upper directory");
    assert!(!holder.join("up").exists(), "the refused command created its upper directory");
    assert!(mounts(&t.s).len() == 1, "nothing mounted by the refused commands");

    // Without DIR: mounted under the store, path printed, removed by umount.
    let out = t.s.ok(&["mount", &t.image]);
    let auto = PathBuf::from(out.trim_end());
    assert!(auto.starts_with(t.s.root()), "{} is not under the store", auto.display());
    assert!(auto.join("bin/busybox").is_file());
    // Asked again, by name or by id, it names the same mount (as `podman
    // image mount` does); another view or --rw makes another.
    let listed = mounts(&t.s).len();
    assert_eq!(t.s.ok(&["mount", &t.image]), out);
    let id = t.s.ok(&["images", "-q"]).trim().to_string();
    assert_eq!(t.s.ok(&["mount", &id]), out);
    let layer1 = t.s.ok(&["mount", "--layer", "1", &t.image]);
    let rw = t.s.ok(&["mount", "--rw", &t.image]);
    assert!(layer1 != out && rw != out && layer1 != rw);
    assert_eq!(t.s.ok(&["mount", "--layer", "1", &t.image]), layer1);
    assert_eq!(mounts(&t.s).len(), listed + 2);
    for other in [&layer1, &rw] {
        t.s.ok(&["umount", other.trim_end()]);
    }
    // umount by another name of the image than the one it was mounted by:
    // ambiguous while b is mounted too, then the one mount left.
    let (code, err) = t.s.fails(&["umount", &id]);
    assert_eq!(code, 125);
    assert_mentions(&err, &["mounted more than once"], "umount by id of an image mounted twice");
    t.s.ok(&[Path::new("umount"), &b]);
    assert_eq!(t.s.ok(&["umount", &id]), out);
    assert!(!is_mounted(&auto));
    assert!(!auto.exists(), "{} left behind", auto.display());
}

/// An image mounted for inspection keeps its content: `rmi` refuses to
/// delete it (untagging one of several names still works), `image prune -a`
/// passes it by; after `umount` both go through.
#[test]
fn mounted_image_is_kept_until_unmounted() {
    let t = setup(Strata::new());
    let s = &t.s;
    s.ok(&["tag", &t.image, "e2e/other:2"]);
    let dir = new_dir(s, "m");
    let m = mount(s, &[&t.image], &dir);
    // Another name goes; the last one stays with the image.
    assert_eq!(s.ok(&["rmi", "e2e/other:2"]).trim_end(), "Untagged: e2e/other:2");
    let (code, err) = s.fails(&["rmi", &t.image]);
    assert_eq!(code, 1);
    for want in ["image is mounted at", &dir.display().to_string(), "strata umount"] {
        assert!(err.contains(want), "rmi of a mounted image: {want:?} missing in:\n{err}");
    }
    let (code, err) = s.fails(&["rmi", "-f", &t.image]);
    assert_eq!(code, 1);
    assert_mentions(&err, &["cannot be forced"], "rmi -f of a mounted image");
    assert!(s.ok(&["images", "-q"]).lines().count() == 1, "the image is still listed");
    // prune -a (all images no container uses) passes it by.
    s.ok(&["image", "prune", "-a", "-f"]);
    assert!(s.ok(&["images", "-q"]).lines().count() == 1, "prune removed a mounted image");
    assert_eq!(fs::read(dir.join("bin/busybox")).map(|b| !b.is_empty()).ok(), Some(true));
    drop(m);
    assert!(!is_mounted(&dir));

    // A mount started while an rmi holds the store's content lock waits for
    // it: between resolving the image and writing its record (which makes
    // rmi refuse) it holds that lock shared. Before, rmi could delete the
    // layers in that window and the mount failed reading them, or came up
    // over a store whose content was gone.
    let rmi_lock = fs::File::open(s.root().join("lock")).expect("open the store's content lock");
    rmi_lock.lock().expect("take the content lock as rmi does");
    let child = s.spawn(&["mount", &t.image, &dir.display().to_string()]);
    std::thread::sleep(Duration::from_millis(700));
    assert!(!is_mounted(&dir), "strata mount went ahead while the content lock was held exclusively");
    drop(rmi_lock);
    let out =
        strata_e2e::strata::wait_output(child, Duration::from_secs(30), "strata mount after the lock is released");
    assert!(out.status.success(), "mount after the lock: {}", strata_e2e::strata::show_output(&out));
    let m = Mounted { s, dir: dir.clone() };
    assert!(is_mounted(&dir));
    drop(m);

    s.ok(&["rmi", &t.image]);
    assert_eq!(s.ok(&["images", "-q"]), "");
}

/// What the store keeps about mounts (records, private directories), not
/// counting its lock file.
fn mount_state(s: &Strata) -> Vec<String> {
    let dir = s.root().join("mounts");
    let rd = fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
    rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n != "lock").collect()
}

/// The pid of the server of what is mounted at `dir`, as the list reports it.
fn server_pid(s: &Strata, dir: &Path) -> i32 {
    let m = mounts(s);
    let detached = |m: &serde_json::Value| m["Mode"].as_str().is_some_and(|m| m.contains("detached"));
    let m = m
        .iter()
        .find(|m| m["Mountpoint"].as_str() == Some(&dir.display().to_string()) && !detached(m))
        .unwrap_or_else(|| panic!("{} not in the list: {m:?}", dir.display()));
    m["Pid"].as_str().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no pid in {m:?}"))
}

fn kill(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap_or_else(|e| panic!("kill {pid}: {e}"));
}

/// Waits for a process that is not our child to exit (pidfd readiness).
fn wait_gone(pid: i32) {
    wait_until(&format!("process {pid} to exit"), Duration::from_secs(60), || {
        fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    });
}

#[test]
fn mount_server_keeps_no_descriptor_of_its_caller() {
    // The server outlives `strata mount`: a descriptor it inherited (here
    // the write end of a pipe, as a script reading strata's output to its
    // end would pass) must not stay open in it for the life of the mount.
    let t = setup(Strata::new());
    let dir = new_dir(&t.s, "m");
    let mut pipe = InheritedPipe::new();
    let mut cmd = t.s.command(&[Path::new("mount"), Path::new(&t.image), &dir]);
    pipe.pass_to(&mut cmd);
    let out = cmd.output().expect("run strata mount");
    assert!(out.status.success(), "strata mount: {}", strata_e2e::strata::show_output(&out));
    let _m = Mounted { s: &t.s, dir: dir.clone() };
    assert!(is_mounted(&dir));
    assert!(!pipe.still_held_elsewhere(), "the mount server holds a descriptor inherited from its caller");
}

#[test]
fn a_mount_moved_by_renaming_its_parent_is_found_where_it_is() {
    // Renaming a parent directory of a mount point moves the mount. It is
    // listed, unmounted (by umount, by its server on SIGTERM) and cleared
    // (after SIGKILL) where it is now. Before, each looked at the old path
    // only: umount did not know the new one, and SIGTERM left a dead mount.
    let t = setup(Strata::new());
    let s = &t.s;
    let old = new_dir(s, "before");
    let names = ["u", "term", "kill"];
    for n in names {
        let d = old.join(n);
        fs::create_dir(&d).unwrap();
        assert_eq!(s.ok(&[Path::new("mount"), Path::new(&t.image), &d]).trim_end(), d.display().to_string());
    }
    let new = old.with_file_name("after");
    fs::rename(&old, &new).unwrap();
    let at = |n: &str| new.join(n);
    let listed: Vec<String> = mounts(s).iter().map(|m| m["Mountpoint"].as_str().unwrap().to_string()).collect();
    assert_eq!(listed, names.map(|n| at(n).display().to_string()), "the list shows where the mounts are now");
    for n in names {
        assert!(is_mounted(&at(n)));
    }
    // Guards for where they are now (a failing test leaves no mount).
    let _guards: Vec<Mounted> = names.iter().map(|n| Mounted { s, dir: at(n) }).collect();

    assert_eq!(s.ok(&[Path::new("umount"), &at("u")]).trim_end(), at("u").display().to_string());
    assert!(!is_mounted(&at("u")));

    let pid = server_pid(s, &at("term"));
    kill(pid, nix::sys::signal::Signal::SIGTERM);
    wait_gone(pid);
    assert!(!is_mounted(&at("term")), "the server left its moved mount behind on SIGTERM");

    let pid = server_pid(s, &at("kill"));
    kill(pid, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pid);
    assert!(mounts(s).is_empty());
    assert!(!is_mounted(&at("kill")), "the list did not clear a killed server's moved mount");
    assert_eq!(mount_state(s), Vec::<String>::new());
}

#[test]
fn more_files_can_be_open_in_a_mount_than_its_callers_soft_fd_limit() {
    // Each file open in the mount holds a descriptor in the server. Started
    // with the usual soft limit of 1024, the server used to fail the
    // 1,000th or so open with EMFILE, whatever the opener's own limit.
    let t = setup(Strata::new());
    let dir = new_dir(&t.s, "m");
    let mut cmd = t.s.command(&[Path::new("mount"), Path::new("--rw"), Path::new(&t.image), &dir]);
    with_soft_fd_limit(&mut cmd, 1024);
    let out = cmd.output().expect("run strata mount");
    assert!(out.status.success(), "strata mount: {}", strata_e2e::strata::show_output(&out));
    let _m = Mounted { s: &t.s, dir: dir.clone() };
    let want = 2500;
    // Our own soft limit raised to our hard one (left so: harmless to the
    // other tests of this process).
    let mut ours = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut ours), 0);
        if ours.rlim_max < want + 100 {
            eprintln!("skipped: this process may not open {want} files (hard limit {})", ours.rlim_max);
            return;
        }
        ours.rlim_cur = ours.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &ours), 0, "raising our soft fd limit");
    }
    fs::create_dir(dir.join("many")).unwrap();
    let mut open = Vec::new();
    for i in 0..want {
        let p = dir.join(format!("many/f{i}"));
        let f = fs::OpenOptions::new().create_new(true).read(true).write(true).open(&p);
        open.push(f.unwrap_or_else(|e| panic!("opening file {i} of {want} in the mount: {e}")));
    }
    // And lower files on top of those.
    for name in ["bin/busybox", "data/text"] {
        open.push(fs::File::open(dir.join(name)).unwrap_or_else(|e| panic!("opening {name}: {e}")));
    }
    drop(open);
}

#[test]
fn a_covered_mount_is_neither_unmounted_nor_left_dead() {
    // Another store's strata mount on top of ours at the same directory.
    // Unmounting ours then cannot work (by path, or even through a
    // descriptor of its root, the kernel takes the mount on top): umount
    // says so and ours keeps serving. A server ended while covered keeps its
    // record, and the dead mount is cleared once it is on top again. Before,
    // umount ended the server and reported success, leaving a dead mount
    // under the other that no record knew.
    let t = setup(Strata::new());
    let (s, other) = (&t.s, Strata::new());
    other.pull(&t.image);
    let dir = new_dir(s, "m");
    let _ours = mount(s, &[&t.image], &dir);
    let theirs = mount(&other, &[&t.image], &dir);
    let (code, err) = s.fails(&[Path::new("umount"), &dir]);
    assert_eq!(code, 125);
    assert_mentions(&err, &["is on top of it", "unmount that one first"], "umount of a covered mount");
    assert_eq!(mounts(s).len(), 1, "the covered mount is still served and listed");

    let pid = server_pid(s, &dir);
    kill(pid, nix::sys::signal::Signal::SIGTERM);
    wait_gone(pid);
    assert!(mounts(s).is_empty());
    assert!(!mount_state(s).is_empty(), "the record of the dead covered mount is kept");
    drop(theirs);
    assert!(is_mounted(&dir), "our dead mount is on top now");
    assert!(mounts(s).is_empty(), "listing");
    assert!(!is_mounted(&dir), "the listing cleared the dead mount once it was on top");
    assert_eq!(mount_state(s), Vec::<String>::new());
}

#[test]
fn killed_server_is_cleared_and_sigterm_unmounts() {
    let t = setup(Strata::new());
    let (a, b, c) = (new_dir(&t.s, "a"), new_dir(&t.s, "b"), new_dir(&t.s, "c"));
    let _ma = mount(&t.s, &[&t.image], &a);
    let _mb = mount(&t.s, &["--rw", &t.image], &b);
    let _mc = mount(&t.s, &[&t.image], &c);

    // SIGKILL: the mount is dead (ENOTCONN) until the list clears it.
    let pa = server_pid(&t.s, &a);
    kill(pa, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pa);
    let err = fs::read_dir(&a).expect_err("a dead FUSE mount cannot be read");
    // ENOTCONN, or ECONNABORTED when the kernel saw the server's fd close.
    assert!(matches!(err.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)), "{err}");
    let listed: Vec<String> = mounts(&t.s).iter().map(|m| m["Mountpoint"].as_str().unwrap().to_string()).collect();
    assert_eq!(listed, [b.display().to_string(), c.display().to_string()]);
    assert!(!is_mounted(&a), "the list detaches a dead mount");

    // SIGKILL, then umount directly: works, and the throwaway upper is gone.
    let pb = server_pid(&t.s, &b);
    kill(pb, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pb);
    t.s.ok(&[Path::new("umount"), &b]);
    assert!(!is_mounted(&b));

    // SIGTERM: the server unmounts and exits by itself.
    let pc = server_pid(&t.s, &c);
    kill(pc, nix::sys::signal::Signal::SIGTERM);
    wait_gone(pc);
    assert!(!is_mounted(&c), "SIGTERM unmounts");
    assert!(mounts(&t.s).is_empty());
    assert_eq!(mount_state(&t.s), Vec::<String>::new(), "mount records or directories left");
}

/// A child process that a failing test must not leave running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `strata umount` of a mount a process still uses (its working directory
/// inside) detaches it, as `podman umount` does: the command succeeds and
/// says so, the directory is free for another mount at once, and the process
/// goes on reading through the mount (before, the server exited and it got
/// ENOTCONN). Meanwhile the image stays held (`rmi` says why) and the list
/// shows the mount as detached; once the process leaves, the server ends
/// and its record goes.
fn umount_of_a_busy_mount_detaches_it(s: Strata, user: bool) {
    let t = setup(s);
    let dir = new_dir(&t.s, "busy");
    let flag = t.s.base().join("leave-now");
    let out = t.s.base().join("reader-output");
    let m = mount(&t.s, &[&t.image], &dir);
    let mut reader = start_reader(&dir, &flag, &out, user);
    let pid = server_pid(&t.s, &dir);

    let done = t.s.run(&[Path::new("umount"), &dir]);
    assert!(done.status.success(), "umount of a busy mount: {done:?}");
    assert!(String::from_utf8_lossy(&done.stderr).contains("detached"), "{done:?}");
    assert!(!is_mounted(&dir), "the directory is no longer a mount point");
    let listed = mounts(&t.s);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["Mode"], "ro,detached");
    let (_, err) = t.s.fails(&["rmi", &t.image]);
    assert_mentions(&err, &["still in use", &dir.display().to_string()], "rmi of an image a detached mount serves");
    // Another mount can take the directory meanwhile.
    let again = mount(&t.s, &[&t.image], &dir);
    drop(again);
    assert!(!is_mounted(&dir));
    std::mem::forget(m);

    // A second detached mount whose server dies: clearing its record
    // leaves alone what is mounted at its old mount point now.
    let (flag2, out2) = (t.s.base().join("leave-too"), t.s.base().join("reader-2-output"));
    let _m2 = mount(&t.s, &["--rw", &t.image], &dir);
    let _reader2 = start_reader(&dir, &flag2, &out2, user);
    let pid2 = server_pid(&t.s, &dir);
    t.s.ok(&[Path::new("umount"), &dir]);
    let _now = mount(&t.s, &[&t.image], &dir);
    kill(pid2, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pid2);
    let listed: Vec<String> = mounts(&t.s).iter().map(|m| m["Mode"].as_str().unwrap().to_string()).collect();
    assert_eq!(listed, ["ro,detached", "ro"], "the dead detached mount is cleared");
    assert!(is_mounted(&dir), "the mount now at the old mount point stays");

    fs::write(&flag, b"").unwrap();
    let status = reader.0.wait().expect("waiting for the reader");
    assert!(status.success(), "the reader failed: {}", fs::read_to_string(&out).unwrap_or_default());
    let read = fs::read_to_string(&out).unwrap();
    let reference = unpack_reference(&fixtures().oci, "full");
    let want = find_line(&reference, "/data/text").and_then(|l| l.split(' ').nth(6)).unwrap().to_string();
    assert!(read.starts_with(&want) && read.contains("busybox"), "what the reader read:\n{read}");
    wait_gone(pid);
    t.s.ok(&[Path::new("umount"), &dir]);
    assert!(mounts(&t.s).is_empty());
    assert_eq!(mount_state(&t.s), Vec::<String>::new(), "mount records or directories left");
    t.s.ok(&["rmi", &t.image]);
}

/// A mount on a directory that is itself a mount point (here a tmpfs)
/// leaves that mount alone whichever way it ends: umount, umount while
/// busy (once its last user leaves), and the clearing of a killed server's
/// mount. Before, each of them unmounted by path once more, and took the
/// tmpfs away.
#[test]
fn a_mount_on_a_mount_point_leaves_what_is_underneath() {
    let t = setup(Strata::new());
    let dir = new_dir(&t.s, "stacked");
    nix::mount::mount(Some("tmpfs"), &dir, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _tmpfs = Unmount(&dir);
    fs::write(dir.join("underneath"), b"").unwrap();
    let underneath = || dir.join("underneath").exists() && is_mounted(&dir);

    let m = mount(&t.s, &[&t.image], &dir);
    assert!(dir.join("bin/busybox").exists() && !dir.join("underneath").exists());
    drop(m);
    assert!(underneath(), "after umount");

    let _m = mount(&t.s, &["--rw", &t.image], &dir);
    let pid = server_pid(&t.s, &dir);
    kill(pid, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pid);
    assert!(mounts(&t.s).is_empty(), "the dead mount is cleared");
    assert!(underneath(), "after a killed server's mount was cleared");

    let (flag, out) = (t.s.base().join("leave"), t.s.base().join("reader-output"));
    let m = mount(&t.s, &[&t.image], &dir);
    let mut reader = start_reader(&dir, &flag, &out, false);
    let pid = server_pid(&t.s, &dir);
    drop(m);
    assert!(underneath(), "after umount of the busy mount");
    fs::write(&flag, b"").unwrap();
    assert!(reader.0.wait().unwrap().success());
    wait_gone(pid);
    assert!(underneath(), "after the detached mount ended");
    assert_eq!(mount_state(&t.s), Vec::<String>::new(), "mount records or directories left");
}

/// Starts a process that enters `dir`, writes `out`, waits for `flag`, then
/// reads through the mount into `out`. It runs as whoever may enter the
/// mount (a rootless mount admits only its owner); returns once it is in.
fn start_reader(dir: &Path, flag: &Path, out: &Path, user: bool) -> KillOnDrop {
    let script = "cd \"$1\" && echo in >\"$3\" && while [ ! -e \"$2\" ]; do sleep 0.05; done && sha256sum data/text >\"$3\" && ls bin >>\"$3\"";
    let mut cmd = Command::new("setpriv");
    if user {
        cmd.args(["--reuid", TEST_USER, "--regid", TEST_USER, "--init-groups"]);
    }
    let reader = KillOnDrop(
        cmd.args(["--", "sh", "-c", script, "sh"])
            .args([dir, flag, out])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting the reader"),
    );
    wait_until("the reader to enter the mount", Duration::from_secs(30), || out.exists());
    reader
}

#[test]
fn umount_of_a_busy_mount_detaches_it_as_root() {
    umount_of_a_busy_mount_detaches_it(Strata::new(), false);
}

#[test]
fn umount_of_a_busy_mount_detaches_it_rootless() {
    umount_of_a_busy_mount_detaches_it(Strata::new_unprivileged(), true);
}

#[test]
fn rw_mounts_with_throwaway_and_given_upper() {
    let t = setup(Strata::new());
    let dir = new_dir(&t.s, "rw");
    let m = mount(&t.s, &["--rw", &t.image], &dir);
    fs::write(dir.join("data/new"), b"new file\n").unwrap();
    fs::remove_file(dir.join("data/text")).unwrap();
    assert_eq!(fs::read_to_string(dir.join("data/new")).unwrap(), "new file\n");
    assert!(!dir.join("data/text").exists());
    drop(m);
    assert!(!is_mounted(&dir));
    assert_eq!(mount_state(&t.s), Vec::<String>::new(), "throwaway upper or record left");
    // The image itself is unchanged.
    let m = mount(&t.s, &[&t.image], &dir);
    assert!(dir.join("data/text").exists());
    assert!(!dir.join("data/new").exists());
    drop(m);

    // --upper: changes stay in the given directory, in OCI layer form, and
    // come back on the next mount with the same upper.
    let upper = t.s.base().join("upper");
    let m = mount(&t.s, &["--rw", "--upper", &upper.display().to_string(), &t.image], &dir);
    fs::write(dir.join("etc/added"), b"kept\n").unwrap();
    fs::remove_file(dir.join("data/text")).unwrap();
    drop(m);
    assert_eq!(fs::read_to_string(upper.join("etc/added")).unwrap(), "kept\n");
    assert!(fs::symlink_metadata(upper.join("data/.wh.text")).is_ok(), "whiteout for data/text in the upper");
    let _m = mount(&t.s, &["--upper", &upper.display().to_string(), &t.image], &dir);
    assert_eq!(fs::read_to_string(dir.join("etc/added")).unwrap(), "kept\n");
    assert!(!dir.join("data/text").exists());
    assert_eq!(mounts(&t.s)[0]["Mode"], "rw");

    // An upper directory another mount writes, or one inside it or around
    // it, is refused: two servers would write one tree.
    let other = new_dir(&t.s, "other");
    for (u, relation) in
        [(upper.clone(), "is the upper directory"), (upper.join("etc"), "is inside the upper directory")]
    {
        let (code, err) = t.s.fails(&[Path::new("mount"), Path::new("--upper"), &u, Path::new(&t.image), &other]);
        assert_eq!(code, 125);
        assert_mentions(&err, &[relation, "strata umount"], "upper directory of another mount");
    }
    // So is one inside the store (a container's upper directory, served by
    // the container's own process), however it is spelled, or one that
    // holds the store; nothing is created there.
    t.s.ok(&["create", "--name", "c0", &t.image, "true"]);
    let id = t.s.ok(&["inspect", "-f", "{{.Id}}", "c0"]).trim().to_string();
    let store = t.s.root().canonicalize().unwrap();
    let before = mount_state(&t.s);
    for (u, relation) in [
        (store.join("containers").join(&id).join("upper"), "is inside"),
        (store.join("no-such/../new-dir"), "is inside"),
        (t.s.base().join("no-such/..").join(store.file_name().unwrap()).join("x"), "is inside"),
        (store.clone(), "is"),
        (t.s.base().to_path_buf(), "holds"),
    ] {
        let (code, err) = t.s.fails(&[Path::new("mount"), Path::new("--upper"), &u, Path::new(&t.image), &other]);
        assert_eq!(code, 125);
        assert_mentions(&err, &[&format!("{relation} strata's store"), "outside"], "upper directory in the store");
        assert!(!is_mounted(&other));
    }
    assert!(
        !store.join("new-dir").exists() && !store.join("x").exists(),
        "an upper directory was created in the store"
    );
    assert_eq!(mount_state(&t.s), before);
}

#[test]
fn rootless_umount_finds_fusermount3_and_reports_its_failures() {
    let t = setup(Strata::new_unprivileged());
    let s = &t.s;
    let dir = new_dir(s, "m");
    let run = |args: &[&Path], env: (&str, &Path)| {
        let mut cmd = s.command(args);
        cmd.env(env.0, env.1);
        cmd.output().expect("run strata")
    };
    // A PATH without fusermount3 (a service's minimal one): the server
    // still unmounts. Before, its unmount failed, was taken for a busy
    // mount, and the mount stayed, recorded as detached, out of reach.
    let path = s.base().join("path-without-fusermount3");
    fs::create_dir(&path).unwrap();
    std::os::unix::fs::symlink("/usr/bin/setpriv", path.join("setpriv")).unwrap();
    let out = run(&[Path::new("mount"), Path::new(&t.image), &dir], ("PATH", &path));
    assert!(out.status.success(), "mount: {}", strata_e2e::strata::show_output(&out));
    let out = run(&[Path::new("umount"), &dir], ("PATH", &path));
    assert!(out.status.success(), "umount: {}", strata_e2e::strata::show_output(&out));
    assert!(!is_mounted(&dir), "still mounted");
    assert!(mounts(s).is_empty());

    // A fusermount3 that fails to unmount: umount says why, and the mount
    // stays, served and listed as it was (not as detached).
    let wrapper = s.base().join("fusermount3-that-cannot-unmount");
    strata_e2e::write_script(
        &wrapper,
        "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = -u ] && { echo 'no unmounting here' >&2; exit 1; }; done\nexec fusermount3 \"$@\"\n",
    );
    let out = run(&[Path::new("mount"), Path::new(&t.image), &dir], ("FUSERMOUNT_PATH", &wrapper));
    assert!(out.status.success(), "mount: {}", strata_e2e::strata::show_output(&out));
    let (code, err) = s.fails(&[Path::new("umount"), &dir]);
    assert_eq!(code, 125);
    assert_mentions(&err, &["no unmounting here", "still mounted and served"], "umount that fusermount3 refuses");
    assert!(as_user("ls", &[&dir.display().to_string()]).contains("bin"), "the mount is still served");
    assert_eq!(mounts(s)[0]["Mode"], "ro", "listed as it was");
    // Killed, it is cleared (by the listing, with the real fusermount3).
    let pid = server_pid(s, &dir);
    kill(pid, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pid);
    assert!(mounts(s).is_empty());
    assert!(!is_mounted(&dir));
}

/// The first subordinate id of the test user in /etc/subuid (or subgid).
fn first_subid(file: &str) -> u32 {
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {file}: {e}"));
    let line = text
        .lines()
        .find(|l| l.split(':').next() == Some(TEST_USER))
        .unwrap_or_else(|| panic!("{TEST_USER} in {file}"));
    line.split(':').nth(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad line in {file}: {line}"))
}

#[test]
fn rootless_container_mount_shows_one_id_space() {
    // A rootless container's files, mounted on the host by its user: the
    // ones the container wrote carry the host ids its user namespace gave
    // them, the image's carry the container's own. Both now show the host's
    // ids (container root is the user, container uid 123 the subordinate id
    // for it), so the user may change what the container's root may; the
    // container sees its own ids after. Before, image files owned by root
    // showed as owned by uid 0, next to files of the same root shown as the
    // user's, and the user could not change them.
    let t = setup(Strata::new_unprivileged());
    let s = &t.s;
    let script = "test -e /made || { echo hi > /made; chown 123:456 /made; touch /rootmade; }; \
                  stat -c '%n %u %g' /made /rootmade /data/text /from-host 2>/dev/null; cat /data/text";
    s.ok(&["create", "--name", "wc", &t.image, "sh", "-c", script]);
    s.ok(&["start", "-a", "wc"]);
    let dir = PathBuf::from(s.ok(&["mount", "wc"]).trim_end());
    let _m = Mounted { s, dir: dir.clone() };
    let user = nix::unistd::User::from_name(TEST_USER).unwrap().expect("the test user");
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    let (sub_u, sub_g) = (first_subid("/etc/subuid"), first_subid("/etc/subgid"));
    let p = |n: &str| dir.join(n).display().to_string();
    let owners = as_user("stat", &["-c", "%u %g", &p("made"), &p("rootmade"), &p("data/text")]);
    let want = format!("{} {}\n{uid} {gid}\n{uid} {gid}\n", sub_u + 122, sub_g + 455);
    assert_eq!(owners, want, "owners through the host mount of the container");
    as_user("sh", &["-c", &format!("echo from the host >> {} && echo x > {}", p("data/text"), p("from-host"))]);
    drop(_m);
    let out = s.ok(&["start", "-a", "wc"]);
    assert!(out.contains("/made 123 456\n/rootmade 0 0\n/data/text 0 0\n/from-host 0 0\n"), "{out}");
    assert!(out.ends_with("from the host\n"), "{out}");
}

#[test]
fn rootless_mount_layer_rw_and_kill() {
    let t = setup(Strata::new_unprivileged());
    let (a, l3, l5, rw) = (new_dir(&t.s, "a"), new_dir(&t.s, "l3"), new_dir(&t.s, "l5"), new_dir(&t.s, "rw"));
    let _ma = mount(&t.s, &[&t.image], &a);

    // Only the user who mounted can look inside, not even root.
    let err = fs::read_dir(&a).expect_err("root reading another user's FUSE mount");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    let expected = reduce(&unpack_reference(&fixtures().oci, "full"));
    assert_same_listing(
        &expected,
        &reduced_listing_as_user(&a),
        "rootless mount of full vs umoci unpack (path, type, mode, owner, size)",
    );
    let reference = unpack_reference(&fixtures().oci, "full");
    let sums = as_user("sha256sum", &[&a.join("data/text").display().to_string()]);
    let want = find_line(&reference, "/data/text").unwrap().split(' ').nth(6).unwrap();
    assert!(sums.starts_with(want), "content of data/text: {sums}");

    // Single layers: whiteouts as 0/0 devices, opaque dirs with user.overlay.opaque.
    let _m3 = mount(&t.s, &["--layer", "3", &t.image], &l3);
    let st = as_user("stat", &["-c", "%F %t:%T %a", &l3.join("data/gone.txt").display().to_string()]);
    assert_eq!(st.trim(), "character special file 0:0 0");
    let _m5 = mount(&t.s, &["--layer", "5", &t.image], &l5);
    let attr = as_user(
        "getfattr",
        &["--only-values", "-n", "user.overlay.opaque", &l5.join("data/opq").display().to_string()],
    );
    assert_eq!(attr, "y");

    // Writable: permissions are the image's own, so write where the image lets anyone write.
    let _mrw = mount(&t.s, &["--rw", &t.image], &rw);
    let f = rw.join("tmp/by-user");
    as_user("sh", &["-c", &format!("echo hello > {}", f.display())]);
    assert_eq!(as_user("cat", &[&f.display().to_string()]), "hello\n");

    // SIGKILL (as root, of the user's server), then umount as the user.
    let pa = server_pid(&t.s, &a);
    kill(pa, nix::sys::signal::Signal::SIGKILL);
    wait_gone(pa);
    t.s.ok(&[Path::new("umount"), &a]);
    assert!(!is_mounted(&a));
    assert_eq!(mounts(&t.s).len(), 3);
    t.s.ok(&["umount", "--all"]);
    assert!(mounts(&t.s).is_empty());
    for d in [&l3, &l5, &rw] {
        assert!(!is_mounted(d), "{} still mounted", d.display());
    }
}

#[test]
fn container_mount_writes_into_the_container() {
    let t = setup(Strata::new());
    let s = &t.s;
    s.ok(&["create", "--name", "c1", &t.image, "cat", "/by-mount"]);
    // Without DIR: mounted under the store, like `podman mount`.
    let dir = PathBuf::from(s.ok(&["mount", "c1"]).trim_end());
    let guard = Mounted { s, dir: dir.clone() };
    assert!(dir.join("bin/busybox").is_file());
    let rows = parse_table(&s.ok(&["mount"]));
    assert_eq!(rows[1], ["c1".to_string(), dir.display().to_string(), "rw".to_string()]);
    // Mounting it again names the same mount point.
    assert_eq!(s.ok(&["mount", "c1"]).trim_end(), dir.display().to_string());
    fs::write(dir.join("by-mount"), b"written through strata mount\n").unwrap();
    // While the mount serves its upper directory, the container can be
    // neither started (two servers of one upper) nor removed.
    let (code, err) = s.fails(&["start", "c1"]);
    assert_eq!(code, 1);
    assert!(err.contains("mounted at") && err.contains("strata umount"), "start of a mounted container:\n{err}");
    let (code, err) = s.fails(&["rm", "-f", "c1"]);
    assert_eq!(code, 1);
    assert!(err.contains("mounted at") && err.contains("strata umount"), "rm of a mounted container:\n{err}");
    assert_eq!(fs::read(dir.join("by-mount")).unwrap(), b"written through strata mount\n");
    // umount by the container's name, or by its id (a prefix too).
    s.ok(&["umount", "c1"]);
    assert!(!is_mounted(&dir));
    drop(guard);
    let id = s.ok(&["inspect", "-f", "{{.Id}}", "c1"]).trim().to_string();
    let again = PathBuf::from(s.ok(&["mount", "c1"]).trim_end());
    let guard = Mounted { s, dir: again.clone() };
    assert_eq!(s.ok(&["umount", &id[..12]]).trim_end(), again.display().to_string());
    assert!(!is_mounted(&again));
    drop(guard);
    assert!(s.ok(&["diff", "c1"]).lines().any(|l| l == "A /by-mount"));
    assert_eq!(s.ok(&["start", "-a", "c1"]), "written through strata mount\n");

    // start and rm decide under the records lock by the mount records, so a
    // container mount holds that lock from its checks until its record is
    // written: it waits while another command holds it. (Before, an rm
    // running alongside deleted the upper directory under a starting mount.)
    let records = fs::File::open(s.root().join("records.lock")).expect("open the records lock");
    records.lock().expect("take the records lock as start and rm do");
    let dir2 = new_dir(s, "c1-again");
    let child = s.spawn(&["mount", "c1", &dir2.display().to_string()]);
    std::thread::sleep(Duration::from_millis(700));
    assert!(!is_mounted(&dir2), "a container mount went ahead while the records lock was held");
    drop(records);
    let out = strata_e2e::strata::wait_output(child, Duration::from_secs(30), "strata mount c1 after the lock");
    assert!(out.status.success(), "mount after the lock: {}", strata_e2e::strata::show_output(&out));
    let guard = Mounted { s, dir: dir2.clone() };
    assert_eq!(fs::read(dir2.join("by-mount")).unwrap(), b"written through strata mount\n");
    drop(guard);
    // A container that an rm has marked for removal is gone for mount.
    let state_path =
        s.root().join("containers").join(s.ok(&["inspect", "-f", "{{.Id}}", "c1"]).trim()).join("state.json");
    let state = fs::read_to_string(&state_path).expect("read the container's state");
    let mut v: serde_json::Value = serde_json::from_str(&state).expect("state.json is JSON");
    v["status"] = serde_json::Value::String("removing".into());
    fs::write(&state_path, v.to_string()).expect("mark the container as being removed");
    let (code, err) = s.fails(&["mount", "c1", &dir2.display().to_string()]);
    assert_eq!(code, 125);
    assert_mentions(&err, &["No such container: c1"], "mount of a container being removed");
    fs::write(&state_path, state).expect("restore the container's state");

    // A running container serves its own filesystem: `mount` names it (as
    // `podman mount` does), but mounts it nowhere else, and umount leaves it.
    s.ok(&["run", "-d", "--name", "bg", &t.image, "sh", "-c", "echo live > /state; exec sleep 1000"]);
    let rootfs = s.root().join("containers").join(s.ok(&["inspect", "-f", "{{.Id}}", "bg"]).trim()).join("rootfs");
    wait_until("the container's /state", Duration::from_secs(30), || rootfs.join("state").exists());
    assert_eq!(PathBuf::from(s.ok(&["mount", "bg"]).trim_end()), rootfs.canonicalize().unwrap());
    assert_eq!(fs::read_to_string(rootfs.join("state")).unwrap(), "live\n");
    let elsewhere = new_dir(s, "elsewhere");
    let (code, err) = s.fails(&[Path::new("mount"), Path::new("bg"), &elsewhere]);
    assert_eq!(code, 125);
    assert_mentions(&err, &["is running", "use that path"], "mount of a running container on DIR");
    let (code, err) = s.fails(&["umount", "bg"]);
    assert_eq!(code, 125);
    assert_mentions(&err, &["stays mounted while it runs"], "umount of a running container");
    assert!(is_mounted(&rootfs.canonicalize().unwrap()));
    s.ok(&["rm", "-f", "bg"]);
    assert!(mounts(s).is_empty());
}

#[test]
fn an_open_past_the_servers_descriptors_fails_with_enfile() {
    // Every file open in a mount holds a descriptor in the process serving
    // it, so all the mount's users together can hold open only as many
    // files as that process's hard limit allows (an ordinary user's server
    // cannot raise it). Past it, an open says that a table shared with
    // others is full (ENFILE), not that the caller reached its own limit
    // (EMFILE). This server starts with a hard limit of 64.
    let st = setup(Strata::new_unprivileged());
    let dir = new_dir(&st.s, "few-descriptors");
    let mut cmd = st.s.command(&[Path::new("mount"), Path::new(&st.image), &dir]);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let lim = libc::rlimit { rlim_cur: 64, rlim_max: 64 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start strata mount: {e}"));
    let out = strata_e2e::strata::wait_output(child, Duration::from_secs(60), "strata mount");
    assert!(out.status.success(), "{}", strata_e2e::strata::show_output(&out));
    let _guard = Mounted { s: &st.s, dir: dir.clone() };
    let script = "import errno, os, sys\n\
                  files = [os.path.join(d, f) for d, _, fs in os.walk(sys.argv[1]) for f in fs]\n\
                  files = [f for f in files if os.path.isfile(f) and os.access(f, os.R_OK)]\n\
                  held = []\n\
                  for i in range(500):\n\
                  \x20   try:\n\
                  \x20       held.append(os.open(files[i % len(files)], os.O_RDONLY))\n\
                  \x20   except OSError as e:\n\
                  \x20       print(len(held), errno.errorcode[e.errno])\n\
                  \x20       break\n\
                  else:\n\
                  \x20   print(len(held), 'none failed')\n";
    // (Debian's own python3: a PATH may name one only root can run.)
    let out = as_user("/usr/bin/python3", &["-c", script, &dir.display().to_string()]);
    let (held, how) = out.trim().split_once(' ').unwrap_or_else(|| panic!("unexpected output: {out}"));
    assert_eq!(how, "ENFILE", "after {held} open files: {out}");
    let held: usize = held.parse().unwrap_or_else(|e| panic!("{out}: {e}"));
    assert!((20..64).contains(&held), "{held} files open before the server ran out");
}
