//! Containers of a real distribution: the Debian bookworm minbase image
//! (debootstrap, see tests/src/debian.rs) run as root and as the unprivileged
//! `strata-test`. What busybox cannot show: dynamically linked programs
//! (apt, dpkg) loading through the FUSE root, system users and groups from
//! the image's /etc/passwd, files owned by many ids (rootless: through the
//! subordinate id range), a package database that reads as installed, and
//! bash as pid 1.
//!
//! One registry and one store per user: the image is ~130 MB unpacked, so the
//! checks share a pull instead of each paying for its own.

use strata_e2e::strata::show_output;
use strata_e2e::*;

/// A registry serving the Debian image, a store that pulled it, and a
/// guard that force-removes whatever containers a failing check left.
struct Env {
    _reg: Registry,
    s: Strata,
    img: String,
    who: &'static str,
}

impl Drop for Env {
    fn drop(&mut self) {
        let out = self.s.run(&["ps", "-aq", "--no-trunc"]);
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
        if !ids.is_empty() {
            let mut args = vec!["rm".to_string(), "-f".to_string()];
            args.extend(ids);
            let _ = self.s.run(&args);
        }
    }
}

fn setup(unprivileged: bool) -> Env {
    let d = debian();
    let reg = Registry::start();
    let img = reg.push_oci_layout(&d.oci, Debian::TAG, "e2e/debian:bookworm");
    let s = if unprivileged { Strata::new_unprivileged() } else { Strata::new() };
    s.pull(&img);
    Env { _reg: reg, s, img, who: if unprivileged { "as strata-test" } else { "as root" } }
}

