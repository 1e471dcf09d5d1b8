//! The same basic mounts as an ordinary user (`strata-test`) through
//! fusermount3: exact ownership and modes from the index, a writable upper
//! layer where chown to any id works and survives a remount.
//!
//! Runs as root (to switch users); skipped when not root or when the user
//! does not exist. Everything the user needs is copied to a world-readable
//! directory under /tmp, since the test binary may sit where that user
//! cannot read.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

const USER: &str = "strata-test";

fn user_exists() -> bool {
    Command::new("id").arg(USER).output().map(|o| o.status.success()).unwrap_or(false)
}

fn chown_r(p: &Path) {
    let st = Command::new("chown").arg("-R").arg(format!("{USER}:{USER}")).arg(p).status().unwrap();
    assert!(st.success());
}

/// Runs a shell script as the test user; returns (status ok, stdout).
fn as_user(script: &str) -> (bool, String) {
    let out = Command::new("su")
        .arg(USER)
        .arg("-s")
        .arg("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        eprintln!("script failed:\n{script}\nstdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), stdout)
}

struct LazyUnmount(std::path::PathBuf);
impl Drop for LazyUnmount {
    fn drop(&mut self) {
        let _ = strata_fs::unmount_path(&self.0);
    }
}

#[test]
fn ordinary_user_mounts_through_fusermount() {
    if !is_root() || !user_exists() {
        eprintln!("skipped: needs root and the {USER} user");
        return;
    }
    let dir = tempfile::Builder::new().prefix("strata-fs-unpriv").tempdir_in("/tmp").unwrap();
    let base = dir.path();
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let objects = base.join("objects");
    let l0 = LayerBuilder::new(&objects)
        .dir("", 0o755)
        .dir("etc", 0o755)
        .file("etc/shadow", b"secret\n", 0o640)
        .owner(0, 42)
        .file("etc/passwd", b"root:x:0:0\n", 0o644)
        .file("bin/su", b"su", 0o4755)
        .chardev("dev-null", 1, 3)
        .dir("home", 0o755)
        .owner(1001, 1001)
        .file("home/rootfile", b"root's\n", 0o644)
        .file("home/shared", b"shared\n", 0o666)
        .owner(5, 6)
        // Large enough to be copied outside the tree lock.
        .file("home/big", &vec![b'b'; 3 << 20], 0o644)
        .owner(1001, 6);
    let l1 = LayerBuilder::new(&objects).whiteout("etc/passwd").file("etc/new", b"new", 0o600).owner(5, 6);
    for (i, b) in [l0, l1].into_iter().enumerate() {
        let lower = b.build();
        std::fs::write(base.join(format!("index{i}")), lower.index.to_bytes()).unwrap();
    }
    let bin = base.join("strata-fs-mount");
    std::fs::copy(env!("CARGO_BIN_EXE_strata-fs-mount"), &bin).unwrap();
    for d in ["mnt", "upper"] {
        std::fs::create_dir(base.join(d)).unwrap();
    }
    chown_r(base);
    let mnt = base.join("mnt");
    let _guard = LazyUnmount(mnt.clone());
    let b = base.display();
    let layers = format!("--layer {b}/index0 {b}/objects --layer {b}/index1 {b}/objects");

    // Read-only: owners and modes exactly as indexed, though the user owns nothing of it.
    let (ok, out) = as_user(&format!(
        "{b}/strata-fs-mount {layers} {b}/mnt -- sh -c 'stat -c \"%n %u:%g %a %F\" {b}/mnt/etc/shadow {b}/mnt/bin/su {b}/mnt/etc/new; \
         stat -c \"%t,%T\" {b}/mnt/dev-null; cat {b}/mnt/etc/shadow 2>/dev/null || echo denied; test -e {b}/mnt/etc/passwd || echo gone; \
         touch {b}/mnt/x 2>/dev/null || echo rofs'"
    ));
    assert!(ok);
    let want = format!(
        "{b}/mnt/etc/shadow 0:42 640 regular file\n{b}/mnt/bin/su 0:0 4755 regular file\n{b}/mnt/etc/new 5:6 600 regular file\n1,3\ndenied\ngone\nrofs\n"
    );
    assert_eq!(out, want);

    // Writable: what the user does is recorded with the ids the mount
    // reports, also ids the user cannot hold on the host; a remount restores it.
    let h = format!("{b}/mnt/home");
    let (ok, _) = as_user(&format!(
        "{b}/strata-fs-mount --upper {b}/upper {layers} {b}/mnt -- sh -ec 'echo hi > {h}/hello; \
         chmod 0640 {h}/hello; mkdir {h}/d; rm {h}/rootfile; echo more >> {h}/shared; ln -s target {h}/sym; \
         chmod 0604 {h}/big; echo end >> {h}/big'"
    ));
    assert!(ok);
    let (ok, out) = as_user(&format!(
        "{b}/strata-fs-mount --upper {b}/upper {layers} {b}/mnt -- sh -c 'stat -c \"%n %u:%g %a\" {h}/hello {h}/shared {h}/d; \
         cat {h}/hello {h}/shared; test -e {h}/rootfile || echo gone; readlink {h}/sym; \
         stat -c \"%n %u:%g %a %s\" {h}/big; tail -c 4 {h}/big'"
    ));
    assert!(ok);
    let want = format!(
        "{h}/hello 1001:1001 640\n{h}/shared 5:6 666\n{h}/d 1001:1001 755\nhi\nshared\nmore\ngone\ntarget\n\
             {h}/big 1001:6 604 3145732\nend\n"
    );
    assert_eq!(out, want);
    // A chmod or chown that changes nothing still moves the change time.
    let (ok, out) = as_user(&format!(
        "{b}/strata-fs-mount --upper {b}/upper {layers} {b}/mnt -- sh -ec 'a=$(stat -c %z {h}/hello); sleep 0.05; \
         chmod 0640 {h}/hello; c=$(stat -c %z {h}/hello); sleep 0.05; chown 1001:1001 {h}/hello; \
         d=$(stat -c %z {h}/hello); test \"$a\" != \"$c\" && test \"$c\" != \"$d\" && echo moved'"
    ));
    assert!(ok);
    assert_eq!(out, "moved\n");
    // The host files are the user's own; ids it cannot hold are records.
    let m = std::fs::metadata(base.join("upper/home/shared")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&m), 1001);
    assert_eq!(getxattr(&base.join("upper/home/shared"), "user.strata.meta").as_deref(), Some(&b"33206 5 6 0"[..]));
    assert!(base.join("upper/home/.wh.rootfile").exists());
}

