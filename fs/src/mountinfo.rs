//! What `/proc/self/mountinfo` says is mounted at a path. A FUSE mount may
//! sit on top of another mount at the same directory (a user's tmpfs, or a
//! mount of ours detached while busy and something else mounted there since),
//! so deciding whether to unmount a path takes knowing whose mount is on top:
//! unmounting by path takes away whatever is there.

use std::path::{Path, PathBuf};

/// One mount at a mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Its mount id (first field).
    pub id: u64,
    /// The mount id of the mount it sits on.
    pub parent: u64,
    /// Device numbers (major, minor) of its filesystem.
    pub dev: (u32, u32),
    /// Filesystem type, `fuse.strata` for ours.
    pub fstype: String,
    /// Mount source, the FUSE fsname for ours.
    pub source: String,
}

/// The mounts at `path`, bottom first, as this process's mount namespace
/// has them; empty when nothing is mounted there (or mountinfo cannot be
/// read).
pub fn mounts_at(path: &Path) -> Vec<MountEntry> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mounts_at(&info, &path.to_string_lossy())
}

/// The mount on top at `path`: the one that no other mount there sits on.
pub fn top_mount(path: &Path) -> Option<MountEntry> {
    let all = mounts_at(path);
    all.iter().find(|m| !all.iter().any(|o| o.parent == m.id)).cloned()
}

/// `path` as mountinfo lists a mount point: absolute, its parent's symlinks
/// resolved. The last component is not resolved: the root of a FUSE mount
/// whose server died cannot be.
pub fn as_listed(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (abs.parent().map(Path::canonicalize), abs.file_name()) {
        (Some(Ok(parent)), Some(name)) => parent.join(name),
        _ => abs,
    }
}

/// Where the filesystem with device numbers `dev` is mounted now, as this
/// process's mount namespace lists it: at `preferred` if it is there, else
/// at its one mount point (renaming a parent directory of a mount point
/// moves the mount with it); `None` when it is nowhere, or at several
/// places none of which is `preferred`.
pub fn mount_point_of(dev: (u32, u32), preferred: &Path) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    find_mount_point(&info, |m| m.dev == dev, preferred)
}

/// This process's mountinfo, for several lookups on one reading.
pub fn read() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
}

/// As [`mount_point_of`], in `info` (see [`read`]), for the mount whose
/// source (a FUSE fsname) is `source`.
pub fn mount_point_of_source(info: &str, source: &str, preferred: &Path) -> Option<PathBuf> {
    find_mount_point(info, |m| m.source == source, preferred)
}

fn find_mount_point(info: &str, which: impl Fn(&MountEntry) -> bool, preferred: &Path) -> Option<PathBuf> {
    let places: Vec<PathBuf> = parse(info).filter(|(_, m)| which(m)).map(|(at, _)| PathBuf::from(at)).collect();
    match places.iter().find(|p| p.as_path() == preferred) {
        Some(p) => Some(p.clone()),
        None if places.len() == 1 => places.into_iter().next(),
        None => None,
    }
}

fn parse_mounts_at(info: &str, path: &str) -> Vec<MountEntry> {
    parse(info).filter(|(at, _)| at == path).map(|(_, m)| m).collect()
}

/// Every line of mountinfo: the mount point and the mount.
fn parse(info: &str) -> impl Iterator<Item = (String, MountEntry)> + '_ {
    info.lines().filter_map(|line| {
        let (head, tail) = line.split_once(" - ")?;
        let f: Vec<&str> = head.split(' ').collect();
        let (major, minor) = f.get(2)?.split_once(':')?;
        let mut t = tail.split(' ');
        let entry = MountEntry {
            id: f.first()?.parse().ok()?,
            parent: f.get(1)?.parse().ok()?,
            dev: (major.parse().ok()?, minor.parse().ok()?),
            fstype: unescape(t.next()?),
            source: unescape(t.next()?),
        };
        Some((unescape(f.get(4)?), entry))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /mnt/a\\040b rw,relatime shared:5 - tmpfs tmpfs rw
31 30 0:41 / /mnt/a\\040b rw,nosuid,nodev - fuse.strata strata-mount:0123456789ab rw,user_id=0
40 22 0:45 / /mnt/other rw - tmpfs tmpfs rw
";

    #[test]
    fn stacked_mounts_bottom_first_and_the_top_one() {
        let at = parse_mounts_at(INFO, "/mnt/a b");
        assert_eq!(at.len(), 2);
        assert_eq!((at[0].fstype.as_str(), at[1].fstype.as_str()), ("tmpfs", "fuse.strata"));
        assert_eq!(at[1].source, "strata-mount:0123456789ab");
        assert_eq!(at[1].dev, (0, 41));
        assert!(parse_mounts_at(INFO, "/mnt").is_empty());
    }

    #[test]
    fn a_mount_is_found_by_its_device_where_it_is_now() {
        let at = |p: &str| Some(PathBuf::from(p));
        // Where it was mounted, or where a renamed parent took it.
        let dev = |d: (u32, u32)| move |m: &MountEntry| m.dev == d;
        assert_eq!(find_mount_point(INFO, dev((0, 41)), Path::new("/mnt/a b")), at("/mnt/a b"));
        assert_eq!(find_mount_point(INFO, dev((0, 41)), Path::new("/old/a b")), at("/mnt/a b"));
        assert_eq!(find_mount_point(INFO, dev((0, 99)), Path::new("/mnt/a b")), None);
        let ours = |m: &MountEntry| m.source == "strata-mount:0123456789ab";
        assert_eq!(find_mount_point(INFO, ours, Path::new("/old/a b")), at("/mnt/a b"));
        // Bind-mounted elsewhere too: only the expected place is certain.
        let twice = format!("{INFO}50 22 0:41 / /mnt/bound rw - fuse.strata strata-mount:0123456789ab rw\n");
        assert_eq!(find_mount_point(&twice, dev((0, 41)), Path::new("/mnt/bound")), at("/mnt/bound"));
        assert_eq!(find_mount_point(&twice, dev((0, 41)), Path::new("/old/a b")), None);
    }

    #[test]
    fn as_listed_resolves_the_parent_only() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::os::unix::fs::symlink(&real, real.join("link")).unwrap();
        // The last component may not exist (a dead mount point cannot be
        // stat'ed either), nor is it resolved when it is a symlink.
        assert_eq!(as_listed(&real.join("link/missing")), real.join("missing"));
        assert_eq!(as_listed(&real.join("link")), real.join("link"));
    }

    #[test]
    fn unescapes_octal_only() {
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape("/a\\04"), "/a\\04");
        assert_eq!(unescape("/a\\9xyz"), "/a\\9xyz");
    }
}
