//! `/sys/fs/cgroup` inside the container, as Docker shows it: the
//! container's own cgroups, read-only, so that programs that size
//! themselves by their limits (the JVM, Go and .NET runtimes, `nproc`-like
//! tools reading `cpu.max`) find them.
//!
//! - cgroup v2 with a cgroup namespace (`--cgroupns private`, Docker's
//!   default there): a cgroup2 mount, whose root is the namespace's, i.e.
//!   the container's cgroup;
//! - cgroup v2 without one: the container's cgroup directory bound there;
//! - v1 (and hybrid): a tmpfs holding, for each hierarchy mounted on the
//!   host, the container's directory of it bound under the hierarchy's
//!   name, and the host's symlinks between names (`cpu -> cpu,cpuacct`).
//!
//! What to bind is read from the host's `/proc/self/mountinfo` and
//! `/proc/self/cgroup` in the container's first process once it has been
//! placed in its cgroups and before it enters a cgroup namespace (whose
//! paths would all read `/`). Host paths here are the kernel's cgroup
//! mounts, never the container's content.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use crate::mounts::{ctx, Root};
use crate::sys::{self, cstring};

/// Where the host's cgroup filesystems are.
const HOST_CGROUPS: &str = "/sys/fs/cgroup";

/// What the container's `/sys/fs/cgroup` is made of.
#[derive(Debug, Default)]
pub(crate) struct CgroupView {
    /// The unified hierarchy is at /sys/fs/cgroup: v2 alone.
    unified: Option<PathBuf>,
    /// v1: (name under /sys/fs/cgroup, host directory to bind).
    binds: Vec<(String, PathBuf)>,
    /// v1: the host's symlinks in /sys/fs/cgroup (`cpu` -> `cpu,cpuacct`).
    links: Vec<(String, String)>,
}

impl CgroupView {
    /// The view of the cgroups this process is in, from the host's /proc.
    /// Empty where nothing can be read.
    pub(crate) fn of_self() -> CgroupView {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let membership = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mut view = Self::from_tables(&mountinfo, &membership);
        if view.unified.is_none() {
            for entry in std::fs::read_dir(HOST_CGROUPS).into_iter().flatten().flatten() {
                let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
                if let (true, Ok(target), Some(name)) =
                    (is_link, std::fs::read_link(entry.path()), entry.file_name().to_str())
                {
                    if let Some(target) = target.to_str() {
                        view.links.push((name.to_string(), target.to_string()));
                    }
                }
            }
        }
        view
    }

    /// The view from the text of `/proc/self/mountinfo` and `/proc/self/cgroup`.
    fn from_tables(mountinfo: &str, membership: &str) -> CgroupView {
        // `ID:CONTROLLERS:PATH`; the unified hierarchy has no controllers.
        let paths: Vec<(Vec<&str>, &str)> = membership
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
                let mut set: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
                set.sort_unstable();
                Some((set, path))
            })
            .collect();
        let path_of = |set: &[&str]| paths.iter().find(|(s, _)| s == set).map(|(_, p)| *p);
        let mut view = CgroupView::default();
        for line in mountinfo.lines() {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
            let Some((left, right)) = line.split_once(" - ") else { continue };
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (Some(root), Some(mount_point), Some(fstype)) = (left.get(3), left.get(4), right.first()) else {
                continue;
            };
            let Some(name) = mount_point.strip_prefix(HOST_CGROUPS) else { continue };
            let name = match name.strip_prefix('/') {
                Some(n) => n,
                None if name.is_empty() => name,
                None => continue,
            };
            let (set, dir) = match *fstype {
                "cgroup2" => (Vec::new(), Path::new(mount_point)),
                "cgroup" if !name.is_empty() && !name.contains('/') => {
                    let mut set: Vec<&str> =
                        right.get(2).unwrap_or(&"").split(',').filter(|o| is_controller_option(o)).collect();
                    set.sort_unstable();
                    (set, Path::new(mount_point))
                }
                _ => continue,
            };
            let Some(path) = path_of(&set) else { continue };
            // A mount of a sub-tree (the host itself in a cgroup namespace)
            // shows paths from its root.
            let inside = path.strip_prefix(root.trim_end_matches('/')).unwrap_or(path).trim_start_matches('/');
            let host_dir = dir.join(inside);
            if name.is_empty() {
                view.unified = Some(host_dir);
            } else {
                view.binds.push((name.to_string(), host_dir));
            }
        }
        if view.unified.is_some() {
            view.binds.clear();
        }
        view
    }

    /// Mounts the view at the root's /sys/fs/cgroup (after /sys is
    /// mounted), read-only unless `rw`. `own_namespace`: this process is
    /// in a cgroup namespace of its own.
    pub(crate) fn mount(&self, root: &Root, own_namespace: bool, rw: bool) -> Result<(), String> {
        const TARGET: &str = "/sys/fs/cgroup";
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        let ro = if rw { 0 } else { libc::MS_RDONLY };
        if let Some(host_dir) = &self.unified {
            if own_namespace {
                return root.mount(TARGET, false, Some(c"cgroup2"), Some(c"cgroup2"), flags | ro, None);
            }
            bind(root, TARGET, host_dir)?;
        } else {
            if self.binds.is_empty() {
                return Ok(());
            }
            root.mount(TARGET, false, Some(c"tmpfs"), Some(c"tmpfs"), flags, Some(c"mode=755"))?;
            for (name, host_dir) in &self.binds {
                bind(root, &format!("{TARGET}/{name}"), host_dir)?;
            }
            let dir = ctx(root.open(TARGET, libc::O_PATH | libc::O_DIRECTORY), || format!("open {TARGET}"))?;
            for (name, target) in &self.links {
                let (n, t) = (cname(name)?, cname(target)?);
                // SAFETY: valid fd and C strings; the name is one component of the new tmpfs.
                let made = unsafe { libc::symlinkat(t.as_ptr(), std::os::fd::AsRawFd::as_raw_fd(&dir), n.as_ptr()) };
                ctx(sys::cvt(made), || format!("link {TARGET}/{name}"))?;
            }
        }
        if rw {
            Ok(())
        } else {
            root.make_readonly(TARGET)
        }
    }
}

