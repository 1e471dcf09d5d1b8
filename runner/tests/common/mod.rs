//! Shared test helpers: a busybox root filesystem, running a spec with captured output, and
//! re-running a test as the unprivileged `strata-test` user.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_runner::{spawn, Spec, Stdio};

pub const BUSYBOX: &str = "/bin/busybox";

/// A world-readable temporary directory under /tmp (the rootless user must reach it).
pub fn world_tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix("strata-runner-test-").tempdir_in("/tmp").expect("tempdir");
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
    d
}

/// A root filesystem with busybox-static and a symlink per applet in /bin, a passwd/group with
/// root and `user` (1000), /tmp, and an empty /proc, /sys, /dev.
pub fn busybox_rootfs() -> tempfile::TempDir {
    let d = world_tempdir();
    build_rootfs(d.path());
    d
}

pub fn build_rootfs(root: &Path) {
    for dir in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "home/user"] {
        fs::create_dir_all(root.join(dir)).expect("mkdir");
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod tmp");
    fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copy busybox (install busybox-static)");
    let list = Command::new(BUSYBOX).arg("--list").output().expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.contains('/') && !applet.is_empty() {
            let _ = symlink("busybox", root.join("bin").join(applet));
        }
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
    )
    .expect("passwd");
    fs::write(root.join("etc/group"), "root:x:0:\ntty:x:5:\nuser:x:1000:\nwheel:x:10:user\nnogroup:x:65534:\n")
        .expect("group");
}

/// The output of a finished container.
#[derive(Debug)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A close-on-exec pipe (read end, write end).
pub fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe")
}

/// Run `spec` to completion, capturing stdout and stderr (stdin is /dev/null).
pub fn run(spec: &Spec) -> Result<Output, strata_runner::RunnerError> {
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let null = fs::File::open("/dev/null").expect("/dev/null");
    let stdio = Stdio { stdin: Some(null.into()), stdout: Some(out_w), stderr: Some(err_w) };
    let mut c = spawn(spec, stdio)?;
    let t_out = std::thread::spawn(move || read_all(out_r));
    let t_err = std::thread::spawn(move || read_all(err_r));
    let status = c.wait()?;
    Ok(Output { status, stdout: t_out.join().unwrap_or_default(), stderr: t_err.join().unwrap_or_default() })
}

pub fn read_all(fd: OwnedFd) -> String {
    let mut s = String::new();
    let _ = fs::File::from(fd).read_to_string(&mut s);
    s
}

/// Run `sh -c script` with the spec built by `f`, expecting exit 0; returns stdout.
pub fn sh(root: &Path, script: &str, f: impl FnOnce(&mut Spec)) -> String {
    let mut spec = Spec::new(root, vec!["sh".into(), "-c".into(), script.into()]);
    f(&mut spec);
    let out = run(&spec).unwrap_or_else(|e| panic!("spawn {script:?}: {e}"));
    assert_eq!(out.status, 0, "{script:?} failed: {out:?}");
    out.stdout
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub const TEST_USER: &str = "strata-test";

/// The env var that tells a re-executed test binary it runs as the unprivileged user.
pub const ROOTLESS_ENV: &str = "STRATA_RUNNER_ROOTLESS_CHILD";

/// uid/gid of the unprivileged test user, if it exists.
pub fn test_user() -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == TEST_USER).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?))).flatten()
    })
}

/// First subordinate id of the test user (from /etc/subuid).
pub fn test_user_subuid() -> Option<u32> {
    let s = fs::read_to_string("/etc/subuid").ok()?;
    s.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() == 3 && f[0] == TEST_USER).then(|| f[1].parse().ok()).flatten()
    })
}

/// As root: run the test named `name` of this test binary again as `strata-test`, from a copy of
/// the binary in a world-readable directory, with `ROOTLESS_ENV` set to `arg`. Panics with the
/// child's output when it fails. Returns false (test skipped) when the user does not exist.
pub fn rerun_as_test_user(name: &str, arg: &str) -> bool {
    let Some((uid, gid)) = test_user() else {
        eprintln!("skipping {name}: no user {TEST_USER} (scripts/setup.sh creates it)");
        return false;
    };
    let dir = world_tempdir();
    let exe = std::env::current_exe().expect("current_exe");
    let copy: PathBuf = dir.path().join("runner-test");
    fs::copy(&exe, &copy).expect("copy test binary");
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod");
    use std::os::unix::process::CommandExt;
    let mut tries = 0;
    let out = loop {
        let run = Command::new(&copy)
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(ROOTLESS_ENV, arg)
            .env("HOME", dir.path())
            .env("TMPDIR", "/tmp")
            .current_dir(dir.path())
            .uid(uid)
            .gid(gid)
            .stdin(std::process::Stdio::null())
            .output();
        match run {
            // A child another test thread forked while the copy was being
            // written still holds it open for writing until it execs.
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => break r.expect("run test binary as the test user"),
        }
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "rootless run of {name} failed:\n{text}");
    true
}

/// A `serve` callback for `spawn_with_fuse_rootfs` that runs fuse-overlayfs (libfuse takes an
/// open /dev/fuse connection as mountpoint `/dev/fd/N`) over `lower`, with upper and work dirs
/// in `scratch`. The child is pushed to `children` so the test can reap it.
pub fn fuse_overlayfs_server(
    lower: PathBuf,
    scratch: PathBuf,
    extra_options: String,
    children: std::sync::Arc<std::sync::Mutex<Vec<std::process::Child>>>,
) -> impl FnMut(OwnedFd) -> Result<(), strata_runner::RunnerError> {
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::os::unix::process::CommandExt;
    move |fd: OwnedFd| {
        let (upper, work) = (scratch.join("upper"), scratch.join("work"));
        fs::create_dir_all(&upper).expect("upper");
        fs::create_dir_all(&work).expect("work");
        let raw = fd.as_raw_fd();
        let mut cmd = Command::new("fuse-overlayfs");
        cmd.arg("-f")
            .arg("-o")
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}{extra_options}",
                lower.display(),
                upper.display(),
                work.display()
            ))
            .arg(format!("/dev/fd/{raw}"))
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: fcntl between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(raw, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| strata_runner::RunnerError::Setup(format!("fuse-overlayfs: {e}")))?;
        let _ = fd.into_raw_fd();
        // SAFETY: our copy of the connection is no longer needed once the server has it.
        unsafe { libc::close(raw) };
        children.lock().expect("lock").push(child);
        Ok(())
    }
}

pub fn have(cmd: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file())).unwrap_or(false)
}
