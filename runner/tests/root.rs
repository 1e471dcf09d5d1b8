//! Containers started as root (no user namespace): identity, namespaces, mounts, masking,
//! capabilities, exit codes, init, tty, exec, cgroups, networking.
//! Every test skips itself (with a message) when not run as root.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};

use common::*;
use strata_runner::{
    exec, spawn, Cap, CgroupLimits, CgroupSpec, EtcFiles, ExecSpec, Mount, MountKind, Network, PortForward, Protocol,
    Rlimit, RunnerError, Spec, Stdio, User,
};

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipping: needs root");
            return;
        }
    };
}

#[test]
fn identity_env_cwd_hostname() {
    require_root!();
    let root = busybox_rootfs();
    let out = sh(root.path(), "id; hostname; pwd; echo \"FOO=$FOO\"", |s| {
        s.hostname = "box1".into();
        s.cwd = "/work/dir".into();
        s.env.push("FOO=bar baz".into());
    });
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["uid=0(root) gid=0(root) groups=0(root)", "box1", "/work/dir", "FOO=bar baz"], "{out}");

    // The command itself is pid 1.
    let spec = Spec::new(root.path(), vec!["cat".into(), "/proc/1/cmdline".into()]);
    let out = run(&spec).expect("spawn");
    assert_eq!(out.stdout, "cat\0/proc/1/cmdline\0");
}

#[test]
fn user_and_groups() {
    require_root!();
    let root = busybox_rootfs();
    let user = strata_runner::resolve_user(root.path(), "user").expect("resolve user").user;
    assert_eq!(user, User { uid: 1000, gid: 1000, additional_gids: vec![10] });
    let out = sh(root.path(), "id; grep -E '^Cap(Eff|Bnd)' /proc/self/status", |s| s.user = user);
    assert!(out.contains("uid=1000(user) gid=1000(user) groups=10(wheel),1000(user)"), "{out}");
    // A non-root user keeps only the bounding set across exec (as with Docker).
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("CapBnd:\t00000000a80425fb"), "{out}");
}

#[test]
fn capabilities() {
    require_root!();
    let root = busybox_rootfs();
    let out = sh(root.path(), "grep -E '^Cap(Eff|Prm|Inh|Bnd|Amb)' /proc/self/status", |_| {});
    assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");
    assert!(out.contains("CapBnd:\t00000000a80425fb"), "{out}");
    assert!(out.contains("CapInh:\t0000000000000000"), "{out}");

    let out = sh(root.path(), "grep CapEff /proc/self/status", |s| {
        s.adjust_capabilities(&[Cap::NET_ADMIN], &[Cap::CHOWN], false, false)
    });
    assert!(out.contains("CapEff:\t00000000a80435fa"), "{out}");

    // Privileged: everything we have ourselves.
    let ours = fs::read_to_string("/proc/self/status").unwrap();
    let bnd = ours.lines().find_map(|l| l.strip_prefix("CapBnd:\t")).unwrap().to_string();
    let out = sh(root.path(), "grep CapEff /proc/self/status", |s| s.set_privileged());
    assert_eq!(out.trim(), format!("CapEff:\t{bnd}"));

    // no_new_privileges
    let out = sh(root.path(), "grep NoNewPrivs /proc/self/status", |s| s.no_new_privileges = true);
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
}