/// The options of a v1 cgroup mount that name what the hierarchy holds:
/// its controllers and `name=...`, not mount flags.
fn is_controller_option(o: &str) -> bool {
    const MOUNT_FLAGS: [&str; 11] = [
        "rw",
        "ro",
        "nosuid",
        "nodev",
        "noexec",
        "relatime",
        "noprefix",
        "clone_children",
        "xattr",
        "cpuset_v2_mode",
        "favordynmods",
    ];
    o.starts_with("name=") || (!MOUNT_FLAGS.contains(&o) && !o.contains('='))
}

fn cname(s: &str) -> Result<CString, String> {
    ctx(cstring(s), || format!("name {s:?}"))
}

fn bind(root: &Root, target: &str, host_dir: &Path) -> Result<(), String> {
    let source = ctx(cstring(host_dir.as_os_str().as_encoded_bytes()), || format!("path {}", host_dir.display()))?;
    root.mount(target, false, Some(&source), None, libc::MS_BIND | libc::MS_REC, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
25 1 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup ro,nosuid shared:8 - tmpfs tmpfs ro,mode=755
27 26 0:25 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
28 26 0:26 / /sys/fs/cgroup/systemd rw,nosuid shared:10 - cgroup cgroup rw,xattr,name=systemd
30 26 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:12 - cgroup cgroup rw,cpu,cpuacct
31 26 0:29 / /sys/fs/cgroup/memory rw,nosuid shared:13 - cgroup cgroup rw,memory
32 26 0:30 / /sys/fs/cgroup/devices rw,nosuid shared:14 - cgroup cgroup rw,devices";
    const HYBRID_MEMBERSHIP: &str = "\
5:devices:/user.slice
4:memory:/strata/abc
3:cpu,cpuacct:/strata/abc
1:name=systemd:/user.slice/session-1.scope
0::/user.slice/session-1.scope";

    #[test]
    fn v1_binds_each_hierarchys_own_directory() {
        let view = CgroupView::from_tables(HYBRID_MOUNTS, HYBRID_MEMBERSHIP);
        assert_eq!(view.unified, None);
        let binds: Vec<(&str, &str)> =
            view.binds.iter().map(|(n, d)| (n.as_str(), d.to_str().unwrap_or_default())).collect();
        assert_eq!(
            binds,
            [
                ("unified", "/sys/fs/cgroup/unified/user.slice/session-1.scope"),
                ("systemd", "/sys/fs/cgroup/systemd/user.slice/session-1.scope"),
                ("cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct/strata/abc"),
                ("memory", "/sys/fs/cgroup/memory/strata/abc"),
                ("devices", "/sys/fs/cgroup/devices/user.slice"),
            ]
        );
    }

    #[test]
    fn v2_is_the_unified_hierarchy_alone() {
        let mounts = "30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate";
        let view = CgroupView::from_tables(mounts, "0::/strata/abc\n");
        assert_eq!(view.unified.as_deref(), Some(Path::new("/sys/fs/cgroup/strata/abc")));
        assert!(view.binds.is_empty());
        // A host that is itself in a cgroup namespace mounts a sub-tree.
        let mounts = "30 25 0:26 /outer /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        let view = CgroupView::from_tables(mounts, "0::/outer/inner\n");
        assert_eq!(view.unified.as_deref(), Some(Path::new("/sys/fs/cgroup/inner")));
    }
}
