//! Containers end to end: `run` (foreground, detached, with a terminal),
//! `exec`, `logs`, `stop`, `rm`, `ps`, `pause`, `stats`, health checks,
//! restart policies, volumes, published ports, and the supervisor's life
//! cycle — as root and as the unprivileged `strata-test`.
//!
//! Every test gets its own registry and store; the guard in [`Env`]
//! force-removes every container it left behind, so a failing test does not
//! leave supervisors running.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use strata_e2e::registry::{free_port, try_http_get};
use strata_e2e::strata::{show_output, wait_output};
use strata_e2e::*;

const READY: Duration = Duration::from_secs(60);

/// A registry with the busybox and full fixtures, and a store that pulled busybox.
struct Env {
    _reg: Registry,
    s: Strata,
    bb: String,
    full: String,
}

impl Drop for Env {
    fn drop(&mut self) {
        let out = self.s.run(&["ps", "-aq", "--no-trunc"]);
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
        if !ids.is_empty() {
            let mut args = vec!["rm".to_string(), "-f".to_string(), "-v".to_string()];
            args.extend(ids);
            let _ = self.s.run(&args);
        }
    }
}

fn setup(unprivileged: bool) -> Env {
    let f = fixtures();
    let reg = Registry::start();
    let bb = reg.push_oci_layout(&f.oci, "busybox", "e2e/bb:1");
    let full = reg.push_oci_layout(&f.oci, "full", "e2e/full:1");
    let s = if unprivileged { Strata::new_unprivileged() } else { Strata::new() };
    s.pull(&bb);
    Env { _reg: reg, s, bb, full }
}

/// Runs `f` as root and as the unprivileged user.
fn both(f: impl Fn(&Env, &str)) {
    for unprivileged in [false, true] {
        let env = setup(unprivileged);
        f(&env, if unprivileged { "as strata-test" } else { "as root" });
    }
}

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `run --rm FLAGS IMAGE true`, which must be refused with 125; its stderr.
#[track_caller]
fn run_refused(s: &Strata, image: &str, flags: &[&str]) -> String {
    let mut cmd = vec!["run", "--rm"];
    cmd.extend(flags);
    cmd.extend([image, "true"]);
    let (code, err) = s.fails(&cmd);
    assert_eq!(code, 125, "{flags:?}: {err}");
    err
}

/// A directory under the instance's base that its user owns.
fn host_dir(s: &Strata, name: &str) -> std::path::PathBuf {
    let d = s.base().join(name);
    std::fs::create_dir_all(&d).unwrap();
    if s.is_unprivileged() {
        let u = nix::unistd::User::from_name(TEST_USER).unwrap().unwrap();
        std::os::unix::fs::chown(&d, Some(u.uid.as_raw()), Some(u.gid.as_raw())).unwrap();
    }
    d
}

/// A file with `content` that the instance's user owns.
fn host_file(s: &Strata, p: &std::path::Path, content: &str) {
    std::fs::write(p, content).unwrap();
    chown_to_user(s, p);
}

fn chown_to_user(s: &Strata, p: &std::path::Path) {
    if s.is_unprivileged() {
        let u = nix::unistd::User::from_name(TEST_USER).unwrap().unwrap();
        std::os::unix::fs::chown(p, Some(u.uid.as_raw()), Some(u.gid.as_raw())).unwrap();
    }
}

fn status_of(s: &Strata, name: &str) -> String {
    s.ok(&["container", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", name]).trim().to_string()
}

fn wait_running(s: &Strata, name: &str) {
    wait_until(&format!("container {name} running"), READY, || {
        let out = s.run(&["container", "inspect", "-f", "{{.State.Status}}", name]);
        out.status.success() && stdout_of(&out).trim() == "running"
    });
}

#[test]
fn identity_environment_and_exit_codes() {
    both(|e, who| {
        let s = &e.s;
        let out = s.ok(&[
            "run",
            "--rm",
            "-e",
            "FOO=bar",
            "-w",
            "/tmp",
            &e.bb,
            "sh",
            "-c",
            "hostname; id -u; pwd; echo $FOO; tr '\\0' ' ' </proc/1/cmdline; echo; cat /proc/self/mountinfo",
        ]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0].len(), 12, "{who}: hostname is the short id: {out}");
        assert!(lines[0].bytes().all(|b| b.is_ascii_hexdigit()), "{who}: {out}");
        assert_eq!(lines[1], "0", "{who}: {out}");
        assert_eq!(lines[2], "/tmp", "{who}: {out}");
        assert_eq!(lines[3], "bar", "{who}: {out}");
        assert!(lines[4].starts_with("sh -c hostname;"), "{who}: pid 1 is the command: {out}");
        // The root is the union filesystem; /proc, /dev and /etc/hosts are set up.
        let root_line = out.lines().find(|l| l.split(' ').nth(4) == Some("/")).unwrap_or_else(|| panic!("{out}"));
        assert!(root_line.contains("fuse"), "{who}: root is not the FUSE mount: {root_line}");
        for m in ["/proc", "/dev", "/etc/hosts", "/etc/resolv.conf", "/etc/hostname"] {
            assert!(out.lines().any(|l| l.split(' ').nth(4) == Some(m)), "{who}: no {m} mount in:\n{out}");
        }

        for (cmd, code) in [("exit 0", 0), ("exit 1", 1), ("exit 255", 255)] {
            let out = s.run(&["run", "--rm", &e.bb, "sh", "-c", cmd]);
            assert_eq!(out.status.code(), Some(code), "{who}: `{cmd}`: {}", show_output(&out));
        }
        let (code, err) = s.fails(&["run", "--rm", &e.bb, "/no/such/command"]);
        assert_eq!(code, 127, "{who}: {err}");
        assert!(err.contains("/no/such/command"), "{who}: {err}");
        let (code, err) = s.fails(&["run", "--rm", &e.bb, "/etc"]);
        assert_eq!(code, 126, "{who}: {err}");
        // --rm removed every one of them.
        assert_eq!(s.ok(&["ps", "-aq"]), "", "{who}");
    });
}

#[test]
fn stop_kills_a_process_that_ignores_sigterm() {
    both(|e, who| {
        let s = &e.s;
        let id =
            s.ok(&["run", "-d", "--name", "stubborn", &e.bb, "sh", "-c", "trap '' TERM; while true; do sleep 1; done"]);
        assert_eq!(id.trim().len(), 64, "{who}: {id}");
        assert_eq!(s.ok(&["stop", "-t", "1", "stubborn"]).trim(), "stubborn");
        assert_eq!(status_of(s, "stubborn"), "exited 137", "{who}");
        assert_eq!(s.ok(&["wait", "stubborn"]).trim(), "137", "{who}");
        let ps = s.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
        assert!(ps.starts_with("stubborn Exited (137)"), "{who}: {ps}");
        s.ok(&["rm", "stubborn"]);
    });
}

/// Reads everything the master side of a pty produces, in the background.
struct PtyReader {
    rx: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl PtyReader {
    fn new(master: OwnedFd) -> PtyReader {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut f = std::fs::File::from(master);
            let mut buf = [0u8; 4096];
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        PtyReader { rx, seen: Vec::new() }
    }

    fn expect(&mut self, what: &str) {
        let deadline = Instant::now() + READY;
        while !String::from_utf8_lossy(&self.seen).contains(what) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(d) => self.seen.extend_from_slice(&d),
                Err(_) => panic!("no {what:?} on the terminal; saw {:?}", String::from_utf8_lossy(&self.seen)),
            }
        }
    }
}

/// Starts `strata ARGS` on a new pseudo-terminal; returns the child, the
/// master for writing, and a reader of what appears on the terminal.
fn spawn_on_pty(s: &Strata, args: &[&str]) -> (std::process::Child, OwnedFd, PtyReader) {
    let ws = nix::pty::Winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(Some(&ws), None).unwrap();
    let mut cmd = s.command(args);
    let slave = pty.slave;
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    let child = cmd.spawn().unwrap();
    let reader = PtyReader::new(pty.master.try_clone().unwrap());
    (child, pty.master, reader)
}

fn type_in(master: &OwnedFd, text: &[u8]) {
    nix::unistd::write(master.as_fd(), text).unwrap();
}

#[test]
fn interactive_terminal_session_and_detach() {
    both(|e, who| {
        let s = &e.s;
        let (child, master, mut term) = spawn_on_pty(s, &["run", "-it", "--rm", &e.bb, "sh"]);
        term.expect("# ");
        type_in(&master, b"echo $((6*7)); stty size\r");
        // Echo of the typed line, then the answer with the terminal's CRLF.
        term.expect("echo $((6*7))");
        term.expect("42\r\n");
        term.expect("24 80");
        // A new window size reaches the container after SIGWINCH.
        let ws = libc::winsize { ws_row: 30, ws_col: 100, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer; the fd is open.
        unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&master), libc::TIOCSWINSZ, &ws) };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGWINCH)
            .unwrap();
        // The resize and the typed line travel separately: ask until it shows.
        let deadline = Instant::now() + READY;
        while !String::from_utf8_lossy(&term.seen).contains("30 100") {
            assert!(Instant::now() < deadline, "{who}: window size never changed");
            type_in(&master, b"stty size\r");
            term.expect("stty size");
            std::thread::sleep(Duration::from_millis(50));
            while let Ok(d) = term.rx.try_recv() {
                term.seen.extend_from_slice(&d);
            }
        }
        type_in(&master, b"exit 5\r");
        let out = wait_output(child, READY, "strata run -it");
        assert_eq!(out.status.code(), Some(5), "{who}: {}", String::from_utf8_lossy(&term.seen));

        // ctrl-p ctrl-q leaves the container running.
        let (child, master, mut term) = spawn_on_pty(s, &["run", "-it", "--name", "detachme", &e.bb, "sh"]);
        term.expect("# ");
        type_in(&master, b"\x10\x11");
        let out = wait_output(child, READY, "strata run -it (detach)");
        assert_eq!(out.status.code(), Some(0), "{who}: {}", String::from_utf8_lossy(&term.seen));
        assert_eq!(status_of(s, "detachme"), "running 0", "{who}");
        s.ok(&["rm", "-f", "detachme"]);
    });
}

#[test]
fn volumes_bind_named_readonly_and_read_only_root() {
    both(|e, who| {
        let s = &e.s;
        let d = host_dir(s, "shared");
        host_file(s, &d.join("from-host"), "hello host\n");
        let bind = format!("{}:/mnt/shared", d.display());
        let bind_ro = format!("{}:/mnt/ro:ro", d.display());
        let out = s.ok(&[
            "run", "--rm", "-v", &bind, "-v", &bind_ro, &e.bb, "sh", "-c",
            "cat /mnt/shared/from-host; echo made >/mnt/shared/from-ctr; echo x >/mnt/ro/x 2>/dev/null || echo ro-refused",
        ]);
        assert_eq!(out, "hello host\nro-refused\n", "{who}");
        assert_eq!(std::fs::read_to_string(d.join("from-ctr")).unwrap(), "made\n", "{who}");

        // A new named volume is seeded with the image's content at its path,
        // keeps what a container wrote, and is listed.
        s.ok(&["run", "--rm", "-v", "etcvol:/etc", &e.bb, "sh", "-c", "echo kept >/etc/new-file"]);
        let out =
            s.ok(&["run", "--rm", "-v", "etcvol:/etc:ro", &e.bb, "sh", "-c", "cat /etc/new-file; head -1 /etc/passwd"]);
        assert_eq!(out, "kept\nroot:x:0:0:root:/root:/bin/sh\n", "{who}");
        assert!(s.ok(&["volume", "ls", "-q"]).lines().any(|l| l == "etcvol"), "{who}");

        // Containers sharing a new volume seed it once: the emptiness check
        // and the copy happen under the volume's seed lock. With the lock
        // held here, a container start waits, the volume still empty.
        s.ok(&["volume", "create", "seedvol"]);
        let vol = s.root().join("volumes/seedvol");
        let lock =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(vol.join("seed.lock")).unwrap();
        chown_to_user(s, &vol.join("seed.lock"));
        lock.lock().unwrap();
        let child = s.spawn(&["run", "-d", "--name", "seeding", "-v", "seedvol:/etc", &e.bb, "sleep", "1000"]);
        std::thread::sleep(Duration::from_millis(1500));
        let data = vol.join("_data");
        assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0, "{who}: seeded while another held the lock");
        drop(lock);
        let out = wait_output(child, READY, "strata run -d with a seeded volume");
        assert!(out.status.success(), "{who}: {}", show_output(&out));
        assert!(data.join("passwd").exists(), "{who}: seeded after the lock was released");
        s.ok(&["rm", "-f", "seeding"]);
        s.ok(&["volume", "rm", "seedvol"]);
        let (code, err) = s.fails(&["volume", "rm", "nope"]);
        assert_eq!(code, 1, "{who}: {err}");
        s.ok(&["volume", "rm", "etcvol"]);

        let out = s.run(&[
            "run",
            "--rm",
            "--read-only",
            "--tmpfs",
            "/scratch",
            &e.bb,
            "sh",
            "-c",
            "touch /x || touch /scratch/y && echo ok",
        ]);
        assert_eq!(stdout_of(&out), "ok\n", "{who}: {}", show_output(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"), "{who}: {}", show_output(&out));
    });
}

#[test]
fn published_port_serves_from_the_container() {
    both(|e, who| {
        let s = &e.s;
        let www = host_dir(s, "www");
        host_file(s, &www.join("index.html"), "served by busybox\n");
        let port = free_port();
        let publish = format!("127.0.0.1:{port}:80");
        let vol = format!("{}:/www:ro", www.display());
        s.ok(&[
            "run", "-d", "--name", "web", "-p", &publish, "-v", &vol, &e.bb, "httpd", "-f", "-p", "80", "-h", "/www",
        ]);
        let mut body = String::new();
        wait_until(&format!("{who}: http on port {port}"), READY, || {
            match try_http_get(port, "/index.html", &[], None, 4096) {
                Some(r) if r.status == 200 => {
                    body = String::from_utf8_lossy(&r.body).into_owned();
                    true
                }
                _ => false,
            }
        });
        assert_eq!(body, "served by busybox\n", "{who}");
        assert_eq!(s.ok(&["port", "web"]), format!("80/tcp -> 127.0.0.1:{port}\n"), "{who}");
        let ps = s.ok(&["ps", "--format", "{{.Ports}}"]);
        assert_eq!(ps.trim(), format!("127.0.0.1:{port}->80/tcp"), "{who}");
        s.ok(&["rm", "-f", "web"]);

        // -P: the exposed port on a free host port, shown by `port`.
        s.ok(&[
            "run", "-d", "--name", "web2", "-P", "--expose", "80", "-v", &vol, &e.bb, "httpd", "-f", "-p", "80", "-h",
            "/www",
        ]);
        let mapped = s.ok(&["port", "web2"]);
        let port: u16 = mapped.trim().rsplit(':').next().unwrap().parse().unwrap_or_else(|_| panic!("{who}: {mapped}"));
        assert!(mapped.starts_with("80/tcp -> 0.0.0.0:"), "{who}: {mapped}");
        wait_until(&format!("{who}: http on the -P port {port}"), READY, || {
            try_http_get(port, "/index.html", &[], None, 4096).is_some_and(|r| r.status == 200)
        });
        s.ok(&["rm", "-f", "web2"]);

        // Ranges: two container ports on two host ports, both served; and a
        // port without a host port gets a free one, as with Docker.
        let (p1, p2) = loop {
            let p = free_port();
            if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break (p, p + 1);
            }
        };
        let serve = "httpd -p 80 -h /www; httpd -f -p 81 -h /www";
        let range = format!("127.0.0.1:{p1}-{p2}:80-81");
        s.ok(&[
            "run",
            "-d",
            "--name",
            "web3",
            "-p",
            &range,
            "-p",
            "127.0.0.1::82",
            "-v",
            &vol,
            &e.bb,
            "sh",
            "-c",
            serve,
        ]);
        for port in [p1, p2] {
            wait_until(&format!("{who}: http on the range's port {port}"), READY, || {
                try_http_get(port, "/index.html", &[], None, 4096).is_some_and(|r| r.status == 200)
            });
        }
        let mapped = s.ok(&["port", "web3"]);
        assert!(mapped.contains(&format!("80/tcp -> 127.0.0.1:{p1}\n81/tcp -> 127.0.0.1:{p2}\n")), "{who}: {mapped}");
        assert!(mapped.contains("82/tcp -> 127.0.0.1:") && !mapped.contains("127.0.0.1:82\n"), "{who}: {mapped}");
        s.ok(&["rm", "-f", "web3"]);
    });
}