#[test]
fn exit_codes() {
    require_root!();
    let root = busybox_rootfs();
    let status = |args: &[&str]| run(&Spec::new(root.path(), args.iter().map(|s| s.to_string()).collect()));
    assert_eq!(status(&["true"]).unwrap().status, 0);
    assert_eq!(status(&["false"]).unwrap().status, 1);
    assert_eq!(status(&["sh", "-c", "exit 42"]).unwrap().status, 42);

    match status(&["no-such-command"]) {
        Err(e @ RunnerError::Exec { code: 127, .. }) => {
            assert_eq!(e.to_string(), "exec: \"no-such-command\": executable file not found in $PATH");
            assert_eq!(e.exit_code(), 127);
        }
        other => panic!("expected 127, got {other:?}"),
    }
    match status(&["/bin/missing"]) {
        Err(e) => assert_eq!(e.exit_code(), 127, "{e}"),
        other => panic!("expected 127, got {other:?}"),
    }
    fs::write(root.path().join("etc/not-exec"), "#!/bin/sh\necho hi\n").unwrap();
    match status(&["/etc/not-exec"]) {
        Err(e @ RunnerError::Exec { code: 126, .. }) => assert!(e.to_string().contains("permission denied"), "{e}"),
        other => panic!("expected 126, got {other:?}"),
    }
    // A directory in PATH position / a file without exec bits is skipped by the PATH lookup.
    fs::write(root.path().join("bin/plainfile"), "x").unwrap();
    assert_eq!(status(&["plainfile"]).unwrap_err().exit_code(), 127);

    // SIGKILL -> 137
    let mut c = spawn(&Spec::new(root.path(), vec!["sleep".into(), "100".into()]), Stdio::default()).unwrap();
    c.signal(libc::SIGKILL).unwrap();
    assert_eq!(c.wait().unwrap(), 137);
    // SIGTERM to a pid 1 without handler is ignored by the kernel; with init it reaches sleep.
    let mut spec = Spec::new(root.path(), vec!["sleep".into(), "100".into()]);
    spec.init = true;
    let mut c = spawn(&spec, Stdio::default()).unwrap();
    c.signal(libc::SIGTERM).unwrap();
    assert_eq!(c.wait().unwrap(), 143);
}

#[test]
fn init_reaper() {
    require_root!();
    let root = busybox_rootfs();
    let out =
        sh(root.path(), "echo $$; ps -o pid,comm | sed 1d | awk '{print $1\":\"$2}' | tr '\\n' ' '", |s| s.init = true);
    // sh is not pid 1 under init, and pid 1 is the reaper.
    let mut lines = out.lines();
    assert_ne!(lines.next(), Some("1"), "{out}");
    assert!(lines.next().unwrap_or("").starts_with("1:"), "{out}");
    let mut spec = Spec::new(root.path(), vec!["sh".into(), "-c".into(), "exit 7".into()]);
    spec.init = true;
    assert_eq!(run(&spec).unwrap().status, 7);
    spec.args = vec!["nope".into()];
    assert_eq!(run(&spec).unwrap_err().exit_code(), 127);
}

#[test]
fn pid_namespace_and_fds() {
    require_root!();
    let root = busybox_rootfs();
    let out = sh(root.path(), "ps -o pid,comm; true", |_| {});
    // header, sh (pid 1), ps
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.lines().nth(1).unwrap_or("").trim().starts_with("1 "), "{out}");
    let spec = Spec::new(root.path(), vec!["ls".into(), "/proc/self/fd".into()]);
    let out = run(&spec).unwrap();
    let fds: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(fds, ["0", "1", "2", "3"], "{out:?}");
}

#[test]
fn no_host_mounts() {
    require_root!();
    let root = busybox_rootfs();
    let out = sh(root.path(), "cat /proc/self/mountinfo", |_| {});
    let host_path = root.path().to_string_lossy().into_owned();
    for line in out.lines() {
        let mountpoint = line.split(' ').nth(4).unwrap_or("");
        let ok = ["/", "/proc", "/dev", "/sys"].contains(&mountpoint)
            || mountpoint.starts_with("/proc/")
            || mountpoint.starts_with("/dev/")
            || mountpoint.starts_with("/sys/");
        assert!(ok, "unexpected mount {mountpoint}: {out}");
        assert!(!mountpoint.contains(&host_path), "host path visible: {line}");
    }
    assert!(out.lines().count() < 40, "{out}");
}

#[test]
fn masked_and_readonly_paths() {
    require_root!();
    let root = busybox_rootfs();
    let out = sh(
        root.path(),
        "echo a$(cat /proc/keys /proc/timer_list | wc -c); echo b$(ls -A /sys/firmware 2>&1 | wc -l); echo x > /proc/sys/kernel/domainname 2>/dev/null && echo writable || echo ro",
        |_| {},
    );
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["a0", "b0", "ro"], "{out}");
    // Privileged: nothing masked.
    let out = sh(root.path(), "ls /sys/firmware | wc -l", |s| s.set_privileged());
    assert_ne!(out.trim(), "0");
}