#[test]
fn user_namespace_root_mounts_directly_and_chowns() {
    if !is_root() || !user_exists() {
        eprintln!("skipped: needs root and the {USER} user");
        return;
    }
    // unshare --map-auto needs a subordinate id range for the user.
    let (ok, _) = as_user("unshare --user --map-auto --map-root-user --mount true");
    if !ok {
        eprintln!("skipped: no user namespace with subordinate ids for {USER}");
        return;
    }
    let dir = tempfile::Builder::new().prefix("strata-fs-userns").tempdir_in("/tmp").unwrap();
    let base = dir.path();
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let objects = base.join("objects");
    let lower = LayerBuilder::new(&objects)
        .dir("", 0o755)
        .dir("home", 0o755)
        .file("home/lower", b"lower\n", 0o644)
        .owner(3, 4)
        .build();
    std::fs::write(base.join("index0"), lower.index.to_bytes()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_strata-fs-mount"), base.join("strata-fs-mount")).unwrap();
    for d in ["mnt", "upper"] {
        std::fs::create_dir(base.join(d)).unwrap();
    }
    chown_r(base);
    let b = base.display();
    let h = format!("{b}/mnt/home");
    let run = |script: &str| {
        as_user(&format!(
            "unshare --user --map-auto --map-root-user --mount {b}/strata-fs-mount --upper {b}/upper \
             --layer {b}/index0 {b}/objects {b}/mnt -- sh -ec '{script}'"
        ))
    };
    let (ok, _) = run(&format!(
        "echo x > {h}/owned; chown 5:6 {h}/owned; chmod 4750 {h}/owned; ln -s t {h}/sym; chown -h 7:8 {h}/sym; \
         chown 9:10 {h}/lower"
    ));
    assert!(ok);
    let (ok, out) = run(&format!("stat -c \"%n %u:%g %a\" {h}/owned {h}/sym {h}/lower; cat {h}/lower"));
    assert!(ok);
    assert_eq!(out, format!("{h}/owned 5:6 4750\n{h}/sym 7:8 777\n{h}/lower 9:10 644\nlower\n"));
}