#[test]
fn cidfile_label_file_and_shm_size() {
    let e = setup(false);
    let s = &e.s;
    let cid = s.base().join("cid");
    let labels = s.base().join("labels");
    std::fs::write(&labels, "team=storage\n# a comment\n\ntier=two\n").unwrap();
    let out = s.ok(&[
        "run",
        "--name",
        "sized",
        "--cidfile",
        cid.to_str().unwrap(),
        "--label-file",
        labels.to_str().unwrap(),
        "--label",
        "tier=three",
        "--shm-size",
        "8m",
        &e.bb,
        "sh",
        "-c",
        "df -k /dev/shm | tail -1",
    ]);
    assert!(out.split_whitespace().nth(1) == Some("8192"), "/dev/shm is 8 MiB: {out}");
    let id = s.ok(&["inspect", "-f", "{{.Id}}", "sized"]);
    assert_eq!(std::fs::read_to_string(&cid).unwrap(), id.trim(), "the cidfile holds the id");
    let l = s.ok(&["inspect", "-f", "{{json .Config.Labels}}", "sized"]);
    assert_eq!(l.trim(), r#"{"team":"storage","tier":"three"}"#, "--label wins over --label-file");
    let (code, err) = s.fails(&["run", "--cidfile", cid.to_str().unwrap(), &e.bb, "true"]);
    assert_eq!(code, 125);
    assert!(err.contains("Container ID file found"), "{err}");
    let (_, err) = s.fails(&["run", "--shm-size", "lots", &e.bb, "true"]);
    assert!(err.contains("lots"), "{err}");
}

#[test]
fn detached_container_logs_exec_and_survival() {
    both(|e, who| {
        let s = &e.s;
        // Started from a shell that exits at once; its process group is killed too.
        let cmd =
            s.command(&["run", "-d", "--name", "bg", &e.bb, "sh", "-c", "echo out; echo err >&2; exec sleep 1000"]);
        let mut sh = std::process::Command::new("sh");
        sh.arg("-c").arg("\"$0\" \"$@\"").arg(cmd.get_program()).args(cmd.get_args()).env_clear();
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                sh.env(k, v);
            }
        }
        if let Some(d) = cmd.get_current_dir() {
            sh.current_dir(d);
        }
        std::os::unix::process::CommandExt::process_group(&mut sh, 0);
        let child = sh.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let pgid = child.id() as i32;
        let out = wait_output(child, READY, "sh -c strata run -d");
        assert!(out.status.success(), "{who}: {}", show_output(&out));
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
        wait_running(s, "bg");
        assert_eq!(s.ok(&["ps", "--format", "{{.Names}}"]).trim(), "bg", "{who}");

        let mut logs = String::new();
        wait_until("logs", READY, || {
            let o = s.run(&["logs", "bg"]);
            logs = format!("{}|{}", stdout_of(&o), String::from_utf8_lossy(&o.stderr));
            logs == "out\n|err\n"
        });
        let stamped = s.ok(&["logs", "-t", "bg"]);
        assert!(stamped.ends_with(" out\n") && stamped.starts_with("20"), "{who}: {stamped}");

        let out = s.run(&["exec", "-e", "X=1", "bg", "sh", "-c", "echo $X $(hostname); exit 3"]);
        assert_eq!(out.status.code(), Some(3), "{who}: {}", show_output(&out));
        let hostname = s.ok(&["container", "inspect", "-f", "{{.Config.Hostname}}", "bg"]);
        assert_eq!(stdout_of(&out), format!("1 {}", hostname), "{who}");
        // Only the standard streams (and ls's own directory fd) are open in a container.
        let fds = s.ok(&["exec", "bg", "ls", "/proc/self/fd"]);
        let fds: Vec<&str> = fds.lines().collect();
        assert!(fds.len() <= 4 && fds[..3] == ["0", "1", "2"], "{who}: leaked fds {fds:?}");
        // Nor does the supervisor, which outlives `strata run -d`, keep a
        // descriptor it inherited (a pipe a script reads to its end).
        let mut pipe = InheritedPipe::new();
        let mut cmd = s.command(&["run", "-d", "--name", "bg2", &e.bb, "sleep", "1000"]);
        pipe.pass_to(&mut cmd);
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "{who}: {}", show_output(&out));
        assert!(!pipe.still_held_elsewhere(), "{who}: the supervisor holds a descriptor inherited from its caller");
        s.ok(&["rm", "-f", "bg2"]);

        s.ok(&["stop", "-t", "0", "bg"]);
        let (code, err) = s.fails(&["exec", "bg", "true"]);
        assert_eq!(code, 1, "{who}: {err}");
        assert!(err.contains("is not running"), "{who}: {err}");
    });
}

#[test]
fn symlinked_mount_target_resolves_inside_and_proc_self_exe_is_protected() {
    both(|e, who| {
        let s = &e.s;
        s.pull(&e.full);
        let d = host_dir(s, "files");
        let f = d.join("passwd-from-host");
        std::fs::write(&f, "bound\n").unwrap();
        chown_to_user(s, &f);
        // /data/links/abs -> /etc/passwd in the image: the bind lands on the
        // container's /etc/passwd, never on the host's.
        let host_passwd = std::fs::read("/etc/passwd").unwrap();
        let vol = format!("{}:/data/links/abs:ro", f.display());
        let out = s.ok(&["run", "--rm", "-v", &vol, &e.full, "cat", "/etc/passwd"]);
        assert_eq!(out, "bound\n", "{who}");
        assert_eq!(std::fs::read("/etc/passwd").unwrap(), host_passwd, "{who}");

        let out = s.run(&["run", "--rm", &e.bb, "sh", "-c", "echo x >/proc/self/exe && echo overwritten"]);
        assert!(!stdout_of(&out).contains("overwritten"), "{who}: {}", show_output(&out));
        assert_eq!(s.ok(&["run", "--rm", &e.bb, "echo", "intact"]), "intact\n", "{who}");
    });
}

#[test]
fn rm_after_sigterm_of_run_and_name_conflict() {
    both(|e, who| {
        let s = &e.s;
        let child = s.spawn(&[
            "run",
            "--rm",
            "--name",
            "term",
            &e.bb,
            "sh",
            "-c",
            "trap 'exit 143' TERM; touch /tmp/trapped; while true; do sleep 1; done",
        ]);
        wait_running(s, "term");
        // The shell is the container's PID 1: a SIGTERM that arrives before
        // its trap is set is dropped by the kernel (as under Docker), and
        // the container would run on.
        wait_until("the container's TERM trap", READY, || {
            s.run(&["exec", "term", "test", "-e", "/tmp/trapped"]).status.success()
        });
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let out = wait_output(child, READY, "strata run --rm (SIGTERM)");
        assert_eq!(out.status.code(), Some(143), "{who}: {}", show_output(&out));
        assert_eq!(s.ok(&["ps", "-aq"]), "", "{who}: --rm left the container");

        let id = s.ok(&["create", "--name", "taken", &e.bb, "true"]).trim().to_string();
        let (code, err) = s.fails(&["run", "--name", "taken", &e.bb, "true"]);
        assert_eq!(code, 125, "{who}: {err}");
        assert!(
            err.contains(&format!(
                "Conflict. The container name \"/taken\" is already in use by container \"{id}\". You have to remove (or rename) that container to be able to reuse that name."
            )),
            "{who}: {err}"
        );
        let (code, err) = s.fails(&["rm", "nosuch"]);
        assert_eq!(code, 1, "{who}: {err}");
        assert!(err.contains("No such container: nosuch"), "{who}: {err}");
        s.ok(&["start", "taken"]);
        assert_eq!(s.ok(&["wait", "taken"]).trim(), "0", "{who}");
    });
}

#[test]
fn killed_supervisor_marks_the_container_exited_and_clears_its_mount() {
    both(|e, who| {
        let s = &e.s;
        let id = s.ok(&["run", "-d", "--name", "orphan", &e.bb, "sleep", "1000"]).trim().to_string();
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(s.root().join("containers").join(&id).join("state.json")).unwrap())
                .unwrap();
        let sup = state["supervisor"]["pid"].as_i64().unwrap() as i32;
        let rootfs = s.root().join("containers").join(&id).join("rootfs");
        let mounted =
            || std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&format!(" {} ", rootfs.display()));
        if !s.is_unprivileged() {
            // Rootless mounts live in the supervisor's own mount namespace.
            assert!(mounted(), "{who}: the container's filesystem is not mounted");
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(sup), nix::sys::signal::Signal::SIGKILL).unwrap();
        wait_until("the supervisor to die", READY, || {
            std::fs::read_to_string(format!("/proc/{sup}/stat")).map(|st| st.contains(") Z ")).unwrap_or(true)
        });
        let ps = s.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
        assert!(ps.starts_with("orphan Exited (255)"), "{who}: {ps}");
        assert!(!mounted(), "{who}: stale mount left at {}", rootfs.display());
        if !s.is_unprivileged() {
            // Root's containers have cgroups of their own: removed too.
            let left: Vec<String> = std::fs::read_dir("/sys/fs/cgroup")
                .unwrap()
                .flatten()
                .map(|c| c.path().join("strata").join(&id))
                .chain([std::path::PathBuf::from("/sys/fs/cgroup/strata").join(&id)])
                .filter(|d| d.is_dir())
                .map(|d| d.display().to_string())
                .collect();
            assert!(left.is_empty(), "{who}: cgroups left: {left:?}");
        }
        let err = s.ok(&["container", "inspect", "-f", "{{.State.Error}}", "orphan"]);
        assert!(err.contains("supervisor"), "{who}: {err}");
        s.ok(&["rm", "orphan"]);
    });
}

#[test]
fn create_start_rename_diff_prune_and_listing() {
    let e = setup(false);
    let s = &e.s;
    let id = s.ok(&[
        "create",
        "--name",
        "first",
        "--label",
        "role=test",
        &e.bb,
        "sh",
        "-c",
        "echo from-start; echo x >/added; rm /bin/ls; echo x >>/etc/passwd",
    ]);
    let id = id.trim();
    let ps = s.ok(&["ps", "-a"]);
    let mut lines = ps.lines();
    let header = lines.next().unwrap();
    for col in ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"] {
        assert!(header.contains(col), "{ps}");
    }
    let row = lines.next().unwrap();
    assert!(row.starts_with(&id[..12]), "{ps}");
    assert!(row.contains("\"sh -c echo from-sta…\"") && row.contains("Created") && row.ends_with("first"), "{ps}");
    assert_eq!(s.ok(&["ps", "-q"]), "", "a created container is not running");
    assert_eq!(s.ok(&["ps", "-aq", "--no-trunc", "-f", "label=role=test"]).trim(), id);
    assert_eq!(s.ok(&["ps", "-aq", "-f", "status=running"]), "");

    s.ok(&["rename", "first", "second"]);
    assert_eq!(s.ok(&["container", "inspect", "-f", "{{.Name}} {{.Id}}", "second"]).trim(), format!("/second {id}"));
    assert_eq!(s.ok(&["start", "-a", "second"]), "from-start\n");
    // The /etc/hosts the runner made for its mount is not a change, and
    // neither is /etc for it (Docker keeps such mount points in a layer of
    // their own).
    assert_eq!(s.ok(&["diff", "second"]), "A /added\nC /bin\nD /bin/ls\nC /etc/passwd\n");
    assert_eq!(s.ok(&["logs", "-f", "second"]), "from-start\n");

    // rm refuses a running container without -f, with Docker's message.
    s.ok(&["run", "-d", "--name", "busy", &e.bb, "sleep", "1000"]);
    let (code, err) = s.fails(&["rm", "busy"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Error response from daemon: cannot remove container \"/busy\": container is running: stop the container before removing or force remove"), "{err}");
    // (Nothing was created before 2000; the stopped one was, a moment ago.)
    let out = s.ok(&["container", "prune", "-f", "--filter", "until=2000-01-01T00:00:00Z"]);
    assert_eq!(out, "Total reclaimed space: 0B\n");
    let out = s.ok(&["container", "prune", "-f", "--filter", "until=0s"]);
    assert!(out.starts_with(&format!("Deleted Containers:\n{id}\n")), "{out}");
    assert_eq!(s.ok(&["ps", "-a", "--format", "{{.Names}}"]).trim(), "busy");
    s.ok(&["rm", "-f", "busy"]);

    // `wait` blocks until the container exits and prints its status.
    s.ok(&["run", "-d", "--name", "brief", &e.bb, "sh", "-c", "while [ ! -e /go ]; do sleep 0.1; done; exit 42"]);
    let waiter = s.spawn(&["wait", "brief"]);
    s.ok(&["exec", "brief", "touch", "/go"]);
    let out = wait_output(waiter, READY, "strata wait");
    assert_eq!(stdout_of(&out).trim(), "42", "{}", show_output(&out));
    s.ok(&["rm", "brief"]);

    s.ok(&["volume", "create", "--label", "k=v", "named"]);
    s.ok(&["run", "--rm", "-v", "/anon", &e.bb, "true"]);
    s.ok(&["run", "-v", "/anon2", "--name", "keeps", &e.bb, "true"]);
    let vols = s.ok(&["volume", "ls", "-q"]);
    assert_eq!(vols.lines().count(), 2, "--rm removed its anonymous volume: {vols}");
    let inspect = s.ok(&["volume", "inspect", "-f", "{{.Name}} {{.Driver}} {{.Labels.k}}", "named"]);
    assert_eq!(inspect.trim(), "named local v");
    s.ok(&["rm", "keeps"]);
    let out = s.ok(&["volume", "prune", "-f"]);
    assert!(out.starts_with("Deleted Volumes:\n"), "{out}");
    assert_eq!(s.ok(&["volume", "ls", "-q"]).trim(), "named", "prune keeps named volumes without -a");
}

#[test]
fn files_owned_by_other_container_users_are_diffed_and_removed() {
    both(|e, who| {
        let s = &e.s;
        // As strata-test, uid 1000 in the container is a subordinate id on
        // the host: only a user namespace can read or remove its files.
        let script =
            "mkdir -p /home/u/priv && echo x >/home/u/priv/f && chown -R 1000:1000 /home/u && chmod 700 /home/u/priv";
        s.ok(&["run", "--name", "owned", &e.bb, "sh", "-c", script]);
        assert_eq!(s.ok(&["diff", "owned"]), "C /home\nA /home/u\nA /home/u/priv\nA /home/u/priv/f\n", "{who}");
        let out = s.ok(&["run", "--rm", "-v", "ownedvol:/v", &e.bb, "sh", "-c", &script.replace("/home", "/v")]);
        assert_eq!(out, "", "{who}");
        s.ok(&["rm", "owned"]);
        s.ok(&["volume", "rm", "ownedvol"]);
        assert_eq!(s.ok(&["ps", "-aq"]), "", "{who}");
        assert_eq!(s.ok(&["volume", "ls", "-q"]), "", "{who}");
        let left: Vec<_> = std::fs::read_dir(s.root().join("containers")).unwrap().flatten().collect();
        assert!(left.is_empty(), "{who}: left in the store: {left:?}");
    });
}

/// What a container may reach of the host's devices and what its user gets:
/// the standard nodes work, a node the container makes (in /dev or in a
/// volume) cannot be opened; `--cap-add ALL --cap-drop X` drops X; a
/// non-root user can reopen its stdout; a fifo at /etc/passwd does not hang
/// an exec.
#[test]
fn devices_capabilities_stdio_and_a_fifo_passwd() {
    both(|e, who| {
        let s = &e.s;
        let d = host_dir(s, "devvol");
        let vol = format!("{}:/v", d.display());
        let out = s.ok(&[
            "run",
            "--rm",
            "-v",
            &vol,
            &e.bb,
            "sh",
            "-c",
            "echo x >/dev/null && echo null-ok; head -c 4 /dev/zero | wc -c; \
             for n in /dev/null2 /v/null2 /tmp/null2; do mknod $n c 1 3 2>/dev/null; \
             if head -c 1 $n >/dev/null 2>&1; then echo $n OPENED; else echo $n refused; fi; done",
        ]);
        assert_eq!(out, "null-ok\n4\n/dev/null2 refused\n/v/null2 refused\n/tmp/null2 refused\n", "{who}");
        let _ = std::fs::remove_file(d.join("null2"));

        // Docker's order: ALL, then the drops by name.
        let out = s.ok(&[
            "run",
            "--rm",
            "--cap-add",
            "ALL",
            "--cap-drop",
            "NET_RAW",
            &e.bb,
            "grep",
            "CapBnd",
            "/proc/self/status",
        ]);
        let mask =
            u64::from_str_radix(out.split_whitespace().nth(1).unwrap_or_else(|| panic!("{who}: {out}")), 16).unwrap();
        assert_eq!(mask & (1 << 13), 0, "{who}: NET_RAW kept: {out}");
        assert_ne!(mask & (1 << 21), 0, "{who}: SYS_ADMIN missing: {out}");

        // Reopening stdout through /proc as a non-root user.
        let out =
            s.ok(&["run", "--rm", "-u", "1000:1000", &e.bb, "sh", "-c", "echo hi >/dev/stdout; echo err >/dev/stderr"]);
        assert_eq!(out, "hi\n", "{who}");

        s.ok(&["run", "-d", "--name", "fifo", &e.bb, "sleep", "1000"]);
        wait_running(s, "fifo");
        s.ok(&["exec", "fifo", "sh", "-c", "rm /etc/passwd && mkfifo /etc/passwd"]);
        let out = wait_output(
            s.spawn(&["exec", "fifo", "echo", "still-works"]),
            Duration::from_secs(30),
            "exec past a fifo /etc/passwd",
        );
        assert_eq!(stdout_of(&out), "still-works\n", "{who}: {}", show_output(&out));
        s.ok(&["rm", "-f", "fifo"]);
    });
}