#[test]
fn readonly_rootfs_and_mounts() {
    require_root!();
    let root = busybox_rootfs();
    let vol = world_tempdir();
    fs::write(vol.path().join("data"), "volume data\n").unwrap();
    let ro_vol = world_tempdir();
    let out = sh(
        root.path(),
        "touch /x 2>&1 && echo rootfs-writable; touch /tmp/x && echo tmp-ok; touch /dev/shm/x && echo shm-ok; \
         cat /vol/data; echo new > /vol/new && echo vol-ok; touch /ro/x 2>/dev/null || echo ro-vol-ro",
        |s| {
            s.readonly_rootfs = true;
            s.mounts.push(Mount {
                target: "/tmp".into(),
                kind: MountKind::Tmpfs { options: "size=1m,mode=1777".into(), readonly: false },
            });
            s.mounts.push(Mount {
                target: "/vol".into(),
                kind: MountKind::Bind { source: vol.path().into(), readonly: false },
            });
            s.mounts.push(Mount {
                target: "/ro".into(),
                kind: MountKind::Bind { source: ro_vol.path().into(), readonly: true },
            });
        },
    );
    assert!(out.contains("Read-only file system"), "{out}");
    for want in ["tmp-ok", "shm-ok", "volume data", "vol-ok", "ro-vol-ro"] {
        assert!(out.contains(want), "missing {want}: {out}");
    }
    assert!(!out.contains("rootfs-writable"), "{out}");
    assert_eq!(fs::read_to_string(vol.path().join("new")).unwrap(), "new\n");
}

#[test]
fn symlinked_mount_target_resolves_inside_rootfs() {
    require_root!();
    let root = busybox_rootfs();
    let host_dir = world_tempdir();
    let src = world_tempdir();
    fs::write(src.path().join("marker"), "inside\n").unwrap();
    // /escape -> ../../../../<host_dir>: on the host this would point at host_dir; in the rootfs
    // `..` stops at the root, so it must land on <rootfs>/<host_dir>.
    let rel = host_dir.path().strip_prefix("/").unwrap();
    symlink(format!("../../../../../../{}", rel.display()), root.path().join("escape")).unwrap();
    let out = sh(root.path(), &format!("cat /escape/marker {}/marker", host_dir.path().display()), |s| {
        s.mounts.push(Mount {
            target: "/escape".into(),
            kind: MountKind::Bind { source: src.path().into(), readonly: true },
        });
    });
    assert_eq!(out, "inside\ninside\n");
    assert!(root.path().join(rel).is_dir(), "mount point was not created inside the rootfs");
    assert_eq!(fs::read_dir(host_dir.path()).unwrap().count(), 0, "host directory touched");
}

#[test]
fn etc_files_and_rlimits() {
    require_root!();
    let root = busybox_rootfs();
    let state = world_tempdir();
    let out = sh(root.path(), "cat /etc/hosts /etc/hostname /etc/resolv.conf; ulimit -n; ulimit -Hn", |s| {
        s.etc_files = Some(EtcFiles {
            dir: state.path().into(),
            hosts: Some("127.0.0.1\tlocalhost\n10.0.0.2\tbox1\n".into()),
            hostname: Some("box1\n".into()),
            resolv_conf: Some("nameserver 10.0.0.1\n".into()),
        });
        s.rlimits.push(Rlimit { name: "nofile".into(), soft: 512, hard: 1024 });
    });
    assert_eq!(out, "127.0.0.1\tlocalhost\n10.0.0.2\tbox1\nbox1\nnameserver 10.0.0.1\n512\n1024\n");
}

#[test]
fn tty_mode() {
    require_root!();
    let root = busybox_rootfs();
    let mut spec =
        Spec::new(root.path(), vec!["sh".into(), "-c".into(), "tty; ls -l /dev/console | cut -c1; stty size".into()]);
    spec.tty = true;
    let mut c = spawn(&spec, Stdio::default()).unwrap();
    let master = c.take_pty_master().expect("pty master");
    let mut f = fs::File::from(master);
    let status = c.wait().unwrap();
    let mut out = Vec::new();
    // EIO once the slave side is closed.
    let _ = f.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("/dev/pts/0"), "{out}");
    assert!(out.contains("c\r\n"), "{out}");
}

