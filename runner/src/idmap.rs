//! User-namespace id maps: choosing the rootless mapping from /etc/subuid and /etc/subgid, and
//! writing a mapping for a process (directly as root or for a single own id, through the setuid
//! helpers newuidmap/newgidmap otherwise).

use std::io::Write;
use std::process::{Command, Stdio};

use crate::error::RunnerError;
use crate::spec::{IdMapping, IdRange};

/// How many subordinate ids a rootless container uses at most (ids 1..=65536 in the container).
pub const ROOTLESS_RANGE: u32 = 65536;

/// The mapping for running as the current (non-root) user, like rootless Podman: container root
/// is the user, container ids 1.. come from the user's subordinate range. Without a range in
/// /etc/subuid or /etc/subgid only root is mapped; the returned note says so.
pub fn rootless_mapping() -> (IdMapping, Option<String>) {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let name = nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.name);
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    let subgid = std::fs::read_to_string("/etc/subgid").unwrap_or_default();
    let u = find_subid(&subuid, name.as_deref(), uid);
    let g = find_subid(&subgid, name.as_deref(), uid);
    match (u, g) {
        (Some((us, uc)), Some((gs, gc))) => (
            IdMapping::Map {
                uids: vec![
                    IdRange { container: 0, host: uid, size: 1 },
                    IdRange { container: 1, host: us, size: uc.min(ROOTLESS_RANGE) },
                ],
                gids: vec![
                    IdRange { container: 0, host: gid, size: 1 },
                    IdRange { container: 1, host: gs, size: gc.min(ROOTLESS_RANGE) },
                ],
            },
            None,
        ),
        _ => (
            IdMapping::Map {
                uids: vec![IdRange { container: 0, host: uid, size: 1 }],
                gids: vec![IdRange { container: 0, host: gid, size: 1 }],
            },
            Some(format!(
                "no subordinate ids for {} in /etc/subuid and /etc/subgid: only root is mapped in the container \
                 (files owned by other users show as nobody, and changing to another user fails)",
                name.as_deref().unwrap_or("the current user")
            )),
        ),
    }
}

/// The first `name:start:count` (or `uid:start:count`) line for the user.
fn find_subid(contents: &str, name: Option<&str>, uid: u32) -> Option<(u32, u32)> {
    contents.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if Some(who) != name && who != uid.to_string() {
            return None;
        }
        let (start, count) = (start.parse().ok()?, count.parse::<u32>().ok()?);
        (count > 0).then_some((start, count))
    })
}

/// Whether this process runs in the initial user namespace (real root privileges when uid 0),
/// as opposed to being "root" in a user namespace someone set up (e.g. a rootless supervisor).
pub fn in_initial_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(true)
}

fn map_text(ranges: &[IdRange]) -> String {
    ranges.iter().map(|r| format!("{} {} {}\n", r.container, r.host, r.size)).collect()
}

/// Write the maps of `pid` (a process that just created its user namespace).
pub(crate) fn apply(pid: libc::pid_t, mapping: &IdMapping) -> Result<(), RunnerError> {
    let IdMapping::Map { uids, gids } = mapping else {
        return Ok(());
    };
    // SAFETY: geteuid/getegid cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let single_own = uids.len() == 1
        && gids.len() == 1
        && uids[0].size == 1
        && gids[0].size == 1
        && uids[0].host == euid
        && gids[0].host == egid;
    if euid == 0 || single_own {
        if euid != 0 {
            // An unprivileged process may write a gid map only after denying setgroups.
            write_proc(pid, "setgroups", "deny")?;
        }
        write_proc(pid, "uid_map", &map_text(uids))?;
        write_proc(pid, "gid_map", &map_text(gids))?;
        return Ok(());
    }
    run_helper("newuidmap", pid, uids)?;
    run_helper("newgidmap", pid, gids)
}

fn write_proc(pid: libc::pid_t, file: &str, text: &str) -> Result<(), RunnerError> {
    let path = format!("/proc/{pid}/{file}");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| RunnerError::IdMap(format!("open {path}: {e}")))?;
    f.write_all(text.as_bytes()).map_err(|e| RunnerError::IdMap(format!("write {path} ({}): {e}", text.trim())))
}

fn run_helper(helper: &str, pid: libc::pid_t, ranges: &[IdRange]) -> Result<(), RunnerError> {
    let mut cmd = Command::new(helper);
    cmd.arg(pid.to_string());
    for r in ranges {
        cmd.args([r.container.to_string(), r.host.to_string(), r.size.to_string()]);
    }
    let out = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            RunnerError::IdMap(format!("{helper} not found: install the uidmap package"))
        } else {
            RunnerError::IdMap(format!("run {helper}: {e}"))
        }
    })?;
    if !out.status.success() {
        return Err(RunnerError::IdMap(format!(
            "{helper} failed ({}): {}; check /etc/subuid and /etc/subgid",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_lookup() {
        let f = "alice:100000:65536\n# comment\n1001:300000:1000\nbob:200000:0\n";
        assert_eq!(find_subid(f, Some("alice"), 1000), Some((100000, 65536)));
        assert_eq!(find_subid(f, Some("carol"), 1001), Some((300000, 1000)));
        assert_eq!(find_subid(f, Some("bob"), 1002), None);
    }
}