/// `--tmpfs` options that are mount flags become flags (Docker's documented
/// `rw,noexec,nosuid,size=...` starts; `exec` lifts the default noexec; `dev`
/// still opens no device), and `--mount type=tmpfs,readonly` is read-only.
#[test]
fn tmpfs_mount_flags_and_read_only_tmpfs() {
    both(|e, who| {
        let s = &e.s;
        let out = s.run(&[
            "run",
            "--rm",
            "--tmpfs",
            "/run:rw,noexec,nosuid,size=65536k",
            "--tmpfs",
            "/x:exec,dev,mode=1770",
            "--mount",
            "type=tmpfs,dst=/ro,readonly",
            &e.bb,
            "sh",
            "-c",
            "for m in /run /x /ro; do echo $m $(grep \" $m \" /proc/self/mountinfo | cut -d' ' -f6); done; \
             cp /bin/busybox /run/ && /run/busybox true 2>/dev/null || echo run-noexec; \
             cp /bin/busybox /x/ && /x/busybox true && echo x-exec; \
             mknod /x/null c 1 3 2>/dev/null; head -c 1 /x/null >/dev/null 2>&1 && echo x-DEV-OPENED || echo x-nodev; \
             stat -c %a /x; touch /ro/f 2>/dev/null || echo ro-refused",
        ]);
        assert!(out.status.success(), "{who}: {}", show_output(&out));
        let text = stdout_of(&out);
        let lines: Vec<&str> = text.lines().collect();
        let flags = |i: usize| -> Vec<&str> {
            lines
                .get(i)
                .and_then(|l| l.split(' ').nth(1))
                .unwrap_or_else(|| panic!("{who}: {text}"))
                .split(',')
                .collect()
        };
        let (run, x, ro) = (flags(0), flags(1), flags(2));
        for f in ["rw", "nosuid", "nodev", "noexec"] {
            assert!(run.contains(&f), "{who}: /run lacks {f}: {text}");
        }
        assert!(x.contains(&"rw") && x.contains(&"nosuid") && x.contains(&"nodev"), "{who}: {text}");
        assert!(!x.contains(&"noexec"), "{who}: /x is noexec: {text}");
        assert!(ro.contains(&"ro") && ro.contains(&"noexec"), "{who}: /ro: {text}");
        assert_eq!(lines[3..], ["run-noexec", "x-exec", "x-nodev", "1770", "ro-refused"], "{who}: {text}");
    });
}

/// What `rm` leaves while it removes a container's files (status
/// "removing"): a `start` must not bring the container back to life.
#[test]
fn start_refuses_a_container_marked_for_removal() {
    both(|e, who| {
        let s = &e.s;
        let id = s.ok(&["create", "--name", "doomed", &e.bb, "true"]).trim().to_string();
        let state = s.root().join("containers").join(&id).join("state.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        v["status"] = "removing".into();
        std::fs::write(&state, serde_json::to_vec(&v).unwrap()).unwrap();
        let (code, err) = s.fails(&["start", "doomed"]);
        assert_eq!(code, 1, "{who}: {err}");
        assert!(err.contains("container is marked for removal and cannot be started"), "{who}: {err}");
        let (code, err) = s.fails(&["start", "-a", "doomed"]);
        assert_ne!(code, 0, "{who}: {err}");
        assert!(err.contains("container is marked for removal and cannot be started"), "{who}: {err}");
        assert_eq!(status_of(s, "doomed"), "removing 0", "{who}");
        s.ok(&["rm", "doomed"]);
        assert_eq!(s.ok(&["ps", "-aq"]), "", "{who}");
    });
}

/// An exec'd process has the container's `--ulimit`s and Docker's umask,
/// not those of whoever ran `strata exec`.
#[test]
fn exec_gets_the_container_ulimits_and_umask() {
    both(|e, who| {
        let s = &e.s;
        s.ok(&["run", "-d", "--name", "lim", "--ulimit", "nofile=256:256", &e.bb, "sleep", "1000"]);
        wait_running(s, "lim");
        let mut cmd = s.command(&["exec", "lim", "sh", "-c", "ulimit -n; ulimit -Hn; umask"]);
        // SAFETY: umask is async-signal-safe and cannot fail.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::umask(0o077);
                Ok(())
            });
        }
        let out = wait_output(cmd.spawn().unwrap(), READY, "strata exec (ulimit, umask)");
        assert!(out.status.success(), "{who}: {}", show_output(&out));
        assert_eq!(stdout_of(&out), "256\n256\n0022\n", "{who}");
        s.ok(&["rm", "-f", "lim"]);
        // Without --ulimit nofile the container has its caller's limit,
        // though the supervisor serving its mount raises its own.
        let mut cmd = s.command(&["run", "--rm", &e.bb, "sh", "-c", "ulimit -n"]);
        with_soft_fd_limit(&mut cmd, 1000);
        let out = wait_output(cmd.spawn().unwrap(), READY, "strata run (ulimit -n)");
        assert!(out.status.success(), "{who}: {}", show_output(&out));
        assert_eq!(stdout_of(&out), "1000\n", "{who}");
    });
}

/// `run` forwards every signal a process can catch, real-time ones too, not
/// only the usual few (a SIGALRM used to end strata itself).
#[test]
fn run_forwards_every_catchable_signal() {
    // SIGRTMIN+6 with glibc; the container's shell knows it by number.
    const RT: i32 = 40;
    both(|e, who| {
        let s = &e.s;
        let script = format!(
            "trap 'echo got-alrm; touch /tmp/alrm' ALRM; trap 'echo got-rt; touch /tmp/rt' {RT}; \
             trap 'exit 3' TERM; touch /tmp/trapped; while true; do sleep 1; done"
        );
        let mut child = s.spawn(&["run", "--rm", "--name", "sigs", &e.bb, "sh", "-c", &script]);
        wait_running(s, "sigs");
        wait_until("the container's traps", READY, || {
            s.run(&["exec", "sigs", "test", "-e", "/tmp/trapped"]).status.success()
        });
        for (sig, mark) in [(libc::SIGALRM, "/tmp/alrm"), (RT, "/tmp/rt")] {
            // SAFETY: kill with a valid signal number.
            assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0, "{who}: kill {sig}");
            wait_until(&format!("{who}: signal {sig} in the container"), READY, || {
                if let Ok(Some(st)) = child.try_wait() {
                    panic!("{who}: strata run ended on signal {sig}: {st}");
                }
                s.run(&["exec", "sigs", "test", "-e", mark]).status.success()
            });
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let out = wait_output(child, READY, "strata run (signals)");
        assert_eq!(out.status.code(), Some(3), "{who}: {}", show_output(&out));
        assert_eq!(stdout_of(&out), "got-alrm\ngot-rt\n", "{who}");
    });
}

/// With `--init -t` the command leads its own process group, the terminal's
/// foreground one: ctrl-c reaches it from the terminal alone, and not also
/// through the init, which forwards what it gets.
#[test]
fn init_puts_the_command_in_the_terminal_foreground() {
    both(|e, who| {
        let s = &e.s;
        let script = "read -r pid comm state ppid pgrp sid tty fg rest </proc/self/stat; \
                      echo \"me=$$ pgrp=$pgrp fg=$fg\"; trap 'echo got-int; exit 7' INT; echo ready; \
                      while true; do sleep 1; done";
        let (child, master, mut term) = spawn_on_pty(s, &["run", "-it", "--init", "--rm", &e.bb, "sh", "-c", script]);
        term.expect("ready");
        let seen = String::from_utf8_lossy(&term.seen).into_owned();
        let ids = seen.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix("me=")).unwrap_or_default();
        // The init is pid 1, the command its first child.
        assert_eq!(ids, "2 pgrp=2 fg=2", "{who}: {seen}");
        type_in(&master, b"\x03");
        term.expect("got-int");
        let out = wait_output(child, READY, "strata run -it --init");
        assert_eq!(out.status.code(), Some(7), "{who}: {}", String::from_utf8_lossy(&term.seen));
    });
}

/// An image removed between `create` resolving it and the container's
/// record naming it (the window in which `rmi` cannot see the container
/// yet) is noticed: the create fails instead of leaving a container whose
/// layers are gone. The removal is staged while the test holds the store's
/// content lock, where `create` waits after resolving.
#[test]
fn create_notices_an_image_removed_meanwhile() {
    let e = setup(false);
    let s = &e.s;
    let id = s.ok(&["image", "inspect", "-f", "{{.Id}}", &e.bb]).trim().to_string();
    let hex = id.strip_prefix("sha256:").unwrap_or(&id).to_string();
    let lock = std::fs::OpenOptions::new().read(true).write(true).open(s.root().join("lock")).unwrap();
    lock.lock().unwrap();
    let child = s.spawn(&["create", "--name", "late", &e.bb, "true"]);
    // create resolves the image (reading records needs no content lock),
    // then waits for the lock: remove the image's record meanwhile.
    std::thread::sleep(Duration::from_millis(1500));
    let records: Vec<_> = std::fs::read_dir(s.root().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(&hex)))
        .collect();
    assert!(!records.is_empty(), "no record file for {id}");
    for r in records {
        std::fs::remove_file(r).unwrap();
    }
    drop(lock);
    let out = wait_output(child, Duration::from_secs(60), "create after the image went");
    assert_ne!(out.status.code(), Some(0), "create succeeded: {}", show_output(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("was removed"), "{}", show_output(&out));
    assert_eq!(s.ok(&["ps", "-aq"]), "");
}

#[test]
fn rmi_of_an_image_a_container_uses_follows_docker() {
    let e = setup(false);
    let s = &e.s;
    let image_id = s.ok(&["images", "-q", &e.bb]).trim().to_string();
    let stopped = s.ok(&["create", "--name", "stopped", &e.bb, "true"]).trim()[..12].to_string();
    // Its last tag stays without -f, although a digest reference of the
    // same repository is there too (that does not make a second name).
    let (code, err) = s.fails(&["rmi", &e.bb]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "conflict: unable to remove repository reference \"{}\" (must force) - container {stopped} is using \
             its referenced image {image_id}",
            e.bb
        )),
        "{err}"
    );
    let (_, err) = s.fails(&["rmi", &image_id]);
    assert!(
        err.contains(&format!(
            "unable to delete {image_id} (must be forced) - image is being used by stopped container {stopped}"
        )),
        "{err}"
    );
    let running = s.ok(&["run", "-d", "--name", "running", &e.bb, "sleep", "1000"]).trim()[..12].to_string();
    let (_, err) = s.fails(&["rmi", "-f", &image_id]);
    assert!(
        err.contains(&format!(
            "unable to delete {image_id} (cannot be forced) - image is being used by running container {running}"
        )),
        "{err}"
    );
    s.ok(&["rm", "-f", "running"]);
    // Forced beside a stopped container: untagged, and kept for it.
    let out = s.ok(&["rmi", "-f", &image_id]);
    assert!(out.contains(&format!("Untagged: {}", e.bb)) && !out.contains("Deleted:"), "{out}");
    assert_eq!(s.ok(&["images", "-q"]).trim(), image_id);
    assert_eq!(s.ok(&["start", "-a", "stopped"]), "");
    s.ok(&["rm", "stopped"]);
    s.ok(&["rmi", &image_id]);
    assert_eq!(s.ok(&["images", "-q"]).trim(), "");
}

/// The counter a container of [`pause_freezes_and_unpause_thaws`] writes.
fn counter(s: &Strata, name: &str) -> u64 {
    s.ok(&["exec", name, "cat", "/tmp/count"]).trim().parse().unwrap_or(0)
}

#[test]
fn pause_freezes_and_unpause_thaws() {
    let e = setup(false);
    let s = &e.s;
    let count = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done";
    s.ok(&["run", "-d", "--name", "busy", &e.bb, "sh", "-c", count]);
    wait_until("the counter runs", READY, || counter(s, "busy") > 0);
    assert_eq!(s.ok(&["pause", "busy"]), "busy\n");
    assert_eq!(status_of(s, "busy"), "paused 0");
    assert_eq!(s.ok(&["inspect", "-f", "{{.State.Paused}} {{.State.Running}}", "busy"]).trim(), "true true");
    assert!(s.ok(&["ps", "--format", "{{.Status}}"]).trim().ends_with("(Paused)"));
    assert_eq!(s.ok(&["ps", "-q", "--filter", "status=paused"]).lines().count(), 1);
    assert_eq!(s.ok(&["ps", "-q", "--filter", "status=running"]), "");
    let counts = "{{.ContainersRunning}} {{.ContainersPaused}} {{.ContainersStopped}}";
    assert_eq!(s.ok(&["info", "--format", counts]).trim(), "0 1 0");
    let (code, err) = s.fails(&["exec", "busy", "true"]);
    assert_eq!(code, 1);
    assert!(err.contains("is paused, unpause the container before exec"), "{err}");
    let (_, err) = s.fails(&["pause", "busy"]);
    assert!(err.contains("is already paused"), "{err}");
    // Frozen: the counter file does not change (read from the upper directory).
    let id = s.ok(&["inspect", "-f", "{{.Id}}", "busy"]).trim().to_string();
    let file = s.root().join("containers").join(&id).join("upper/tmp/count");
    let before = std::fs::read_to_string(&file).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before, "a paused container does nothing");
    // A commit of a paused container leaves it paused.
    s.ok(&["commit", "busy", "paused:1"]);
    assert_eq!(status_of(s, "busy"), "paused 0");

    assert_eq!(s.ok(&["unpause", "busy"]), "busy\n");
    assert_eq!(status_of(s, "busy"), "running 0");
    let thawed: u64 = before.trim().parse().unwrap();
    wait_until("the counter runs again", READY, || counter(s, "busy") > thawed);
    let (_, err) = s.fails(&["unpause", "busy"]);
    assert!(err.contains("is not paused"), "{err}");

    // A paused container stops (its shell ignores SIGTERM: killed after -t).
    s.ok(&["pause", "busy"]);
    s.ok(&["stop", "-t", "1", "busy"]);
    assert_eq!(status_of(s, "busy"), "exited 137");
    let (_, err) = s.fails(&["pause", "busy"]);
    assert!(err.contains("is not running"), "{err}");
}

#[test]
fn pause_as_an_ordinary_user_without_a_cgroup_says_why() {
    let e = setup(true);
    let s = &e.s;
    s.ok(&["run", "-d", "--name", "idle", &e.bb, "sleep", "600"]);
    let (code, err) = s.fails(&["pause", "idle"]);
    assert_eq!(code, 1);
    assert!(err.contains("has no cgroup of its own to freeze"), "{err}");
    assert_eq!(status_of(s, "idle"), "running 0");
    s.ok(&["rm", "-f", "idle"]);
}

#[test]
fn stats_shows_cpu_memory_and_pids() {
    both(|e, who| {
        let s = &e.s;
        let mut args = vec!["run", "-d", "--name", "busy", &e.bb, "sh", "-c", "while true; do :; done"];
        if !s.is_unprivileged() {
            args.splice(2..2, ["--memory", "64m"]);
        }
        s.ok(&args);
        s.ok(&["create", "--name", "idle", &e.bb, "true"]);
        let out = s.ok(&["stats", "--no-stream"]);
        assert_eq!(
            out.lines().next().unwrap().split_whitespace().collect::<Vec<_>>(),
            [
                "CONTAINER",
                "ID",
                "NAME",
                "CPU",
                "%",
                "MEM",
                "USAGE",
                "/",
                "LIMIT",
                "MEM",
                "%",
                "NET",
                "I/O",
                "BLOCK",
                "I/O",
                "PIDS"
            ],
            "{who}: {out}"
        );
        assert_eq!(out.lines().count(), 2, "{who}: only running containers without -a: {out}");
        let line =
            s.ok(&["stats", "--no-stream", "--format", "{{.Name}}|{{.CPUPerc}}|{{.MemUsage}}|{{.PIDs}}", "busy"]);
        let f: Vec<&str> = line.trim().split('|').collect();
        assert_eq!(f[0], "busy", "{who}: {line}");
        let cpu: f64 = f[1].trim_end_matches('%').parse().unwrap();
        assert!(cpu > 20.0, "{who}: a busy loop uses a CPU: {line}");
        if !s.is_unprivileged() {
            assert!(f[2].ends_with(" / 64MiB"), "{who}: the memory limit: {line}");
        }
        assert_eq!(f[3], "1", "{who}: {line}");
        let all = s.ok(&["stats", "-a", "--no-stream", "--format", "{{.Name}} {{.CPUPerc}} {{.PIDs}}"]);
        assert!(all.lines().any(|l| l == "idle 0.00% 0"), "{who}: a created container reads zeros: {all}");
        let (code, err) = s.fails(&["stats", "--no-stream", "nosuch"]);
        assert_eq!(code, 1, "{who}");
        assert!(err.contains("No such container: nosuch"), "{who}: {err}");
        s.ok(&["rm", "-f", "busy", "idle"]);
    });
}