#[test]
fn exec_into_running_container() {
    require_root!();
    let root = busybox_rootfs();
    let mut spec = Spec::new(root.path(), vec!["sleep".into(), "100".into()]);
    spec.hostname = "execbox".into();
    let mut c = spawn(&spec, Stdio::default()).unwrap();

    let (r, w) = pipe();
    let mut e = ExecSpec::new(vec!["sh".into(), "-c".into(), "hostname; ps -o pid,comm | sed 1d; pwd; id -u".into()]);
    e.cwd = "/tmp".into();
    e.user = User { uid: 1000, gid: 1000, additional_gids: vec![] };
    let mut p = exec(c.pid(), &e, Stdio { stdout: Some(w), ..Default::default() }, None).unwrap();
    assert_eq!(p.wait().unwrap(), 0);
    let out = read_all(r);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], "execbox", "{out}");
    assert!(lines[1].starts_with("1 sleep"), "{out}");
    assert_eq!(&lines[lines.len() - 2..], ["/tmp", "1000"], "{out}");

    let missing = exec(c.pid(), &ExecSpec::new(vec!["nope".into()]), Stdio::default(), None);
    assert_eq!(missing.unwrap_err().exit_code(), 127);

    let mut tty = ExecSpec::new(vec!["tty".into()]);
    tty.tty = true;
    let mut p = exec(c.pid(), &tty, Stdio::default(), None).unwrap();
    let mut m = fs::File::from(p.take_pty_master().expect("pty"));
    assert_eq!(p.wait().unwrap(), 0);
    let mut out = Vec::new();
    let _ = m.read_to_end(&mut out);
    assert!(String::from_utf8_lossy(&out).contains("/dev/pts/"), "{out:?}");

    c.signal(libc::SIGKILL).unwrap();
    assert_eq!(c.wait().unwrap(), 137);
}

#[test]
fn cgroup_limits_v1_or_v2() {
    require_root!();
    let root = busybox_rootfs();
    let mut spec = Spec::new(root.path(), vec!["sleep".into(), "100".into()]);
    let name = format!("runner-test-{}", std::process::id());
    spec.cgroup = Some(CgroupSpec {
        name: name.clone(),
        limits: CgroupLimits { memory: Some(64 << 20), cpus: Some(0.5), pids: Some(20), ..Default::default() },
    });
    let mut c = spawn(&spec, Stdio::default()).unwrap();
    let dirs = c.cgroup().expect("cgroup").dirs().to_vec();
    assert!(!dirs.is_empty());
    let mut seen = String::new();
    for d in &dirs {
        let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l.trim() == c.pid().to_string()), "{} has {procs}", d.display());
        for f in ["memory.limit_in_bytes", "memory.max", "cpu.cfs_quota_us", "cpu.max", "pids.max"] {
            if let Ok(v) = fs::read_to_string(d.join(f)) {
                seen.push_str(&format!("{f}={} ", v.trim()));
            }
        }
    }
    assert!(seen.contains("=67108864"), "{seen}");
    assert!(seen.contains("pids.max=20"), "{seen}");
    assert!(seen.contains("cpu.cfs_quota_us=50000") || seen.contains("cpu.max=50000 100000"), "{seen}");
    c.signal(libc::SIGKILL).unwrap();
    c.wait().unwrap();
    for d in &dirs {
        assert!(!d.exists(), "{} not removed", d.display());
    }

    // The pids limit is enforced.
    let mut spec =
        Spec::new(root.path(), vec!["sh".into(), "-c".into(), "for i in 1 2 3 4 5 6; do sleep 5 & done".into()]);
    spec.cgroup =
        Some(CgroupSpec { name: format!("{name}-pids"), limits: CgroupLimits { pids: Some(4), ..Default::default() } });
    let out = run(&spec).unwrap();
    assert!(out.stderr.contains("can't fork"), "{out:?}");
}

