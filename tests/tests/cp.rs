//! `strata cp` end to end, as root and as the unprivileged test user, into
//! and out of running and stopped containers: Docker's path rules (a
//! directory lands under the destination directory, or as the destination
//! when that does not exist; `DIR/.` copies the contents; a file may be
//! renamed), owners (the container's root inside, the caller outside, the
//! source's with `-a`), modes and times kept, symlinks copied as links
//! (followed with `-L`), tar streams on `-`. Symlinks of the container
//! resolve inside it and are never followed on the host; an archive entry
//! that leaves the destination is refused. Errors read as Docker's.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use strata_e2e::*;

/// A host tree to copy in: `src/a.txt` (0640, an old mtime), `src/sub/b`,
/// `src/link -> a.txt`, owned by the user strata runs as.
fn host_tree(s: &Strata) -> PathBuf {
    let base = s.base().join("host");
    let src = base.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.txt"), "alpha\n").unwrap();
    fs::set_permissions(src.join("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    run_tool(std::process::Command::new("touch").args(["-d", "2001-02-03 04:05:06"]).arg(src.join("a.txt")));
    fs::write(src.join("sub/b"), "beta\n").unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
    if s.is_unprivileged() {
        run_tool(std::process::Command::new("chown").arg("-R").arg(TEST_USER).arg(&base));
    }
    base
}

fn cp(s: &Strata, src: impl AsRef<std::ffi::OsStr>, dest: impl AsRef<std::ffi::OsStr>) -> String {
    let out = s.run(&[std::ffi::OsStr::new("cp"), src.as_ref(), dest.as_ref()]);
    assert!(out.status.success(), "cp failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn host_arg(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn cp_into_and_out_of_running_and_stopped_containers() {
    for unprivileged in [false, true] {
        let who = if unprivileged { "as strata-test" } else { "as root" };
        let (_reg, s, image) = store_with_fixture("busybox", unprivileged);
        let host = host_tree(&s);
        let src = host.join("src");
        s.ok(&["run", "-d", "--name", "box", &image, "sleep", "600"]);

        // A directory into an existing directory lands under its name.
        let said = cp(&s, host_arg(&src), "box:/tmp");
        assert!(said.starts_with("Successfully copied ") && said.ends_with(" to box:/tmp\n"), "{who}: {said}");
        let listed = s.ok(&["exec", "box", "sh", "-c", "cd /tmp/src && ls -ln a.txt sub/b link"]);
        let lines: Vec<Vec<&str>> = listed.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[0][..4], ["-rw-r-----", "1", "0", "0"], "{who}: a.txt belongs to root: {listed}");
        assert_eq!(lines[1][0], "lrwxrwxrwx", "{who}: the link stays a link: {listed}");
        assert!(lines[2][0].starts_with("-rw-"), "{who}: {listed}");
        assert_eq!(s.ok(&["exec", "box", "readlink", "/tmp/src/link"]), "a.txt\n");
        let mtime = s.ok(&["exec", "box", "stat", "-c", "%Y", "/tmp/src/a.txt"]);
        assert_eq!(mtime.trim(), "981173106", "{who}: the mtime is kept");
        // ... to a name that does not exist: the directory becomes it.
        cp(&s, host_arg(&src), "box:/copy");
        assert_eq!(s.ok(&["exec", "box", "cat", "/copy/sub/b"]), "beta\n");
        // DIR/. copies the contents; a file may be renamed.
        cp(&s, format!("{}/.", src.display()), "box:/copy");
        cp(&s, host_arg(&src.join("a.txt")), "box:/copy/renamed");
        assert_eq!(s.ok(&["exec", "box", "cat", "/copy/a.txt", "/copy/renamed"]), "alpha\nalpha\n");

        // Out: a directory, a symlink as a link, and followed with -L.
        let out = host.join("out");
        fs::create_dir(&out).unwrap();
        if unprivileged {
            run_tool(std::process::Command::new("chown").arg(TEST_USER).arg(&out));
        }
        cp(&s, "box:/copy", host_arg(&out.join("back")));
        assert_eq!(fs::read_to_string(out.join("back/sub/b")).unwrap(), "beta\n");
        let meta = fs::metadata(out.join("back/a.txt")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640, "{who}");
        assert_eq!(meta.uid(), fs::metadata(&out).unwrap().uid(), "{who}: the caller owns what it copied out");
        cp(&s, "box:/bin/sh", host_arg(&out));
        assert_eq!(fs::read_link(out.join("sh")).unwrap(), Path::new("busybox"), "{who}");
        let out2 = s.run(&["cp", "-L", "box:/bin/sh", &host_arg(&out.join("sh-file"))]);
        assert!(out2.status.success(), "{who}: {}", String::from_utf8_lossy(&out2.stderr));
        assert!(fs::metadata(out.join("sh-file")).unwrap().len() > 100_000, "{who}: -L copies busybox");

        // Tar streams on both sides.
        let tar = s.run(&["cp", "box:/copy/sub", "-"]);
        let listing = run_tool_with_input(std::process::Command::new("tar").arg("-tf").arg("-"), &tar.stdout);
        assert_eq!(listing, "sub/\nsub/b\n", "{who}");
        let archive = std::process::Command::new("tar").arg("-C").arg(&src).args(["-cf", "-", "sub"]).output().unwrap();
        let mut child = s.command(&["cp", "-", "box:/tmp"]).stdin(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(&archive.stdout).unwrap();
        assert!(child.wait().unwrap().success(), "{who}: cp - into the container");
        assert_eq!(s.ok(&["exec", "box", "cat", "/tmp/sub/b"]), "beta\n");

        // The container's symlinks resolve inside it, in both directions.
        s.ok(&["exec", "box", "sh", "-c", "ln -s / /escape && ln -s /etc/passwd /tmp/pw"]);
        let marker = format!("strata-cp-escape-{}", std::process::id());
        cp(&s, host_arg(&src.join("a.txt")), format!("box:/escape/tmp/{marker}"));
        assert!(!Path::new("/tmp").join(&marker).exists(), "{who}: written on the host through a container symlink");
        assert_eq!(s.ok(&["exec", "box", "cat", &format!("/tmp/{marker}")]), "alpha\n");
        cp(&s, "box:/escape/etc/hostname", host_arg(&out.join("hostname")));
        let hostname = s.ok(&["exec", "box", "hostname"]);
        assert_eq!(fs::read_to_string(out.join("hostname")).unwrap(), hostname, "{who}: the container's own file");
        cp(&s, "box:/tmp/pw", host_arg(&out.join("pw")));
        assert_eq!(fs::read_link(out.join("pw")).unwrap(), Path::new("/etc/passwd"), "{who}: a link, not followed");

        // A stopped container: mounted for the copy, and only for it.
        s.ok(&["stop", "-t", "0", "box"]);
        cp(&s, host_arg(&src.join("sub")), "box:/stopped");
        cp(&s, "box:/stopped/b", host_arg(&out.join("from-stopped")));
        assert_eq!(fs::read_to_string(out.join("from-stopped")).unwrap(), "beta\n");
        assert_eq!(s.ok(&["mount", "-q"]), "", "{who}: no mount left behind");
        s.ok(&["start", "box"]);
        let owner = s.ok(&["exec", "box", "stat", "-c", "%u:%g %a", "/stopped/b"]);
        assert_eq!(owner.trim(), "0:0 644", "{who}: copied into a stopped container");
        s.ok(&["rm", "-f", "box"]);
    }
}

#[test]
fn cp_reaches_the_volumes_of_a_stopped_container() {
    for unprivileged in [false, true] {
        let who = if unprivileged { "as strata-test" } else { "as root" };
        let (_reg, s, image) = store_with_fixture("busybox", unprivileged);
        let host = host_tree(&s);
        let src = host.join("src");
        let ro = host.join("ro");
        fs::create_dir_all(&ro).unwrap();
        let ro_arg = format!("{}:/ro:ro", ro.display());
        s.ok(&["create", "--name", "box", "-v", "keep:/data", "-v", &ro_arg, &image, "sleep", "600"]);

        // Into the stopped container's volume: the volume has it, not its tree.
        cp(&s, host_arg(&src.join("a.txt")), "box:/data/a.txt");
        cp(&s, host_arg(&src.join("sub")), "box:/data");
        let diff = s.ok(&["diff", "box"]);
        assert!(!diff.contains("/data/"), "{who}: nothing lands under the volume's mount point: {diff}");
        s.ok(&["start", "box"]);
        let seen = s.ok(&["exec", "box", "sh", "-c", "cat /data/a.txt /data/sub/b"]);
        assert_eq!(seen, "alpha\nbeta\n", "{who}: the running container sees the copies in its volume");
        s.ok(&["stop", "-t", "1", "box"]);

        // Out of it: the volume's root keeps its name; `/.` copies its contents.
        let out = s.base().join("out");
        fs::create_dir_all(&out).unwrap();
        if unprivileged {
            run_tool(std::process::Command::new("chown").arg(TEST_USER).arg(&out));
        }
        cp(&s, "box:/data", host_arg(&out));
        assert_eq!(fs::read_to_string(out.join("data/sub/b")).unwrap(), "beta\n", "{who}");
        cp(&s, "box:/data/.", host_arg(&out.join("contents")));
        assert_eq!(fs::read_to_string(out.join("contents/a.txt")).unwrap(), "alpha\n", "{who}");

        // A read-only mount is refused as Docker refuses it, and left as it was.
        let bad = s.run(&[std::ffi::OsStr::new("cp"), src.join("a.txt").as_os_str(), "box:/ro/x".as_ref()]);
        assert!(!bad.status.success(), "{who}");
        assert_mentions(&String::from_utf8_lossy(&bad.stderr), &["mounted volume is marked read-only"], who);
        assert!(!ro.join("x").exists(), "{who}");
        s.ok(&["rm", "-f", "box"]);
        s.ok(&["volume", "rm", "keep"]);
    }
}

#[test]
fn cp_refusals_read_like_dockers() {
    let (_reg, s, image) = store_with_fixture("busybox", false);
    let host = host_tree(&s);
    s.ok(&["run", "-d", "--name", "box", &image, "sleep", "600"]);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["box:/nope".into(), host_arg(&host)], "Could not find the file /nope in container box"),
        (vec![host_arg(&host.join("nope")), "box:/".into()], "no such file or directory"),
        (vec![host_arg(&host.join("src")), "box:/etc/passwd".into()], "cannot copy a directory to a file"),
        (vec![host_arg(&host.join("src/a.txt")), "box:/no/such/".into()], "no such directory"),
        (vec!["box:/a".into(), "box:/b".into()], "copying between containers is not supported"),
        (vec![host_arg(&host), host_arg(&host)], "must specify at least one container source"),
        (vec!["nosuch:/etc".into(), host_arg(&host)], "No such container: nosuch"),
    ];
    for (args, want) in cases {
        let mut all = vec!["cp".to_string()];
        all.extend(args.iter().cloned());
        let (code, err) = s.fails(&all);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
    }
    // A hostile archive on stdin: an entry that leaves the destination.
    let bad = tar_with_entry("../../escape.txt");
    let mut child = s.command(&["cp", "-", "box:/tmp"]).stdin(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&bad).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("'..'"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!s.run(&["exec", "box", "test", "-e", "/escape.txt"]).status.success());
    s.ok(&["rm", "-f", "box"]);
}

/// A tar holding one file named `name` (written by hand: tar tools refuse
/// such names).
fn tar_with_entry(name: &str) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(b"00000000002\0");
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    let mut data = [0u8; 512];
    data[..2].copy_from_slice(b"x\n");
    out.extend_from_slice(&data);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn run_tool_with_input(cmd: &mut std::process::Command, input: &[u8]) -> String {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}