#[test]
fn logs_since_and_until_select_by_time() {
    let e = setup(false);
    let s = &e.s;
    s.ok(&["run", "--name", "talker", &e.bb, "sh", "-c", "echo one; echo two; sleep 1.2; echo three"]);
    let stamped = s.ok(&["logs", "-t", "talker"]);
    let times: Vec<&str> = stamped.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(times.len(), 3, "{stamped}");
    assert_eq!(s.ok(&["logs", "--since", times[2], "talker"]), "three\n");
    assert_eq!(s.ok(&["logs", "--until", times[2], "talker"]), "one\ntwo\n");
    assert_eq!(s.ok(&["logs", "--until", times[2], "--tail", "1", "talker"]), "two\n");
    assert_eq!(s.ok(&["logs", "--since", "1h", "talker"]), "one\ntwo\nthree\n");
    assert_eq!(s.ok(&["logs", "--until", "1h", "talker"]), "");
    let (_, err) = s.fails(&["logs", "--since", "yesterday", "talker"]);
    assert!(err.contains("invalid value for --since/--until"), "{err}");
}

#[test]
fn health_checks_run_and_show_in_ps_and_inspect() {
    both(|e, who| {
        let s = &e.s;
        s.ok(&[
            "run",
            "-d",
            "--name",
            "checked",
            "--health-cmd",
            "echo probing; test -e /tmp/ready",
            "--health-interval",
            "200ms",
            "--health-retries",
            "2",
            &e.bb,
            "sleep",
            "600",
        ]);
        let status = || s.ok(&["ps", "--format", "{{.Status}}", "--filter", "name=checked"]);
        assert!(status().contains("(health: starting)") || status().contains("(unhealthy)"), "{who}: {}", status());
        wait_until("unhealthy", READY, || status().trim_end().ends_with("(unhealthy)"));
        assert_eq!(s.ok(&["ps", "-q", "--filter", "health=unhealthy"]).lines().count(), 1, "{who}");
        s.ok(&["exec", "checked", "touch", "/tmp/ready"]);
        wait_until("healthy", READY, || status().trim_end().ends_with("(healthy)"));
        let health: serde_json::Value =
            serde_json::from_str(&s.ok(&["inspect", "-f", "{{json .State.Health}}", "checked"])).unwrap();
        assert_eq!(health["Status"], "healthy", "{who}: {health}");
        assert_eq!(health["FailingStreak"], 0, "{who}: {health}");
        let log = health["Log"].as_array().unwrap();
        assert!(!log.is_empty() && log.len() <= 5, "{who}: {health}");
        assert_eq!(log.last().unwrap()["Output"], "probing\n", "{who}: {health}");
        s.ok(&["rm", "-f", "checked"]);

        // The image's HEALTHCHECK, and --no-healthcheck turning it off.
        let ctx = s.base().join("hc-context");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), format!("FROM {}\nHEALTHCHECK --interval=200ms CMD true\n", e.bb))
            .unwrap();
        run_tool(std::process::Command::new("chmod").args(["-R", "a+rX"]).arg(&ctx));
        s.ok(&["build", "-q", "-t", "checked:1", ctx.to_str().unwrap()]);
        let check = s.ok(&["image", "inspect", "-f", "{{json .Config.Healthcheck}}", "checked:1"]);
        assert_eq!(check.trim(), r#"{"Interval":200000000,"Test":["CMD-SHELL","true"]}"#, "{who}: the flags are kept");
        s.ok(&["run", "-d", "--name", "from-image", "checked:1", "sleep", "600"]);
        wait_until("healthy from the image's check", READY, || {
            s.ok(&["ps", "--format", "{{.Status}}", "--filter", "name=from-image"]).trim_end().ends_with("(healthy)")
        });
        s.ok(&["run", "-d", "--name", "unchecked", "--no-healthcheck", "checked:1", "sleep", "600"]);
        std::thread::sleep(Duration::from_millis(500));
        let plain = s.ok(&["ps", "--format", "{{.Status}}", "--filter", "name=unchecked"]);
        assert!(!plain.contains("health"), "{who}: {plain}");
        assert_eq!(s.ok(&["inspect", "-f", "{{json .State.Health}}", "unchecked"]).trim(), "null", "{who}");
        s.ok(&["rm", "-f", "from-image", "unchecked"]);
    });
}

