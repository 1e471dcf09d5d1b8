//! Containers started by an ordinary user (`strata-test`, with a subordinate id range): the test
//! body runs as root only to prepare a rootfs owned by that user, then re-runs this test binary
//! as the user (a copy in a world-readable directory) with the rootfs path in `ROOTLESS_ENV`.

mod common;

use std::fs;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use strata_runner::{
    exec, rootless_mapping, spawn, CgroupLimits, CgroupSpec, ExecSpec, IdMapping, IdRange, Network, PortForward,
    Protocol, RunnerError, Spec, Stdio, User,
};

/// As root: build a rootfs owned by the test user (plus one file owned by container uid 6),
/// re-run `name` as the test user, and return the rootfs for checks afterwards. As the test
/// user: return the rootfs path passed by the root half.
enum Role {
    Root(tempfile::TempDir),
    User(PathBuf),
    Skip,
}

fn role(name: &str) -> Role {
    if let Some(p) = std::env::var_os(ROOTLESS_ENV) {
        return Role::User(PathBuf::from(p));
    }
    if !is_root() {
        eprintln!("skipping {name}: run as root (it re-runs itself as {TEST_USER})");
        return Role::Skip;
    }
    let (Some((uid, gid)), Some(sub)) = (test_user(), test_user_subuid()) else {
        eprintln!("skipping {name}: no user {TEST_USER} with a range in /etc/subuid");
        return Role::Skip;
    };
    let root = busybox_rootfs();
    fs::write(root.path().join("owned-by-6"), "x").unwrap();
    chown_tree(root.path(), uid, gid);
    std::os::unix::fs::lchown(root.path().join("owned-by-6"), Some(sub + 5), Some(sub + 5)).unwrap();
    if !rerun_as_test_user(name, &root.path().to_string_lossy()) {
        return Role::Skip;
    }
    Role::Root(root)
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    if fs::symlink_metadata(p).unwrap().is_dir() {
        for e in fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

fn rootless_spec(root: &Path, script: &str) -> Spec {
    let mut spec = Spec::new(root, vec!["sh".into(), "-c".into(), script.into()]);
    spec.id_mapping = rootless_mapping().0;
    spec
}

#[test]
fn rootless_subuid_mapping() {
    let root = match role("rootless_subuid_mapping") {
        Role::Skip => return,
        Role::Root(root) => {
            // The chown inside the container landed on subordinate id 999 + first.
            let sub = test_user_subuid().unwrap();
            let meta = fs::metadata(root.path().join("tmp/chowned")).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (sub + 999, sub + 999));
            return;
        }
        Role::User(p) => p,
    };
    let (mapping, note) = rootless_mapping();
    assert!(note.is_none(), "{note:?}");
    let IdMapping::Map { uids, .. } = &mapping else { panic!("no mapping") };
    assert_eq!(uids.len(), 2);

    let mut spec = rootless_spec(
        &root,
        "id; stat -c %u:%g /owned-by-6 /bin/busybox; touch /tmp/chowned && chown 1000:1000 /tmp/chowned && \
         stat -c %u /tmp/chowned; hostname; grep -c . /proc/self/uid_map; ps -o pid > /tmp/ps.txt; sed 1d /tmp/ps.txt | wc -l; ls /proc/self/fd",
    );
    spec.hostname = "rootless".into();
    let out = run(&spec).unwrap();
    assert_eq!(out.status, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    assert_eq!(lines[0], "uid=0(root) gid=0(root) groups=0(root)", "{out:?}");
    assert_eq!(lines[1..=2], ["6:6", "0:0"], "{out:?}");
    assert_eq!(lines[3..=5], ["1000", "rootless", "2"], "{out:?}");
    assert_eq!(lines[6], "2", "{out:?}");
    assert_eq!(lines[7..].join(" "), "0 1 2 3", "{out:?}");

    // Another user inside; exit codes; masked and read-only bits.
    let mut spec = rootless_spec(&root, "id -u; echo a$(cat /proc/keys | wc -c); touch /x 2>/dev/null || echo ro");
    spec.user = User { uid: 1000, gid: 1000, additional_gids: vec![10] };
    spec.readonly_rootfs = true;
    let out = run(&spec).unwrap();
    assert_eq!(out.stdout, "1000\na0\nro\n", "{out:?}");
    spec.args = vec!["no-such-cmd".into()];
    assert_eq!(run(&spec).unwrap_err().exit_code(), 127);
    spec.args = vec!["sh".into(), "-c".into(), "exit 3".into()];
    assert_eq!(run(&spec).unwrap().status, 3);

    // Limits cannot be applied on this host as an ordinary user: a clear error, not a silent run.
    let mut spec = rootless_spec(&root, "true");
    spec.cgroup = Some(CgroupSpec {
        name: "rootless-limits".into(),
        limits: CgroupLimits { memory: Some(64 << 20), ..Default::default() },
    });
    match spawn(&spec, Stdio::default()) {
        Err(e @ RunnerError::Cgroup(_)) => assert!(e.to_string().contains("cgroup v2"), "{e}"),
        Ok(mut c) => {
            // A host with delegated cgroup v2 applies them.
            assert_eq!(c.wait().unwrap(), 0);
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn rootless_single_id_mapping() {
    let root = match role("rootless_single_id_mapping") {
        Role::Skip | Role::Root(_) => return,
        Role::User(p) => p,
    };
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut spec = rootless_spec(&root, "id -u; stat -c %u /owned-by-6 /bin/busybox; cat /proc/self/uid_map");
    spec.id_mapping = IdMapping::Map {
        uids: vec![IdRange { container: 0, host: uid, size: 1 }],
        gids: vec![IdRange { container: 0, host: gid, size: 1 }],
    };
    let out = run(&spec).unwrap();
    assert_eq!(out.status, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(lines[..3], ["0", "65534", "0"], "{out:?}");
    assert_eq!(lines[3..], ["0", &uid.to_string(), "1"], "{out:?}");
}

#[test]
fn rootless_exec_tty_and_network() {
    let root = match role("rootless_exec_tty_and_network") {
        Role::Skip | Role::Root(_) => return,
        Role::User(p) => p,
    };
    // exec into a running rootless container (joins its user namespace).
    let mut spec = rootless_spec(&root, "sleep 100");
    spec.args = vec!["sleep".into(), "100".into()];
    spec.hostname = "rl-exec".into();
    let mut c = spawn(&spec, Stdio::default()).unwrap();
    let (r, w) = pipe();
    let mut e = ExecSpec::new(vec!["sh".into(), "-c".into(), "hostname; id -u; ps -o comm | sed 1d | head -1".into()]);
    e.user = User { uid: 1000, gid: 1000, additional_gids: vec![] };
    let mut p = exec(c.pid(), &e, Stdio { stdout: Some(w), ..Default::default() }, None).unwrap();
    assert_eq!(p.wait().unwrap(), 0);
    assert_eq!(read_all(r), "rl-exec\n1000\nsleep\n");
    c.signal(libc::SIGKILL).unwrap();
    assert_eq!(c.wait().unwrap(), 137);

    // tty
    let mut spec = rootless_spec(&root, "tty; stat -c %g /dev/pts/0");
    spec.tty = true;
    let mut c = spawn(&spec, Stdio::default()).unwrap();
    let mut m = fs::File::from(c.take_pty_master().unwrap());
    assert_eq!(c.wait().unwrap(), 0);
    let mut out = Vec::new();
    let _ = m.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("/dev/pts/0\r\n5\r\n"), "{out}");

    // private network through pasta, joined by PID.
    if !Path::new("/usr/bin/pasta").exists() && !Path::new("/usr/local/bin/pasta").exists() {
        eprintln!("pasta not installed: skipping the network part");
        return;
    }
    fs::create_dir_all(root.join("www")).unwrap();
    fs::write(root.join("www/index.html"), "rootless hello\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut spec = rootless_spec(&root, "");
    spec.args = ["httpd", "-f", "-p", "80", "-h", "/www"].iter().map(|s| s.to_string()).collect();
    spec.network = Network::Private {
        ports: vec![PortForward { host_ip: None, host_port: port, container_port: 80, protocol: Protocol::Tcp }],
    };
    let mut c = spawn(&spec, Stdio::default()).unwrap();
    let mut body = String::new();
    for _ in 0..200 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Write;
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
            body.clear();
            let _ = s.read_to_string(&mut body);
            if body.contains("200") {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    c.signal(libc::SIGKILL).unwrap();
    c.wait().unwrap();
    assert!(body.contains("rootless hello"), "{body}");
}

#[test]
fn rootless_fuse_rootfs() {
    let root = match role("rootless_fuse_rootfs") {
        Role::Skip | Role::Root(_) => return,
        Role::User(p) => p,
    };
    if !have("fuse-overlayfs") {
        eprintln!("skipping: fuse-overlayfs not installed");
        return;
    }
    let (mapping, _) = rootless_mapping();
    let IdMapping::Map { uids, gids } = &mapping else { panic!("no mapping") };
    // fuse-overlayfs (its mapping syntax is host:container:size) reports the lower tree's host
    // ids as container ids; the kernel reads them in the container's user namespace, where the
    // mount lives. (It cannot chown to other ids: it runs as the plain user.)
    let fmt = |r: &[IdRange]| {
        r.iter().map(|r| format!("{}:{}:{}", r.host, r.container, r.size)).collect::<Vec<_>>().join(":")
    };
    let extra = format!(",uidmapping={},gidmapping={}", fmt(uids), fmt(gids));
    let scratch = world_tempdir();
    let mnt = world_tempdir();
    let children = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut serve = fuse_overlayfs_server(root.clone(), scratch.path().into(), extra, children.clone());
    let mut spec = rootless_spec(mnt.path(), "stat -c %u /owned-by-6 /bin/busybox; id -u; echo hi > /written");
    spec.id_mapping = mapping.clone();
    let (r, w) = pipe();
    let fuse = strata_runner::FuseRootfs { fsname: "strata".into(), subtype: "overlay".into(), options: String::new() };
    let mut c = strata_runner::spawn_with_fuse_rootfs(
        &spec,
        Stdio { stdout: Some(w), ..Default::default() },
        &fuse,
        &mut serve,
    )
    .unwrap();
    let status = c.wait().unwrap();
    let out = read_all(r);
    assert_eq!(status, 0, "{out}");
    assert_eq!(out, "6\n0\n0\n");
    let written = scratch.path().join("upper/written");
    assert_eq!(fs::read_to_string(&written).unwrap(), "hi\n");
    assert_eq!(fs::metadata(&written).unwrap().uid(), uids[0].host);
    for mut child in children.lock().unwrap().drain(..) {
        child.wait().unwrap();
    }
}

/// A rootless supervisor that first moves itself into a user namespace (to mount the rootfs
/// there) and then spawns with `IdMapping::None`: the container shares that namespace.
#[test]
fn rootless_supervisor_already_in_user_namespace() {
    let root = match role("rootless_supervisor_already_in_user_namespace") {
        Role::Skip | Role::Root(_) => return,
        Role::User(p) => p,
    };
    let (mapping, _) = rootless_mapping();
    let IdMapping::Map { uids, gids } = mapping else { panic!("no mapping") };
    let (ready_r, ready_w) = pipe();
    let (go_r, go_w) = pipe();
    let (out_r, out_w) = pipe();
    // SAFETY: the child only uses the runner (fork-safe by design) and leaves with _exit.
    let child = unsafe { libc::fork() };
    assert!(child >= 0);
    if child == 0 {
        drop((ready_r, go_w, out_r));
        let code = (|| {
            // SAFETY: the forked child is single-threaded.
            if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
                return 10;
            }
            let _ = nix::unistd::write(&ready_w, b"u");
            let mut b = [0u8; 1];
            if nix::unistd::read(go_r.as_fd(), &mut b) != Ok(1) {
                return 11;
            }
            let spec = rootless_spec(&root, "id -u; stat -c %u /owned-by-6; grep -c . /proc/self/uid_map");
            let mut spec = spec;
            spec.id_mapping = IdMapping::None;
            spec.cgroup = Some(CgroupSpec { name: "in-userns".into(), limits: CgroupLimits::default() });
            match run(&spec) {
                Ok(out) => {
                    let _ = nix::unistd::write(&out_w, out.stdout.as_bytes());
                    out.status
                }
                Err(e) => {
                    let _ = nix::unistd::write(&out_w, e.to_string().as_bytes());
                    12
                }
            }
        })();
        // SAFETY: leaving the forked child.
        unsafe { libc::_exit(code) };
    }
    drop((ready_w, go_r, out_w));
    let mut b = [0u8; 1];
    assert_eq!(nix::unistd::read(ready_r.as_fd(), &mut b), Ok(1));
    for (prog, ranges) in [("newuidmap", &uids), ("newgidmap", &gids)] {
        let mut cmd = std::process::Command::new(prog);
        cmd.arg(child.to_string());
        for r in ranges.iter() {
            cmd.args([r.container.to_string(), r.host.to_string(), r.size.to_string()]);
        }
        assert!(cmd.status().unwrap().success(), "{prog}");
    }
    nix::unistd::write(&go_w, b"g").unwrap();
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    let out = read_all(out_r);
    assert_eq!(libc::WEXITSTATUS(status), 0, "{out}");
    assert_eq!(out, "0\n6\n2\n");
}
