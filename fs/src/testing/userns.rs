//! Running a test body as an unprivileged user who is root in a user
//! namespace of its own (with a mount namespace it owns), the way rootless
//! strata runs.
//!
//! The test, run as real root, prepares what needs real root (device nodes,
//! files owned by the user's subordinate ids), copies its own executable to
//! a world-readable directory (the build directory may be closed to the
//! user) and runs it again there, restricted to one test, through
//!
//! ```text
//! setpriv --reuid USER --regid USER --clear-groups \
//!     unshare --user --mount --map-root-user --map-auto -- TEST-BINARY --exact NAME
//! ```
//!
//! `--map-root-user` makes the user root inside, and `--map-auto` maps ids
//! from 1 on to the user's first subordinate range from /etc/subuid and
//! /etc/subgid (util-linux 2.38 calls newuidmap/newgidmap): the ids of a
//! layer are real ids outside, so chown works, and overlayfs and FUSE mounts
//! belong to the namespace. An environment variable tells the inner run to
//! do the body instead of the preparation.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::ok;
use super::overlay::IdMap;

/// The user's uid and gid, or None when there is no such user.
pub fn user_ids(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").arg(flag).arg(user).stdin(Stdio::null()).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// The command line prefix that runs a program as `user` in new user and
/// mount namespaces with the full id map.
pub fn user_namespace_prefix(user: &str) -> Vec<String> {
    let mut v: Vec<String> = vec!["setpriv".into(), "--reuid".into(), user.into(), "--regid".into(), user.into()];
    v.extend(
        ["--clear-groups", "--", "unshare", "--user", "--mount", "--map-root-user", "--map-auto", "--"]
            .map(String::from),
    );
    v
}

/// `PREFIX PROGRAM` (see [`user_namespace_prefix`]), optionally under
/// timeout(1), with the environment cleared but for PATH and stdin null.
pub fn in_user_namespace(user: &str, program: impl AsRef<OsStr>, timeout_secs: Option<u32>) -> Command {
    let mut words = user_namespace_prefix(user);
    if let Some(t) = timeout_secs {
        // A hung mount then fails the test instead of hanging the run.
        let mut with = vec!["timeout".to_string(), "--kill-after=10".into(), t.to_string()];
        with.append(&mut words);
        words = with;
    }
    let mut c = Command::new(&words[0]);
    c.args(&words[1..])
        .arg(program)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()))
        .current_dir("/")
        .stdin(Stdio::null());
    c
}

/// The uid and gid maps such a namespace gets, or why there is none (no
/// subordinate ids for the user, no newuidmap, user namespaces disabled).
pub fn probe_maps(user: &str) -> Result<(IdMap, IdMap), String> {
    let out = in_user_namespace(user, "sh", Some(60))
        .args(["-c", "cat /proc/self/uid_map && echo -- && cat /proc/self/gid_map"])
        .output()
        .map_err(|e| format!("running setpriv/unshare: {e}"))?;
    if !out.status.success() {
        return Err(format!("unshare failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let Some((u, g)) = text.split_once("--\n") else { return Err(format!("odd id maps: {text}")) };
    let uids = IdMap::parse(u).ok_or_else(|| format!("odd uid map: {u}"))?;
    let gids = IdMap::parse(g).ok_or_else(|| format!("odd gid map: {g}"))?;
    for (what, map) in [("uid", &uids), ("gid", &gids)] {
        if map.0.iter().map(|r| r.2 as u64).sum::<u64>() < 65536 {
            return Err(format!("no subordinate {what} range for {user} ({what} map: {:?})", map.0));
        }
    }
    Ok((uids, gids))
}

/// Copies `src` into `dir` (mode 0755) and returns the copy's path.
pub fn world_readable_copy(src: &Path, dir: &Path) -> PathBuf {
    let name = src.file_name().unwrap_or_else(|| OsStr::new("program"));
    let dest = dir.join(name);
    ok(std::fs::copy(src, &dest), || format!("copy {} to {}", src.display(), dest.display()));
    ok(std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)), || format!("chmod {}", dest.display()));
    dest
}

/// Runs test `test` of the current test executable again, as `user` in new
/// user and mount namespaces, with `env` set; the executable is copied into
/// `dir` first. Killed after `timeout_secs`.
pub fn rerun_test(user: &str, test: &str, dir: &Path, env: &[(&str, &OsStr)], timeout_secs: u32) -> Output {
    let exe = ok(std::env::current_exe(), || "finding the test executable".to_string());
    let bin = world_readable_copy(&exe, dir);
    let mut cmd = in_user_namespace(user, &bin, Some(timeout_secs));
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"]).current_dir(dir);
    for var in
        ["RUST_BACKTRACE", "RUST_LOG", "STRATA_FS_RANDOM_RUNS", "STRATA_FS_RANDOM_STEPS", "STRATA_FS_RANDOM_FIRST"]
    {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    for _ in 0..100 {
        let out = ok(cmd.output(), || format!("running {cmd:?}"));
        // A child another test thread forked while the copy was being
        // written still held it open for writing: its exec failed.
        if String::from_utf8_lossy(&out.stderr).contains("Text file busy") {
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        }
        return out;
    }
    ok(cmd.output(), || format!("running {cmd:?}"))
}