#[test]
fn restart_policies_restart_until_stopped() {
    both(|e, who| {
        let s = &e.s;
        s.ok(&["run", "-d", "--name", "failing", "--restart", "on-failure:2", &e.bb, "sh", "-c", "echo run; exit 3"]);
        wait_until("two restarts", READY, || {
            s.ok(&["inspect", "-f", "{{.RestartCount}} {{.State.Status}}", "failing"]).trim() == "2 exited"
                && s.run(&["inspect", "-f", "{{.State.Running}}", "failing"]).stdout.starts_with(b"false")
        });
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(s.ok(&["logs", "failing"]), "run\nrun\nrun\n", "{who}: three runs, then no more");
        let policy = s.ok(&["inspect", "-f", "{{json .HostConfig.RestartPolicy}}", "failing"]);
        assert_eq!(policy.trim(), r#"{"MaximumRetryCount":2,"Name":"on-failure"}"#, "{who}");

        s.ok(&["run", "-d", "--name", "looping", "--restart", "always", &e.bb, "sh", "-c", "echo again; sleep 0.2"]);
        wait_until("restarts", READY, || {
            s.ok(&["inspect", "-f", "{{.RestartCount}}", "looping"]).trim().parse::<u32>().unwrap_or(0) >= 2
        });
        wait_until("shown as restarting", READY, || {
            s.ok(&["ps", "-a", "--format", "{{.Status}}", "--filter", "name=looping"]).starts_with("Restarting (0) ")
                && s.ok(&["inspect", "-f", "{{.State.Restarting}} {{.State.Status}}", "looping"]).trim()
                    == "true restarting"
        });
        // Removing it between two runs takes -f, and ends its supervisor.
        wait_until("between two runs", READY, || status_of(s, "looping").starts_with("restarting"));
        let (code, err) = s.fails(&["rm", "looping"]);
        assert_eq!(code, 1, "{who}");
        assert!(err.contains("You cannot remove a restarting container"), "{who}: {err}");
        s.ok(&["stop", "-t", "1", "looping"]);
        let count = s.ok(&["inspect", "-f", "{{.RestartCount}}", "looping"]);
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(s.ok(&["inspect", "-f", "{{.RestartCount}}", "looping"]), count, "{who}: stopped means stopped");
        assert_eq!(status_of(s, "looping").split(' ').next(), Some("exited"), "{who}");

        let (code, err) = s.fails(&["run", "--rm", "--restart", "always", &e.bb, "true"]);
        assert_eq!(code, 125, "{who}");
        assert!(err.contains("Conflicting options: --restart and --rm"), "{who}: {err}");
        let (_, err) = s.fails(&["create", "--restart", "sometimes", &e.bb, "true"]);
        assert!(err.contains("invalid restart policy"), "{who}: {err}");
        s.ok(&["rm", "-f", "failing", "looping"]);
    });
}

#[test]
fn update_changes_a_running_containers_limits_and_restart_policy() {
    both(|e, who| {
        let s = &e.s;
        s.ok(&["run", "-d", "--name", "limited", &e.bb, "sleep", "600"]);
        if s.is_unprivileged() {
            let (code, err) = s.fails(&["update", "--memory", "32m", "limited"]);
            assert_eq!(code, 1, "{who}");
            assert!(err.contains("has no cgroup of its own to limit"), "{who}: {err}");
        } else {
            assert_eq!(
                s.ok(&["update", "--memory", "32m", "--cpus", "0.5", "--pids-limit", "50", "limited"]),
                "limited\n"
            );
            let mem = s.ok(&["stats", "--no-stream", "--format", "{{.MemUsage}}", "limited"]);
            assert!(mem.trim_end().ends_with(" / 32MiB"), "{who}: the cgroup has the new limit: {mem}");
            let host = s.ok(&[
                "inspect",
                "-f",
                "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}}",
                "limited",
            ]);
            assert_eq!(host.trim(), "33554432 500000000 50", "{who}: and the record, for later starts");
            // A fork bomb stops at the new pids limit.
            let out = s.run(&["exec", "limited", "sh", "-c", "for i in $(seq 80); do sleep 5 & done; wait"]);
            assert!(!out.status.success() || !out.stderr.is_empty(), "{who}: the pids limit holds");
        }
        s.ok(&["update", "--restart", "on-failure:3", "limited"]);
        let policy = s.ok(&["inspect", "-f", "{{json .HostConfig.RestartPolicy}}", "limited"]);
        assert_eq!(policy.trim(), r#"{"MaximumRetryCount":3,"Name":"on-failure"}"#, "{who}");
        // The running container's supervisor follows the new policy: it
        // restarts one that had none, and stops restarting on `no`.
        s.ok(&["run", "-d", "--name", "flaky", &e.bb, "sh", "-c", "sleep 1; exit 1"]);
        s.ok(&["update", "--restart", "always", "flaky"]);
        wait_until("restarted under the new policy", READY, || {
            s.ok(&["inspect", "-f", "{{.RestartCount}}", "flaky"]).trim() != "0"
        });
        s.ok(&["update", "--restart", "no", "flaky"]);
        let count = s.ok(&["inspect", "-f", "{{.RestartCount}}", "flaky"]);
        std::thread::sleep(Duration::from_millis(3500));
        assert_eq!(s.ok(&["inspect", "-f", "{{.RestartCount}}", "flaky"]), count, "{who}: no more restarts");
        assert_eq!(status_of(s, "flaky").split(' ').next(), Some("exited"), "{who}");
        s.ok(&["rm", "flaky"]);
        let (_, err) = s.fails(&["update", "limited"]);
        assert!(err.contains("you must provide one or more flags"), "{who}: {err}");
        s.ok(&["rm", "-f", "limited"]);
    });
}

#[test]
fn host_namespaces_and_added_groups() {
    both(|e, who| {
        let s = &e.s;
        let ns = |kind: &str| std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap().display().to_string();
        let script = "for n in ipc uts; do readlink /proc/self/ns/$n; done; hostname; id -G";
        let out = s.ok(&[
            "run",
            "--rm",
            "--ipc",
            "host",
            "--uts",
            "host",
            "--group-add",
            "10",
            "--group-add",
            "4242",
            &e.bb,
            "sh",
            "-c",
            script,
        ]);
        let host = nix::unistd::gethostname().unwrap().to_string_lossy().into_owned();
        assert_eq!(out, format!("{}\n{}\n{host}\n0 10 4242\n", ns("ipc"), ns("uts")), "{who}");
        let own = s.ok(&["run", "--rm", &e.bb, "sh", "-c", "readlink /proc/self/ns/ipc"]);
        assert_ne!(own.trim(), ns("ipc"), "{who}: by default a namespace of its own");
        if s.is_unprivileged() {
            let (_, err) = s.fails(&["run", "--rm", "--pid", "host", &e.bb, "true"]);
            assert!(err.contains("--pid host is not supported"), "{who}: {err}");
        } else {
            let out = s.ok(&["run", "--rm", "--pid", "host", &e.bb, "cat", "/proc/1/comm"]);
            assert_eq!(out, std::fs::read_to_string("/proc/1/comm").unwrap(), "{who}: the host's pid 1");
        }
        let (_, err) = s.fails(&["run", "--rm", "--uts", "container:other", &e.bb, "true"]);
        assert!(err.contains("invalid --uts"), "{who}: {err}");
        let (_, err) = s.fails(&["run", "--rm", "--group-add", "nosuch", &e.bb, "true"]);
        assert!(err.contains("Unable to find group nosuch"), "{who}: {err}");
    });
}

#[test]
fn device_flag_binds_a_host_device() {
    both(|e, who| {
        let s = &e.s;
        let out = s.ok(&[
            "run",
            "--rm",
            "--device",
            "/dev/null:/dev/extra-null",
            &e.bb,
            "sh",
            "-c",
            "stat -c '%t:%T' /dev/extra-null; echo x > /dev/extra-null && echo written",
        ]);
        assert_eq!(out, "1:3\nwritten\n", "{who}");
        for (spec, want) in [
            ("/etc/passwd", "is not a device node"),
            ("/dev/null:/dev/n:r", "cannot be enforced without a device cgroup"),
            ("relative", "invalid device specification"),
            ("/dev/null:/dev/n:rwx", "invalid device permissions"),
        ] {
            let (code, err) = s.fails(&["run", "--rm", "--device", spec, &e.bb, "true"]);
            assert_eq!(code, 125, "{who}: {spec}");
            assert!(err.contains(want), "{who}: {spec}: {err}");
        }
    });
}

#[test]
fn dns_servers_search_domains_options_and_extra_hosts() {
    let e = setup(false);
    let out = e.s.ok(&[
        "run",
        "--rm",
        "--dns",
        "10.0.0.1",
        "--dns-search",
        "example.test",
        "--dns-search",
        "corp.test",
        "--dns-option",
        "ndots:2",
        "--add-host",
        "db.test:10.0.0.9",
        &e.bb,
        "sh",
        "-c",
        "cat /etc/resolv.conf; grep db.test /etc/hosts",
    ]);
    assert_eq!(out, "nameserver 10.0.0.1\nsearch example.test corp.test\noptions ndots:2\n10.0.0.9\tdb.test\n");
}

#[test]
fn network_ls_and_inspect_show_the_builtin_networks() {
    let e = setup(false);
    let s = &e.s;
    let rows = parse_table(&s.ok(&["network", "ls"]));
    assert_eq!(rows[0], ["NETWORK ID", "NAME", "DRIVER", "SCOPE"]);
    let names: Vec<&str> = rows[1..].iter().map(|r| r[1].as_str()).collect();
    assert_eq!(names, ["bridge", "host", "none"]);
    s.ok(&["run", "-d", "--name", "member", &e.bb, "sleep", "600"]);
    let id = s.ok(&["inspect", "-f", "{{.Id}}", "member"]);
    let inspected = s.ok(&["network", "inspect", "bridge"]);
    assert!(inspected.contains(id.trim()), "the running container is on the bridge network: {inspected}");
    let (_, err) = s.fails(&["network", "connect", "mine", "member"]);
    assert!(err.contains("network mine not found"), "{err}");
    let (code, err) = s.fails(&["network", "inspect", "nosuch"]);
    assert_eq!(code, 1);
    assert!(err.contains("network nosuch not found"), "{err}");
    s.ok(&["rm", "-f", "member"]);
}

#[test]
fn network_container_shares_another_containers_network() {
    both(|e, who| {
        let s = &e.s;
        s.ok(&["run", "-d", "--name", "donor", &e.bb, "sleep", "600"]);
        let donor_id = s.ok(&["inspect", "-f", "{{.Id}}", "donor"]).trim().to_string();
        let in_donor = |cmd: &str| s.ok(&["exec", "donor", "sh", "-c", cmd]);
        let look = "readlink /proc/self/ns/net; hostname; cat /etc/hosts /etc/resolv.conf";
        let joined = s.ok(&["run", "--rm", "--network", "container:donor", &e.bb, "sh", "-c", look]);
        assert_eq!(joined, in_donor(look), "{who}: the network namespace, hostname and /etc files are the donor's");
        let own = s.ok(&["run", "--rm", &e.bb, "readlink", "/proc/self/ns/net"]);
        assert_ne!(own, in_donor("readlink /proc/self/ns/net"), "{who}: without the flag, a namespace of its own");

        // The donor's loopback is reachable (only the same namespace has it).
        s.ok(&["exec", "-d", "donor", "sh", "-c", "echo from-donor | nc -l -p 7000"]);
        let client = "for i in $(seq 100); do nc 127.0.0.1 7000 </dev/null && exit; sleep 0.1; done; exit 1";
        let got = s.ok(&["run", "--rm", "--net", &format!("container:{donor_id}"), &e.bb, "sh", "-c", client]);
        assert_eq!(got, "from-donor\n", "{who}: a client in the joined container reaches the donor's server");
        let mode = s.ok(&["create", "--name", "joined", "--network", "container:donor", &e.bb, "true"]);
        assert!(!mode.is_empty());
        let mode = s.ok(&["inspect", "-f", "{{.HostConfig.NetworkMode}} {{.Config.Hostname}}", "joined"]);
        assert_eq!(mode.trim(), format!("container:{donor_id} {}", &donor_id[..12]), "{who}");

        // Docker's checks: what would configure the shared network is refused;
        // the donor must exist, and run when the container starts.
        for (flags, message) in [
            (&["-p", "8080:80"][..], "conflicting options: port publishing and the container type network mode"),
            (&["--hostname", "x"][..], "conflicting options: hostname and the network mode"),
            (&["--dns", "10.0.0.1"][..], "conflicting options: dns and the network mode"),
            (&["--add-host", "a:10.0.0.1"][..], "conflicting options: custom host-to-IP mapping and the network mode"),
        ] {
            let mut args = vec!["run", "--rm", "--network", "container:donor"];
            args.extend_from_slice(flags);
            args.extend([e.bb.as_str(), "true"]);
            let (code, err) = s.fails(&args);
            assert_eq!(code, 125, "{who}: {flags:?}");
            assert_mentions(&err, &[message], who);
        }
        let (_, err) = s.fails(&["run", "--rm", "--network", "container:nosuch", &e.bb, "true"]);
        assert_mentions(&err, &["No such container: nosuch"], who);
        s.ok(&["stop", "-t", "1", "donor"]);
        let (_, err) = s.fails(&["start", "joined"]);
        assert_mentions(&err, &["cannot join network of a non running container"], who);
        s.ok(&["rm", "-f", "donor", "joined"]);
    });
}

#[test]
fn pid_container_shares_another_containers_processes() {
    both(|e, who| {
        let s = &e.s;
        s.ok(&["run", "-d", "--name", "donor", &e.bb, "sleep", "600"]);
        let ps = "echo self $$; ps -o pid,args | grep -v -e ' ps ' -e PID -e '{ps}'; true";
        let seen = s.ok(&["run", "--rm", "--pid", "container:donor", &e.bb, "sh", "-c", ps]);
        let lines: Vec<&str> = seen.lines().map(str::trim).collect();
        assert!(lines.contains(&"1 sleep 600"), "{who}: the donor's init is pid 1 here: {seen}");
        assert!(lines[0].starts_with("self ") && lines[0] != "self 1", "{who}: this container's is not pid 1: {seen}");
        s.ok(&["create", "--name", "sharer", "--pid", "container:donor", &e.bb, "true"]);
        let donor_id = s.ok(&["inspect", "-f", "{{.Id}}", "donor"]).trim().to_string();
        let mode = s.ok(&["inspect", "-f", "{{.HostConfig.PidMode}}", "sharer"]);
        assert_eq!(mode.trim(), format!("container:{donor_id}"), "{who}");
        let own = s.ok(&["run", "--rm", &e.bb, "sh", "-c", ps]);
        assert!(!own.contains("sleep 600"), "{who}: without the flag, a pid namespace of its own: {own}");
        let (_, err) = s.fails(&["run", "--rm", "--pid", "container:nosuch", &e.bb, "true"]);
        assert_mentions(&err, &["No such container: nosuch"], who);
        s.ok(&["run", "-d", "--name", "other", &e.bb, "sleep", "600"]);
        let both_flags = ["run", "--rm", "--pid", "container:donor", "--network", "container:other", &e.bb, "true"];
        if who.contains("strata-test") {
            // One user namespace can be joined, so one donor.
            let (_, err) = s.fails(&both_flags);
            assert_mentions(&err, &["give --network, --pid and --ipc the same container"], who);
            s.ok(&["network", "create", "n1"]);
            let (_, err) = s.fails(&["run", "--rm", "--network", "n1", "--pid", "container:donor", &e.bb, "true"]);
            assert_mentions(&err, &["cannot share another container's pid or IPC namespace"], who);
            s.ok(&["network", "rm", "n1"]);
        } else {
            s.ok(&both_flags);
        }
        s.ok(&["stop", "-t", "1", "donor"]);
        let (_, err) = s.fails(&["run", "--rm", "--pid", "container:donor", &e.bb, "true"]);
        assert_mentions(&err, &["cannot join PID namespace of a non running container"], who);
        s.ok(&["rm", "-f", "donor", "other", "sharer"]);
    });
}

#[test]
fn ipc_container_shares_another_containers_ipc_namespace_and_shm() {
    both(|e, who| {
        let s = &e.s;
        s.ok(&["run", "-d", "--name", "donor", &e.bb, "sleep", "600"]);
        let donor_ns = s.ok(&["exec", "donor", "readlink", "/proc/self/ns/ipc"]);
        // The same IPC namespace, and the same /dev/shm both ways.
        let script = "readlink /proc/self/ns/ipc; cat /dev/shm/from-donor; echo joiner > /dev/shm/from-joiner";
        s.ok(&["exec", "donor", "sh", "-c", "echo donor > /dev/shm/from-donor"]);
        let seen = s.ok(&["run", "--rm", "--ipc", "container:donor", &e.bb, "sh", "-c", script]);
        assert_eq!(seen, format!("{donor_ns}donor\n"), "{who}");
        assert_eq!(s.ok(&["exec", "donor", "cat", "/dev/shm/from-joiner"]), "joiner\n", "{who}");
        // Without the flag: a namespace and /dev/shm of its own.
        let own = s.ok(&["run", "--rm", &e.bb, "sh", "-c", "readlink /proc/self/ns/ipc; ls /dev/shm"]);
        assert_eq!(own.lines().count(), 1, "{who}: an empty /dev/shm: {own}");
        assert_ne!(own, donor_ns, "{who}");
        // (Docker's "shareable" is what every container is here.)
        s.ok(&["run", "--rm", "--ipc", "shareable", &e.bb, "true"]);
        s.ok(&["create", "--name", "sharer", "--ipc", "container:donor", &e.bb, "true"]);
        let donor_id = s.ok(&["inspect", "-f", "{{.Id}}", "donor"]).trim().to_string();
        let mode = s.ok(&["inspect", "-f", "{{.HostConfig.IpcMode}}", "sharer"]);
        assert_eq!(mode.trim(), format!("container:{donor_id}"), "{who}");
        // With --pid of the same container (one donor, as an ordinary user must have).
        let ps =
            s.ok(&["run", "--rm", "--ipc", "container:donor", "--pid", "container:donor", &e.bb, "ps", "-o", "args"]);
        assert!(ps.contains("sleep 600"), "{who}: {ps}");
        if who.contains("strata-test") {
            s.ok(&["run", "-d", "--name", "other", &e.bb, "sleep", "600"]);
            let (_, err) =
                s.fails(&["run", "--rm", "--ipc", "container:donor", "--pid", "container:other", &e.bb, "true"]);
            assert_mentions(&err, &["give --network, --pid and --ipc the same container"], who);
            s.ok(&["rm", "-f", "other"]);
        }
        let (_, err) = s.fails(&["run", "--rm", "--ipc", "container:nosuch", &e.bb, "true"]);
        assert_mentions(&err, &["No such container: nosuch"], who);
        s.ok(&["stop", "-t", "1", "donor"]);
        let (_, err) = s.fails(&["start", "sharer"]);
        assert_mentions(&err, &["cannot join IPC namespace of a non running container"], who);
        s.ok(&["rm", "-f", "donor", "sharer"]);
    });
}

#[test]
fn volumes_from_mounts_another_containers_volumes() {
    both(|e, who| {
        let s = &e.s;
        let host = host_dir(s, "shared");
        host_file(s, &host.join("h"), "on the host\n");
        let bind = format!("{}:/hostdata:ro", host.display());
        s.ok(&["create", "--name", "keeper", "-v", "named:/data", "-v", "/anon", "-v", &bind, "--tmpfs", "/scratch"]
            .into_iter()
            .chain([e.bb.as_str(), "true"])
            .collect::<Vec<_>>());
        s.ok(&["run", "--rm", "--volumes-from", "keeper", &e.bb, "sh", "-c", "echo n > /data/f; echo a > /anon/f"]);
        // Another container sees what the first wrote, and the bind in its mode.
        let out = s.ok(&[
            "run",
            "--rm",
            "--volumes-from",
            "keeper",
            &e.bb,
            "sh",
            "-c",
            "cat /data/f /anon/f /hostdata/h; touch /hostdata/x 2>/dev/null || echo ro; ls -d /scratch 2>/dev/null || echo no tmpfs",
        ]);
        assert_eq!(out, "n\na\non the host\nro\nno tmpfs\n", "{who}");
        // :ro makes all of them read-only; an explicit -v wins for its path.
        let out = s.ok(&[
            "run",
            "--rm",
            "--volumes-from",
            "keeper:ro",
            "-v",
            "other:/data",
            &e.bb,
            "sh",
            "-c",
            "touch /anon/g 2>/dev/null || echo ro; ls /data",
        ]);
        assert_eq!(out, "ro\n", "{who}: read-only, and /data is the volume named other (empty)");
        // rm -v of a container that got them removes none of them.
        s.ok(&["create", "--name", "borrower", "--volumes-from", "keeper", &e.bb, "true"]);
        let mounts = s.ok(&["inspect", "-f", "{{range .Mounts}}{{.Destination}} {{end}}", "borrower"]);
        assert_eq!(mounts.trim(), "/data /anon /hostdata", "{who}");
        s.ok(&["rm", "-v", "borrower"]);
        assert_eq!(s.ok(&["run", "--rm", "--volumes-from", "keeper", &e.bb, "cat", "/anon/f"]), "a\n", "{who}");
        let (_, err) = s.fails(&["run", "--rm", "--volumes-from", "nosuch", &e.bb, "true"]);
        assert_mentions(&err, &["No such container: nosuch"], who);
        let (_, err) = s.fails(&["run", "--rm", "--volumes-from", "keeper:rx", &e.bb, "true"]);
        assert_mentions(&err, &["invalid mode: rx"], who);
        s.ok(&["rm", "-v", "keeper"]);
        s.ok(&["volume", "rm", "named"]);
    });
}

#[test]
fn user_defined_networks_connect_their_containers_by_name() {
    both(|e, who| {
        let s = &e.s;
        let id = s.ok(&["network", "create", "n1"]);
        assert_eq!(id.trim().len(), 64, "{who}: create prints the id: {id}");
        let (_, err) = s.fails(&["network", "create", "n1"]);
        assert_mentions(&err, &["network with name n1 already exists"], who);
        s.ok(&["network", "create", "--subnet", "10.123.0.0/24", "n2"]);
        let names =
            parse_table(&s.ok(&["network", "ls"])).into_iter().skip(1).map(|r| r[1].clone()).collect::<Vec<_>>();
        assert_eq!(names, ["bridge", "host", "none", "n1", "n2"], "{who}");
        let ipam = s.ok(&["network", "inspect", "-f", "{{json .IPAM.Config}}", "n2"]);
        assert_eq!(ipam.trim(), r#"[{"Gateway":"10.123.0.1","Subnet":"10.123.0.0/24"}]"#, "{who}");

        // A server on n1, reached by name from another container on n1.
        let serve = "echo from-srv | nc -l -p 80; sleep 600";
        s.ok(&["run", "-d", "--name", "srv", "--network", "n1", "--network-alias", "web", &e.bb, "sh", "-c", serve]);
        let client = "for i in $(seq 100); do nc web 80 </dev/null && exit; sleep 0.1; done; exit 1";
        assert_eq!(s.ok(&["run", "--rm", "--network", "n1", &e.bb, "sh", "-c", client]), "from-srv\n", "{who}");
        // Not from another network, nor from the default one.
        for other in ["n2", "bridge"] {
            let out = s.run(&["run", "--rm", "--network", other, &e.bb, "sh", "-c", "nc -w 1 srv 80 </dev/null"]);
            assert!(!out.status.success(), "{who}: srv is not reachable from {other}");
        }
        // The network's name server (the bridge's address, listed first)
        // answers with the members' addresses by name and alias, and
        // refuses other names so that resolvers ask the next server.
        let ask = "head -1 /etc/resolv.conf; nslookup srv; nslookup web";
        let answers = s.ok(&["run", "--rm", "--network", "n1", &e.bb, "sh", "-c", ask]);
        let srv_ip = s.ok(&["inspect", "-f", "{{.NetworkSettings.Networks.n1.IPAddress}}", "srv"]);
        assert!(answers.starts_with("nameserver 10.89."), "{who}: {answers}");
        assert_eq!(answers.matches(&format!("Address: {}", srv_ip.trim())).count(), 2, "{who}: {answers}");
        let gateway = answers.lines().next().unwrap_or_default().trim_start_matches("nameserver ").to_string();
        let refused = s.run(&["run", "--rm", "--network", "n1", &e.bb, "nslookup", "no-such-member", &gateway]);
        assert!(String::from_utf8_lossy(&refused.stdout).contains("REFUSED"), "{who}: {}", show_output(&refused));
        // A container in srv's network namespace asks the same name server.
        let joined = s.ok(&["run", "--rm", "--network", "container:srv", &e.bb, "head", "-1", "/etc/resolv.conf"]);
        assert_eq!(joined.trim(), format!("nameserver {gateway}"), "{who}");
        let listed = s.ok(&["ps", "--filter", "network=n1", "--format", "{{.Names}} {{.Networks}}"]);
        assert_eq!(listed, "srv n1\n", "{who}: ps filters and shows by network");
        let ip = s.ok(&["inspect", "-f", "{{.NetworkSettings.Networks.n1.IPAddress}}", "srv"]);
        assert!(ip.trim().starts_with("10.89.") && ip.trim().ends_with(".2"), "{who}: {ip}");
        let members =
            s.ok(&["network", "inspect", "-f", "{{range .Containers}}{{.Name}} {{.IPv4Address}}{{end}}", "n1"]);
        assert_eq!(members.trim(), format!("srv {}/24", ip.trim()), "{who}");

        // A member restarted at its address keeps its MAC (02:42 and the
        // address), so a peer that talked to it reaches it again at once.
        let [a, b, c, d]: [u8; 4] = ip.trim().parse::<std::net::Ipv4Addr>().unwrap().octets();
        let mac = format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}");
        assert!(s.ok(&["exec", "srv", "ip", "link", "show", "eth1"]).contains(&mac), "{who}");
        s.ok(&["run", "-d", "--name", "peer", "--network", "n1", &e.bb, "sleep", "600"]);
        s.ok(&["exec", "peer", "ping", "-c", "1", "-W", "2", "srv"]);
        s.ok(&["restart", "-t", "0", "srv"]);
        assert_eq!(s.ok(&["inspect", "-f", "{{.NetworkSettings.Networks.n1.IPAddress}}", "srv"]), ip, "{who}");
        s.ok(&["exec", "peer", "ping", "-c", "1", "-W", "2", "srv"]);
        // A renamed member is known by its new name at once, and no longer by the old one.
        s.ok(&["rename", "peer", "peer2"]);
        let hosts = s.ok(&["exec", "srv", "cat", "/etc/hosts"]);
        assert!(hosts.contains("\tpeer2 ") && !hosts.contains("\tpeer "), "{who}: {hosts}");
        s.ok(&["rm", "-f", "peer2"]);

        // --ip: that address, once.
        s.ok(&["run", "-d", "--name", "fixed", "--network", "n2", "--ip", "10.123.0.50", &e.bb, "sleep", "600"]);
        let fixed = s.ok(&["inspect", "-f", "{{.NetworkSettings.Networks.n2.IPAddress}}", "fixed"]);
        assert_eq!(fixed.trim(), "10.123.0.50", "{who}");
        let (_, err) = s.fails(&["run", "--rm", "--network", "n2", "--ip", "10.123.0.50", &e.bb, "true"]);
        assert_mentions(&err, &["Address already in use"], who);
        let (_, err) = s.fails(&["run", "--rm", "--network", "n2", "--ip", "10.124.0.5", &e.bb, "true"]);
        assert_mentions(&err, &["no configured subnet or ip-range contain the IP address 10.124.0.5"], who);
        let (_, err) = s.fails(&["run", "--rm", "--ip", "10.123.0.9", &e.bb, "true"]);
        assert_mentions(&err, &["user specified IP address is supported on user defined networks only"], who);
        s.ok(&["rm", "-f", "fixed"]);
        // --gateway: the bridge's address; members get the others.
        s.ok(&["network", "create", "--subnet", "10.125.0.0/24", "--gateway", "10.125.0.254", "gw"]);
        let ipam = s.ok(&["network", "inspect", "-f", "{{json .IPAM.Config}}", "gw"]);
        assert_eq!(ipam.trim(), r#"[{"Gateway":"10.125.0.254","Subnet":"10.125.0.0/24"}]"#, "{who}");
        s.ok(&["run", "-d", "--name", "first", "--network", "gw", &e.bb, "sleep", "600"]);
        let first = s.ok(&["inspect", "-f", "{{.NetworkSettings.Networks.gw.IPAddress}}", "first"]);
        assert_eq!(first.trim(), "10.125.0.1", "{who}");
        let (_, err) = s.fails(&["run", "--rm", "--network", "gw", "--ip", "10.125.0.254", &e.bb, "true"]);
        assert_mentions(&err, &["no configured subnet or ip-range contain the IP address 10.125.0.254"], who);
        s.ok(&["rm", "-f", "first"]);
        s.ok(&["network", "rm", "gw"]);
        for (flags, message) in [
            (&["--gateway", "10.126.0.1"][..], "give --subnet with --gateway"),
            (&["--subnet", "10.126.0.0/24", "--gateway", "10.127.0.1"][..], "no matching subnet for gateway"),
        ] {
            let mut cmd = vec!["network", "create"];
            cmd.extend(flags);
            cmd.push("badgw");
            let (code, err) = s.fails(&cmd);
            assert_eq!(code, 1, "{who}: {err}");
            assert_mentions(&err, &[message], who);
        }

        // A later member is named in the running members' /etc/hosts, until it stops.
        s.ok(&["run", "-d", "--name", "late", "--network", "n1", &e.bb, "sleep", "600"]);
        assert!(s.ok(&["exec", "srv", "cat", "/etc/hosts"]).contains("\tlate "), "{who}: srv knows late");
        let hosts = s.ok(&["exec", "late", "cat", "/etc/hosts"]);
        assert!(hosts.contains("\tsrv ") && hosts.contains(" web\n"), "{who}: late knows srv: {hosts}");
        let (_, err) = s.fails(&["run", "--rm", "--network-alias", "x", &e.bb, "true"]);
        assert_mentions(&err, &["network-scoped alias is supported only for containers in user defined networks"], who);
        s.ok(&["rm", "-f", "late"]);
        wait_until("late leaves srv's /etc/hosts", std::time::Duration::from_secs(10), || {
            !s.ok(&["exec", "srv", "cat", "/etc/hosts"]).contains("\tlate ")
        });

        // --internal: members reach each other and nothing else (no default route, no eth0).
        s.ok(&["network", "create", "--internal", "inside"]);
        s.ok(&[
            "run",
            "-d",
            "--name",
            "isrv",
            "--network",
            "inside",
            &e.bb,
            "sh",
            "-c",
            "echo from-inside | nc -l -p 80; sleep 600",
        ]);
        let probe = "ip route; ip -o link | cut -d: -f2 | tr -d ' '; \
                     for i in $(seq 100); do nc isrv 80 </dev/null && exit; sleep 0.1; done; exit 1";
        let inside = s.ok(&["run", "--rm", "--network", "inside", &e.bb, "sh", "-c", probe]);
        assert!(!inside.contains("default") && !inside.contains("eth0"), "{who}: no way out: {inside}");
        assert!(inside.ends_with("from-inside\n"), "{who}: {inside}");
        assert_eq!(s.ok(&["network", "inspect", "-f", "{{.Internal}}", "inside"]).trim(), "true", "{who}");
        s.ok(&["rm", "-f", "isrv"]);
        s.ok(&["network", "rm", "inside"]);

        // In use, a network stays; unused, it goes.
        let (code, err) = s.fails(&["network", "rm", "n1"]);
        assert_eq!(code, 1, "{who}");
        assert_mentions(&err, &["has active endpoints"], who);
        let (_, err) = s.fails(&["run", "--rm", "--network", "nosuch", &e.bb, "true"]);
        assert_mentions(&err, &["network nosuch not found"], who);
        s.ok(&["rm", "-f", "srv"]);
        assert_eq!(s.ok(&["network", "rm", "n1"]), "n1\n", "{who}");
        let pruned = s.ok(&["network", "prune", "-f"]);
        assert_eq!(pruned, "Deleted Networks:\nn2\n", "{who}");
        assert_eq!(parse_table(&s.ok(&["network", "ls"])).len(), 4, "{who}: the built-in networks are left");
    });
}

#[test]
fn a_network_holder_leaves_when_idle_and_comes_back() {
    for unprivileged in [false, true] {
        let who = if unprivileged { "as strata-test" } else { "as root" };
        let mut e = setup(unprivileged);
        e.s.set_env("STRATA_NETWORK_IDLE", "2");
        let s = &e.s;
        s.ok(&["network", "create", "n1"]);
        let record = s.root().join("networks/n1/holder.json");
        assert!(!record.exists(), "{who}: no holder before a member");
        s.ok(&["run", "-d", "--name", "member", "--network", "n1", &e.bb, "sleep", "600"]);
        let holder: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        let pid = holder["pid"].as_i64().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(4));
        assert!(record.exists(), "{who}: the holder stays while a member runs");
        s.ok(&["rm", "-f", "member"]);
        wait_until("the idle holder to leave", std::time::Duration::from_secs(20), || {
            !record.exists() && !std::path::Path::new(&format!("/proc/{pid}/status")).exists()
        });
        // The next member starts a new one.
        let out =
            s.ok(&["run", "--rm", "--name", "again", "--network", "n1", &e.bb, "ip", "-4", "addr", "show", "eth1"]);
        assert!(out.contains("inet 10.89."), "{who}: {out}");
        s.ok(&["network", "rm", "n1"]);
    }
}

#[test]
fn network_connect_and_disconnect_move_a_container() {
    both(|e, who| {
        let s = &e.s;
        s.ok(&["network", "create", "n1"]);
        s.ok(&["run", "-d", "--name", "member", "--network", "n1", &e.bb, "sleep", "600"]);
        s.ok(&["run", "-d", "--name", "guest", &e.bb, "sleep", "600"]);
        let has_eth1 = |c: &str| s.run(&["exec", c, "ip", "link", "show", "eth1"]).status.success();
        if who.contains("strata-test") {
            // Its user namespace is its own: the move happens across a restart.
            let (code, err) = s.fails(&["network", "connect", "n1", "guest"]);
            assert_eq!(code, 1, "{who}");
            assert_mentions(&err, &["stop it, connect it, start it"], who);
            s.ok(&["stop", "-t", "1", "guest"]);
            s.ok(&["network", "connect", "--alias", "visitor", "n1", "guest"]);
            s.ok(&["start", "guest"]);
        } else {
            s.ok(&["network", "connect", "--alias", "visitor", "n1", "guest"]);
        }
        assert!(has_eth1("guest"), "{who}: guest is on n1");
        let hosts = s.ok(&["exec", "member", "cat", "/etc/hosts"]);
        assert!(hosts.contains("\tguest ") && hosts.contains(" visitor\n"), "{who}: member knows guest: {hosts}");
        assert!(s.ok(&["exec", "guest", "cat", "/etc/hosts"]).contains("\tmember "), "{who}: guest knows member");
        let mode = s.ok(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", "guest"]);
        assert_eq!(mode.trim(), "n1", "{who}");
        let (_, err) = s.fails(&["network", "connect", "n1", "guest"]);
        assert_mentions(&err, &["endpoint with name guest already exists in network n1"], who);

        if who.contains("strata-test") {
            s.ok(&["stop", "-t", "1", "guest"]);
            s.ok(&["network", "disconnect", "n1", "guest"]);
            s.ok(&["start", "guest"]);
        } else {
            s.ok(&["network", "disconnect", "n1", "guest"]);
        }
        assert!(!has_eth1("guest"), "{who}: guest has left n1");
        wait_until("guest leaves member's /etc/hosts", std::time::Duration::from_secs(10), || {
            !s.ok(&["exec", "member", "cat", "/etc/hosts"]).contains("\tguest ")
        });
        let mode = s.ok(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", "guest"]);
        assert_eq!(mode.trim(), "private", "{who}");
        let (code, err) = s.fails(&["network", "disconnect", "n1", "guest"]);
        assert_eq!(code, 1, "{who}");
        assert_mentions(&err, &["container guest is not connected to network n1"], who);
        s.ok(&["rm", "-f", "member", "guest"]);
        s.ok(&["network", "rm", "n1"]);
    });
}

#[test]
fn seccomp_filters_syscalls_by_default_and_as_profiles_say() {
    both(|e, who| {
        let s = &e.s;
        let probe = "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status | tr -s '\t' ' '; \
                     unshare -U true 2>/dev/null && echo unshare allowed || echo unshare refused";
        let run = |flags: &[&str]| {
            let mut args = vec!["run", "--rm"];
            args.extend_from_slice(flags);
            args.extend([e.bb.as_str(), "sh", "-c", probe]);
            s.ok(&args)
        };
        // Docker's default: a filter, no no_new_privs (set-id programs work),
        // and no new user namespace without CAP_SYS_ADMIN.
        assert_eq!(run(&[]), "NoNewPrivs: 0\nSeccomp: 2\nunshare refused\n", "{who}: the default profile");
        assert_eq!(run(&["--cap-add", "SYS_ADMIN"]), "NoNewPrivs: 0\nSeccomp: 2\nunshare allowed\n", "{who}");
        assert_eq!(
            run(&["--security-opt", "seccomp=unconfined"]),
            "NoNewPrivs: 0\nSeccomp: 0\nunshare allowed\n",
            "{who}"
        );
        assert_eq!(run(&["--privileged"]), "NoNewPrivs: 0\nSeccomp: 0\nunshare allowed\n", "{who}");
        let nnp = run(&["--security-opt", "no-new-privileges"]);
        assert_eq!(nnp, "NoNewPrivs: 1\nSeccomp: 2\nunshare refused\n", "{who}");
        // exec'd processes run under the container's filter.
        s.ok(&["run", "-d", "--name", "filtered", &e.bb, "sleep", "600"]);
        assert!(s.ok(&["exec", "filtered", "sh", "-c", probe]).ends_with("unshare refused\n"), "{who}: exec");
        s.ok(&["rm", "-f", "filtered"]);

        // A profile in Docker's format, read at create: kept if the file goes.
        let profile = s.base().join("profile.json");
        std::fs::write(
            &profile,
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
        )
        .unwrap();
        chown_to_user(s, &profile);
        let opt = format!("seccomp={}", profile.display());
        s.ok(&[
            "create",
            "--name",
            "custom",
            "--security-opt",
            &opt,
            &e.bb,
            "sh",
            "-c",
            "mkdir /x || echo refused; unshare -U true && echo unshare allowed",
        ]);
        std::fs::remove_file(&profile).unwrap();
        s.ok(&["start", "custom"]);
        assert_eq!(s.ok(&["wait", "custom"]).trim(), "0", "{who}");
        assert_eq!(s.ok(&["logs", "custom"]), "refused\nunshare allowed\n", "{who}: only what the profile refuses");
        s.ok(&["rm", "custom"]);
        let (_, err) = s.fails(&["run", "--rm", "--security-opt", &opt, &e.bb, "true"]);
        assert_mentions(&err, &["opening seccomp profile"], who);
        std::fs::write(&profile, "{\"defaultAction\": \"SCMP_ACT_NOTIFY\"}").unwrap();
        chown_to_user(s, &profile);
        let (_, err) = s.fails(&["run", "--rm", "--security-opt", &opt, &e.bb, "true"]);
        assert_mentions(&err, &["loading seccomp profile", "not supported"], who);
    });
}

#[test]
fn oom_score_adj_and_domainname() {
    both(|e, who| {
        let s = &e.s;
        // (Raising the score needs no privilege; lowering it needs CAP_SYS_RESOURCE.)
        let flags = ["--oom-score-adj", "500", "--domainname", "example.test"];
        let mut args = vec!["run", "-d", "--name", "tuned"];
        args.extend(flags);
        args.extend([e.bb.as_str(), "sleep", "600"]);
        s.ok(&args);
        let seen = s.ok(&[
            "exec",
            "tuned",
            "sh",
            "-c",
            "cat /proc/1/oom_score_adj /proc/self/oom_score_adj /proc/sys/kernel/domainname",
        ]);
        assert_eq!(seen, "500\n500\nexample.test\n", "{who}: the container and its exec'd processes");
        let inspected = s.ok(&["inspect", "-f", "{{.HostConfig.OomScoreAdj}} {{.Config.Domainname}}", "tuned"]);
        assert_eq!(inspected.trim(), "500 example.test", "{who}");
        s.ok(&["rm", "-f", "tuned"]);
        let (code, err) = s.fails(&["run", "--rm", "--oom-score-adj", "1001", &e.bb, "true"]);
        assert_eq!(code, 125, "{who}");
        assert_mentions(&err, &["Invalid value 1001, range for oom score adj is [-1000, 1000]"], who);
    });
}

#[test]
fn log_rotation_and_the_none_driver() {
    both(|e, who| {
        let s = &e.s;
        let numbered =
            |n: u32, pause: &str| format!("i=0; while [ $i -lt {n} ]; do echo line $i; i=$((i+1)); {pause} done");
        // Rotated at 1 KiB into 2 files: the newest lines survive, in order.
        s.ok(&[
            "run",
            "--name",
            "small",
            "--log-opt",
            "max-size=1k",
            "--log-opt",
            "max-file=2",
            &e.bb,
            "sh",
            "-c",
            &numbered(100, ""),
        ]);
        let kept: Vec<u32> =
            s.ok(&["logs", "small"]).lines().map(|l| l.trim_start_matches("line ").parse().unwrap()).collect();
        assert!(kept.len() < 100 && kept.len() > 10, "{who}: {} lines kept", kept.len());
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1) && kept.last() == Some(&99), "{who}: {kept:?}");
        let dir = s.root().join("containers").join(s.ok(&["inspect", "-f", "{{.Id}}", "small"]).trim());
        assert!(dir.join("ctr.log.1").exists() && !dir.join("ctr.log.2").exists(), "{who}: two files in all");
        assert_eq!(s.ok(&["logs", "--tail", "2", "small"]), "line 98\nline 99\n", "{who}");
        let config = s.ok(&["inspect", "-f", "{{json .HostConfig.LogConfig}}", "small"]);
        assert_eq!(config.trim(), r#"{"Config":{"max-file":"2","max-size":"1k"},"Type":"json-file"}"#, "{who}");
        s.ok(&["rm", "small"]);

        // A follower goes on across rotations, missing and repeating nothing.
        s.ok(&[
            "run",
            "-d",
            "--name",
            "busy",
            "--log-opt",
            "max-size=1k",
            "--log-opt",
            "max-file=50",
            &e.bb,
            "sh",
            "-c",
            &numbered(300, "usleep 5000;"),
        ]);
        let followed: Vec<u32> =
            s.ok(&["logs", "-f", "busy"]).lines().map(|l| l.trim_start_matches("line ").parse().unwrap()).collect();
        assert_eq!(followed, (0..300).collect::<Vec<_>>(), "{who}: every line once, in order");
        s.ok(&["rm", "busy"]);

        s.ok(&["run", "--name", "quiet", "--log-driver", "none", &e.bb, "echo", "not kept"]);
        let (code, err) = s.fails(&["logs", "quiet"]);
        assert_eq!(code, 1, "{who}");
        assert_mentions(&err, &["configured logging driver does not support reading"], who);
        s.ok(&["rm", "quiet"]);
        for (flags, message) in [
            (&["--log-opt", "max-file=3"][..], "max-file cannot be set without max-size"),
            (&["--log-driver", "syslog"][..], "logging driver \"syslog\" is not supported"),
            (&["--log-opt", "max-size=0"][..], "must be more than 0"),
        ] {
            let mut args = vec!["run", "--rm"];
            args.extend_from_slice(flags);
            args.extend([e.bb.as_str(), "true"]);
            let (_, err) = s.fails(&args);
            assert_mentions(&err, &[message], who);
        }
    });
}

#[test]
fn events_record_what_happened_and_stream_what_happens() {
    both(|e, who| {
        let s = &e.s;
        // (--since is in whole seconds: the setup's pull stays before it.)
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let start = chrono_now_secs();
        let out = s.run(&["run", "--name", "evented", "-v", "evvol:/data", &e.bb, "sh", "-c", "exit 3"]);
        assert_eq!(out.status.code(), Some(3), "{who}");
        s.ok(&["tag", &e.bb, "evtag:1"]);
        s.ok(&["rm", "-v", "evented"]);
        s.ok(&["volume", "rm", "evvol"]);
        s.ok(&["rmi", "evtag:1"]);
        std::thread::sleep(std::time::Duration::from_millis(1100)); // --until is in whole seconds
        let until = chrono_now_secs().to_string();
        let since = start.to_string();
        let format = "{{.Type}} {{.Action}} {{.Actor.ID}}";
        let all = s.ok(&["events", "--since", &since, "--until", &until, "--format", format]);
        let all: Vec<String> = all.lines().map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" ")).collect();
        assert_eq!(
            all,
            [
                "volume create",
                "container create",
                "container start",
                "container die",
                "image tag",
                "container destroy",
                "volume destroy",
                "image untag"
            ],
            "{who}"
        );
        let names = s.ok(&[
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--filter",
            "type=container",
            "--format",
            "{{.Actor.Attributes.name}}",
        ]);
        assert!(names.lines().all(|n| n == "evented"), "{who}: {names}");
        let died = s.ok(&[
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--filter",
            "event=die",
            "--filter",
            "container=evented",
            "--format",
            "{{.Actor.Attributes.exitCode}}",
        ]);
        assert_eq!(died, "3\n", "{who}");
        let plain = s.ok(&["events", "--since", &since, "--until", &until, "--filter", "type=volume"]);
        assert!(plain.lines().all(|l| l.contains(" volume ") && l.ends_with("(driver=local)")), "{who}: {plain}");

        // Docker's other fields, and its JSON.
        let fields = "{{.Status}}|{{.ID}}|{{.From}}|{{.Scope}}|{{.Time}}|{{.TimeNano}}";
        let died = s.ok(&["events", "--since", &since, "--until", &until, "--filter", "event=die", "--format", fields]);
        let f: Vec<&str> = died.trim().split('|').collect();
        assert_eq!(&f[..4], ["die", f[1], e.bb.as_str(), "local"], "{who}: {died}");
        assert_eq!(f[1].len(), 64, "{who}: {died}");
        let (secs, nanos): (u64, u64) = (f[4].parse().unwrap(), f[5].parse().unwrap());
        assert!(secs >= start && nanos / 1_000_000_000 == secs, "{who}: {died}");
        let json = s.ok(&["events", "--since", &since, "--until", &until, "--filter", "event=die", "--format", "json"]);
        let json: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(
            (json["status"].as_str(), json["Action"].as_str(), json["scope"].as_str()),
            (Some("die"), Some("die"), Some("local"))
        );
        // Docker's shorter time forms.
        let day = {
            // Today in UTC, as YYYY-MM-DDZ (civil date from the Unix day).
            let days = (chrono_now_secs() / 86_400) as i64;
            let (z, era) = (days + 719_468, (days + 719_468).div_euclid(146_097));
            let doe = z - era * 146_097;
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let d = doy - (153 * mp + 2) / 5 + 1;
            let m = if mp < 10 { mp + 3 } else { mp - 9 };
            let y = yoe + era * 400 + i64::from(m <= 2);
            format!("{y:04}-{m:02}-{d:02}Z")
        };
        s.ok(&["events", "--since", &day, "--until", "0s"]);

        // exec, commit and restart.
        s.ok(&["run", "-d", "--name", "execed", &e.bb, "sleep", "600"]);
        s.ok(&["exec", "execed", "true"]);
        s.ok(&["commit", "execed", "evcommit:1"]);
        s.ok(&["restart", "-t", "0", "execed"]);
        s.ok(&["rm", "-f", "execed"]);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let until = chrono_now_secs().to_string();
        let actions = s.ok(&[
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--filter",
            "container=execed",
            "--format",
            "{{.Action}}",
        ]);
        let actions: Vec<&str> = actions.lines().collect();
        assert_eq!(
            actions,
            [
                "create",
                "start",
                "exec_start: true",
                "exec_die",
                "commit",
                "kill",
                "kill",
                "die",
                "stop",
                "start",
                "restart",
                "kill",
                "die",
                "destroy"
            ],
            "{who}"
        );

        // Streaming: only what happens from now on.
        let mut child = s.spawn(&["events", "--filter", "event=start", "--format", "{{.Actor.Attributes.name}}"]);
        std::thread::sleep(std::time::Duration::from_millis(500));
        s.ok(&["run", "--rm", "--name", "later", &e.bb, "true"]);
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(line, "later\n", "{who}: the stream starts now");
    });
}

fn chrono_now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn exec_reads_env_files_and_flags() {
    let e = setup(false);
    let s = &e.s;
    s.ok(&["run", "-d", "--name", "envy", "-e", "FROM_RUN=1", &e.bb, "sleep", "600"]);
    let file = s.base().join("exec.env");
    std::fs::write(&file, "# comment\nA=from-file\nB=from-file\n").unwrap();
    let out = s.ok(&[
        "exec",
        "--env-file",
        file.to_str().unwrap(),
        "-e",
        "B=from-flag",
        "envy",
        "sh",
        "-c",
        "echo $A $B $FROM_RUN",
    ]);
    assert_eq!(out, "from-file from-flag 1\n");
    // A name with white space (a shell's `export`) is refused, as Docker refuses it.
    let bad = s.base().join("bad.env");
    std::fs::write(&bad, "A=1\nexport C=2\n").unwrap();
    let (code, err) = s.fails(&["exec", "--env-file", bad.to_str().unwrap(), "envy", "true"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("variable 'export C' contains whitespaces"), "{err}");
    let err = run_refused(s, &e.bb, &["--env-file", bad.to_str().unwrap()]);
    assert!(err.contains("variable 'export C' contains whitespaces"), "{err}");
    s.ok(&["rm", "-f", "envy"]);
}

#[test]
fn sysctls_set_the_containers_own_namespaces() {
    both(|e, who| {
        let s = &e.s;
        let host = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
        let out = s.ok(&[
            "run",
            "--rm",
            "--sysctl",
            "net.ipv4.ip_unprivileged_port_start=80",
            "--sysctl",
            "kernel.shmmax=1234567",
            &e.bb,
            "sh",
            "-c",
            "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shmmax",
        ]);
        assert_eq!(out, "80\n1234567\n", "{who}");
        assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap(), host, "{who}");
        for (args, want) in [
            (vec!["--sysctl", "kernel.hostname=x"], "is not namespaced"),
            (vec!["--network", "host", "--sysctl", "net.ipv4.ip_forward=1"], "not allowed with --network host"),
            (vec!["--ipc", "host", "--sysctl", "kernel.shmmax=1"], "not allowed with --ipc host"),
            (vec!["--sysctl", "net.ipv4.ip_forward"], "KEY=VALUE"),
        ] {
            let err = run_refused(s, &e.bb, &args);
            assert!(err.contains(want), "{who}: {args:?}: {err}");
        }
    });
}

/// Root inside an environment whose /sys/fs/cgroup is read-only (another
/// container, say): containers without limits still run; limits say why
/// they cannot.
#[test]
fn without_a_writable_cgroup_tree_only_limits_fail() {
    let e = setup(false);
    let bin = strata_e2e::paths::strata_bin();
    let script = format!(
        "for m in $(awk '$2 ~ \"^/sys/fs/cgroup\" {{print $2}}' /proc/mounts); do mount -o remount,bind,ro $m; done; \
         {bin} run --rm {bb} echo ran; {bin} run --rm --memory 32m {bb} true 2>&1; echo status $?",
        bin = bin.display(),
        bb = e.bb
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("STRATA_ROOT", e.s.root())
        .env("HOME", e.s.home())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ran\n"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Read-only file system") && text.contains("status 125\n"), "{text}");
}

