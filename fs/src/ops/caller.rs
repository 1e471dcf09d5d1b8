//! What the server knows of a calling process beyond its request's uid and
//! gid: its supplementary groups, effective capabilities and user namespace,
//! read from `/proc/PID`. Only rare requests need them (setting an ACL, a
//! listing with `trusted.*` names); the kernel checks everything else
//! itself.
//!
//! The kernel translates the request's pid into the server's pid namespace,
//! and `/proc/PID/status` shows the ids in the reader's user namespace, so
//! both agree with the ids of the request.

use std::fs;

/// `CAP_FSETID`: keeps set-id bits that a change would otherwise clear.
const CAP_FSETID: u32 = 4;

/// Whether the caller is in group `gid` or holds CAP_FSETID, the test the
/// kernel applies before it keeps S_ISGID (`in_group_or_capable`). When
/// the process cannot be read (gone, or not visible: pid 0), only the
/// request's own ids count, root counting as capable.
pub(super) fn in_group_or_capable(pid: u32, uid: u32, req_gid: u32, gid: u32) -> bool {
    if req_gid == gid {
        return true;
    }
    let status = (pid != 0).then(|| fs::read_to_string(format!("/proc/{pid}/status")).ok()).flatten();
    let Some(status) = status else { return uid == 0 };
    status_in_group_or_capable(&status, gid).unwrap_or(uid == 0)
}

/// Whether the caller holds CAP_SYS_ADMIN in the initial user namespace,
/// which `trusted.*` xattrs need: only such a caller sees their names in a
/// listing, as on tmpfs or ext4 (the VFS keeps everyone else from reading
/// them, but leaves listings to the filesystem). `false` whenever that
/// cannot be established.
pub(super) fn has_init_sys_admin(pid: u32) -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    if pid == 0 {
        return false;
    }
    let caps = fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| {
        let eff = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim().to_owned();
        u64::from_str_radix(&eff, 16).ok()
    });
    if caps.is_none_or(|c| c & (1 << CAP_SYS_ADMIN) == 0) {
        return false;
    }
    // The initial namespace's map, seen from it, is the identity of all ids
    // (/proc/1/ns/user cannot be compared with: reading it takes ptrace
    // rights over init). Seen from a server in a user namespace, no map
    // reads so, which is right: its callers cannot hold that capability.
    fs::read_to_string(format!("/proc/{pid}/uid_map")).is_ok_and(|m| crate::is_identity_map(&m))
}

/// The test of [`in_group_or_capable`] on the text of a `/proc/PID/status`;
/// `None` when a line it needs is missing.
fn status_in_group_or_capable(status: &str, gid: u32) -> Option<bool> {
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    let groups = field("Groups:")?;
    if groups.split_whitespace().any(|g| g.parse() == Ok(gid)) {
        return Some(true);
    }
    let caps = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
    Some(caps & (1 << CAP_FSETID) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGroups:\t24 27 100 \nCapEff:\t0000000000000000\n";

    #[test]
    fn a_supplementary_group_counts() {
        assert_eq!(status_in_group_or_capable(STATUS, 27), Some(true));
        assert_eq!(status_in_group_or_capable(STATUS, 2), Some(false));
    }

    #[test]
    fn cap_fsetid_counts_and_other_capabilities_do_not() {
        let fsetid = STATUS.replace("CapEff:\t0000000000000000", "CapEff:\t0000000000000010");
        assert_eq!(status_in_group_or_capable(&fsetid, 2), Some(true));
        let others = STATUS.replace("CapEff:\t0000000000000000", "CapEff:\t000001ffffffffef");
        assert_eq!(status_in_group_or_capable(&others, 2), Some(false));
    }

    #[test]
    fn a_status_without_the_lines_is_no_answer() {
        assert_eq!(status_in_group_or_capable("Name:\tsh\n", 2), None);
    }

    #[test]
    fn the_requests_own_group_needs_no_lookup() {
        assert!(in_group_or_capable(0, 1000, 5, 5));
        assert!(!in_group_or_capable(0, 1000, 5, 6));
        assert!(in_group_or_capable(0, 0, 5, 6));
    }
}