impl Env {
    /// `strata run --rm [FLAGS] IMAGE ARGS`; panics unless it exits 0; returns stdout.
    fn run(&self, flags: &[&str], args: &[&str]) -> String {
        let mut all = vec!["run", "--rm"];
        all.extend_from_slice(flags);
        all.push(&self.img);
        all.extend_from_slice(args);
        let out = self.s.run(&all);
        assert!(out.status.success(), "{}: `{}`:\n{}", self.who, all.join(" "), show_output(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn status_of(s: &Strata, name: &str) -> String {
    s.ok(&["container", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", name]).trim().to_string()
}

/// Identity, users from the image's passwd, and dynamically linked tools.
fn users_and_programs(e: &Env) {
    let who = e.who;
    assert_eq!(e.run(&[], &["id"]), "uid=0(root) gid=0(root) groups=0(root)\n", "{who}");
    let os = e.run(&[], &["cat", "/etc/os-release"]);
    assert!(os.lines().any(|l| l == "VERSION_CODENAME=bookworm"), "{who}: {os}");
    for u in ["nobody", "65534"] {
        let id = e.run(&["-u", u], &["id"]);
        assert!(id.starts_with("uid=65534(nobody) gid=65534(nogroup)"), "{who}: -u {u}: {id}");
    }
    let id = e.run(&["-u", "www-data:mail"], &["bash", "-c", "id -u; id -g"]);
    assert_eq!(id, "33\n8\n", "{who}: -u www-data:mail");
    // apt-get and dpkg are dynamically linked against several libraries in
    // the image: the loader maps them from the FUSE root.
    let apt = e.run(&[], &["apt-get", "--version"]);
    assert!(apt.starts_with("apt "), "{who}: {apt}");
    let dpkg = e.run(&[], &["dpkg", "-s", "coreutils"]);
    assert!(dpkg.lines().any(|l| l == "Status: install ok installed"), "{who}: {dpkg}");
    let out = e.s.run(&["run", "--rm", &e.img, "dpkg", "-s", "no-such-package-here"]);
    assert_eq!(out.status.code(), Some(1), "{who}: {}", show_output(&out));
}

/// Ownership as the image recorded it, and chown by container root.
fn ownership(e: &Env) {
    let who = e.who;
    let ls = e.run(&[], &["ls", "-ln", "/"]);
    let mut seen = 0;
    for line in ls.lines().filter(|l| !l.starts_with("total")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() >= 9, "{who}: odd ls line {line:?}");
        // In a user namespace the kernel's own /proc and /sys belong to the
        // host's root, which is not mapped: they show as the overflow id.
        let kernel_fs = matches!(f[f.len() - 1], "proc" | "sys");
        let owner = if kernel_fs && e.s.is_unprivileged() { ("65534", "65534") } else { ("0", "0") };
        assert_eq!((f[2], f[3]), owner, "{who}: {line}");
        seen += 1;
    }
    assert!(seen >= 15, "{who}: too few entries in /:\n{ls}");
    // Owned by system groups in the image: shadow (42), mail (8).
    let st = e.run(&[], &["stat", "-c", "%n %u:%g %a", "/etc/shadow", "/var/mail"]);
    assert_eq!(st, "/etc/shadow 0:42 640\n/var/mail 0:8 2775\n", "{who}");
    let out = e.run(&[], &["bash", "-c", "echo x >/tmp/x && chown 1000:1000 /tmp/x && stat -c %u:%g /tmp/x"]);
    assert_eq!(out, "1000:1000\n", "{who}");
    // Root-only files stay root-only for other container users.
    let out = e.s.run(&["run", "--rm", "-u", "nobody", &e.img, "cat", "/etc/shadow"]);
    assert_eq!(out.status.code(), Some(1), "{who}: {}", show_output(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{who}: {}", show_output(&out));
}

/// What a container writes shows in `diff` and persists across starts.
fn writes_and_diff(e: &Env) {
    let who = e.who;
    let s = &e.s;
    s.ok(&[
        "run",
        "--name",
        "writer",
        &e.img,
        "bash",
        "-c",
        "echo written >/root/new-file && rm /etc/motd && useradd -u 1234 -m alice",
    ]);
    let diff = s.ok(&["diff", "writer"]);
    for line in ["C /root", "A /root/new-file", "D /etc/motd", "C /etc/passwd", "A /home/alice"] {
        assert!(diff.lines().any(|l| l == line), "{who}: no {line:?} in diff:\n{diff}");
    }
    // Started again, the command finds its own deletion.
    let out = s.run(&["start", "-a", "writer"]);
    assert_eq!(out.status.code(), Some(1), "{who}: {}", show_output(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/etc/motd"), "{who}: {}", show_output(&out));
    s.ok(&["rm", "writer"]);
    // A new container sees the image again.
    let out =
        e.run(&[], &["bash", "-c", "cat /etc/motd >/dev/null && ls /root && ! getent passwd alice && echo fresh"]);
    assert_eq!(out, "fresh\n", "{who}");
}

/// bash as pid 1 of a detached container, exec into it, and stop: bash
/// ignores SIGTERM, so `stop -t 1` ends it with SIGKILL (137).
fn detached_exec_and_stop(e: &Env) {
    let who = e.who;
    let s = &e.s;
    // As root the limits give the container cgroups of its own (an ordinary
    // user gets none on a host without a delegated cgroup v2 subtree).
    let limits: &[&str] = if s.is_unprivileged() { &[] } else { &["--memory", "256m", "--pids-limit", "200"] };
    let mut run = vec!["run", "-d", "--name", "sleeper"];
    run.extend_from_slice(limits);
    run.extend_from_slice(&[&e.img, "bash", "-c", "trap '' TERM; while :; do sleep 1000 & wait; done"]);
    s.ok(&run);
    if !s.is_unprivileged() {
        // An exec'd process joins the container's cgroups.
        let out = s.ok(&["exec", "sleeper", "bash", "-c", "diff /proc/1/cgroup /proc/self/cgroup && echo same"]);
        assert_eq!(out, "same\n", "{who}");
    }
    let cmdline = s.ok(&["exec", "sleeper", "cat", "/proc/1/cmdline"]);
    assert!(cmdline.starts_with("bash\0-c\0trap"), "{who}: pid 1 is {cmdline:?}");
    let out = s.ok(&[
        "exec",
        "-u",
        "nobody",
        "-w",
        "/tmp",
        "sleeper",
        "bash",
        "-c",
        "id -un; pwd; ls /proc | grep -c '^[0-9]'",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["nobody", "/tmp"], "{who}: {out}");
    // bash, its sleep, and the exec'd bash + ls/grep: only the container's processes.
    let procs: usize = lines[2].parse().unwrap_or(0);
    assert!((3..=6).contains(&procs), "{who}: {procs} processes visible: {out}");
    assert_eq!(status_of(s, "sleeper"), "running 0", "{who}");
    assert_eq!(s.ok(&["stop", "-t", "1", "sleeper"]).trim(), "sleeper", "{who}");
    assert_eq!(status_of(s, "sleeper"), "exited 137", "{who}");
    s.ok(&["rm", "sleeper"]);
}

/// With `--init`, pid 1 is strata's reaper, forked from the supervisor: its
/// command line and environment must not show the host's store path.
fn init_hides_host_paths(e: &Env) {
    let who = e.who;
    let root = e.s.root();
    let root = root.to_string_lossy();
    let out = e.run(
        &["--init"],
        &["bash", "-c", "tr '\\0' ' ' </proc/1/cmdline; echo; tr '\\0' '\\n' </proc/1/environ; echo; echo $$"],
    );
    let mut lines = out.lines();
    let cmdline = lines.next().unwrap_or_default();
    assert!(cmdline.starts_with("strata "), "{who}: pid 1 with --init is {cmdline:?}");
    assert!(!out.contains(&*root), "{who}: the store path {root} is visible in the container:\n{out}");
    assert!(!out.contains("STRATA_ROOT"), "{who}: STRATA_ROOT leaked into the container:\n{out}");
    assert_ne!(out.lines().last(), Some("1"), "{who}: with --init the command is not pid 1: {out}");
    // The command's own environment is the image's, not strata's.
    let env = e.run(&["--init"], &["env"]);
    assert!(!env.contains("STRATA") && !env.contains(&*root), "{who}: {env}");
}

fn all_checks(unprivileged: bool) {
    let e = setup(unprivileged);
    users_and_programs(&e);
    ownership(&e);
    writes_and_diff(&e);
    detached_exec_and_stop(&e);
    init_hides_host_paths(&e);
    assert_eq!(e.s.ok(&["ps", "-aq"]), "", "{}: containers left behind", e.who);
}

#[test]
fn debian_as_root() {
    all_checks(false);
}

#[test]
fn debian_as_unprivileged_user() {
    all_checks(true);
}