#[test]
fn cpuset_cpus_pins_a_container_and_update_moves_it() {
    both(|e, who| {
        let s = &e.s;
        let allowed = "grep -e Cpus_allowed_list -e Mems_allowed_list /proc/self/status | cut -f2";
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
        let last = online.trim().rsplit(['-', ',']).next().unwrap().to_string();
        let limited = s.run(&["run", "--rm", "--cpuset-cpus", &last, "--cpuset-mems", "0", &e.bb, "sh", "-c", allowed]);
        if s.is_unprivileged() && !limited.status.success() {
            // (Without a delegated cgroup v2 subtree, as on cgroup v1 hosts.)
            let err = String::from_utf8_lossy(&limited.stderr);
            assert_mentions(&err, &["--cpuset-cpus", "cgroup"], who);
        } else {
            assert_eq!(String::from_utf8_lossy(&limited.stdout), format!("{last}\n0\n"), "{who}");
            s.ok(&["run", "-d", "--name", "pinned", &e.bb, "sleep", "600"]);
            let before = s.ok(&["exec", "pinned", "sh", "-c", allowed]);
            assert_eq!(before.lines().next(), Some(online.trim()), "{who}: every CPU by default");
            s.ok(&["update", "--cpuset-cpus", "0", "pinned"]);
            let after = s.ok(&["exec", "pinned", "grep", "Cpus_allowed_list", "/proc/1/status"]);
            assert!(after.trim_end().ends_with("\t0"), "{who}: the running init is moved: {after}");
            let host = s.ok(&["inspect", "-f", "{{.HostConfig.CpusetCpus}}", "pinned"]);
            assert_eq!(host.trim(), "0", "{who}: and the record, for later starts");
            s.ok(&["restart", "-t", "1", "pinned"]);
            let again = s.ok(&["exec", "pinned", "grep", "Cpus_allowed_list", "/proc/1/status"]);
            assert!(again.trim_end().ends_with("\t0"), "{who}: kept across a restart: {again}");
            s.ok(&["rm", "-f", "pinned"]);
        }
        let (code, err) = s.fails(&["run", "--rm", "--cpuset-cpus", "0-4096", &e.bb, "true"]);
        assert_eq!(code, 125, "{who}");
        assert_mentions(&err, &["Requested CPUs are not available - requested 0-4096"], who);
        let (code, err) = s.fails(&["run", "--rm", "--cpuset-cpus", "1-x", &e.bb, "true"]);
        assert_eq!(code, 125, "{who}");
        assert_mentions(&err, &["Invalid value 1-x for cpuset cpus"], who);
    });
}

