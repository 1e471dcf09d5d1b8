//! `--user` resolution with Docker's (runc's) rules, reading the image's /etc/passwd and
//! /etc/group inside the rootfs (openat2 RESOLVE_IN_ROOT: a symlinked /etc/passwd resolves in
//! the image, never on the host).
//!
//! - `""` is root. `name` or `uid`, optionally `:group` or `:gid`.
//! - A numeric uid needs no passwd entry (its gid is then 0 unless given); a name must exist:
//!   `unable to find user NAME: no matching entries in passwd file`.
//! - Supplementary groups are the user's memberships in /etc/group, only when no group is given.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use crate::error::RunnerError;
use crate::spec::User;
use crate::sys::{self, cstring, openat2, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS};

/// The resolved user, with the home directory from passwd (`/` when unknown) for `HOME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub user: User,
    pub home: String,
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Read a file of the rootfs (missing file = empty).
fn read_in_root(rootfs: &Path, path: &str) -> Result<String, RunnerError> {
    let root_c = cstring(rootfs.as_os_str().as_encoded_bytes()).map_err(|e| RunnerError::io("rootfs path", e))?;
    let root = sys::open(&root_c, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| RunnerError::io(format!("open rootfs {}", rootfs.display()), e))?;
    let rel = cstring(path.trim_start_matches('/')).map_err(|e| RunnerError::io("path", e))?;
    // O_NONBLOCK: a fifo put there (by the image, or inside a running container before an
    // exec) must not hang us; only a regular file is read, anything else counts as missing.
    match openat2(root.as_fd(), &rel, libc::O_RDONLY | libc::O_NONBLOCK, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) {
        Ok(fd) => {
            let file = std::fs::File::from(fd);
            let meta = file.metadata().map_err(|e| RunnerError::io(format!("stat {path} in the image"), e))?;
            if !meta.is_file() {
                // Like a missing file: numeric users still work, names are not found.
                return Ok(String::new());
            }
            let mut s = String::new();
            file.take(16 << 20)
                .read_to_string(&mut s)
                .map_err(|e| RunnerError::io(format!("read {path} in the image"), e))?;
            Ok(s)
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(String::new()),
        Err(e) => Err(RunnerError::io(format!("open {path} in the image"), e)),
    }
}

fn parse_passwd(s: &str) -> Vec<Passwd> {
    s.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || l.starts_with('#') {
                return None;
            }
            Some(Passwd {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).map_or("/", |h| if h.is_empty() { "/" } else { h }).to_string(),
            })
        })
        .collect()
}

fn parse_group(s: &str) -> Vec<Group> {
    s.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 || l.starts_with('#') {
                return None;
            }
            Some(Group {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map_or(Vec::new(), |m| m.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()),
            })
        })
        .collect()
}

/// Resolve Docker's `--group-add` values (numbers, or names in the image's
/// /etc/group) against the image at `rootfs`.
pub fn resolve_groups(rootfs: &Path, names: &[String]) -> Result<Vec<u32>, RunnerError> {
    let groups = parse_group(&read_in_root(rootfs, "/etc/group")?);
    names
        .iter()
        .map(|g| match g.parse::<u32>() {
            Ok(n) => Ok(n),
            Err(_) => groups.iter().find(|gr| gr.name == *g).map(|gr| gr.gid).ok_or_else(|| {
                RunnerError::User(format!("Unable to find group {g}: no matching entries in group file"))
            }),
        })
        .collect()
}

/// Resolve Docker's `--user` value against the image at `rootfs`.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<ResolvedUser, RunnerError> {
    let passwd = parse_passwd(&read_in_root(rootfs, "/etc/passwd")?);
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_arg = if user_arg.is_empty() { "0" } else { user_arg };
    let entry = match user_arg.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|p| p.uid == uid),
        Err(_) => Some(passwd.iter().find(|p| p.name == user_arg).ok_or_else(|| {
            RunnerError::User(format!("unable to find user {user_arg}: no matching entries in passwd file"))
        })?),
    };
    let uid = entry.map_or_else(|| user_arg.parse().unwrap_or(0), |p| p.uid);
    let mut gid = entry.map_or(0, |p| p.gid);
    let home = entry.map_or_else(|| "/".to_string(), |p| p.home.clone());
    let groups = parse_group(&read_in_root(rootfs, "/etc/group")?);
    let mut additional_gids = Vec::new();
    match group_arg {
        Some(g) if !g.is_empty() => {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => groups.iter().find(|gr| gr.name == g).map(|gr| gr.gid).ok_or_else(|| {
                    RunnerError::User(format!("unable to find group {g}: no matching entries in group file"))
                })?,
            };
        }
        _ => {
            if let Some(p) = entry {
                for gr in groups.iter().filter(|gr| gr.members.contains(&p.name)) {
                    if !additional_gids.contains(&gr.gid) {
                        additional_gids.push(gr.gid);
                    }
                }
            }
        }
    }
    Ok(ResolvedUser { user: User { uid, gid, additional_gids }, home })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn image() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("etc")).unwrap();
        fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:1001:::\n",
        )
        .unwrap();
        fs::write(d.path().join("etc/group"), "root:x:0:\nalice:x:1000:\nwheel:x:10:alice,bob\naudio:x:29:alice\n")
            .unwrap();
        d
    }

    #[test]
    fn docker_rules() {
        let d = image();
        let r = |s: &str| resolve_user(d.path(), s);
        assert_eq!(r("").unwrap().user, User { uid: 0, gid: 0, additional_gids: vec![] });
        assert_eq!(
            r("alice").unwrap(),
            ResolvedUser {
                user: User { uid: 1000, gid: 1000, additional_gids: vec![10, 29] },
                home: "/home/alice".into()
            }
        );
        assert_eq!(r("1001").unwrap().user, User { uid: 1001, gid: 1001, additional_gids: vec![10] });
        assert_eq!(r("4242").unwrap().user, User { uid: 4242, gid: 0, additional_gids: vec![] });
        assert_eq!(r("4242:77").unwrap().user, User { uid: 4242, gid: 77, additional_gids: vec![] });
        assert_eq!(r("alice:wheel").unwrap().user, User { uid: 1000, gid: 10, additional_gids: vec![] });
        assert_eq!(
            r("nobody").unwrap_err().to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        assert_eq!(
            r("alice:nogroup").unwrap_err().to_string(),
            "unable to find group nogroup: no matching entries in group file"
        );
    }

    #[test]
    fn passwd_symlink_resolves_inside_rootfs() {
        let d = image();
        // An absolute symlink must resolve inside the image, not to the host's /etc/passwd.
        fs::rename(d.path().join("etc/passwd"), d.path().join("etc/passwd.real")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd.real", d.path().join("etc/passwd")).unwrap();
        assert_eq!(resolve_user(d.path(), "bob").unwrap().user.uid, 1001);
        fs::remove_file(d.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../../../../etc/shadow-not-here", d.path().join("etc/passwd")).unwrap();
        assert!(resolve_user(d.path(), "root").is_err());
    }
}