#[test]
fn network_none_and_private() {
    require_root!();
    let root = busybox_rootfs();
    let out = sh(root.path(), "cat /proc/net/dev | sed 1,2d | cut -d: -f1 | tr -d ' '", |s| s.network = Network::None);
    assert_eq!(out.trim(), "lo");

    if which("pasta").is_none() {
        eprintln!("skipping the private network part: pasta (passt) is not installed");
        return;
    }
    fs::create_dir_all(root.path().join("www")).unwrap();
    fs::write(root.path().join("www/index.html"), "hello from the container\n").unwrap();
    let port = free_port();
    let mut spec = Spec::new(
        root.path(),
        vec!["httpd".into(), "-f".into(), "-p".into(), "8080".into(), "-h".into(), "/www".into()],
    );
    spec.network = Network::Private {
        ports: vec![PortForward { host_ip: None, host_port: port, container_port: 8080, protocol: Protocol::Tcp }],
    };
    let mut c = spawn(&spec, Stdio::default()).unwrap();
    let body = http_get_retry(port);
    c.signal(libc::SIGKILL).unwrap();
    c.wait().unwrap();
    assert!(body.contains("hello from the container"), "{body}");

    // pasta also goes away when the handle is lost (a killed supervisor): a watcher stops it.
    let mut spec = Spec::new(root.path(), vec!["sleep".into(), "100".into()]);
    spec.network = Network::Private { ports: vec![] };
    let c = spawn(&spec, Stdio::default()).unwrap();
    let (pid, pasta) = (c.pid(), c.pasta().expect("pasta").pid());
    let pasta_fd = pidfd(pasta);
    std::mem::forget(c);
    // SAFETY: killing and reaping our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    let mut pfd = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&pasta_fd), events: libc::POLLIN, revents: 0 };
    // SAFETY: valid pollfd. The timeout only bounds a failure.
    let ready = unsafe { libc::poll(&mut pfd, 1, 20_000) };
    assert_eq!(ready, 1, "pasta {pasta} still running after the container died");
}

fn pidfd(pid: i32) -> std::os::fd::OwnedFd {
    // SAFETY: pidfd_open returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(fd >= 0, "pidfd_open {pid}");
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) }
}

pub fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(cmd)).find(|p| p.is_file())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET / on 127.0.0.1:port, retrying while the server in the container starts.
pub fn http_get_retry(port: u16) -> String {
    let mut last = String::new();
    for _ in 0..200 {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut s) => {
                let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
                let mut body = String::new();
                let _ = s.read_to_string(&mut body);
                if body.contains("200") {
                    return body;
                }
                last = body;
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    last
}

#[test]
fn rootfs_must_exist_and_mapping_checks() {
    let spec = Spec::new("/nonexistent-rootfs", vec!["true".into()]);
    assert!(matches!(spawn(&spec, Stdio::default()), Err(RunnerError::Invalid(_))));
    let root = busybox_rootfs();
    let mut spec = Spec::new(root.path(), vec!["true".into()]);
    spec.rlimits.push(Rlimit { name: "bogus".into(), soft: 1, hard: 1 });
    assert!(spawn(&spec, Stdio::default()).unwrap_err().to_string().contains("invalid ulimit type"));
    let _ = fs::Permissions::from_mode(0o755);
}

#[test]
fn fuse_rootfs_mounted_in_container_and_served_by_caller() {
    require_root!();
    if !have("fuse-overlayfs") {
        eprintln!("skipping: fuse-overlayfs not installed");
        return;
    }
    let lower = busybox_rootfs();
    let scratch = world_tempdir();
    let mnt = world_tempdir();
    let children = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut serve = fuse_overlayfs_server(lower.path().into(), scratch.path().into(), String::new(), children.clone());
    let (r, w) = pipe();
    let spec = Spec::new(
        mnt.path(),
        vec![
            "sh".into(),
            "-c".into(),
            "grep ' / / ' /proc/self/mountinfo | sed 's/.* - //'; echo hi > /written; id -u".into(),
        ],
    );
    let fuse =
        strata_runner::FuseRootfs { fsname: "strata-test".into(), subtype: "overlay".into(), options: String::new() };
    let mut c = strata_runner::spawn_with_fuse_rootfs(
        &spec,
        Stdio { stdout: Some(w), ..Default::default() },
        &fuse,
        &mut serve,
    )
    .unwrap();
    assert_eq!(c.wait().unwrap(), 0);
    let out = read_all(r);
    assert!(out.starts_with("fuse.overlay strata-test "), "{out}");
    assert!(out.ends_with("\n0\n"), "{out}");
    // The write went to the server's upper directory; the host mount point stayed empty.
    assert_eq!(fs::read_to_string(scratch.path().join("upper/written")).unwrap(), "hi\n");
    assert_eq!(fs::read_dir(mnt.path()).unwrap().count(), 0);
    // The server ends when the container's mount namespace is gone.
    for mut child in children.lock().unwrap().drain(..) {
        child.wait().unwrap();
    }
}