#[test]
fn cpu_shares_and_memory_swap_reach_the_cgroup() {
    let e = setup(false);
    let s = &e.s;
    s.ok(&[
        "run",
        "-d",
        "--name",
        "weighted",
        "--memory",
        "32m",
        "--memory-swap",
        "64m",
        "--cpu-shares",
        "512",
        &e.bb,
        "sleep",
        "600",
    ]);
    let id = s.ok(&["inspect", "-f", "{{.Id}}", "weighted"]).trim().to_string();
    let cgroup_file = |controller: &str, v1: &str| {
        let v1_path = format!("/sys/fs/cgroup/{controller}/strata/{id}/{v1}");
        std::fs::read_to_string(&v1_path).ok().map(|t| t.trim().to_string())
    };
    // (This host's cgroup v1 is checked directly; on v2 inspect tells.)
    if let Some(shares) = cgroup_file("cpu", "cpu.shares") {
        assert_eq!(shares, "512");
        assert_eq!(cgroup_file("memory", "memory.memsw.limit_in_bytes").as_deref(), Some("67108864"));
    }
    s.ok(&["update", "--cpu-shares", "256", "--memory", "48m", "--memory-swap", "96m", "weighted"]);
    if let Some(shares) = cgroup_file("cpu", "cpu.shares") {
        assert_eq!(shares, "256");
        assert_eq!(cgroup_file("memory", "memory.memsw.limit_in_bytes").as_deref(), Some("100663296"));
    }
    let host = s.ok(&["inspect", "-f", "{{.HostConfig.CpuShares}} {{.HostConfig.MemorySwap}}", "weighted"]);
    assert_eq!(host.trim(), "256 100663296");
    let (_, err) = s.fails(&["run", "--rm", "--memory-swap", "64m", &e.bb, "true"]);
    assert!(err.contains("always set the memory limit"), "{err}");
    let (_, err) = s.fails(&["run", "--rm", "--memory", "64m", "--memory-swap", "32m", &e.bb, "true"]);
    assert!(err.contains("should be larger than memory limit"), "{err}");
    s.ok(&["rm", "-f", "weighted"]);
}

/// The value of a limit file of root's container `id`: the v1 hierarchy of
/// `controller`, or the unified one (`v2_file`).
fn cgroup_value(id: &str, controller: &str, v1_file: &str, v2_file: &str) -> String {
    let v1 = format!("/sys/fs/cgroup/{controller}/strata/{id}/{v1_file}");
    let v2 = format!("/sys/fs/cgroup/strata/{id}/{v2_file}");
    std::fs::read_to_string(&v1)
        .or_else(|_| std::fs::read_to_string(&v2))
        .unwrap_or_else(|e| panic!("neither {v1} nor {v2}: {e}"))
        .trim()
        .to_string()
}

/// A loop device over an 8 MiB file (kept while the device is there),
/// detached when dropped.
struct LoopDevice(String, #[allow(dead_code)] tempfile::NamedTempFile);

impl LoopDevice {
    fn new() -> LoopDevice {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        file.as_file().set_len(8 << 20).expect("size the backing file");
        let dev = run_tool(std::process::Command::new("losetup").args(["-f", "--show"]).arg(file.path()));
        LoopDevice(dev.trim().to_string(), file)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn cpu_quota_memory_reservation_and_block_io_limits_reach_the_cgroup() {
    let e = setup(false);
    let s = &e.s;
    let dev = LoopDevice::new();
    let d = dev.0.as_str();
    s.ok(&[
        "run",
        "-d",
        "--name",
        "limited",
        "--cpu-period",
        "50000",
        "--cpu-quota",
        "25000",
        "--memory",
        "64m",
        "--memory-reservation",
        "32m",
        "--device",
        d,
        "--device-read-bps",
        &format!("{d}:1mb"),
        "--device-write-iops",
        &format!("{d}:20"),
        &e.bb,
        "sleep",
        "600",
    ]);
    let id = s.ok(&["inspect", "-f", "{{.Id}}", "limited"]).trim().to_string();
    let v2 = std::path::Path::new(&format!("/sys/fs/cgroup/strata/{id}/cgroup.controllers")).exists();
    let cpu = || {
        if v2 {
            cgroup_value(&id, "cpu", "", "cpu.max")
        } else {
            format!(
                "{} {}",
                cgroup_value(&id, "cpu", "cpu.cfs_quota_us", ""),
                cgroup_value(&id, "cpu", "cpu.cfs_period_us", "")
            )
        }
    };
    assert_eq!(cpu(), "25000 50000");
    assert_eq!(cgroup_value(&id, "memory", "memory.soft_limit_in_bytes", "memory.low"), (32u64 << 20).to_string());
    let rdev = std::fs::metadata(d).map(|m| std::os::unix::fs::MetadataExt::rdev(&m)).unwrap();
    let numbers = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    if v2 {
        let io_max = cgroup_value(&id, "blkio", "", "io.max");
        assert!(io_max.contains(&format!("{numbers} rbps=1048576")) && io_max.contains("wiops=20"), "{io_max}");
    } else {
        let read = cgroup_value(&id, "blkio", "blkio.throttle.read_bps_device", "");
        assert_eq!(read, format!("{numbers} 1048576"));
        assert_eq!(cgroup_value(&id, "blkio", "blkio.throttle.write_iops_device", ""), format!("{numbers} 20"));
    }
    // The kernel holds the container to them: 2 MiB read at 1 MiB/s, 40
    // writes at 20 a second (each takes at least a second beyond the first burst).
    let timed = |cmd: &str| {
        let start = std::time::Instant::now();
        s.ok(&["exec", "limited", "sh", "-c", cmd]);
        start.elapsed()
    };
    let read = timed(&format!("dd if={d} of=/dev/null bs=64k count=32 iflag=direct"));
    assert!(read >= Duration::from_millis(900), "2 MiB at 1 MiB/s took {read:?}");
    let write = timed(&format!("dd if=/dev/zero of={d} bs=4k count=40 oflag=direct"));
    assert!(write >= Duration::from_millis(900), "40 writes at 20/s took {write:?}");

    let host = s.ok(&[
        "inspect", "-f",
        "{{.HostConfig.CpuPeriod}} {{.HostConfig.CpuQuota}} {{.HostConfig.MemoryReservation}} {{json .HostConfig.BlkioDeviceReadBps}}",
        "limited",
    ]);
    assert_eq!(host.trim(), format!("50000 25000 33554432 [{{\"Path\":\"{d}\",\"Rate\":1048576}}]"));

    // update: a quota alone keeps the period, a period alone the quota.
    s.ok(&["update", "--cpu-quota", "-1", "limited"]);
    assert_eq!(cpu(), if v2 { "max 50000" } else { "-1 50000" });
    s.ok(&["update", "--cpu-quota", "30000", "limited"]);
    s.ok(&["update", "--cpu-period", "60000", "limited"]);
    assert_eq!(cpu(), "30000 60000");
    s.ok(&["update", "--memory-reservation", "48m", "limited"]);
    assert_eq!(cgroup_value(&id, "memory", "memory.soft_limit_in_bytes", "memory.low"), (48u64 << 20).to_string());
    let host = s.ok(&[
        "inspect",
        "-f",
        "{{.HostConfig.CpuPeriod}} {{.HostConfig.CpuQuota}} {{.HostConfig.Memory}}",
        "limited",
    ]);
    assert_eq!(host.trim(), "60000 30000 67108864", "update keeps what it was not given");
    // Checked against what the container has.
    let (_, err) = s.fails(&["update", "--memory-reservation", "128m", "limited"]);
    assert!(err.contains("Minimum memory limit can not be less than memory reservation limit"), "{err}");
    let (_, err) = s.fails(&["update", "--cpus", "1", "limited"]);
    assert!(err.contains("Conflicting options: Nano CPUs and CPU Period cannot both be set"), "{err}");
    s.ok(&["restart", "-t", "1", "limited"]);
    assert_eq!(cpu(), "30000 60000", "kept across a restart");
    s.ok(&["rm", "-f", "limited"]);

    // --blkio-weight: written where the kernel weighs block I/O, otherwise
    // dropped with Docker's warning.
    let out = s.run(&["run", "-d", "--name", "weighed", "--blkio-weight", "300", &e.bb, "sleep", "600"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    let weight = s.ok(&["inspect", "-f", "{{.HostConfig.BlkioWeight}}", "weighed"]);
    if err.contains("Your kernel does not support Block I/O weight") {
        assert_eq!(weight.trim(), "0");
    } else {
        assert_eq!(weight.trim(), "300", "{err}");
        let id = s.ok(&["inspect", "-f", "{{.Id}}", "weighed"]).trim().to_string();
        let v1 = ["blkio.weight", "blkio.bfq.weight"]
            .iter()
            .find_map(|f| std::fs::read_to_string(format!("/sys/fs/cgroup/blkio/strata/{id}/{f}")).ok());
        let v2 = ["io.bfq.weight", "io.weight"]
            .iter()
            .find_map(|f| std::fs::read_to_string(format!("/sys/fs/cgroup/strata/{id}/{f}")).ok());
        let written = v1.or(v2).expect("a weight file");
        assert!(written.contains("300") || written.contains("2929"), "{written}");
    }
    s.ok(&["rm", "-f", "weighed"]);

    for (args, message) in [
        (
            vec!["--cpus", "1", "--cpu-period", "50000"],
            "Conflicting options: Nano CPUs and CPU Period cannot both be set",
        ),
        (vec!["--cpu-quota", "500"], "CPU cfs quota can not be less than 1ms"),
        (vec!["--cpu-period", "2000000"], "CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s"),
        (vec!["--memory-reservation", "1m"], "Minimum memory reservation allowed is 6MB"),
        (vec!["--blkio-weight", "5"], "Range of blkio weight is from 10 to 1000"),
        (vec!["--device-read-bps", "/dev/null:1mb"], "/dev/null is not a block device"),
        (vec!["--device-write-bps", "sda:1mb"], "is not an absolute path"),
        (vec!["--device-read-iops", &format!("{d}:lots")], "invalid rate for device"),
    ] {
        let err = run_refused(s, &e.bb, &args);
        assert!(err.contains(message), "{args:?}: {err}");
    }
}

#[test]
fn containers_see_their_own_cgroups_read_only_and_cgroupns_private_gives_them_a_namespace() {
    both(|e, who| {
        let s = &e.s;
        let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        // Every cgroup mount in the container is read-only, and there is one.
        let mounts = s.ok(&["run", "--rm", &e.bb, "grep", " /sys/fs/cgroup", "/proc/mounts"]);
        assert!(!mounts.is_empty(), "{who}");
        for line in mounts.lines() {
            assert!(line.split(' ').nth(3).is_some_and(|o| o.starts_with("ro")), "{who}: {line}");
        }
        let out = s.run(&[
            "run",
            "--rm",
            &e.bb,
            "sh",
            "-c",
            "echo 1 > /sys/fs/cgroup/pids/pids.max || echo 1 > /sys/fs/cgroup/pids.max",
        ]);
        assert!(!out.status.success(), "{who}: the cgroup files can be written");
        if !s.is_unprivileged() {
            // The limits are the container's own (what the JVM and Go's
            // runtime read to size themselves).
            let read = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; \
                        cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max";
            let out = s.ok(&["run", "--rm", "-m", "64m", "--cpus", "0.5", &e.bb, "sh", "-c", read]);
            assert_eq!(out, "67108864\n50000\n", "{who}");
        }

        // --cgroupns: Docker's default is private on cgroup v2, host on v1.
        let host_ns = std::fs::read_link("/proc/self/ns/cgroup").unwrap().to_string_lossy().into_owned();
        let ns = |mode: &str| s.ok(&["run", "--rm", "--cgroupns", mode, &e.bb, "readlink", "/proc/self/ns/cgroup"]);
        assert_eq!(ns("host").trim(), host_ns, "{who}");
        assert_ne!(ns("private").trim(), host_ns, "{who}");
        s.ok(&["run", "-d", "--name", "cgns", "--cgroupns", "private", &e.bb, "sleep", "600"]);
        let inside = s.ok(&["exec", "cgns", "cat", "/proc/self/cgroup"]);
        assert!(inside.lines().all(|l| l.ends_with(":/")), "{who}: paths from the namespace's root: {inside}");
        assert_eq!(s.ok(&["inspect", "-f", "{{.HostConfig.CgroupnsMode}}", "cgns"]).trim(), "private", "{who}");
        s.ok(&["rm", "-f", "cgns"]);
        s.ok(&["create", "--name", "default-ns", &e.bb]);
        let mode = s.ok(&["inspect", "-f", "{{.HostConfig.CgroupnsMode}}", "default-ns"]);
        assert_eq!(mode.trim(), if v2 { "private" } else { "host" }, "{who}");
        s.ok(&["rm", "default-ns"]);
        let (code, err) = s.fails(&["run", "--rm", "--cgroupns", "shared", &e.bb, "true"]);
        assert_eq!(code, 125, "{who}");
        assert_mentions(&err, &["--cgroupns", "shared"], who);

        // -q: the pull of a missing image says nothing.
        let out = s.run(&["run", "-q", "--rm", &e.full, "echo", "hi"]);
        assert!(out.status.success(), "{who}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout_of(&out), "hi\n", "{who}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("Unable to find image") && !err.contains("Pull"), "{who}: {err}");
    });
}

#[test]
fn oom_kill_disable_and_memory_swappiness_on_cgroup_v1() {
    let e = setup(false);
    let s = &e.s;
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory/memory.swappiness").exists();
    let read =
        "grep oom_kill_disable /sys/fs/cgroup/memory/memory.oom_control; cat /sys/fs/cgroup/memory/memory.swappiness";
    let out =
        s.run(&["run", "--rm", "-m", "32m", "--oom-kill-disable", "--memory-swappiness", "7", &e.bb, "sh", "-c", read]);
    let (stdout, stderr) = (stdout_of(&out), String::from_utf8_lossy(&out.stderr).into_owned());
    if v1 {
        // Read through the container's own view of its cgroup.
        assert_eq!(stdout, "oom_kill_disable 1\n7\n", "{stderr}");
        assert!(!stderr.contains("WARNING"), "{stderr}");
    } else {
        assert!(
            stderr.contains("Memory swappiness discarded") && stderr.contains("OomKillDisable discarded"),
            "{stderr}"
        );
    }
    s.ok(&["create", "--name", "plain", &e.bb]);
    assert_eq!(
        s.ok(&["inspect", "-f", "{{.HostConfig.OomKillDisable}} {{.HostConfig.MemorySwappiness}}", "plain"]).trim(),
        "false <nil>"
    );
    let out = s.run(&["create", "--name", "unlimited", "--oom-kill-disable", &e.bb]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no memory limit is set"), "Docker's warning");
    let (code, err) = s.fails(&["run", "--rm", "--memory-swappiness", "101", &e.bb, "true"]);
    assert_eq!(code, 125);
    assert!(err.contains("Invalid value: 101, valid memory swappiness range is 0-100"), "{err}");
}

#[test]
fn a_volume_created_with_bind_options_keeps_its_content_in_a_host_directory() {
    both(|e, who| {
        let s = &e.s;
        let d = host_dir(s, "bound-volume");
        host_file(s, &d.join("from-host"), "hello\n");
        let device = format!("device={}", d.display());
        s.ok(&["volume", "create", "-o", "type=none", "-o", "o=bind", "-o", &device, "hostvol"]);
        let options = s.ok(&["volume", "inspect", "-f", "{{json .Options}}", "hostvol"]);
        assert_eq!(
            options.trim(),
            format!("{{\"device\":\"{}\",\"o\":\"bind\",\"type\":\"none\"}}", d.display()),
            "{who}"
        );
        let out = s.ok(&[
            "run",
            "--rm",
            "-v",
            "hostvol:/data",
            &e.bb,
            "sh",
            "-c",
            "cat /data/from-host; echo made >/data/made",
        ]);
        assert_eq!(out, "hello\n", "{who}");
        assert_eq!(std::fs::read_to_string(d.join("made")).unwrap(), "made\n", "{who}: written to the host directory");
        let out = s.ok(&["run", "--rm", "--mount", "type=volume,source=hostvol,target=/m", &e.bb, "cat", "/m/made"]);
        assert_eq!(out, "made\n", "{who}");
        // Removing the volume leaves the host directory and its content.
        s.ok(&["volume", "rm", "hostvol"]);
        assert!(d.join("from-host").exists() && d.join("made").exists(), "{who}");

        // An empty host directory is seeded from the image, as a volume is.
        let empty = host_dir(s, "empty-volume");
        let device = format!("device={}", empty.display());
        s.ok(&["volume", "create", "--opt", "type=none", "--opt", "o=bind", "--opt", &device, "seedme"]);
        s.ok(&["run", "--rm", "-v", "seedme:/etc", &e.bb, "true"]);
        assert!(empty.join("passwd").exists(), "{who}: seeded with the image's /etc");
        s.ok(&["volume", "rm", "seedme"]);
        // o=ro: containers cannot write it.
        s.ok(&["volume", "create", "--opt", "type=none", "--opt", "o=bind,ro", "--opt", &device, "readonly"]);
        let out = s.run(&["run", "--rm", "-v", "readonly:/data", &e.bb, "touch", "/data/x"]);
        assert!(!out.status.success(), "{who}: o=ro is read-only");
        assert!(!empty.join("x").exists(), "{who}");
        s.ok(&["volume", "rm", "readonly"]);

        let missing = format!("device={}", s.base().join("not-there").display());
        s.ok(&["volume", "create", "-o", "type=none", "-o", "o=bind", "-o", &missing, "dangling"]);
        let (code, err) = s.fails(&["run", "--rm", "-v", "dangling:/d", &e.bb, "true"]);
        assert_eq!(code, 125, "{who}");
        assert_mentions(&err, &["failed to mount local volume", "no such file or directory"], who);
        s.ok(&["volume", "rm", "dangling"]);
        for (opts, message) in [
            (vec!["-o", "type=tmpfs", "-o", "device=tmpfs"], "type=none, o=bind and device=/host/path"),
            (vec!["-o", "colour=red"], "invalid option key"),
            (vec!["-o", "type=none", "-o", "o=bind", "-o", "device=relative"], "absolute host path"),
        ] {
            let mut cmd = vec!["volume", "create"];
            cmd.extend(opts);
            cmd.push("refused");
            let (code, err) = s.fails(&cmd);
            assert_eq!(code, 1, "{who}: {err}");
            assert!(err.contains(message), "{who}: {err}");
        }
        assert!(!s.ok(&["volume", "ls", "-q"]).lines().any(|l| l == "refused"), "{who}");
    });
}

#[test]
fn listings_filter_format_and_count_as_dockers_do() {
    let e = setup(false);
    let s = &e.s;
    s.ok(&[
        "run",
        "-d",
        "--name",
        "p1",
        "--label",
        "env=prod",
        "-v",
        "used:/data",
        &e.bb,
        "sh",
        "-c",
        "head -c 100000 /dev/zero >/f; sleep 600",
    ]);
    s.ok(&["run", "--name", "p10", "--label", "env=dev", &e.bb, "sh", "-c", "head -c 5000 /dev/zero >/g"]);
    s.ok(&["volume", "create", "--label", "tier=cold", "unused"]);
    s.ok(&["network", "create", "--label", "tier=front", "n1"]);
    s.ok(&["network", "create", "n10"]);
    let lines = |out: String| {
        let mut l: Vec<String> = out.lines().map(String::from).collect();
        l.sort();
        l
    };

    // Name filters are regular expressions, with or without Docker's '/'.
    let names = |filter: &str| lines(s.ok(&["ps", "-a", "--filter", filter, "--format", "{{.Names}}"]));
    assert_eq!(names("name=^p1$"), ["p1"]);
    assert_eq!(names("name=^/p1$"), ["p1"]);
    assert_eq!(names("name=p1"), ["p1", "p10"]);
    assert_eq!(names("before=p10"), ["p1"]);
    assert_eq!(names("since=p1"), ["p10"]);
    s.ok(&["create", "--name", "web", "-p", "127.0.0.1::8080", "--expose", "9000/udp", &e.bb]);
    assert_eq!(names("publish=8080"), ["web"]);
    assert_eq!(names("publish=8000-8100/tcp"), ["web"]);
    assert!(names("publish=8080/udp").is_empty());
    assert_eq!(names("expose=9000/udp"), ["web"]);
    assert!(names("publish=9000/udp").is_empty(), "exposed is not published");
    s.ok(&["rm", "web"]);
    assert_eq!(lines(s.ok(&["volume", "ls", "-q", "--filter", "name=^unu"])), ["unused"]);
    assert_eq!(lines(s.ok(&["network", "ls", "--filter", "name=^n1$", "--format", "{{.Name}}"])), ["n1"]);

    // `.Label "KEY"` in every listing that has labels.
    assert_eq!(lines(s.ok(&["ps", "-a", "--format", "{{.Names}} {{.Label \"env\"}}"])), ["p1 prod", "p10 dev"]);
    assert_eq!(
        s.ok(&["volume", "ls", "--filter", "name=unused", "--format", "{{.Name}} {{.Label \"tier\"}}"]),
        "unused cold\n"
    );
    assert_eq!(s.ok(&["network", "ls", "--filter", "name=^n1$", "--format", "{{.Label \"tier\"}}"]), "front\n");

    // system df counts containers (the stopped one's layer is reclaimable)
    // and volumes (the unused one is).
    let rows = parse_table(&s.ok(&["system", "df"]));
    let row = |kind: &str| rows.iter().find(|r| r[0] == kind).unwrap_or_else(|| panic!("{rows:?}")).clone();
    let containers = row("Containers");
    assert_eq!(&containers[1..3], ["2", "1"], "{rows:?}");
    assert!(containers[3].starts_with("105"), "both writable layers: {rows:?}");
    assert!(containers[4].starts_with("5kB"), "the stopped container's: {rows:?}");
    assert_eq!(&row("Local Volumes")[1..3], ["2", "1"], "{rows:?}");
    let verbose = s.ok(&["system", "df", "-v"]);
    let section = |title: &str| {
        let start = verbose.find(title).unwrap_or_else(|| panic!("{title} in {verbose}"));
        parse_table(verbose[start..].split("\n\n").nth(1).unwrap_or_default())
    };
    let containers = section("Containers space usage:");
    assert_eq!(containers.len(), 3, "{verbose}");
    assert!(containers.iter().any(|r| r.last().map(String::as_str) == Some("p1")), "{verbose}");
    let volumes = section("Local Volumes space usage:");
    assert!(volumes.contains(&vec!["used".to_string(), "1".into(), "0B".into()]), "{volumes:?}");
    assert!(volumes.iter().any(|r| r[0] == "unused" && r[1] == "0"), "{volumes:?}");
    let images = section("Images space usage:");
    assert_eq!(images[1].last().map(String::as_str), Some("2"), "two containers of the image: {images:?}");

    // Commands other than run/create/start fail with 1, as the Docker CLI does.
    for args in [
        vec!["ps", "--filter", "bogus=1"],
        vec!["kill", "-s", "BOGUS", "p1"],
        vec!["network", "create", "n1"],
        vec!["update", "--cpu-quota", "10", "p1"],
    ] {
        let (code, err) = s.fails(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
    }
    let (code, _) = s.fails(&["container", "run", "--rm", "--cgroupns", "bad", &e.bb, "true"]);
    assert_eq!(code, 125, "container run keeps run's status");
    // -it needs a terminal on standard input (the harness gives none).
    let (code, err) = s.fails(&["run", "--rm", "-it", &e.bb, "true"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the input device is not a TTY"), "{err}");
    assert_eq!(s.ok(&["ps", "-aq", "--filter", "status=created"]), "", "nothing was created");
    s.ok(&["rm", "-f", "p1", "p10"]);
    s.ok(&["network", "rm", "n1", "n10"]);
}

#[test]
fn add_host_host_gateway_reaches_the_hosts_loopback() {
    both(|e, who| {
        // A service the host offers on loopback only.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                use std::io::Write;
                let mut request = [0u8; 1024];
                let _ = conn.read(&mut request);
                let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 14\r\n\r\nfrom the host\n");
                let _ = tx.send(());
            }
        });
        let cmd = format!("grep -w hostside /etc/hosts >&2; wget -q -O - http://hostside:{port}/");
        let out = e.s.ok(&["run", "--rm", "--add-host", "hostside:host-gateway", &e.bb, "sh", "-c", &cmd]);
        assert_eq!(out, "from the host\n", "{who}");
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok(), "{who}: the host saw the connection");
    });
}

#[test]
fn concurrent_starts_of_one_container_all_succeed() {
    let e = setup(false);
    let s = &e.s;
    for round in 0..3 {
        s.ok(&["create", "--name", "raced", &e.bb, "sleep", "600"]);
        let children: Vec<_> = (0..3).map(|_| s.spawn(&["start", "raced"])).collect();
        for child in children {
            let out = wait_output(child, READY, "strata start raced");
            assert!(out.status.success(), "round {round}: {}", show_output(&out));
            assert_eq!(stdout_of(&out), "raced\n", "round {round}");
        }
        assert_eq!(status_of(s, "raced"), "running 0", "round {round}");
        s.ok(&["rm", "-f", "raced"]);
    }
}
